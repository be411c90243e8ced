// Several ocomms-rt nodes as one cluster: one fresh PostgreSQL database shared by every node,
// one private redis-server on a free port (REDIS_URL), the same JWT secret and admin token on
// every node. Clients are spread round-robin over the nodes; the admin API is called on one
// node (the first), as a web app behind a load balancer would. Everything started here is torn
// down by stop(), and by the process's exit when a test fails before it.

import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";

import { freshDatabase, startServer, sumMetric } from "./server.js";
import { startRedis } from "./redis.js";

/** The PostgreSQL server the cluster's database is made on. */
export function postgresUrl() {
  return process.env.OCOMMS_TEST_DATABASE_URL ?? process.env.OCOMMS_TEST_PG ?? "postgres://postgres@127.0.0.1:5432/postgres";
}

const leftovers = new Set();
process.on("exit", () => {
  for (const drop of leftovers) drop();
});

/**
 * Starts a cluster.
 *
 * @param {object} [opts]
 * @param {number} [opts.nodes=3] how many nodes
 * @param {number} [opts.shards=2] CHAT_SHARDS of each node
 * @param {Record<string,string>} [opts.env] extra variables for every node
 * @param {(i: number) => Record<string,string>} [opts.envOf] extra variables per node index
 * @param {boolean} [opts.redis=true] start a redis-server and give the nodes REDIS_URL
 * @param {string} [opts.bin] / [opts.args] another program (harness self-tests)
 * @returns {Promise<Cluster>}
 */
export async function startCluster(opts = {}) {
  const { nodes: count = 3, shards = 2, env = {}, envOf = () => ({}), redis: withRedis = true, bin, args, ca, startTimeoutMs } = opts;
  const cluster = new Cluster();
  try {
    cluster.database = freshDatabase(postgresUrl());
    leftovers.add(cluster.database.drop);
    if (withRedis) cluster.redis = await startRedis();
    const prefix = `t${process.pid}x${randomBytes(4).toString("hex")}`;
    const shared = {
      jwtSecret: randomBytes(32).toString("hex"),
      adminToken: randomBytes(24).toString("hex"),
      databaseUrl: cluster.database.url,
    };
    for (let i = 0; i < count; i++) {
      const nodeEnv = { ...env, ...envOf(i) };
      if (cluster.redis) Object.assign(nodeEnv, { REDIS_URL: cluster.redis.url, CHAT_REDIS_PREFIX: prefix });
      try {
        cluster.nodes.push(await startServer({ shards, env: nodeEnv, bin, args, ca, startTimeoutMs, ...shared }));
      } catch (err) {
        err.message = `node ${i} of ${count}: ${err.message}`;
        throw err;
      }
    }
  } catch (err) {
    err.teardown = { redisPid: cluster.redis?.pid ?? null, databaseUrl: cluster.database?.url ?? null };
    await cluster.stop();
    throw err;
  }
  return cluster;
}

/** The nodes, the shared database and the Redis of one test cluster. */
export class Cluster {
  constructor() {
    /** @type {import("./server.js").Server[]} */
    this.nodes = [];
    this.redis = null;
    this.database = null;
    this.next = 0;
  }

  /** The node the admin API is called on. */
  get admin() {
    return this.nodes[0];
  }

  /** The node the next client goes to (round-robin). */
  nextNode() {
    const node = this.nodes[this.next % this.nodes.length];
    this.next++;
    return node;
  }

  /** Admin API calls (on the admin node). */
  provision(spec) {
    return this.admin.provision(spec);
  }

  adminOk(method, urlPath, body) {
    return this.admin.adminOk(method, urlPath, body);
  }

  /** A JWT every node accepts (they share the secret). */
  jwt(userId, o) {
    return this.admin.jwt(userId, o);
  }

  /** Connects a socket.io-client to the next node; see Server#connect. */
  connect(opts, timeoutMs) {
    return this.nextNode().connect(opts, timeoutMs);
  }

  /** Connects `user` (from provision) to the next node with a fresh JWT. */
  connectUser(user, workspaceId, extra) {
    return this.nextNode().connectUser(user, workspaceId, extra);
  }

  /** Sums a metric over every node still running. */
  async metric(name) {
    let sum = null;
    for (const node of this.nodes) {
      if (node.child.exitCode !== null || node.child.signalCode !== null) continue;
      const res = await node.request("GET", "/metrics");
      const v = sumMetric(res.text, name);
      if (v !== null) sum = (sum ?? 0) + v;
    }
    return sum;
  }

  /** SIGKILL node `i` (its clients see their connection drop). */
  async kill(i) {
    const node = this.nodes[i];
    node.child.kill("SIGKILL");
    return node.exited;
  }

  /** Stops every node, then Redis, then drops the database. Safe to call twice. */
  async stop() {
    const nodes = this.nodes.splice(0);
    await Promise.all(nodes.map((n) => n.stop({ timeoutMs: 10000 }).catch(() => n.child.kill("SIGKILL"))));
    if (this.redis) {
      await this.redis.stop();
      this.redis = null;
    }
    if (this.database) {
      leftovers.delete(this.database.drop);
      this.database.drop();
      this.database = null;
    }
  }
}

/** Whether a database exists on the test PostgreSQL server (for harness self-tests). */
export function databaseExists(url) {
  const name = new URL(url).pathname.slice(1);
  const admin = new URL(postgresUrl());
  admin.pathname = "/postgres";
  const out = execFileSync("psql", [admin.href, "-Atc", `select 1 from pg_database where datname = '${name}'`], {
    stdio: "pipe",
  });
  return out.toString().trim() === "1";
}

/**
 * The whole suite against a cluster (`OCOMMS_TEST_CLUSTER=N`): `startServer` returns this
 * stand-in for one server. Clients connect round-robin over the nodes; the admin API, plain
 * HTTP requests and everything else a test asks of "the server" go to the first node;
 * metrics are summed over the nodes; stop() stops them all, Redis, and the database.
 */
export async function startClusterServer(nodes, opts = {}) {
  const cluster = await startCluster({ nodes, shards: opts.shards ?? 2, env: opts.env, ca: opts.ca, startTimeoutMs: opts.startTimeoutMs });
  const own = {
    cluster,
    nodes: cluster.nodes,
    tryConnect: (o, t) => cluster.nextNode().tryConnect(o, t),
    connect: (o, t) => cluster.nextNode().connect(o, t),
    connectUser: (u, w, extra) => cluster.nextNode().connectUser(u, w, extra),
    closeSockets: () => cluster.nodes.forEach((n) => n.closeSockets()),
    metric: (name) => cluster.metric(name),
    stop: async () => {
      const first = cluster.nodes[0];
      await cluster.stop();
      return first?.exited;
    },
    tail: (lines = 40) => cluster.nodes.map((n, i) => `--- node ${i} ---\n${n.tail(lines)}`).join("\n"),
  };
  const first = cluster.nodes[0];
  return new Proxy(own, {
    get(target, key) {
      if (key in target) return target[key];
      const v = first[key];
      return typeof v === "function" ? v.bind(first) : v;
    },
    set(target, key, value) {
      first[key] = value;
      return true;
    },
  });
}
