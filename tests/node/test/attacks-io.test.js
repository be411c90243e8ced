// Hostile clients on the byte level (issue 11, the shard half): a client that floods, or
// asks and never reads, or streams bytes where none are expected, is served within a budget
// and bounded in memory, and honest clients on the same shard notice nothing. Every server
// here runs one shard, so the attacker and the honest client share its loop. Each test
// asserts what the honest client sees and that the server's RSS (/proc/<pid>/status) stays
// under RSS_LIMIT while the attack runs.

import assert from "node:assert/strict";
import http from "node:http";
import net from "node:net";
import { after, before, describe, test } from "node:test";

import { encodeFrame, OP, RawWebSocket, rawSocketIo } from "../lib/raw.js";
import { emitWithAck, startServer, within } from "../lib/server.js";

// A few MiB of kernel buffers and bounded queues on top of an idle server of ~10 MiB.
const RSS_LIMIT = 96 * 1024 * 1024;
const MiB = 1024 * 1024;

/** Writes `chunk` on `sock` again and again until the server stops taking it (no drain
 * within `stallMs`), `maxBytes` went out, or the socket ends; resolves with bytes written. */
function writeUntilBlocked(sock, chunk, { maxBytes = 256 * MiB, stallMs = 2000, onChunk = () => {} } = {}) {
  return new Promise((resolve) => {
    let written = 0;
    let timer = null;
    const done = () => {
      clearTimeout(timer);
      sock.off("drain", pump);
      resolve(written);
    };
    const pump = () => {
      clearTimeout(timer);
      while (written < maxBytes && !sock.destroyed) {
        written += chunk.length;
        onChunk(written);
        if (!sock.write(chunk)) {
          // The kernel buffers are full: go on when the server reads, or stop if it does not.
          timer = setTimeout(done, stallMs);
          return;
        }
      }
      done();
    };
    sock.on("drain", pump);
    sock.once("close", done);
    pump();
  });
}

/** Samples the server's RSS every 100 ms until `stop()`; `max` is the peak seen. */
function rssWatch(server) {
  const watch = { max: server.rssBytes() };
  const timer = setInterval(() => {
    try {
      watch.max = Math.max(watch.max, server.rssBytes());
    } catch {
      // The server is gone; the test's own assertions say why.
    }
  }, 100);
  watch.stop = () => {
    clearInterval(timer);
    watch.max = Math.max(watch.max, server.rssBytes());
    return watch.max;
  };
  return watch;
}

function assertRss(watch, what) {
  const peak = watch.stop();
  assert.ok(peak < RSS_LIMIT, `${what}: server RSS peaked at ${(peak / MiB).toFixed(1)} MiB (limit ${RSS_LIMIT / MiB} MiB)`);
}

/** An honest client's round trip: a message sent, acked, and received back. */
async function roundTrip(socket, channelId, n) {
  const back = new Promise((resolve) => {
    const on = (m) => {
      if (m.content === `honest ${n}`) {
        socket.off("message:new", on);
        resolve(m);
      }
    };
    socket.on("message:new", on);
  });
  const ack = await emitWithAck(socket, "message:send", { targetId: channelId, targetType: "channel", content: `honest ${n}` }, 10_000);
  assert.equal(ack.success, true, JSON.stringify(ack));
  await within(back, 10_000, `honest round trip ${n} comes back`);
}

/** A raw TCP connection to the server. */
function tcp(server) {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: server.host, port: server.port }, () => resolve(sock));
    sock.on("error", reject);
  });
}

describe("hostile clients on one shard", { timeout: 240_000 }, () => {
  let server;
  let ws;

  before(async () => {
    server = await startServer({
      shards: 1,
      // Short heartbeats: a stalled shard would make the honest client miss its pings
      // and disconnect within seconds.
      // The idle-packet budget is lifted: the floods below test the shard's fairness, which
      // must hold whatever a client sends; the budget has a test of its own.
      env: { CHAT_PING_INTERVAL_MS: "1000", CHAT_PING_TIMEOUT_MS: "3000", CHAT_LIMIT_IDLE_PACKETS: "10000000/1s" },
    });
    ws = await server.provision({ users: 2, channels: [{ members: "all" }] });
  });

  after(async () => {
    server?.closeSockets();
    await server?.stop();
  });

  test("a flood of tiny frames does not stall the shard: round trips, /healthz and pings go on", async () => {
    const [attackerUser, honestUser] = ws.users;
    const channelId = ws.channels[0].id;
    const honest = await server.connectUser(honestUser, ws.workspaceId);
    let disconnected = null;
    honest.on("disconnect", (reason) => {
      disconnected = reason;
    });
    const attacker = await rawSocketIo(server, { token: server.jwt(attackerUser.id), workspaceId: ws.workspaceId });
    const watch = rssWatch(server);
    // Engine.IO `3` (a pong) is the smallest valid packet: 7 bytes a frame.
    const frames = Buffer.concat(Array.from({ length: 16_384 }, () => encodeFrame(OP.text, "3")));
    const sock = attacker.t.socket;
    let flooding = true;
    const flood = new Promise((resolve) => {
      let written = 0;
      const pump = () => {
        while (flooding && !sock.destroyed) {
          written += frames.length;
          if (!sock.write(frames)) return;
        }
        resolve(written);
      };
      sock.on("drain", pump);
      sock.on("close", () => resolve(written));
      pump();
    });
    for (let n = 0; n < 15; n++) {
      await roundTrip(honest, channelId, n);
      const health = await server.request("GET", "/healthz", { fresh: true, timeoutMs: 10_000 });
      assert.equal(health.status, 200, "/healthz answers during the flood");
    }
    // Pings go on: the honest client's heartbeat is served while the flood runs.
    await within(new Promise((resolve) => honest.io.engine.once("ping", resolve)), 10_000, "another ping during the flood");
    flooding = false;
    const written = await flood;
    assert.ok(written > 8 * MiB, `the attacker flooded ${(written / MiB).toFixed(1)} MiB`);
    assert.equal(disconnected, null, "the honest client stayed connected");
    assertRss(watch, "tiny-frame flood");
    attacker.t.destroy();
    honest.disconnect();
  });

  test("a stream of pongs is closed (1008) past CHAT_LIMIT_IDLE_PACKETS; the honest client notices nothing", async () => {
    // A server of its own, with the default idle-packet budget.
    const own = await startServer({ shards: 1 });
    try {
      const people = await own.provision({ users: 2, channels: [{ members: "all" }] });
      const honest = await own.connectUser(people.users[1], people.workspaceId);
      let disconnected = null;
      honest.on("disconnect", (reason) => {
        disconnected = reason;
      });
      const attacker = await rawSocketIo(own, { token: own.jwt(people.users[0].id), workspaceId: people.workspaceId });
      const frames = Buffer.concat(Array.from({ length: 1024 }, () => encodeFrame(OP.text, "3")));
      const sock = attacker.t.socket;
      let written = 0;
      // The attacker stops once it has the server's close frame: what it wrote by then is
      // what the server took before closing (after it, the server discards what still
      // comes until the TCP connection ends, which this client's own timing decides).
      let writtenAtClose = null;
      // While the kernel takes every write at once (the server reads as fast), `write`
      // never says "full": yield after each MiB, or this loop alone would run to the end
      // without the client ever reading what the server sent.
      const pump = () => {
        const burstEnd = written + MiB;
        while (!sock.destroyed && written < 64 * MiB) {
          if (attacker.t.closeFrame !== null) {
            writtenAtClose ??= written;
            return;
          }
          written += frames.length;
          if (!sock.write(frames)) return;
          if (written >= burstEnd) {
            setImmediate(pump);
            return;
          }
        }
      };
      sock.on("drain", pump);
      pump();
      const closing = await within(attacker.t.closed, 10_000, "the pong stream's close");
      writtenAtClose ??= written;
      assert.equal(closing?.code, 1008, `closed with ${JSON.stringify(closing)}`);
      assert.match(closing.reason, /carry no event|CHAT_LIMIT_IDLE_PACKETS/);
      assert.ok(
        writtenAtClose < 64 * MiB,
        `closed long before the stream ended (${writtenAtClose} bytes written when the close frame arrived, ${written} in all)`,
      );
      await roundTrip(honest, people.channels[0].id, 0);
      assert.equal(disconnected, null, "the honest client stayed connected");
      honest.disconnect();
    } finally {
      own.closeSockets();
      await own.stop();
    }
  });

  test("pipelined GET /metrics that are never read: reading pauses, memory stays bounded", async () => {
    const watch = rssWatch(server);
    const sock = await tcp(server);
    sock.pause();
    const request = Buffer.from("GET /metrics HTTP/1.1\r\nHost: attacker\r\n\r\n".repeat(1000));
    const written = await writeUntilBlocked(sock, request);
    assert.ok(written < 256 * MiB, "the server stopped reading the requests");
    const health = await server.request("GET", "/healthz", { fresh: true });
    assert.equal(health.status, 200, "others are still served");
    assertRss(watch, "pipelined /metrics");
    sock.destroy();
  });

  test("WebSocket pings from a client that never reads: bounded, and the client is dropped", async () => {
    const watch = rssWatch(server);
    const attacker = await RawWebSocket.connect(server.port, { host: server.host, autoPong: false });
    attacker.pause();
    const ping = encodeFrame(OP.ping, Buffer.alloc(125, 0x61));
    const burst = Buffer.concat(Array.from({ length: 4096 }, () => ping));
    const written = await writeUntilBlocked(attacker.socket, burst);
    assert.ok(written < 256 * MiB, "the server stopped reading the pings");
    const health = await server.request("GET", "/healthz", { fresh: true });
    assert.equal(health.status, 200, "others are still served");
    assertRss(watch, "pings never read");
    // It answers no Engine.IO ping either: it is dropped. Read again to see the end.
    attacker.resume();
    await within(attacker.closed, 30_000, "the non-reading client is dropped");
  });

  test("bytes streamed on a connection holding a long-poll GET are not buffered", async () => {
    const open = await server.request("GET", "/socket.io/?EIO=4&transport=polling", { fresh: true });
    assert.equal(open.status, 200, open.text);
    const sid = JSON.parse(open.text.slice(1)).sid;
    const watch = rssWatch(server);
    const sock = await tcp(server);
    sock.pause();
    sock.write(`GET /socket.io/?EIO=4&transport=polling&sid=${sid} HTTP/1.1\r\nHost: attacker\r\n\r\n`);
    const closed = new Promise((resolve) => sock.on("close", resolve));
    sock.on("error", () => {});
    // The server stops reading behind the held GET; once a ping answers it, the junk is a
    // bad request: a 400, then what still comes is drained for a moment and the
    // connection ends. Either way nothing is kept.
    const junk = Buffer.alloc(256 * 1024, 0x41);
    await writeUntilBlocked(sock, junk, { maxBytes: 64 * MiB });
    const health = await server.request("GET", "/healthz", { fresh: true });
    assert.equal(health.status, 200, "others are still served");
    assertRss(watch, "bytes behind a long-poll GET");
    sock.resume();
    await within(closed, 15_000, "the server ends the connection");
  });

  test("a peer that keeps sending after its 400 is cut after a bounded discard, not at the end of the close grace", async () => {
    const sock = net.connect(server.port, server.host);
    sock.on("error", () => {});
    await new Promise((resolve) => sock.once("connect", resolve));
    const closed = new Promise((resolve) => sock.once("close", resolve));
    sock.write("NOT HTTP\r\n\r\n");
    // The server answers 400 and closes; what comes after is read and thrown away, up to
    // 16 MiB (src/shard/connection.rs, MAX_DISCARD), not for the whole 2 s grace at
    // loopback speed.
    const junk = Buffer.alloc(256 * 1024, 0x41);
    const written = await writeUntilBlocked(sock, junk, { maxBytes: 512 * MiB, stallMs: 10_000 });
    assert.ok(written < 64 * MiB, `the server read ${(written / MiB).toFixed(0)} MiB of a closing connection's input`);
    await within(closed, 15_000, "the connection ends");
    const health = await server.request("GET", "/healthz", { fresh: true });
    assert.equal(health.status, 200, "others are still served");
  });

  test("a 1-3 MB POST from Node's http client gets its 413", async () => {
    const watch = rssWatch(server);
    for (const mb of [1, 2, 3, 1, 2, 3]) {
      const body = Buffer.alloc(mb * MiB + 1, 0x78);
      const answer = await new Promise((resolve, reject) => {
        const req = http.request(
          {
            host: server.host,
            port: server.port,
            method: "POST",
            path: "/api/v1/messages",
            agent: false,
            headers: {
              authorization: `Bearer ${server.adminToken}`,
              "content-type": "application/json",
              "content-length": body.length,
            },
          },
          (res) => {
            let text = "";
            res.setEncoding("utf8");
            res.on("data", (c) => (text += c));
            res.on("end", () => resolve({ status: res.statusCode, text }));
          },
        );
        req.setTimeout(15_000, () => req.destroy(new Error("no answer within 15 s")));
        req.on("error", reject);
        req.end(body);
      });
      assert.equal(answer.status, 413, `${mb} MB: ${answer.text}`);
      assert.match(JSON.parse(answer.text).error, /CHAT_MAX_PAYLOAD|bytes/, "the error names the limit");
    }
    assertRss(watch, "large POSTs");
  });

  test("HEAD on /healthz and /metrics, and Allow on 405", async () => {
    for (const path of ["/healthz", "/metrics"]) {
      const head = await server.request("HEAD", path, { fresh: true });
      assert.equal(head.status, 200, path);
      assert.equal(head.text, "", `${path}: no body`);
      assert.ok(Number(head.headers["content-length"]) > 0, `${path}: the length of the GET body`);
      const post = await server.request("POST", path, { fresh: true });
      assert.equal(post.status, 405, path);
      assert.equal(post.headers.allow, "GET, HEAD", path);
    }
    const wrong = await server.request("GET", "/api/v1/users", { fresh: true, headers: { authorization: `Bearer ${server.adminToken}` } });
    assert.equal(wrong.status, 405);
    assert.equal(wrong.headers.allow, "POST");
  });
});
