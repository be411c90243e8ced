// Self-tests of the cluster harness (lib/cluster.js, lib/redis.js): a private redis-server
// that comes and goes on demand, and several real nodes on one shared PostgreSQL database with
// clients spread round-robin and the admin API on one node. The real binary does not join a
// cluster yet, so the REDIS_URL wiring is checked against the stand-in binary.

import assert from "node:assert/strict";
import path from "node:path";
import { describe, test } from "node:test";
import { fileURLToPath } from "node:url";

import { databaseExists, startCluster } from "../lib/cluster.js";
import { redisCommand, startRedis } from "../lib/redis.js";
import { emitWithAck } from "../lib/server.js";

const fake = path.join(path.dirname(fileURLToPath(import.meta.url)), "..", "lib", "fake-server.js");

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe("cluster harness", () => {
  test("startRedis: a private redis-server on its own port, restarted, paused, and gone after stop", async () => {
    const redis = await startRedis();
    try {
      assert.notEqual(redis.port, 6379);
      assert.equal(await redis.command("PING"), "PONG");
      await redis.command("SET", "k", "v");
      await redis.restart();
      assert.equal(await redis.command("GET", "k"), null, "a restart loses the data");
      redis.pause(true);
      await assert.rejects(redisCommand(redis.port, ["PING"], 300), /no answer within 300 ms/);
      redis.pause(false);
      assert.equal(await redis.command("PING"), "PONG");
    } finally {
      const pid = redis.pid;
      await redis.stop();
      assert.equal(alive(pid), false, "the server is gone");
    }
  });

  test("startCluster: real nodes share one database and one secret; clients go round-robin; admin on the first", async () => {
    const cluster = await startCluster({ nodes: 3, shards: 1, redis: false });
    const dbUrl = cluster.database.url;
    try {
      assert.equal(new Set(cluster.nodes.map((n) => n.port)).size, 3);
      const { workspaceId, users, channels } = await cluster.provision({ users: 3, channels: [{}] });
      const sockets = [];
      for (const u of users) sockets.push(await cluster.connectUser(u, workspaceId));
      const ports = sockets.map((s) => Number(new URL(s.io.uri).port));
      assert.deepEqual(ports, cluster.nodes.map((n) => n.port), "one client per node, in order");
      const ack = await emitWithAck(sockets[1], "message:send", {
        targetId: channels[0].id,
        targetType: "channel",
        content: "written through node 1",
      });
      assert.equal(ack.success, true, JSON.stringify(ack));
      // Read back through another node: the database is shared.
      const { messages } = await cluster.nodes[2].adminOk("GET", `/api/v1/channels/${channels[0].id}/messages`);
      assert.deepEqual(messages.map((m) => m.content), ["written through node 1"]);
      for (const s of sockets) s.disconnect();
    } finally {
      await cluster.stop();
    }
    assert.equal(databaseExists(dbUrl), false, "the database is dropped");
  });

  test("startCluster gives every node the private Redis, one prefix and the shared settings", async () => {
    const cluster = await startCluster({ nodes: 2, bin: process.execPath, args: [fake] });
    try {
      const envs = await Promise.all(cluster.nodes.map(async (n) => (await n.request("GET", "/env")).json));
      assert.equal(envs[0].REDIS_URL, cluster.redis.url);
      assert.equal(await redisCommand(new URL(envs[0].REDIS_URL).port, ["PING"]), "PONG");
      for (const key of ["REDIS_URL", "CHAT_REDIS_PREFIX", "DATABASE_URL", "CHAT_JWT_SECRET", "CHAT_ADMIN_TOKEN"]) {
        assert.ok(envs[0][key], `${key} is set`);
        assert.equal(envs[1][key], envs[0][key], `${key} is the same on every node`);
      }
      assert.equal(envs[0].DATABASE_URL, cluster.database.url);
    } finally {
      await cluster.stop();
    }
  });

  test("a node that fails to start tears down the others, Redis and the database", async () => {
    const failing = startCluster({
      nodes: 3,
      bin: process.execPath,
      args: [fake],
      envOf: (i) => (i === 1 ? { FAKE_MODE: "exit-early" } : {}),
    });
    const err = await failing.then(
      () => assert.fail("the start should fail"),
      (e) => e,
    );
    assert.match(err.message, /node 1 of 3: .*exited early/s);
    assert.equal(alive(err.teardown.redisPid), false, "Redis is stopped");
    assert.equal(databaseExists(err.teardown.databaseUrl), false, "the database is dropped");
  });
});
