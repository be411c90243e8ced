// Contract §1: with CHAT_TLS_CERT / CHAT_TLS_KEY the same port speaks TLS, and the real
// socket.io-client connects over wss:// and exchanges messages.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";

import { tcpExchange } from "../lib/raw.js";
import { checkMessageShape, emitWithAck, once, startServer } from "../lib/server.js";

describe("TLS", { timeout: 60_000 }, () => {
  let dir;
  let server;
  let ws;

  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), "ocomms-tls-"));
    const cert = path.join(dir, "cert.pem");
    const key = path.join(dir, "key.pem");
    execFileSync(
      "openssl",
      [
        "req", "-x509", "-newkey", "rsa:2048", "-nodes",
        "-keyout", key, "-out", cert,
        "-subj", "/CN=localhost",
        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        "-days", "1",
      ],
      { stdio: ["ignore", "ignore", "pipe"] },
    );
    server = await startServer({
      env: { CHAT_TLS_CERT: cert, CHAT_TLS_KEY: key },
      ca: readFileSync(cert, "utf8"),
    });
    ws = await server.provision({ users: 2, channels: [{ members: "all" }] });
  });

  after(async () => {
    server?.closeSockets();
    await server?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test("admin API and /healthz answer over https", async () => {
    assert.match(server.url, /^https:/);
    const res = await server.request("GET", "/healthz");
    assert.equal(res.status, 200);
  });

  test("a request with Connection: close gets its whole answer over TLS", async () => {
    // The response must be flushed through TLS (and close_notify sent) before the close.
    const res = await server.request("GET", "/healthz", { fresh: true });
    assert.equal(res.status, 200);
    assert.equal(typeof res.json, "object", `body: ${res.text}`);
  });

  test("socket.io-client over wss:// trusting the self-signed CA exchanges a message", async () => {
    const [alice, bob] = ws.users;
    const a = await server.connectUser(alice, ws.workspaceId);
    const b = await server.connectUser(bob, ws.workspaceId);
    const incoming = once(b, "message:new", 5000);
    const ack = await emitWithAck(a, "message:send", {
      targetId: ws.channels[0].id,
      targetType: "channel",
      content: "over TLS",
      clientMsgId: randomUUID(),
    });
    assert.equal(ack.success, true, JSON.stringify(ack));
    const msg = await incoming;
    checkMessageShape(assert, msg, { content: "over TLS", authorId: alice.id, channelId: ws.channels[0].id });
    assert.equal(msg.id, ack.messageId);
    a.disconnect();
    b.disconnect();
  });

  test("a client that does not trust the certificate is refused by its own TLS check", async () => {
    const { socket, error } = await server.tryConnect({
      token: server.jwt(ws.users[0].id),
      workspaceId: ws.workspaceId,
      ca: undefined,
    });
    socket.disconnect();
    assert.ok(error, "an untrusted certificate must fail the connection");
  });

  test("plain HTTP on the TLS port is closed, not served in clear", async () => {
    const { data } = await tcpExchange(server.port, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", { host: server.host });
    assert.doesNotMatch(data.toString("latin1"), /^HTTP\/1\.1 200/, "no clear-text 200 on the TLS port");
  });
});
