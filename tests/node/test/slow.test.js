// A client that stops reading must not hold back the others nor grow the server's memory:
// once its outbound queue stays past CHAT_MAX_OUTBOUND_BYTES with nothing written (or passes
// 4 times it) it is dropped as a slow consumer.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";

import { rawSocketIo } from "../lib/raw.js";
import { condition, emitWithAck, startServer, within } from "../lib/server.js";

// Far above one window of sends (below), so a healthy reader that the busy test machine
// delays for a moment is never judged slow; only the client that stopped reading passes it.
const MAX_OUTBOUND = 512 * 1024;
const CONTENT = "x".repeat(3000);
// Sends in flight. A burst of WINDOW messages reaches every member at once, so it must stay
// well under MAX_OUTBOUND (8 * ~3 KB = ~25 KB) or a healthy reader could be judged slow.
const WINDOW = 8;
// Kernel socket buffers on loopback can hold several MB before the server's own queue fills;
// 8000 * ~3 KB = ~24 MB is far past any of them.
const MAX_MESSAGES = 8000;
const RSS_LIMIT = 200 * 1024 * 1024;

describe("slow consumer", { timeout: 240_000 }, () => {
  let server;
  let ws;

  before(async () => {
    // The sender sends as fast as acks come back: far over the default send budget.
    server = await startServer({ env: { CHAT_MAX_OUTBOUND_BYTES: String(MAX_OUTBOUND), CHAT_LIMIT_SENDS: "100000/1s" } });
    ws = await server.provision({ users: 4, channels: [{ members: "all" }] });
  });

  after(async () => {
    server?.closeSockets();
    await server?.stop();
  });

  test("a client that stops reading is dropped; the others get every message", async () => {
    const [senderUser, r1, r2, slowUser] = ws.users;
    const channelId = ws.channels[0].id;

    const slow = await rawSocketIo(server, { token: server.jwt(slowUser.id), workspaceId: ws.workspaceId, transport: "net" });
    slow.t.pause();

    const sender = await server.connectUser(senderUser, ws.workspaceId);
    const receivers = [await server.connectUser(r1, ws.workspaceId), await server.connectUser(r2, ws.workspaceId)];
    const got = receivers.map(() => []);
    const acked = [];
    let waiter = null;
    receivers.forEach((s, i) =>
      s.on("message:new", (m) => {
        got[i].push(m);
        waiter?.poke();
      }),
    );

    let sent = 0;
    let maxRss = server.rssBytes();
    const sendWindow = async () => {
      const acks = await Promise.all(
        Array.from({ length: WINDOW }, () =>
          emitWithAck(sender, "message:send", { targetId: channelId, targetType: "channel", content: CONTENT, clientMsgId: randomUUID() }, 20_000),
        ),
      );
      for (const ack of acks) {
        assert.equal(ack.success, true, JSON.stringify(ack));
        acked.push(ack);
      }
      sent += WINDOW;
      maxRss = Math.max(maxRss, server.rssBytes());
    };

    let dropped = 0;
    while (sent < MAX_MESSAGES) {
      await sendWindow();
      dropped = (await server.metric("ocomms_slow_consumers_dropped_total")) ?? 0;
      if (dropped > 0) break;
    }
    assert.ok(dropped > 0, `ocomms_slow_consumers_dropped_total still 0 after ${sent} messages of ${CONTENT.length} chars`);

    // Life goes on for the others after the drop.
    await sendWindow();

    waiter = condition(
      () => got.every((msgs) => msgs.length >= acked.length),
      60_000,
      `both receivers get all ${acked.length} messages`,
    );
    await waiter.promise;
    const ids = acked.map((a) => a.messageId);
    for (const [i, msgs] of got.entries()) {
      assert.equal(msgs.length, acked.length, `receiver ${i}: no duplicates`);
      assert.deepEqual(new Set(msgs.map((m) => m.id)), new Set(ids), `receiver ${i} got every acked message`);
      for (let k = 1; k < msgs.length; k++) assert.ok(msgs[k].sequence > msgs[k - 1].sequence, `receiver ${i} in order`);
    }

    // The drop is visible to the slow client once it reads again: what was in flight, then
    // the end of the connection.
    slow.t.resume();
    await within(slow.closed, 15_000, "the slow client's connection ends");

    maxRss = Math.max(maxRss, server.rssBytes());
    assert.ok(maxRss < RSS_LIMIT, `server RSS peaked at ${(maxRss / 1048576).toFixed(1)} MB (limit ${RSS_LIMIT / 1048576} MB)`);
    assert.equal(sender.connected && receivers.every((s) => s.connected), true, "the other clients stayed connected");
  });
});
