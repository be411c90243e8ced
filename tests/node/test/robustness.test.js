// Contract §1: malformed input gets an `error` event or a close, never a crash or a hang.
// After every case the server must still answer /healthz and carry a normal conversation.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";

import { OP, rawSocketIo, tcpExchange } from "../lib/raw.js";
import { emitWithAck, once, startServer, within } from "../lib/server.js";

const MAX_PAYLOAD = 100_000;
const REQUEST_TIMEOUT = 500;

describe("robustness", { timeout: 120_000 }, () => {
  let server;
  let ws;

  before(async () => {
    server = await startServer({
      env: { CHAT_MAX_PAYLOAD: String(MAX_PAYLOAD), CHAT_REQUEST_TIMEOUT_MS: String(REQUEST_TIMEOUT) },
    });
    ws = await server.provision({ users: 3, channels: [{ members: "all" }] });
  });

  after(async () => {
    server?.closeSockets();
    await server?.stop();
  });

  /** /healthz answers and two fresh clients still talk. */
  async function assertStillServing() {
    const health = await server.request("GET", "/healthz");
    assert.equal(health.status, 200, `healthz: ${health.status} ${health.text}`);
    const a = await server.connectUser(ws.users[0], ws.workspaceId);
    const b = await server.connectUser(ws.users[1], ws.workspaceId);
    try {
      const incoming = once(b, "message:new", 5000);
      const ack = await emitWithAck(a, "message:send", {
        targetId: ws.channels[0].id,
        targetType: "channel",
        content: "still here",
        clientMsgId: randomUUID(),
      });
      assert.equal(ack.success, true, JSON.stringify(ack));
      assert.equal((await incoming).id, ack.messageId);
    } finally {
      a.disconnect();
      b.disconnect();
    }
  }

  /** A raw, authenticated Socket.IO connection (user 2). */
  const rawClient = () =>
    rawSocketIo(server, { token: server.jwt(ws.users[2].id), workspaceId: ws.workspaceId, transport: "net" });

  /**
   * Resolves with what the server did about the last packet: "error" (an `error` event, a
   * failed ack, a CONNECT_ERROR or DISCONNECT packet) or "close"; rejects if it did neither.
   */
  function reaction(raw, since, timeoutMs = 3000) {
    const answered = () => raw.texts.slice(since).find((s) => /^4(2\["error"|3\d*\[\{"success":false|4|1)/.test(s));
    return within(
      new Promise((resolve) => {
        if (answered()) return resolve("error");
        const onText = () => {
          if (answered()) {
            raw.off("text", onText);
            resolve("error");
          }
        };
        raw.on("text", onText);
        raw.closed.then(() => resolve("close"));
      }),
      timeoutMs,
      "an error event or a close",
    );
  }

  const malformed = [
    ["unknown Socket.IO packet type", (raw) => raw.sendText("4garbage")],
    ["truncated event array", (raw) => raw.sendText("42[")],
    ["event that is an object, not an array", (raw) => raw.sendText("42{}")],
    ["event with a non-string name", (raw) => raw.sendText("42[17,{}]")],
    ["ack id that overflows", (raw) => raw.sendText('4299999999999999999999999["message:send",{}]')],
    ["unknown Engine.IO packet type", (raw) => raw.sendText("9")],
    ["empty text frame", (raw) => raw.sendText("")],
    ["invalid UTF-8 in a text frame", (raw) => raw.t.sendFrame(OP.text, Buffer.from([0x34, 0x32, 0xff, 0xfe]))],
    ["binary frame", (raw) => raw.t.sendBinary(Buffer.from([1, 2, 3, 4]))],
    ["binary-event packet (unsupported attachments)", (raw) => raw.sendText('451-["message:send",{"_placeholder":true,"num":0}]')],
    ["unmasked client frame", (raw) => raw.t.sendFrame(OP.text, "42[\"x\"]", { mask: false })],
    ["reserved opcode", (raw) => raw.t.sendFrame(0x3, "x")],
  ];

  for (const [name, send] of malformed) {
    test(`malformed: ${name}`, async () => {
      const raw = await rawClient();
      try {
        const since = raw.texts.length;
        send(raw);
        const what = await reaction(raw, since);
        assert.ok(what === "error" || what === "close");
      } finally {
        raw.t.destroy();
      }
      await assertStillServing();
    });
  }

  test("a text frame over CHAT_MAX_PAYLOAD is closed", async () => {
    const raw = await rawClient();
    try {
      const content = "y".repeat(MAX_PAYLOAD + 50_000);
      raw.emitEvent("message:send", { targetId: ws.channels[0].id, targetType: "channel", content });
      await within(raw.closed, 5000, "close after an oversized frame");
    } finally {
      raw.t.destroy();
    }
    await assertStillServing();
  });

  test("a frame header announcing a terabyte is closed without waiting for the body", async () => {
    const raw = await rawClient();
    try {
      const head = Buffer.alloc(14);
      head[0] = 0x81; // FIN + text
      head[1] = 0x80 | 127; // masked, 64-bit length
      head.writeBigUInt64BE(1n << 40n, 2);
      raw.t.socket.write(head); // mask key included (zeros); no payload follows
      await within(raw.closed, 5000, "close after an absurd length");
    } finally {
      raw.t.destroy();
    }
    await assertStillServing();
  });

  test("non-HTTP bytes on the port are closed", async () => {
    const garbage = Buffer.concat([Buffer.from([0x16, 0x03, 0x01, 0x00, 0xff, 0x00]), Buffer.from("\r\nnot http at all\r\n\r\n")]);
    const { data } = await tcpExchange(server.port, garbage, { host: server.host, timeoutMs: 5000 });
    const text = data.toString("latin1");
    assert.ok(text === "" || /^HTTP\/1\.[01] 4\d\d/.test(text), `answer, if any, is a 4xx: ${JSON.stringify(text.slice(0, 80))}`);
    await assertStillServing();
  });

  test(`a half-sent request head is cut off after CHAT_REQUEST_TIMEOUT_MS (${REQUEST_TIMEOUT} ms)`, async () => {
    const start = Date.now();
    await tcpExchange(server.port, "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1\r\n", {
      host: server.host,
      timeoutMs: REQUEST_TIMEOUT + 5000,
    });
    const elapsed = Date.now() - start;
    assert.ok(elapsed >= REQUEST_TIMEOUT * 0.8, `closed after ${elapsed} ms: too early`);
    await assertStillServing();
  });

  test("a connection that sends nothing is cut off too", async () => {
    await tcpExchange(server.port, null, { host: server.host, timeoutMs: REQUEST_TIMEOUT + 5000 });
    await assertStillServing();
  });

  test("a request head over the header limit gets 431", async () => {
    const head = `GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Filler: ${"h".repeat(12_000)}\r\n\r\n`;
    const { data } = await tcpExchange(server.port, head, { host: server.host, timeoutMs: 5000 });
    assert.match(data.toString("latin1"), /^HTTP\/1\.1 431/);
    await assertStillServing();
  });

  test("an unknown event with an ack gets {success: false, error}", async () => {
    const socket = await server.connectUser(ws.users[0], ws.workspaceId);
    try {
      const ack = await emitWithAck(socket, "no:such:event", { x: 1 });
      assert.equal(ack.success, false);
      assert.equal(typeof ack.error, "string");
      assert.ok(ack.error.length > 0);
      assert.equal(socket.connected, true, "connection stays open");
    } finally {
      socket.disconnect();
    }
    await assertStillServing();
  });

  test("a known event with data of the wrong shape gets {success: false, error}", async () => {
    const socket = await server.connectUser(ws.users[0], ws.workspaceId);
    try {
      for (const bad of ["just a string", { targetId: 5 }, { targetId: ws.channels[0].id, targetType: "channel" }, null]) {
        const ack = await emitWithAck(socket, "message:send", bad);
        assert.equal(ack.success, false, `ack for ${JSON.stringify(bad)}: ${JSON.stringify(ack)}`);
        assert.equal(typeof ack.error, "string");
      }
      assert.equal(socket.connected, true);
    } finally {
      socket.disconnect();
    }
    await assertStillServing();
  });

  test("an unknown event without an ack gets an error event; the socket stays", async () => {
    const socket = await server.connectUser(ws.users[0], ws.workspaceId);
    try {
      const err = once(socket, "error", 3000);
      socket.emit("no:such:event", { x: 1 });
      const data = await err;
      assert.equal(typeof data?.message, "string", `error event data: ${JSON.stringify(data)}`);
      assert.equal(socket.connected, true);
    } finally {
      socket.disconnect();
    }
    await assertStillServing();
  });
});
