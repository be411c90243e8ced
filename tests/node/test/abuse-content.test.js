// docs/protocol.md "What content may hold": control characters but tab, line feed and
// carriage return are refused, on a socket and with 400 on the admin API.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { emitWithAck, startServer } from "../lib/server.js";

describe("control characters in content", { timeout: 60_000 }, () => {
  let server;
  let ws;

  before(async () => {
    server = await startServer({ shards: 1 });
    ws = await server.provision({ users: 1, channels: [{ members: "all" }] });
  });

  after(async () => {
    server?.closeSockets();
    await server?.stop();
  });

  test("a socket send with BEL is refused naming it; tab and newlines pass", async () => {
    const socket = await server.connectUser(ws.users[0], ws.workspaceId);
    const target = { targetId: ws.channels[0].id, targetType: "channel" };
    const bad = await emitWithAck(socket, "message:send", { ...target, content: "ding\u0007" });
    assert.equal(bad.success, false);
    assert.match(bad.error, /control character U\+0007 at character 5/);
    const ok = await emitWithAck(socket, "message:send", { ...target, content: "a\tb\r\nc" });
    assert.equal(ok.success, true);
    socket.disconnect();
  });

  test("the admin API answers 400 with the same words", async () => {
    const res = await server.admin("POST", "/api/v1/messages", {
      authorId: ws.users[0].id,
      targetId: ws.channels[0].id,
      targetType: "channel",
      content: "\u001b[2Jcleared",
    });
    assert.equal(res.status, 400, res.text);
    assert.match(JSON.parse(res.text).error, /control character U\+001B at character 1/);
  });
});
