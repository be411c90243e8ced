// Contract §3–§5 chat semantics on one node: ordering under concurrent senders on every
// shard, idempotent retries, deletes and tombstones, history paging, DMs, and membership
// changes made through the admin API reaching live sockets.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";

import { checkMessageShape, collect, emitWithAck, once, pool, startServer } from "../lib/server.js";

/** The shard that owns a socket: its Engine.IO sid starts with the shard number in hex. */
function shardOf(socket) {
  const sid = socket.io.engine.id;
  return parseInt(sid.slice(0, sid.length - 20), 16);
}

const send = (socket, targetId, content, extra = {}) =>
  emitWithAck(socket, "message:send", { targetId, targetType: "channel", content, ...extra }, 10000);

describe("chat semantics", { timeout: 120_000 }, () => {
  const SHARDS = 4;
  let server;
  let ws;

  before(async () => {
    server = await startServer({ shards: SHARDS });
    ws = await server.provision({
      users: 12,
      channels: [{ members: "all" }, { members: [0, 1, 2] }, { members: [0, 1] }, { members: [0, 1, 2, 3] }],
      conversations: [[0, 1]],
    });
  });

  after(async () => {
    server?.closeSockets();
    await server?.stop();
  });

  test("5 senders on every shard, 40 messages each: every receiver sees 1..200 in order", async () => {
    const channel = ws.channels[0];
    // Connect until the senders cover every shard (the kernel spreads connections).
    const byShard = new Map();
    const spare = [];
    for (let i = 0; i < 60 && (byShard.size < SHARDS || spare.length === 0); i++) {
      const s = await server.connectUser(ws.users[i % 5], ws.workspaceId);
      if (byShard.has(shardOf(s))) spare.push(s);
      else byShard.set(shardOf(s), s);
    }
    const seen = new Set(byShard.keys());
    const senders = [...byShard.values(), spare.shift()];
    for (const s of spare) s.disconnect();
    assert.equal(seen.size, SHARDS, `senders cover every shard (got shards ${[...seen]})`);
    const listeners = await pool(ws.users.slice(5, 9), 4, (u) => server.connectUser(u, ws.workspaceId));
    const receivers = [...senders, ...listeners];
    const inboxes = receivers.map((s) => collect(s, "message:new"));
    const PER = 40;
    const acks = await Promise.all(
      senders.flatMap((s, i) =>
        Array.from({ length: PER }, (_, n) => send(s, channel.id, `s${i}-m${n}`, { clientMsgId: `c-${i}-${n}-${randomUUID()}` })),
      ),
    );
    const total = senders.length * PER;
    assert.ok(acks.every((a) => a.success === true), "every send acked");
    assert.deepEqual(
      acks.map((a) => a.sequence).sort((a, b) => a - b),
      Array.from({ length: total }, (_, i) => i + 1),
      "the acks hold sequences 1..200, each once",
    );
    // Each sender's own messages were sequenced in the order it sent them.
    for (let i = 0; i < senders.length; i++) {
      const own = acks.slice(i * PER, (i + 1) * PER).map((a) => a.sequence);
      assert.deepEqual(own, [...own].sort((a, b) => a - b), `sender ${i} sequenced in send order`);
    }
    await Promise.all(inboxes.map((inbox) => inbox.until(total)));
    for (const [r, inbox] of inboxes.entries()) {
      const seqs = inbox.filter((m) => m.channelId === channel.id).map((m) => m.sequence);
      assert.deepEqual(seqs, Array.from({ length: total }, (_, i) => i + 1), `receiver ${r}: 1..${total} in order`);
    }
    for (const s of receivers) s.disconnect();
  });

  test("a retried clientMsgId returns the original message and delivers it once", async () => {
    const channel = ws.channels[1];
    const [a, b] = await Promise.all([0, 1].map((i) => server.connectUser(ws.users[i], ws.workspaceId)));
    const inbox = collect(b, "message:new");
    const clientMsgId = `retry-${randomUUID()}`;
    const first = await send(a, channel.id, "hello once", { clientMsgId });
    const again = await send(a, channel.id, "hello once", { clientMsgId });
    assert.equal(first.success, true);
    assert.equal(again.messageId, first.messageId);
    assert.equal(again.sequence, first.sequence);
    // A later message proves the earlier deliveries are all in.
    const marker = await send(a, channel.id, "marker");
    await inbox.until(2);
    assert.deepEqual(
      inbox.map((m) => m.id),
      [first.messageId, marker.messageId],
      "the retry produced no second message:new",
    );
    a.disconnect();
    b.disconnect();
  });

  test("only the author deletes; tombstones stay in history; a second delete broadcasts nothing", async () => {
    const channel = ws.channels[2];
    const [author, other] = await Promise.all([0, 1].map((i) => server.connectUser(ws.users[i], ws.workspaceId)));
    const deleted = collect(other, "message:deleted");
    const sent = await send(author, channel.id, "to be deleted");
    const refused = await emitWithAck(other, "message:delete", { messageId: sent.messageId });
    assert.equal(refused.success, false);
    assert.match(refused.error, /author|not allowed|only/i);
    const ok = await emitWithAck(author, "message:delete", { messageId: sent.messageId });
    assert.equal(ok.success, true);
    await deleted.until(1);
    assert.equal(deleted[0].messageId, sent.messageId);
    assert.equal(deleted[0].channelId, channel.id);
    assert.equal(deleted[0].sequence, sent.sequence);
    assert.ok(deleted[0].deletedAt, "deletedAt is set");
    const again = await emitWithAck(author, "message:delete", { messageId: sent.messageId });
    assert.equal(again.success, true, "deleting again succeeds");
    const history = await emitWithAck(author, "message:history", { targetId: channel.id, targetType: "channel" });
    const tomb = history.messages.find((m) => m.id === sent.messageId);
    assert.equal(tomb.content, "");
    assert.ok(tomb.deletedAt);
    // A message after the second delete arrives; no second message:deleted came before it.
    const news = collect(other, "message:new");
    await send(author, channel.id, "after");
    await news.until(1);
    assert.equal(deleted.length, 1, "no second message:deleted");
    author.disconnect();
    other.disconnect();
  });

  test("history pages across 120 messages with before/after/limit, ascending", async () => {
    const channel = ws.channels[3];
    const s = await server.connectUser(ws.users[3], ws.workspaceId);
    for (let i = 1; i <= 120; i++) await send(s, channel.id, `h${i}`);
    const q = (extra) => emitWithAck(s, "message:history", { targetId: channel.id, targetType: "channel", ...extra });
    const seqs = (r) => r.messages.map((m) => m.sequence);
    const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);
    const newest = await q({});
    assert.equal(newest.success, true);
    assert.deepEqual(seqs(newest), range(71, 120), "no cursor: the newest 50, ascending");
    assert.deepEqual(seqs(await q({ beforeSequence: 71, limit: 30 })), range(41, 70));
    assert.deepEqual(seqs(await q({ afterSequence: 100, limit: 10 })), range(101, 110));
    assert.deepEqual(seqs(await q({ limit: 500 })), range(21, 120), "limit over 100 is capped");
    let cursor = Infinity;
    const all = [];
    for (;;) {
      const page = await q(cursor === Infinity ? { limit: 45 } : { beforeSequence: cursor, limit: 45 });
      if (page.messages.length === 0) break;
      all.unshift(...seqs(page));
      cursor = page.messages[0].sequence;
    }
    assert.deepEqual(all, range(1, 120), "paging back reaches every message exactly once");
    const bad = await q({ limit: 0 });
    assert.equal(bad.success, false);
    s.disconnect();
  });

  test("DMs use the same paths as channels", async () => {
    const dm = ws.conversations[0];
    const [a, b, c] = await Promise.all([0, 1, 2].map((i) => server.connectUser(ws.users[i], ws.workspaceId)));
    const inB = collect(b, "message:new");
    const inC = collect(c, "message:new");
    const ack = await emitWithAck(a, "message:send", { targetId: dm.id, targetType: "dm", content: "psst" });
    assert.equal(ack.success, true);
    assert.equal(ack.sequence, 1);
    await inB.until(1);
    checkMessageShape(assert, inB[0], { content: "psst", authorId: ws.users[0].id, conversationId: dm.id });
    const refused = await emitWithAck(c, "message:send", { targetId: dm.id, targetType: "dm", content: "me too" });
    assert.equal(refused.success, false, "a non-participant cannot send to the DM");
    // c is in channel 0 with a: a marker there shows c got nothing from the DM before it.
    await send(a, ws.channels[0].id, "marker");
    await inC.until(1);
    assert.ok(inC.every((m) => m.conversationId !== dm.id), "a non-participant receives nothing of the DM");
    for (const s of [a, b, c]) s.disconnect();
  });

  test("admin API membership changes reach live sockets", async () => {
    const { id: channelId } = await server.adminOk("POST", "/api/v1/channels", {
      workspaceId: ws.workspaceId,
      slug: `live-${randomUUID().slice(0, 8)}`,
      name: "live",
    });
    const [a, b] = await Promise.all([0, 4].map((i) => server.connectUser(ws.users[i], ws.workspaceId)));
    await server.adminOk("POST", `/api/v1/channels/${channelId}/members`, { userId: ws.users[0].id });
    const inB = collect(b, "message:new");
    // b joins while connected and receives without reconnecting.
    await server.adminOk("POST", `/api/v1/channels/${channelId}/members`, { userId: ws.users[4].id });
    const first = await send(a, channelId, "welcome");
    assert.equal(first.success, true);
    await inB.until(1);
    assert.equal(inB[0].id, first.messageId);
    // Removed: nothing more reaches b, and b can no longer send there.
    const removed = await server.admin("DELETE", `/api/v1/channels/${channelId}/members/${ws.users[4].id}`);
    assert.equal(removed.status, 200);
    await send(a, channelId, "after removal");
    const refused = await send(b, channelId, "still here?");
    assert.equal(refused.success, false);
    await send(a, ws.channels[0].id, "marker in a shared channel");
    await inB.until(2);
    assert.deepEqual(
      inB.map((m) => m.content),
      ["welcome", "marker in a shared channel"],
      "the removed member received nothing more from the channel",
    );
    // A new DM reaches its participants' live sockets.
    const { id: dmId } = await server.adminOk("POST", "/api/v1/conversations", {
      workspaceId: ws.workspaceId,
      participantIds: [ws.users[0].id, ws.users[4].id],
    });
    const dmAck = await emitWithAck(a, "message:send", { targetId: dmId, targetType: "dm", content: "new dm" });
    assert.equal(dmAck.success, true);
    await inB.until(3);
    assert.equal(inB[2].conversationId, dmId);
    a.disconnect();
    b.disconnect();
  });

  test("room:leave stops delivery, room:join brings it back, joining a foreign room is refused", async () => {
    const channel = ws.channels[1]; // members 0, 1, 2
    const [a, b] = await Promise.all([0, 1].map((i) => server.connectUser(ws.users[i], ws.workspaceId)));
    const outsider = await server.connectUser(ws.users[9], ws.workspaceId);
    const inB = collect(b, "message:new");
    const left = await emitWithAck(b, "room:leave", { roomId: channel.id, roomType: "channel" });
    assert.equal(left.success, true);
    await send(a, channel.id, "while b is away");
    const joined = await emitWithAck(b, "room:join", { roomId: channel.id, roomType: "channel" });
    assert.equal(joined.success, true);
    const back = await send(a, channel.id, "b is back");
    await inB.until(1);
    assert.deepEqual(inB.map((m) => m.id), [back.messageId]);
    const refused = await emitWithAck(outsider, "room:join", { roomId: channel.id, roomType: "channel" });
    assert.equal(refused.success, false);
    assert.ok(refused.error, "the refusal says why");
    for (const s of [a, b, outsider]) s.disconnect();
  });

  test("bad requests get a clear refusal and the connection stays usable", async () => {
    const s = await server.connectUser(ws.users[0], ws.workspaceId);
    const cases = [
      [{ targetId: ws.channels[0].id, targetType: "channel", content: "   " }, /empty|blank|whitespace/i],
      [{ targetId: ws.channels[0].id, targetType: "channel", content: "x".repeat(4001) }, /4000|long/i],
      [{ targetId: ws.channels[0].id, targetType: "group", content: "x" }, /targetType/],
      [{ targetId: "not-a-uuid", targetType: "channel", content: "x" }, /targetId/],
      [{ targetId: randomUUID(), targetType: "channel", content: "x" }, /./],
      ["just a string", /object/],
    ];
    for (const [data, why] of cases) {
      const ack = await emitWithAck(s, "message:send", data);
      assert.equal(ack.success, false, JSON.stringify(data).slice(0, 80));
      assert.match(ack.error, why);
    }
    const errorEvent = once(s, "error");
    s.emit("message:send", { nope: true });
    assert.match((await errorEvent).message, /targetId|missing/);
    const ok = await send(s, ws.channels[0].id, "still works");
    assert.equal(ok.success, true);
    s.disconnect();
  });
});
