// Harness: starts the real ocomms-rt binary on an ephemeral port and talks to it the way
// clients and operators do (admin API over HTTP, socket.io-client over WebSocket).
//
// Every wait here is bounded: a test that goes wrong fails with a message naming what it
// waited for (and, for the start, the server's own output), it never hangs the runner.

import { execFileSync, spawn } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import http from "node:http";
import https from "node:https";
import path from "node:path";
import { fileURLToPath } from "node:url";

import jsonwebtoken from "jsonwebtoken";
import { remember } from "./failure-logs.js";

// Waiting on events, bounded by time; kept importable from here.
export { collect, condition, emitWithAck, once, waitFor, within } from "./wait.js";
import { io } from "socket.io-client";

const here = path.dirname(fileURLToPath(import.meta.url));
/** The repository root (tests/node/lib -> ../../..). */
export const repoRoot = path.resolve(here, "..", "..", "..");

/** The binary under test: `OCOMMS_BIN` (relative paths are taken from the repo root). */
export function binaryPath() {
  const bin = process.env.OCOMMS_BIN ?? "target/release/ocomms-rt";
  return path.resolve(repoRoot, bin);
}

// Every child still running when this test process exits is killed, so a failed test never
// leaves a server behind holding a port.
const running = new Set();
process.on("exit", () => {
  for (const child of running) {
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
  }
});

// tracing-subscriber colours field names (`listen` in italics, `=` dimmed) unless told not
// to; strip escapes before matching so the start line is found either way.
const ANSI = /\x1b\[[0-9;]*[A-Za-z]/g;

/**
 * Starts the server and resolves once it printed `listen=HOST:PORT`.
 *
 * @param {object} [opts]
 * @param {number} [opts.shards=4] CHAT_SHARDS
 * @param {Record<string,string>} [opts.env] extra variables (CHAT_PING_INTERVAL_MS, CHAT_TLS_CERT, ...)
 * @param {number} [opts.startTimeoutMs=15000]
 * @param {string} [opts.ca] PEM of the CA to trust when the server serves TLS
 * @param {string} [opts.bin] program to start instead of binaryPath() (harness self-tests)
 * @param {string[]} [opts.args] its arguments
 * @param {string} [opts.jwtSecret] CHAT_JWT_SECRET (default: random); nodes of one cluster share it
 * @param {string} [opts.adminToken] CHAT_ADMIN_TOKEN (default: random)
 * @param {boolean} [opts.single] one process even when OCOMMS_TEST_CLUSTER is set
 * @param {string} [opts.databaseUrl] DATABASE_URL to use as is (a cluster's shared database);
 *   default: a fresh database when OCOMMS_TEST_DATABASE_URL is set, else the embedded store
 * @returns {Promise<Server>}
 */
export async function startServer(opts = {}) {
  // OCOMMS_TEST_CLUSTER=N: the suite runs against N nodes over a private Redis (lib/cluster.js).
  const clusterNodes = Number(process.env.OCOMMS_TEST_CLUSTER ?? 0);
  if (clusterNodes > 1 && opts.bin === undefined && opts.databaseUrl === undefined && !opts.single) {
    const { startClusterServer } = await import("./cluster.js");
    return startClusterServer(clusterNodes, opts);
  }
  const { shards = 4, env = {}, startTimeoutMs = 15000, ca, args = [] } = opts;
  const jwtSecret = opts.jwtSecret ?? randomBytes(32).toString("hex");
  const adminToken = opts.adminToken ?? randomBytes(24).toString("hex");
  const bin = opts.bin ?? binaryPath();

  // Start from a clean slate: inherited CHAT_* or database settings would make the run
  // depend on the shell. OCOMMS_TEST_DATABASE_URL / OCOMMS_TEST_REDIS_URL opt in to them.
  const childEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (k.startsWith("CHAT_") || k === "DATABASE_URL" || k === "REDIS_URL" || k === "RUST_LOG") continue;
    childEnv[k] = v;
  }
  // With PostgreSQL every server gets a database of its own, made here and dropped on exit,
  // so files and runs never see each other's rows.
  const database =
    opts.databaseUrl === undefined && process.env.OCOMMS_TEST_DATABASE_URL
      ? freshDatabase(process.env.OCOMMS_TEST_DATABASE_URL)
      : null;
  if (database) childEnv.DATABASE_URL = database.url;
  if (opts.databaseUrl !== undefined) childEnv.DATABASE_URL = opts.databaseUrl;
  if (process.env.OCOMMS_TEST_REDIS_URL) childEnv.REDIS_URL = process.env.OCOMMS_TEST_REDIS_URL;
  Object.assign(childEnv, {
    CHAT_LISTEN: "127.0.0.1:0",
    CHAT_JWT_SECRET: jwtSecret,
    CHAT_ADMIN_TOKEN: adminToken,
    CHAT_SHARDS: String(shards),
    RUST_LOG: "info",
    NO_COLOR: "1",
    ...env,
  });

  const child = spawn(bin, args, { env: childEnv, stdio: ["ignore", "pipe", "pipe"] });
  running.add(child);
  const server = new Server({ child, jwtSecret, adminToken, tls: Boolean(env.CHAT_TLS_CERT), ca });
  if (database) child.on("exit", () => database.drop());

  const listen = await new Promise((resolve, reject) => {
    const fail = (why) => {
      cleanup();
      try {
        child.kill("SIGKILL");
      } catch {
        // already gone
      }
      reject(new Error(`ocomms-rt (${bin}) did not start: ${why}\n--- server output ---\n${server.output}`));
    };
    const onData = () => {
      const m = /listen=(\S+)/.exec(server.output.replace(ANSI, ""));
      if (m) {
        cleanup();
        resolve(m[1]);
      }
    };
    const onExit = (code, signal) => fail(`it exited early (code ${code}, signal ${signal})`);
    const onError = (err) => fail(`spawn failed: ${err.message} (build it, or set OCOMMS_BIN)`);
    const timer = setTimeout(() => fail(`no "listen=" line within ${startTimeoutMs} ms`), startTimeoutMs);
    const cleanup = () => {
      clearTimeout(timer);
      child.stdout.off("data", onData);
      child.stderr.off("data", onData);
      child.off("exit", onExit);
      child.off("error", onError);
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.on("exit", onExit);
    child.on("error", onError);
    onData();
  });

  // `listen=127.0.0.1:40123` or `listen=[::1]:40123`; strip a trailing comma a formatter may add.
  const m = /^\[?([^\]]*?)\]?:(\d+)/.exec(listen);
  if (!m) {
    await server.stop();
    throw new Error(`cannot read host:port from "listen=${listen}"\n${server.output}`);
  }
  server.host = m[1];
  server.port = Number(m[2]);
  return server;
}

let databases = 0;

/**
 * Creates `ocomms_e2e_<pid>_<n>` on the PostgreSQL server of `base` (a URL without a database
 * name or with any) using psql, and returns its URL and a function that drops it.
 */
export function freshDatabase(base) {
  const url = new URL(base);
  const name = `ocomms_e2e_${process.pid}_${++databases}`;
  const admin = new URL(url);
  admin.pathname = "/postgres";
  execFileSync("psql", [admin.href, "-qc", `CREATE DATABASE ${name}`], { stdio: "pipe" });
  url.pathname = `/${name}`;
  const drop = () => {
    try {
      execFileSync("psql", [admin.href, "-qc", `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`], { stdio: "pipe" });
    } catch {
      // The cluster may be down (outage tests); the name is unique, a leftover harms no run.
    }
  };
  return { url: url.href, drop };
}

/** One running server process. */
export class Server {
  constructor({ child, jwtSecret, adminToken, tls, ca }) {
    this.child = child;
    this.pid = child.pid;
    this.jwtSecret = jwtSecret;
    this.adminToken = adminToken;
    this.tls = tls;
    this.ca = ca;
    this.host = "127.0.0.1";
    this.port = 0;
    /** Everything the server printed on stdout and stderr, interleaved. */
    this.output = "";
    remember(this);
    this.exited = new Promise((resolve) => {
      child.on("exit", (code, signal) => {
        running.delete(child);
        resolve({ code, signal });
      });
    });
    const keep = (chunk) => {
      this.output += chunk.toString("utf8");
      // Bound the memory a chatty server can take; the start line is found long before this.
      if (this.output.length > 4_000_000) this.output = this.output.slice(-2_000_000);
    };
    child.stdout.on("data", keep);
    child.stderr.on("data", keep);
    this.sockets = new Set();
  }

  /** `http://127.0.0.1:PORT` (or https with TLS). */
  get url() {
    const host = this.host.includes(":") ? `[${this.host}]` : this.host;
    return `${this.tls ? "https" : "http"}://${host}:${this.port}`;
  }

  /**
   * Stops the server with `signal` and waits for the exit.
   * @param {object} [opts]
   * @param {string} [opts.signal="SIGTERM"]
   * @param {number} [opts.timeoutMs=10000] after this the process is killed and stop() throws
   * @returns {Promise<{code: number|null, signal: string|null}>}
   */
  async stop({ signal = "SIGTERM", timeoutMs = 10000 } = {}) {
    for (const s of this.sockets) s.disconnect();
    this.sockets.clear();
    this.agent?.destroy();
    if (this.child.exitCode !== null || this.child.signalCode !== null) return this.exited;
    this.child.kill(signal);
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => {
        this.child.kill("SIGKILL");
        reject(new Error(`server did not exit within ${timeoutMs} ms of ${signal}\n${this.tail()}`));
      }, timeoutMs);
    });
    try {
      return await Promise.race([this.exited, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** The last lines of the server's output, for failure messages. */
  tail(lines = 40) {
    return this.output.replace(ANSI, "").split("\n").slice(-lines).join("\n");
  }

  /** Resident set size of the server process in bytes, from /proc/<pid>/status. */
  rssBytes() {
    const status = readFileSync(`/proc/${this.pid}/status`, "utf8");
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
    if (!m) throw new Error(`no VmRSS in /proc/${this.pid}/status`);
    return Number(m[1]) * 1024;
  }

  /**
   * One HTTP request to the server. Uses node:http(s) rather than fetch so the same code
   * works with a self-signed certificate (`ca`).
   *
   * Requests share a small keep-alive pool (the way browsers and SDKs talk to an API). A
   * server may close an idle pooled connection just as it is reused; Node's documented answer
   * is to retry when `req.reusedSocket` meets ECONNRESET, which is done here once.
   * `{fresh: true}` uses a new connection with `Connection: close` instead.
   * @returns {Promise<{status: number, headers: object, text: string, json: any}>}
   */
  async request(method, urlPath, { body, headers = {}, timeoutMs = 10000, fresh = false } = {}) {
    try {
      return await this.requestOnce(method, urlPath, { body, headers, timeoutMs, fresh });
    } catch (err) {
      if (!err.reusedSocket) throw err;
      return this.requestOnce(method, urlPath, { body, headers, timeoutMs, fresh: true });
    }
  }

  requestOnce(method, urlPath, { body, headers, timeoutMs, fresh }) {
    const lib = this.tls ? https : http;
    this.agent ??= new lib.Agent({ keepAlive: true, maxSockets: 8, ca: this.ca });
    const payload = body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body);
    const allHeaders = { ...headers };
    if (payload !== undefined) {
      allHeaders["content-type"] ??= "application/json";
      allHeaders["content-length"] = Buffer.byteLength(payload);
    }
    return new Promise((resolve, reject) => {
      const req = lib.request(
        {
          host: this.host,
          port: this.port,
          method,
          path: urlPath,
          headers: allHeaders,
          agent: fresh ? false : this.agent,
          ca: this.ca,
          timeout: timeoutMs,
        },
        (res) => {
          const chunks = [];
          res.on("data", (c) => chunks.push(c));
          res.on("end", () => {
            const text = Buffer.concat(chunks).toString("utf8");
            let json;
            try {
              json = text ? JSON.parse(text) : undefined;
            } catch {
              json = undefined;
            }
            resolve({ status: res.statusCode, headers: res.headers, text, json });
          });
          res.on("error", reject);
        },
      );
      req.on("timeout", () => req.destroy(new Error(`${method} ${urlPath}: no answer within ${timeoutMs} ms`)));
      req.on("error", (err) => {
        err.reusedSocket = req.reusedSocket && err.code === "ECONNRESET";
        err.message = `${method} ${urlPath}: ${err.message}`;
        reject(err);
      });
      if (payload !== undefined) req.write(payload);
      req.end();
    });
  }

  /** Admin API call with the Bearer token: `admin("POST", "/api/v1/users", {name})`. */
  admin(method, urlPath, body, { token = this.adminToken } = {}) {
    const headers = token === null ? {} : { authorization: `Bearer ${token}` };
    return this.request(method, urlPath, { body, headers });
  }

  /** Admin call that must succeed (2xx); returns the JSON body. */
  async adminOk(method, urlPath, body) {
    const res = await this.admin(method, urlPath, body);
    if (res.status < 200 || res.status > 299) {
      throw new Error(`${method} ${urlPath} ${JSON.stringify(body)} -> ${res.status} ${res.text}`);
    }
    return res.json;
  }

  /** Creates a user; returns `{id, name}`. */
  async createUser(name = `user-${randomUUID().slice(0, 8)}`) {
    const { id } = await this.adminOk("POST", "/api/v1/users", { name, email: `${name}-${randomUUID()}@example.test` });
    return { id, name };
  }

  /** A session token for `userId` (POST /api/v1/sessions). */
  async session(userId, ttlSeconds) {
    const body = ttlSeconds === undefined ? { userId } : { userId, ttlSeconds };
    return this.adminOk("POST", "/api/v1/sessions", body);
  }

  /**
   * Creates a workspace with `users` members and channels.
   *
   * @param {object} spec
   * @param {number} spec.users how many users to create, all workspace members
   * @param {Array<{slug?: string, members?: "all"|number[]}>} [spec.channels] members are user indexes
   * @param {number[][]} [spec.conversations] participant user indexes
   * @param {number} [spec.concurrency=8] admin calls in flight
   * @returns {Promise<{workspaceId: string, users: {id,name}[], channels: {id, slug, memberIds: string[]}[], conversations: {id, participantIds: string[]}[]}>}
   */
  async provision({ users: count, channels = [], conversations = [], concurrency = 8 }) {
    const tag = randomUUID().slice(0, 8);
    const { id: workspaceId } = await this.adminOk("POST", "/api/v1/workspaces", {
      slug: `ws-${tag}`,
      name: `Workspace ${tag}`,
    });
    const users = await pool(
      Array.from({ length: count }, (_, i) => i),
      concurrency,
      async (i) => {
        const user = await this.createUser(`u${i}-${tag}`);
        await this.adminOk("POST", `/api/v1/workspaces/${workspaceId}/members`, { userId: user.id, role: "member" });
        return user;
      },
    );
    const made = [];
    for (const [n, spec] of channels.entries()) {
      const slug = spec.slug ?? `ch${n}-${tag}`;
      const { id } = await this.adminOk("POST", "/api/v1/channels", {
        workspaceId,
        slug,
        name: slug,
        isPrivate: false,
      });
      const indexes = spec.members === undefined || spec.members === "all" ? users.map((_, i) => i) : spec.members;
      const memberIds = indexes.map((i) => users[i].id);
      await pool(memberIds, concurrency, (userId) =>
        this.adminOk("POST", `/api/v1/channels/${id}/members`, { userId }),
      );
      made.push({ id, slug, memberIds });
    }
    const convs = [];
    for (const indexes of conversations) {
      const participantIds = indexes.map((i) => users[i].id);
      const { id } = await this.adminOk("POST", "/api/v1/conversations", { workspaceId, participantIds });
      convs.push({ id, participantIds });
    }
    return { workspaceId, users, channels: made, conversations: convs };
  }

  /**
   * Mints a JWT for `userId` with the server's secret.
   * @param {string} userId becomes `sub`
   * @param {object} [o]
   * @param {number|null} [o.expSeconds=3600] seconds from now (negative: already expired); null: no `exp`
   * @param {string} [o.name]
   * @param {string} [o.alg="HS256"] any jsonwebtoken algorithm, or "none"
   * @param {string} [o.secret] defaults to the server's CHAT_JWT_SECRET
   */
  jwt(userId, o = {}) {
    return mintJwt(userId, { secret: this.jwtSecret, ...o });
  }

  /** socket.io-client options used by `connect` (exposed so tests can tweak them). */
  clientOptions({ token, workspaceId, auth, extraHeaders, ...rest } = {}) {
    return {
      // OCOMMS_TRANSPORTS runs the suite over other transports: "polling,websocket"
      // (socket.io-client's default: polling, then the upgrade) or "polling" alone.
      transports: (process.env.OCOMMS_TRANSPORTS ?? "websocket").split(","),
      reconnection: false,
      forceNew: true,
      multiplex: false,
      timeout: 5000,
      auth: auth ?? { ...(token === undefined ? {} : { token }), ...(workspaceId === undefined ? {} : { workspaceId }) },
      extraHeaders,
      ca: this.ca,
      ...rest,
    };
  }

  /**
   * Opens a socket.io-client Socket and waits for `connect` or `connect_error`.
   * Never throws: returns `{socket, error}`; on error the socket is left as is, so a test can
   * change `socket.auth` and call `socket.connect()` again. Call `socket.disconnect()` when done.
   */
  tryConnect(opts = {}, timeoutMs = 8000) {
    const socket = io(this.url, this.clientOptions(opts));
    this.sockets.add(socket);
    return new Promise((resolve) => {
      const done = (result) => {
        clearTimeout(timer);
        socket.off("connect", onConnect);
        socket.off("connect_error", onError);
        resolve(result);
      };
      const onConnect = () => done({ socket, error: null });
      const onError = (error) => done({ socket, error });
      const timer = setTimeout(
        () => done({ socket, error: new Error(`neither connect nor connect_error within ${timeoutMs} ms`) }),
        timeoutMs,
      );
      socket.on("connect", onConnect);
      socket.on("connect_error", onError);
    });
  }

  /** Like tryConnect but must succeed; resolves with the connected Socket. */
  async connect(opts = {}, timeoutMs = 8000) {
    const { socket, error } = await this.tryConnect(opts, timeoutMs);
    if (error) {
      socket.disconnect();
      this.sockets.delete(socket);
      throw new Error(`connect failed: ${error.message}${error.data ? ` ${JSON.stringify(error.data)}` : ""}`);
    }
    return socket;
  }

  /** Connects `user` (from provision) with a fresh JWT. */
  connectUser(user, workspaceId, extra = {}) {
    return this.connect({ token: this.jwt(user.id, { name: user.name }), workspaceId, ...extra });
  }

  /** Closes every socket this harness opened. */
  closeSockets() {
    for (const s of this.sockets) s.disconnect();
    this.sockets.clear();
  }

  /** GET /metrics and sum every sample of `name` (over all label sets). */
  async metric(name) {
    const res = await this.request("GET", "/metrics");
    if (res.status !== 200) throw new Error(`/metrics -> ${res.status} ${res.text}`);
    return sumMetric(res.text, name);
  }
}

/** Sums the samples of metric `name` in Prometheus text; null when there is none. */
export function sumMetric(text, name) {
  let sum = null;
  for (const line of text.split("\n")) {
    if (line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (m && m[1] === name) sum = (sum ?? 0) + Number(m[3]);
  }
  return sum;
}

/** Mints a JWT; see Server#jwt. "none" is built by hand since libraries refuse it. */
export function mintJwt(userId, { secret, expSeconds = 3600, name, alg = "HS256", extra = {} } = {}) {
  const now = Math.floor(Date.now() / 1000);
  const payload = { sub: userId, iat: now, ...extra };
  if (name !== undefined) payload.name = name;
  if (expSeconds !== null) payload.exp = now + expSeconds;
  if (alg === "none") {
    const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
    return `${b64({ alg: "none", typ: "JWT" })}.${b64(payload)}.`;
  }
  return jsonwebtoken.sign(payload, secret, { algorithm: alg, noTimestamp: true });
}

/** Runs `fn` over `items` with at most `limit` in flight; keeps order. */
export async function pool(items, limit, fn) {
  const out = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i], i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

/** Asserts the contract's Message shape (§4) and returns the message. */
export function checkMessageShape(assert, msg, { content, authorId, channelId, conversationId } = {}) {
  assert.equal(typeof msg, "object", "message is an object");
  assert.match(msg.id, UUID, "message.id is a uuid");
  assert.equal(typeof msg.content, "string", "message.content is a string");
  assert.match(msg.authorId, UUID, "message.authorId is a uuid");
  assert.ok(Number.isInteger(msg.sequence) && msg.sequence >= 1, `message.sequence ${msg.sequence} is an integer >= 1`);
  assert.ok(!Number.isNaN(Date.parse(msg.createdAt)), `message.createdAt ${msg.createdAt} is a date`);
  assert.ok("deletedAt" in msg, "message.deletedAt is present");
  assert.ok("channelId" in msg && "conversationId" in msg, "channelId and conversationId are present");
  assert.ok((msg.channelId === null) !== (msg.conversationId === null), "exactly one of channelId / conversationId");
  assert.equal(typeof msg.author, "object", "message.author is an object");
  assert.equal(msg.author.id, msg.authorId, "author.id equals authorId");
  assert.equal(typeof msg.author.name, "string", "author.name is a string");
  if (content !== undefined) assert.equal(msg.content, content);
  if (authorId !== undefined) assert.equal(msg.authorId, authorId);
  if (channelId !== undefined) assert.equal(msg.channelId, channelId);
  if (conversationId !== undefined) assert.equal(msg.conversationId, conversationId);
  return msg;
}

/** A uuid in its canonical text form. */
export const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
