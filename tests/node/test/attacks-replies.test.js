// Replies bigger than a client's queue may hold (issue 11, the shard half): a history page of
// long messages, a recovery that missed more than one replay may carry, and a sender of
// 16 KB messages. None of them drops the asker, and the server's memory stays under a
// stated bound (RSS from /proc/<pid>/status).

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { collect, emitWithAck, once, pool, startServer } from "../lib/server.js";

const MiB = 1024 * 1024;
// 3,990 emoji: some 16 KB of UTF-8, near the 4,000 characters CHAT_MAX_MESSAGE_CHARS allows
// (each message gets a short numbered prefix).
const LONG = "\u{1F600}".repeat(3990);

/** Reads every message of a channel with `message:history`, page by page in `direction`
 * ("after": from the start; "before": from the end), following `hasMore`. */
async function readAll(socket, channelId, direction, { from = 0, limit = 100 } = {}) {
  const all = [];
  let cursor = direction === "after" ? from : undefined;
  for (let pages = 0; pages < 1000; pages++) {
    const query = { targetId: channelId, targetType: "channel", limit };
    if (direction === "after") query.afterSequence = cursor;
    else if (cursor !== undefined) query.beforeSequence = cursor;
    const page = await emitWithAck(socket, "message:history", query, 15_000);
    assert.equal(page.success, true, JSON.stringify(page).slice(0, 200));
    assert.equal(typeof page.hasMore, "boolean", "every page says whether there is more");
    const seqs = page.messages.map((m) => m.sequence);
    if (direction === "after") {
      all.push(...page.messages);
      if (seqs.length) cursor = seqs[seqs.length - 1];
    } else {
      all.unshift(...page.messages);
      if (seqs.length) cursor = seqs[0];
    }
    if (!page.hasMore) return { all, pages: pages + 1 };
    assert.ok(page.messages.length > 0, "a page with more to come is not empty");
  }
  throw new Error("more than 1000 pages");
}

async function sendAll(server, socket, channelId, count, content) {
  const acks = await pool(Array.from({ length: count }, (_, i) => i), 8, (i) =>
    emitWithAck(socket, "message:send", { targetId: channelId, targetType: "channel", content: `${i} ${content}` }, 20_000),
  );
  for (const ack of acks) assert.equal(ack.success, true, JSON.stringify(ack));
  return acks;
}

describe("replies bigger than a frame budget", { timeout: 240_000 }, () => {
  let server;
  let ws;

  before(async () => {
    server = await startServer({ shards: 2 });
    ws = await server.provision({ users: 2, channels: [{ members: "all" }, { members: "all" }] });
  });

  after(async () => {
    server?.closeSockets();
    await server?.stop();
  });

  test("a history page of long messages is capped by bytes, says hasMore, and never drops the reader", async () => {
    const channelId = ws.channels[0].id;
    const sender = await server.connectUser(ws.users[0], ws.workspaceId);
    // 100 x 16 KB: 1.6 MB, over the 1 MiB queue bound if sent as one page.
    await sendAll(server, sender, channelId, 100, LONG);
    const reader = await server.connectUser(ws.users[1], ws.workspaceId);
    let dropped = null;
    reader.on("disconnect", (reason) => {
      dropped = reason;
    });
    const rssBefore = server.rssBytes();
    const first = await emitWithAck(reader, "message:history", { targetId: channelId, targetType: "channel", limit: 100 }, 15_000);
    assert.equal(first.success, true);
    assert.ok(first.messages.length > 0 && first.messages.length < 100, `one page holds part: ${first.messages.length}`);
    assert.equal(first.hasMore, true);
    assert.equal(first.messages[first.messages.length - 1].sequence, 100, "the newest page keeps the newest");
    for (const direction of ["before", "after"]) {
      const { all, pages } = await readAll(reader, channelId, direction);
      assert.deepEqual(
        all.map((m) => m.sequence),
        Array.from({ length: 100 }, (_, i) => i + 1),
        `${direction}: every message once, in order, over ${pages} pages`,
      );
      assert.ok(pages > 1, `${direction}: more than one page`);
    }
    assert.equal(dropped, null, "the reader stayed connected");
    assert.ok(server.rssBytes() - rssBefore < 64 * MiB, "reading history holds no memory back");
    sender.disconnect();
    reader.disconnect();
  });

  test("a recovery that missed more than 1 MiB ends in a clean new session, and history fills the gap", async () => {
    const channelId = ws.channels[1].id;
    const sender = await server.connectUser(ws.users[0], ws.workspaceId);
    const client = await server.connectUser(ws.users[1], ws.workspaceId);
    const inbox = collect(client, "message:new");
    const first = await emitWithAck(sender, "message:send", { targetId: channelId, targetType: "channel", content: "before" });
    await inbox.until(1);
    const disconnected = once(client, "disconnect");
    client.io.engine.close();
    await disconnected;
    // 80 x 16 KB missed: 1.3 MB, more than one replay may carry.
    const missed = await sendAll(server, sender, channelId, 80, LONG);
    const reconnected = once(client, "connect", 10_000);
    client.connect();
    await reconnected;
    assert.equal(client.recovered, false, "a new session rather than a replay that would drop it");
    const { all } = await readAll(client, channelId, "after", { from: first.sequence });
    assert.deepEqual(
      all.map((m) => m.id),
      missed.map((a) => a.messageId),
      "history brings every missed message",
    );
    const live = await emitWithAck(sender, "message:send", { targetId: channelId, targetType: "channel", content: "live" });
    await inbox.until((msgs) => msgs.some((m) => m.id === live.messageId));
    assert.equal(client.connected, true, "still connected");
    sender.disconnect();
    client.disconnect();
  });
});

describe("a sender of 16 KB messages", { timeout: 240_000 }, () => {
  // The embedded store keeps every message (64 MB of content here); what the node keeps
  // besides is bounded: the recovery log (4 MiB a shard here) and the outbound queues.
  // Measured: 77 MiB at the peak; 148 MiB before the log was bounded in bytes.
  const COUNT = 4000;
  const RSS_LIMIT = 110 * MiB;
  let server;

  before(async () => {
    // The send budget is lifted: memory is under test here, not the per-socket budget.
    server = await startServer({
      shards: 2,
      env: { CHAT_RECOVERY_LOG_BYTES: String(4 * MiB), CHAT_LIMIT_SENDS: "1000000/1s" },
    });
  });

  after(async () => {
    server?.closeSockets();
    await server?.stop();
  });

  test("memory stays bounded while it sends, and honest readers get everything", async () => {
    const w = await server.provision({ users: 2, channels: [{ members: "all" }] });
    const channelId = w.channels[0].id;
    const sender = await server.connectUser(w.users[0], w.workspaceId);
    const reader = await server.connectUser(w.users[1], w.workspaceId);
    const inbox = collect(reader, "message:new");
    let peak = server.rssBytes();
    for (let done = 0; done < COUNT; done += 200) {
      await sendAll(server, sender, channelId, 200, LONG);
      peak = Math.max(peak, server.rssBytes());
    }
    await inbox.until(COUNT, 120_000);
    assert.equal(inbox.length, COUNT, "the reader got every message once");
    peak = Math.max(peak, server.rssBytes());
    assert.ok(peak < RSS_LIMIT, `server RSS peaked at ${(peak / MiB).toFixed(1)} MiB (limit ${RSS_LIMIT / MiB} MiB)`);
    sender.disconnect();
    reader.disconnect();
  });
});
