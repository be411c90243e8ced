// Self-tests of the harness (lib/), runnable without the real server: a fake binary checks
// start-up parsing, failure messages and stop(); the codecs are checked against each other.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import path from "node:path";
import { describe, test } from "node:test";
import { fileURLToPath } from "node:url";

import jsonwebtoken from "jsonwebtoken";

import { FrameReader, OP, encodeFrame } from "../lib/raw.js";
import { condition, mintJwt, pool, startServer, sumMetric, within } from "../lib/server.js";

const fake = path.join(path.dirname(fileURLToPath(import.meta.url)), "..", "lib", "fake-server.js");
const startFake = (mode, extra = {}) =>
  startServer({ bin: process.execPath, args: [fake], env: { FAKE_MODE: mode }, ...extra });

describe("harness", () => {
  test("startServer finds listen= through ANSI colours, admin() sends the token, stop() exits 0", async () => {
    const server = await startFake("ok", { shards: 3 });
    try {
      assert.equal(server.host, "127.0.0.1");
      assert.ok(server.port > 0);
      const health = await server.request("GET", "/healthz");
      assert.deepEqual(health.json, { status: "ok", shards: 3 });
      const res = await server.admin("GET", "/api/v1/x");
      assert.equal(res.status, 404);
      assert.equal(res.json.auth, `Bearer ${server.adminToken}`);
      assert.equal(await server.metric("ocomms_slow_consumers_dropped_total"), 5);
      assert.ok(server.rssBytes() > 1024 * 1024);
    } finally {
      const exit = await server.stop();
      assert.deepEqual(exit, { code: 0, signal: null });
    }
  });

  test("a binary that exits early fails the start with its output", async () => {
    await assert.rejects(startFake("exit-early"), (err) => {
      assert.match(err.message, /exited early \(code 3/);
      assert.match(err.message, /CHAT_SHARDS="zero"/);
      return true;
    });
  });

  test("a binary that never prints listen= fails the start after the timeout", async () => {
    await assert.rejects(startFake("silent", { startTimeoutMs: 500 }), /no "listen=" line within 500 ms/);
  });

  test("a missing binary fails the start with a hint", async () => {
    await assert.rejects(startServer({ bin: "/nonexistent/ocomms-rt" }), /spawn failed.*OCOMMS_BIN/);
  });

  test("encodeFrame and FrameReader agree, across lengths and split reads", () => {
    for (const len of [0, 1, 125, 126, 65535, 65536, 200_000]) {
      const payload = Buffer.alloc(len, 0x61);
      const frame = encodeFrame(OP.text, payload);
      const reader = new FrameReader();
      const got = [...reader.push(frame.subarray(0, 3)), ...reader.push(frame.subarray(3))];
      assert.equal(got.length, 1, `len ${len}`);
      assert.equal(got[0].opcode, OP.text);
      assert.equal(got[0].fin, true);
      assert.ok(got[0].payload.equals(payload), `payload of ${len} bytes round-trips`);
      assert.equal(frame[1] & 0x80, 0x80, "client frames are masked");
    }
    const two = Buffer.concat([encodeFrame(OP.text, "40", { mask: false }), encodeFrame(OP.close, Buffer.from([3, 232]), { mask: false })]);
    const frames = new FrameReader().push(two);
    assert.deepEqual(frames.map((f) => f.opcode), [OP.text, OP.close]);
  });

  test("mintJwt: HS256 verifies with the secret; expSeconds null leaves exp out; none has no signature", () => {
    const secret = "s".repeat(64);
    const id = randomUUID();
    const ok = jsonwebtoken.verify(mintJwt(id, { secret, name: "Ann" }), secret, { algorithms: ["HS256"] });
    assert.equal(ok.sub, id);
    assert.equal(ok.name, "Ann");
    assert.ok(ok.exp > Date.now() / 1000);
    const noExp = jsonwebtoken.decode(mintJwt(id, { secret, expSeconds: null }));
    assert.equal("exp" in noExp, false);
    const none = mintJwt(id, { alg: "none" });
    assert.match(none, /\.$/);
    assert.equal(jsonwebtoken.decode(none, { complete: true }).header.alg, "none");
    assert.equal(jsonwebtoken.decode(mintJwt(id, { secret, alg: "HS512" }), { complete: true }).header.alg, "HS512");
  });

  test("sumMetric sums label sets and ignores other series", () => {
    const text = '# TYPE a counter\na{shard="0"} 1\na{shard="1"} 2.5\nab 100\n';
    assert.equal(sumMetric(text, "a"), 3.5);
    assert.equal(sumMetric(text, "missing"), null);
  });

  test("pool keeps order and bounds concurrency; within and condition time out with a name", async () => {
    let inFlight = 0;
    let peak = 0;
    const out = await pool([1, 2, 3, 4, 5], 2, async (x) => {
      peak = Math.max(peak, ++inFlight);
      await new Promise((r) => setImmediate(r));
      inFlight--;
      return x * 10;
    });
    assert.deepEqual(out, [10, 20, 30, 40, 50]);
    assert.equal(peak, 2);
    await assert.rejects(within(new Promise(() => {}), 20, "nothing"), /nothing: not within 20 ms/);
    let n = 0;
    const c = condition(() => n >= 2, 1000, "n reaches 2");
    n = 2;
    c.poke();
    await c.promise;
    await assert.rejects(condition(() => false, 20, "never").promise, /never: not within 20 ms/);
  });
});
