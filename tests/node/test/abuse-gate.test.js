// Contract §2 (a cookie counts only from an allowed origin) and the connection limits:
// what a cross-site page or one greedy address can and cannot do.

import assert from "node:assert/strict";
import net from "node:net";
import { after, before, describe, test } from "node:test";

import { tcpExchange } from "../lib/raw.js";
import { emitWithAck, startServer, sumMetric } from "../lib/server.js";

const ALLOWED = "https://app.example";

describe("cookies only from allowed origins", { timeout: 60_000 }, () => {
  let server;
  let ws;
  let alice;

  before(async () => {
    server = await startServer({ shards: 2, env: { CHAT_CORS_ORIGINS: ALLOWED } });
    ws = await server.provision({ users: 1, channels: [{ members: "all" }] });
    alice = ws.users[0];
  });

  after(async () => {
    server?.closeSockets();
    await server?.stop();
  });

  const withCookie = async (origin) => {
    const { token } = await server.session(alice.id);
    const headers = { cookie: `better-auth.session_token=${token}` };
    if (origin) headers.origin = origin;
    return server.tryConnect({ workspaceId: ws.workspaceId, extraHeaders: headers });
  };

  test("the victim's cookie from https://evil.example is not used", async () => {
    const { socket, error } = await withCookie("https://evil.example");
    assert.ok(error, "refused");
    assert.match(error.message, /origin https:\/\/evil\.example, which is not in CHAT_CORS_ORIGINS/);
    assert.equal(socket.connected, false);
    socket.disconnect();
  });

  test("the cookie from the allowed origin, or from a client without Origin, is used", async () => {
    for (const origin of [ALLOWED, undefined]) {
      const { socket, error } = await withCookie(origin);
      assert.equal(error, null, `origin ${origin}: ${error?.message}`);
      const ack = await emitWithAck(socket, "message:send", {
        targetId: ws.channels[0].id,
        targetType: "channel",
        content: `from ${origin ?? "no origin"}`,
      });
      assert.equal(ack.success, true);
      socket.disconnect();
    }
  });

  test("a token in the CONNECT payload is unaffected by the origin", async () => {
    const socket = await server.connect({
      token: server.jwt(alice.id),
      workspaceId: ws.workspaceId,
      extraHeaders: { origin: "https://evil.example" },
    });
    assert.ok(socket.connected);
    socket.disconnect();
  });
});

describe("connection limits", { timeout: 60_000 }, () => {
  const PER_ADDRESS = 4;
  let server;

  before(async () => {
    server = await startServer({
      shards: 2,
      env: {
        CHAT_MAX_CONNECTIONS_PER_ADDRESS: String(PER_ADDRESS),
        CHAT_LIMIT_ADDRESS_SOCKETS: "3/3600s",
        CHAT_LIMIT_LOOPBACK: "1",
      },
    });
  });

  after(async () => {
    await server?.stop();
  });

  /** A keep-alive connection that got one /healthz answer (so the server counts it). */
  const hold = () =>
    new Promise((resolve, reject) => {
      const sock = net.connect({ host: "127.0.0.1", port: server.port });
      sock.once("error", reject);
      sock.once("data", (d) => {
        assert.match(d.toString(), /^HTTP\/1\.1 200/);
        resolve(sock);
      });
      sock.write("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    });

  test("one address gets PER_ADDRESS connections; the next is refused with a 503 naming the limit", async () => {
    const held = [];
    for (let i = 0; i < PER_ADDRESS; i++) held.push(await hold());
    const { data } = await tcpExchange(server.port, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    const text = data.toString();
    assert.match(text, /^HTTP\/1\.1 503/);
    assert.match(text, /CHAT_MAX_CONNECTIONS_PER_ADDRESS/);
    // One closes: there is room again.
    held.pop().destroy();
    const again = await (async () => {
      for (;;) {
        const { data: d } = await tcpExchange(server.port, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        if (/^HTTP\/1\.1 200/.test(d.toString())) return d.toString();
        // The close may not have reached the server yet: an event to wait for is the 503.
      }
    })();
    assert.match(again, /"status":"ok"/);
    for (const s of held) s.destroy();
    const metrics = await (async () => {
      for (;;) {
        const { data: d } = await tcpExchange(server.port, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        if (/^HTTP\/1\.1 200/.test(d.toString())) return d.toString();
        // The closes may not have reached the server yet: the 503 is the event to wait for.
      }
    })();
    assert.ok(sumMetric(metrics, "ocomms_connections_refused_total") >= 1);
  });

  test("one address opens a bounded number of sockets; the next handshake gets a 429", async () => {
    const handshake = "GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    for (let i = 0; i < 3; i++) {
      const { data } = await tcpExchange(server.port, handshake);
      assert.match(data.toString(), /^HTTP\/1\.1 200/, `handshake ${i}`);
    }
    const { data } = await tcpExchange(server.port, handshake);
    assert.match(data.toString(), /^HTTP\/1\.1 429/);
    assert.match(data.toString(), /CHAT_LIMIT_ADDRESS_SOCKETS/);
  });
});
