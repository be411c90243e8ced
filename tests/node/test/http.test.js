// Contract §6: /healthz, /metrics and the admin API's error answers.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";

import { UUID, startServer, sumMetric } from "../lib/server.js";

describe("HTTP endpoints", { timeout: 60_000 }, () => {
  let server;

  before(async () => {
    server = await startServer();
  });

  after(async () => {
    await server?.stop();
  });

  test("GET /healthz is 200 JSON", async () => {
    const res = await server.request("GET", "/healthz");
    assert.equal(res.status, 200);
    assert.match(String(res.headers["content-type"]), /application\/json/);
    assert.equal(typeof res.json, "object", `body is JSON: ${res.text}`);
    assert.notEqual(res.json, null);
  });

  test("a request with Connection: close gets its whole answer", async () => {
    const res = await server.request("GET", "/healthz", { fresh: true });
    assert.equal(res.status, 200);
    assert.equal(typeof res.json, "object", `body: ${res.text}`);
  });

  test("GET /metrics is Prometheus text with the documented series", async () => {
    const res = await server.request("GET", "/metrics");
    assert.equal(res.status, 200);
    assert.match(String(res.headers["content-type"]), /^text\/plain/);
    assert.match(res.text, /^# (HELP|TYPE) /m);
    for (const name of ["ocomms_connections", "ocomms_slow_consumers_dropped_total", "ocomms_fanout_deliveries_total"]) {
      assert.notEqual(sumMetric(res.text, name), null, `metric ${name} is present`);
    }
    // Every sample line is `name{labels} value`.
    for (const line of res.text.split("\n")) {
      if (line === "" || line.startsWith("#")) continue;
      assert.match(line, /^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? (-?[0-9.eE+-]+|NaN|[+-]Inf)( -?\d+)?$/, `sample line: ${line}`);
    }
  });

  test("admin API without a token is 401 with {error}", async () => {
    const res = await server.admin("POST", "/api/v1/users", { name: "x" }, { token: null });
    assert.equal(res.status, 401);
    assert.equal(typeof res.json?.error, "string", `body: ${res.text}`);
  });

  test("admin API with a wrong token is 401", async () => {
    const res = await server.admin("POST", "/api/v1/users", { name: "x" }, { token: "wrong" });
    assert.equal(res.status, 401);
    assert.equal(typeof res.json?.error, "string");
  });

  test("admin API with bad JSON is 400 with {error}", async () => {
    const res = await server.request("POST", "/api/v1/users", {
      body: '{"name": ',
      headers: { authorization: `Bearer ${server.adminToken}` },
    });
    assert.equal(res.status, 400);
    assert.equal(typeof res.json?.error, "string", `body: ${res.text}`);
  });

  test("publishing content or a clientMsgId with a NUL character is 400 naming the field", async () => {
    for (const [field, body] of [
      ["content", { content: "a\u0000b" }],
      ["clientMsgId", { content: "hi", clientMsgId: "k\u0000" }],
    ]) {
      const res = await server.admin("POST", "/api/v1/messages", {
        authorId: randomUUID(),
        targetId: randomUUID(),
        targetType: "channel",
        ...body,
      });
      assert.equal(res.status, 400, `body: ${res.text}`);
      assert.match(res.json?.error, new RegExp(`^${field} contains a NUL character`));
    }
  });

  test("admin API with a missing field is 400", async () => {
    const res = await server.admin("POST", "/api/v1/workspaces", { name: "no slug" });
    assert.equal(res.status, 400);
    assert.equal(typeof res.json?.error, "string");
  });

  test("unknown path is 404 with {error}", async () => {
    const res = await server.admin("GET", "/api/v1/nothing-here");
    assert.equal(res.status, 404);
    assert.equal(typeof res.json?.error, "string", `body: ${res.text}`);
    const plain = await server.request("GET", "/no/such/page");
    assert.equal(plain.status, 404);
  });

  test("a member of an unknown channel is 404", async () => {
    const user = await server.createUser();
    const res = await server.admin("POST", `/api/v1/channels/${randomUUID()}/members`, { userId: user.id });
    assert.equal(res.status, 404);
  });

  test("creating a user returns a uuid; a session returns a token and expiresAt", async () => {
    const user = await server.createUser();
    assert.match(user.id, UUID);
    const session = await server.session(user.id, 60);
    assert.equal(typeof session.token, "string");
    const ttl = Date.parse(session.expiresAt) - Date.now();
    assert.ok(ttl > 30_000 && ttl < 90_000, `expiresAt ${session.expiresAt} is about 60 s away`);
  });
});
