// Contract §1 heartbeat: the server pings every pingInterval; a client silent past
// pingInterval + pingTimeout is dropped, one that pongs stays.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { rawSocketIo } from "../lib/raw.js";
import { once, startServer, within } from "../lib/server.js";

const INTERVAL = 300;
const TIMEOUT = 300;

describe("heartbeat", { timeout: 60_000 }, () => {
  let server;
  let ws;

  before(async () => {
    server = await startServer({
      env: { CHAT_PING_INTERVAL_MS: String(INTERVAL), CHAT_PING_TIMEOUT_MS: String(TIMEOUT) },
    });
    ws = await server.provision({ users: 2, channels: [{ members: "all" }] });
  });

  after(async () => {
    server?.closeSockets();
    await server?.stop();
  });

  test("the open packet announces the configured intervals", async () => {
    const raw = await rawSocketIo(server, { token: server.jwt(ws.users[0].id), workspaceId: ws.workspaceId, transport: "ws" });
    try {
      assert.equal(raw.open.pingInterval, INTERVAL);
      assert.equal(raw.open.pingTimeout, TIMEOUT);
      assert.equal(typeof raw.open.sid, "string");
      assert.ok(Number.isInteger(raw.open.maxPayload), `maxPayload ${raw.open.maxPayload}`);
      assert.equal(typeof raw.connectReply.sid, "string");
    } finally {
      raw.t.destroy();
    }
  });

  test("a well-behaved socket.io-client stays connected across several intervals", async () => {
    const socket = await server.connectUser(ws.users[0], ws.workspaceId);
    let disconnectReason = null;
    socket.on("disconnect", (reason) => {
      disconnectReason = reason;
    });
    // The Manager emits "ping" for each server ping it answers; six of them span > 6 intervals
    // plus timeouts.
    let pings = 0;
    await within(
      new Promise((resolve) => {
        socket.io.on("ping", () => {
          if (++pings === 6) resolve();
        });
      }),
      6 * INTERVAL + 5000,
      "six server pings",
    );
    assert.equal(disconnectReason, null, `disconnected: ${disconnectReason}`);
    assert.equal(socket.connected, true);
    socket.disconnect();
  });

  test("a raw client that never answers pings is closed by the server", async () => {
    const raw = await rawSocketIo(server, {
      token: server.jwt(ws.users[1].id),
      workspaceId: ws.workspaceId,
      answerPings: false,
      transport: "ws",
    });
    const start = Date.now();
    try {
      await within(raw.closed, INTERVAL + TIMEOUT + 5000, "server closes the silent client");
      const elapsed = Date.now() - start;
      assert.ok(raw.pings >= 1, `the server pinged (${raw.pings} pings) before closing`);
      // Not before the client had its chance: at least about one interval plus the timeout.
      assert.ok(elapsed >= TIMEOUT, `closed after ${elapsed} ms, earlier than pingTimeout`);
    } finally {
      raw.t.destroy();
    }
  });

  test("a raw client that answers pings is kept", async () => {
    const raw = await rawSocketIo(server, { token: server.jwt(ws.users[1].id), workspaceId: ws.workspaceId, transport: "ws" });
    try {
      await within(
        new Promise((resolve) => raw.on("ping", () => raw.pings >= 5 && resolve())),
        5 * INTERVAL + 5000,
        "five pings answered",
      );
      assert.equal(raw.t.isClosed, false, "still open after five answered pings");
    } finally {
      raw.t.destroy();
    }
  });

  test("the server is still serving after dropping a client", async () => {
    const socket = await server.connectUser(ws.users[0], ws.workspaceId);
    const health = await server.request("GET", "/healthz");
    assert.equal(health.status, 200);
    const disconnected = once(socket, "disconnect", 2000);
    socket.disconnect();
    assert.equal(await disconnected, "io client disconnect");
  });
});
