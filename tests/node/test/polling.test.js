// Engine.IO long-polling and the upgrade to WebSocket (issue 5), with the real
// socket.io-client. Self-contained: a tiny harness below starts the binary the same way the
// shared harness does (OCOMMS_BIN, CHAT_LISTEN=127.0.0.1:0, wait for `listen=ADDR`).

import { test, before, after, describe } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";

import jsonwebtoken from "jsonwebtoken";
import WebSocket from "ws";
import { io } from "socket.io-client";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const BIN = path.resolve(root, process.env.OCOMMS_BIN ?? "target/release/ocomms-rt");
const ORIGIN = "http://app.example.test";

/** Starts the server; resolves with {url, admin, jwt, stop, metric}. */
async function start(env = {}) {
  const secret = randomBytes(32).toString("hex");
  const adminToken = randomBytes(16).toString("hex");
  const childEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("CHAT_")));
  const child = spawn(BIN, [], {
    env: {
      ...childEnv,
      CHAT_LISTEN: "127.0.0.1:0",
      CHAT_JWT_SECRET: secret,
      CHAT_ADMIN_TOKEN: adminToken,
      CHAT_SHARDS: "2",
      CHAT_CORS_ORIGINS: ORIGIN,
      NO_COLOR: "1",
      RUST_LOG: "info",
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  const addr = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no listen= line:\n${output}`)), 15000);
    const onData = (chunk) => {
      output += chunk.toString();
      const m = /listen=(\d+\.\d+\.\d+\.\d+:\d+)/.exec(output);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.on("exit", (code) => reject(new Error(`server exited (${code}):\n${output}`)));
  });
  const url = `http://${addr}`;
  const admin = async (method, p, body) => {
    const res = await fetch(url + p, {
      method,
      headers: { authorization: `Bearer ${adminToken}`, "content-type": "application/json" },
      body: body && JSON.stringify(body),
    });
    const json = await res.json();
    assert.ok(res.ok, `${method} ${p} -> ${res.status} ${JSON.stringify(json)}`);
    return json;
  };
  const jwt = (sub) => jsonwebtoken.sign({ sub, exp: Math.floor(Date.now() / 1000) + 3600 }, secret);
  const metric = async (name) => {
    const text = await (await fetch(`${url}/metrics`)).text();
    let sum = 0;
    for (const line of text.split("\n")) {
      const m = /^([a-z_]+)(\{[^}]*\})?\s+(\S+)/.exec(line);
      if (m && m[1] === name) sum += Number(m[3]);
    }
    return sum;
  };
  const stop = () => {
    child.kill("SIGKILL");
  };
  return { url, admin, jwt, metric, stop };
}

/** A workspace with `n` users all in one channel. */
async function provision(srv, n) {
  const tag = randomUUID().slice(0, 8);
  const { id: workspaceId } = await srv.admin("POST", "/api/v1/workspaces", { slug: `w-${tag}`, name: tag });
  const users = [];
  for (let i = 0; i < n; i++) {
    const { id } = await srv.admin("POST", "/api/v1/users", { name: `u${i}-${tag}` });
    await srv.admin("POST", `/api/v1/workspaces/${workspaceId}/members`, { userId: id });
    users.push(id);
  }
  const { id: channelId } = await srv.admin("POST", "/api/v1/channels", {
    workspaceId,
    slug: `c-${tag}`,
    name: tag,
    isPrivate: false,
  });
  for (const userId of users) await srv.admin("POST", `/api/v1/channels/${channelId}/members`, { userId });
  return { workspaceId, users, channelId };
}

const sockets = new Set();

/** Connects with socket.io-client; `opts` go to io() as given (default: polling, then upgrade). */
function connect(srv, userId, workspaceId, opts = {}) {
  const socket = io(srv.url, {
    reconnection: false,
    forceNew: true,
    timeout: 5000,
    auth: { token: srv.jwt(userId), workspaceId },
    ...opts,
  });
  sockets.add(socket);
  return new Promise((resolve, reject) => {
    socket.once("connect", () => resolve(socket));
    socket.once("connect_error", (e) => reject(new Error(`connect_error: ${e.message}`)));
  });
}

const upgraded = (socket) =>
  socket.io.engine.transport.name === "websocket"
    ? Promise.resolve()
    : new Promise((resolve) => socket.io.engine.once("upgrade", () => resolve()));

const within = (promise, ms, what) =>
  Promise.race([promise, new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out: ${what}`)), ms))]);

/** A raw HTTP request: resolves {status, headers, body}. */
function raw(url, { method = "GET", headers = {}, body } = {}) {
  // A body always goes with Content-Length: the server takes no chunked bodies.
  return new Promise((resolve, reject) => {
    if (body !== undefined) headers = { ...headers, "content-length": Buffer.byteLength(body) };
    const req = http.request(url, { method, headers, agent: false }, (res) => {
      let data = "";
      res.setEncoding("utf8");
      res.on("data", (c) => (data += c));
      res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, body: data }));
    });
    req.on("error", reject);
    if (body !== undefined) req.write(body);
    req.end();
  });
}

/** Opens a polling session by hand; resolves with its sid and open packet. */
async function handshake(srv, headers = {}) {
  const res = await raw(`${srv.url}/socket.io/?EIO=4&transport=polling`, { headers });
  assert.equal(res.status, 200, res.body);
  assert.equal(res.body[0], "0");
  const open = JSON.parse(res.body.slice(1));
  return { sid: open.sid, open, res };
}

const pollUrl = (srv, sid) => `${srv.url}/socket.io/?EIO=4&transport=polling&sid=${sid}`;

/**
 * A hand-driven Engine.IO client that connects over polling, and upgrades to WebSocket only
 * when `upgrade()` is called (so the test chooses the moment). `seqs` collects the sequence of
 * every message:new, from whichever transport carried it.
 */
async function rawClient(srv, userId, workspaceId) {
  const { sid } = await handshake(srv);
  const seqs = [];
  let socket = null;
  let pausing = false;
  const onPacket = (p) => {
    if (p === "2") {
      if (socket) socket.send("3");
      else raw(pollUrl(srv, sid), { method: "POST", body: "3" });
    } else if (p.startsWith("42")) {
      const [name, data] = JSON.parse(p.slice(2));
      if (name === "message:new") seqs.push(data.sequence);
    }
  };
  await raw(pollUrl(srv, sid), {
    method: "POST",
    body: `40${JSON.stringify({ token: srv.jwt(userId), workspaceId })}`,
  });
  const first = await raw(pollUrl(srv, sid));
  assert.match(first.body, /^40\{"sid"/, first.body);
  for (const p of first.body.split("\x1e").slice(1)) onPacket(p);
  const polling = (async () => {
    while (!pausing) {
      const res = await raw(pollUrl(srv, sid));
      assert.equal(res.status, 200, res.body);
      for (const p of res.body.split("\x1e")) onPacket(p);
    }
  })();
  const upgrade = () =>
    new Promise((resolve, reject) => {
      const ws = new WebSocket(`${srv.url.replace("http", "ws")}/socket.io/?EIO=4&transport=websocket&sid=${sid}`);
      ws.on("error", reject);
      ws.on("open", () => ws.send("2probe"));
      ws.on("message", async (data) => {
        const text = data.toString();
        if (text === "3probe") {
          // Pause polling: the pending GET is released by the server's noop.
          pausing = true;
          await polling;
          socket = ws;
          ws.send("5");
          resolve(seqs.length);
        } else {
          onPacket(text);
        }
      });
    });
  const close = () => socket?.close();
  return { sid, seqs, upgrade, close };
}

describe("long-polling and the upgrade (2 shards)", () => {
  let srv;
  let ws;
  before(async () => {
    srv = await start({ CHAT_PING_INTERVAL_MS: "400", CHAT_PING_TIMEOUT_MS: "400", CHAT_MAX_PAYLOAD: "20000" });
    ws = await provision(srv, 3);
  });
  after(() => {
    for (const s of sockets) s.disconnect();
    srv?.stop();
  });

  test("default options: polling first, then upgrade; send with ack and receive message:new", async () => {
    const a = await connect(srv, ws.users[0], ws.workspaceId);
    const b = await connect(srv, ws.users[1], ws.workspaceId);
    await within(Promise.all([upgraded(a), upgraded(b)]), 5000, "upgrade to websocket");
    assert.equal(a.io.engine.transport.name, "websocket");
    const got = new Promise((resolve) => b.once("message:new", resolve));
    const ack = await a.timeout(5000).emitWithAck("message:send", {
      targetId: ws.channelId,
      targetType: "channel",
      content: "hello after upgrade",
    });
    assert.equal(ack.success, true, JSON.stringify(ack));
    const msg = await within(got, 5000, "message:new");
    assert.equal(msg.content, "hello after upgrade");
    a.disconnect();
    b.disconnect();
  });

  test('transports: ["polling"] alone: ack, message:new both ways, heartbeats keep it alive', async () => {
    const opts = { transports: ["polling"] };
    const a = await connect(srv, ws.users[0], ws.workspaceId, opts);
    const b = await connect(srv, ws.users[1], ws.workspaceId, opts);
    assert.equal(a.io.engine.transport.name, "polling");
    for (const [from, to] of [
      [a, b],
      [b, a],
    ]) {
      const got = new Promise((resolve) => to.once("message:new", resolve));
      const content = `over polling ${randomUUID()}`;
      const ack = await from.timeout(5000).emitWithAck("message:send", {
        targetId: ws.channelId,
        targetType: "channel",
        content,
      });
      assert.equal(ack.success, true, JSON.stringify(ack));
      assert.equal((await within(got, 5000, "message:new")).content, content);
    }
    // Several ping intervals (400 ms) pass: the pongs go by POST and the socket stays.
    await new Promise((r) => setTimeout(r, 1500));
    assert.ok(a.connected && b.connected, "still connected after heartbeats over polling");
    a.disconnect();
    b.disconnect();
  });

  test("a steady stream while clients upgrade arrives exactly once and in order", async () => {
    const sender = await connect(srv, ws.users[0], ws.workspaceId, { transports: ["websocket"] });
    let sending = true;
    let sent = 0;
    const acks = [];
    const pump = (async () => {
      while (sending) {
        acks.push(
          sender.timeout(10000).emitWithAck("message:send", {
            targetId: ws.channelId,
            targetType: "channel",
            content: `n${sent++}`,
          }),
        );
        await new Promise((r) => setTimeout(r, 3));
      }
    })();
    // Several receivers, so some upgrades land on the other shard than their session.
    const receivers = [];
    for (let i = 0; i < 6; i++) {
      const seqs = [];
      const socket = io(srv.url, {
        reconnection: false,
        forceNew: true,
        auth: { token: srv.jwt(ws.users[1 + (i % 2)]), workspaceId: ws.workspaceId },
      });
      sockets.add(socket);
      socket.on("message:new", (m) => seqs.push(m.sequence));
      const up = new Promise((resolve) => socket.io.engine.once("upgrade", () => resolve(seqs.length)));
      receivers.push({ socket, seqs, up });
    }
    const atUpgrade = await within(Promise.all(receivers.map((r) => r.up)), 10000, "all receivers upgrade");
    await new Promise((r) => setTimeout(r, 300));
    sending = false;
    await pump;
    const results = await Promise.all(acks);
    assert.ok(results.every((a) => a.success), "every send acked");
    const last = Math.max(...results.map((a) => a.sequence));
    // Wait until each receiver got the last message.
    await within(
      Promise.all(
        receivers.map(
          (r) =>
            new Promise((resolve) => {
              const check = () => (r.seqs.at(-1) === last ? resolve() : setTimeout(check, 20));
              check();
            }),
        ),
      ),
      5000,
      "receivers get the last message",
    );
    for (const [i, r] of receivers.entries()) {
      assert.ok(r.seqs.length > 0, `receiver ${i} got messages`);
      for (let k = 1; k < r.seqs.length; k++) {
        assert.equal(r.seqs[k], r.seqs[k - 1] + 1, `receiver ${i}: gap or repeat at ${k}: ${r.seqs.slice(k - 2, k + 2)}`);
      }
      assert.equal(r.socket.io.engine.transport.name, "websocket");
    }
    // socket.io-client upgrades within milliseconds of opening, often before the first
    // message: the hand-driven test below chooses the moment instead.
    void atUpgrade;
    for (const r of receivers) r.socket.disconnect();
    sender.disconnect();
  });

  test("upgrading in the middle of a stream: every message once, in order (hand-driven client)", async () => {
    const sender = await connect(srv, ws.users[0], ws.workspaceId, { transports: ["websocket"] });
    const clients = [];
    for (let i = 0; i < 6; i++) clients.push(await rawClient(srv, ws.users[1 + (i % 2)], ws.workspaceId));
    let sending = true;
    let n = 0;
    const acks = [];
    const pump = (async () => {
      while (sending) {
        acks.push(
          sender.timeout(10000).emitWithAck("message:send", {
            targetId: ws.channelId,
            targetType: "channel",
            content: `m${n++}`,
          }),
        );
        await new Promise((r) => setTimeout(r, 2));
      }
    })();
    // Let messages flow over polling, then upgrade every client while they keep coming.
    await within(
      (async () => {
        while (clients.some((c) => c.seqs.length < 10)) await new Promise((r) => setTimeout(r, 10));
      })(),
      5000,
      "messages over polling",
    );
    const atSwitch = await within(Promise.all(clients.map((c) => c.upgrade())), 5000, "upgrades");
    await new Promise((r) => setTimeout(r, 300));
    sending = false;
    await pump;
    const results = await Promise.all(acks);
    assert.ok(results.every((a) => a.success));
    const last = Math.max(...results.map((a) => a.sequence));
    await within(
      Promise.all(
        clients.map(
          (c) =>
            new Promise((resolve) => {
              const check = () => (c.seqs.at(-1) >= last ? resolve() : setTimeout(check, 20));
              check();
            }),
        ),
      ),
      5000,
      `every client gets sequence ${last}`,
    );
    for (const [i, c] of clients.entries()) {
      assert.ok(atSwitch[i] >= 10, "the switch came after messages over polling");
      assert.ok(c.seqs.length > atSwitch[i], "and messages came over the WebSocket after it");
      for (let k = 1; k < c.seqs.length; k++) {
        assert.equal(c.seqs[k], c.seqs[k - 1] + 1, `client ${i}: gap or repeat at ${k} (${c.seqs.slice(Math.max(0, k - 3), k + 2)})`);
      }
      c.close();
    }
    sender.disconnect();
  });

  test("the session token cookie authenticates a polling CONNECT; CORS for an allowed origin", async () => {
    const { token } = await srv.admin("POST", "/api/v1/sessions", { userId: ws.users[2] });
    const headers = { cookie: `better-auth.session_token=${token}`, origin: ORIGIN };
    const { sid, open, res } = await handshake(srv, headers);
    assert.deepEqual(open.upgrades, ["websocket"]);
    assert.equal(open.pingInterval, 400);
    assert.equal(res.headers["access-control-allow-origin"], ORIGIN);
    assert.equal(res.headers["access-control-allow-credentials"], "true");
    assert.match(res.headers["content-type"], /^text\/plain; charset=UTF-8/);
    const post = await raw(pollUrl(srv, sid), {
      method: "POST",
      headers: { ...headers, "content-type": "text/plain;charset=UTF-8" },
      body: `40${JSON.stringify({ workspaceId: ws.workspaceId })}`,
    });
    assert.equal(post.status, 200);
    assert.equal(post.body, "ok");
    const got = await raw(pollUrl(srv, sid), { headers });
    assert.match(got.body, /^40\{"sid":"/, got.body);
    await raw(pollUrl(srv, sid), { method: "POST", body: "1" });

    const pre = await raw(pollUrl(srv, sid), {
      method: "OPTIONS",
      headers: { origin: ORIGIN, "access-control-request-method": "POST" },
    });
    assert.equal(pre.status, 204);
    assert.equal(pre.headers["access-control-allow-origin"], ORIGIN);
    assert.match(pre.headers["access-control-allow-methods"], /POST/);
    const other = await handshake(srv, { origin: "http://evil.example" });
    assert.equal(other.res.headers["access-control-allow-origin"], undefined);
  });

  test("ping over polling: the held GET returns a ping, a POSTed pong keeps the session", async () => {
    const { sid } = await handshake(srv);
    // CONNECT first: an unconnected session is dropped at pingInterval + pingTimeout.
    await raw(pollUrl(srv, sid), {
      method: "POST",
      body: `40${JSON.stringify({ token: srv.jwt(ws.users[0]), workspaceId: ws.workspaceId })}`,
    });
    assert.match((await raw(pollUrl(srv, sid))).body, /^40\{"sid"/);
    // Polls until a ping comes; other packets (presence updates) may come first.
    const nextPing = async () => {
      for (;;) {
        const res = await raw(pollUrl(srv, sid));
        assert.equal(res.status, 200, res.body);
        const packets = res.body.split("\x1e");
        assert.ok(!packets.includes("1"), "the session was not closed");
        if (packets.includes("2")) return;
      }
    };
    const started = Date.now();
    await nextPing();
    assert.ok(Date.now() - started >= 300, "the GET was held until the ping interval");
    const pong = await raw(pollUrl(srv, sid), { method: "POST", body: "3" });
    assert.equal(pong.body, "ok");
    await nextPing(); // still alive: the next ping comes
    await raw(pollUrl(srv, sid), { method: "POST", body: "1" });
  });

  test("error answers: unknown sid, bad transport, bad method, overlapping GET, too large", async () => {
    const unknown = await raw(pollUrl(srv, "0aaaaabbbbbcccccddddd"));
    assert.equal(unknown.status, 400);
    assert.deepEqual(JSON.parse(unknown.body), { code: 1, message: "Session ID unknown" });
    const garbage = await raw(pollUrl(srv, "nope"));
    assert.deepEqual(JSON.parse(garbage.body), { code: 1, message: "Session ID unknown" });

    const transport = await raw(`${srv.url}/socket.io/?EIO=4&transport=carrier-pigeon`);
    assert.equal(transport.status, 400);
    assert.deepEqual(JSON.parse(transport.body), { code: 0, message: "Transport unknown" });

    const method = await raw(`${srv.url}/socket.io/?EIO=4&transport=polling`, { method: "PUT", body: "" });
    assert.equal(method.status, 400);
    assert.equal(JSON.parse(method.body).code, 2);

    const { sid } = await handshake(srv);
    const methodSid = await raw(pollUrl(srv, sid), { method: "DELETE" });
    assert.equal(methodSid.status, 400);
    assert.equal(JSON.parse(methodSid.body).code, 3);

    const first = raw(pollUrl(srv, sid));
    await new Promise((r) => setTimeout(r, 50));
    const second = await raw(pollUrl(srv, sid));
    assert.equal(second.status, 400);
    assert.equal(JSON.parse(second.body).code, 3);
    const released = await within(first, 2000, "the first GET is released");
    assert.equal(released.body.split("\x1e").at(-1), "1", "the session closed");
    const gone = await raw(pollUrl(srv, sid));
    assert.deepEqual(JSON.parse(gone.body), { code: 1, message: "Session ID unknown" });

    const big = await handshake(srv);
    const large = await raw(pollUrl(srv, big.sid), { method: "POST", body: "4" + "x".repeat(30000) });
    assert.equal(large.status, 413);
  });

  test("a polling client that vanishes is cleaned up after the ping timeout", async () => {
    const before = await srv.metric("ocomms_sockets");
    const { sid } = await handshake(srv);
    await raw(pollUrl(srv, sid), {
      method: "POST",
      body: `40${JSON.stringify({ token: srv.jwt(ws.users[0]), workspaceId: ws.workspaceId })}`,
    });
    const accepted = await raw(pollUrl(srv, sid));
    assert.match(accepted.body, /^40\{"sid"/);
    assert.equal(await srv.metric("ocomms_sockets"), before + 1);
    // The client stops polling: no GET takes the ping, no pong comes back.
    const deadline = Date.now() + 5000;
    while ((await srv.metric("ocomms_sockets")) > before) {
      assert.ok(Date.now() < deadline, "the socket is still counted 5 s later");
      await new Promise((r) => setTimeout(r, 100));
    }
    const gone = await raw(pollUrl(srv, sid));
    assert.equal(JSON.parse(gone.body).code, 1);
  });
});
