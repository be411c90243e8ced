// Connection state recovery across nodes: a socket.io-client whose transport is cut on one
// node and that reconnects to another, with its pid and offset, is recovered
// (socket.recovered), gets every missed message:new of its rooms in order, nothing twice,
// then the live ones; a membership removed while it was away stays removed. Three real
// nodes over a private redis-server and one PostgreSQL database (see lib/cluster.js).

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";

import { startCluster } from "../lib/cluster.js";
import { collect, emitWithAck, once } from "../lib/server.js";

const send = (socket, targetId, content) =>
  emitWithAck(socket, "message:send", { targetId, targetType: "channel", content, clientMsgId: randomUUID() }, 15000);

/** The contents `inbox` (message:new payloads) holds for `channel`, in arrival order. */
const contents = (inbox, channel) => inbox.filter((m) => m.channelId === channel).map((m) => m.content);

/** 3,990 emoji: about 16 KB a message. */
const LONG = "\u{1F600}".repeat(3990);

/** Cuts the client's transport without a goodbye and waits for its disconnect. */
async function cut(client) {
  const disconnected = once(client, "disconnect");
  client.io.engine.close();
  await disconnected;
}

/** Reconnects `client` (same pid and offset) to `node` and waits for its connect. */
async function reconnectTo(client, node) {
  client.io.uri = node.url;
  const reconnected = once(client, "connect", 8000);
  client.connect();
  await reconnected;
}

describe("cluster: connection state recovery on another node", { timeout: 120_000 }, () => {
  let cluster;
  before(async () => {
    cluster = await startCluster({ nodes: 3, shards: 2 });
  });
  after(async () => {
    await cluster?.stop();
  });

  test("a client cut on node A reconnects to node B, then to C: recovered each time, every missed message once, in order, then live ones", async () => {
    const [a, b, c] = cluster.nodes;
    const ws = await cluster.provision({ users: 3, channels: [{ members: "all" }, { members: "all" }] });
    const [one, two] = ws.channels.map((ch) => ch.id);
    const sender = await c.connectUser(ws.users[0], ws.workspaceId);
    // Node B already streams channel one (a member there), not channel two.
    const observer = await b.connectUser(ws.users[2], ws.workspaceId);
    await emitWithAck(observer, "room:leave", { targetId: two, targetType: "channel" });
    const client = await a.connectUser(ws.users[1], ws.workspaceId);
    const inbox = collect(client, "message:new");
    const sent = { [one]: [], [two]: [] };
    const sendBoth = async (tag) => {
      for (const ch of [one, two]) {
        const content = `${tag} ${ch === one ? 1 : 2}`;
        await send(sender, ch, content);
        sent[ch].push(content);
      }
    };
    for (let i = 0; i < 3; i++) await sendBoth(`before ${i}`);
    await inbox.until(6);

    await cut(client);
    for (let i = 0; i < 4; i++) await sendBoth(`away from A ${i}`);
    await reconnectTo(client, b);
    assert.equal(client.recovered, true, "socket.recovered on node B");
    await inbox.until(14);
    await sendBoth("live on B");
    await inbox.until(16);
    for (const ch of [one, two]) assert.deepEqual(contents(inbox, ch), sent[ch], `channel ${ch === one ? 1 : 2} on B`);

    // Again, from B to C: B's offsets lead back to B.
    await cut(client);
    for (let i = 0; i < 2; i++) await sendBoth(`away from B ${i}`);
    await reconnectTo(client, c);
    assert.equal(client.recovered, true, "socket.recovered on node C");
    await sendBoth("live on C");
    await inbox.until(22);
    for (const ch of [one, two]) assert.deepEqual(contents(inbox, ch), sent[ch], `channel ${ch === one ? 1 : 2} on C`);
    const sequences = (ch) => inbox.filter((m) => m.channelId === ch).map((m) => m.sequence);
    for (const ch of [one, two]) {
      assert.deepEqual(sequences(ch), Array.from({ length: 11 }, (_, i) => i + 1), "sequences 1..11, once each");
    }
    // /metrics on each node counts the moves: A handed to B, B recovered and handed to C.
    assert.ok((await a.metric("ocomms_broker_handovers_total")) >= 1, "A counts its handover");
    assert.ok((await b.metric("ocomms_recovered_from_node_total")) >= 1, "B counts its recovery");
    assert.ok((await b.metric("ocomms_broker_handovers_total")) >= 1, "B counts its handover");
    assert.ok((await c.metric("ocomms_recovered_from_node_total")) >= 1, "C counts its recovery");
    client.disconnect();
    sender.disconnect();
    observer.disconnect();
  });

  test("a client that received nothing before the cut is recovered on another node from where it connected", async () => {
    const [a, b] = cluster.nodes;
    const ws = await cluster.provision({ users: 2, channels: [{ members: "all" }] });
    const channel = ws.channels[0].id;
    const sender = await b.connectUser(ws.users[0], ws.workspaceId);
    const client = await a.connectUser(ws.users[1], ws.workspaceId);
    const inbox = collect(client, "message:new");
    await cut(client);
    await send(sender, channel, "missed");
    await reconnectTo(client, b);
    assert.equal(client.recovered, true, "socket.recovered");
    await send(sender, channel, "live");
    await inbox.until(2);
    assert.deepEqual(contents(inbox, channel), ["missed", "live"]);
    client.disconnect();
    sender.disconnect();
  });

  test("a session that moved on to B before the client received anything there is found from A again", async () => {
    const [a, b, c] = cluster.nodes;
    const ws = await cluster.provision({ users: 2, channels: [{ members: "all" }] });
    const channel = ws.channels[0].id;
    const sender = await c.connectUser(ws.users[0], ws.workspaceId);
    const client = await a.connectUser(ws.users[1], ws.workspaceId);
    const inbox = collect(client, "message:new");
    await send(sender, channel, "on A");
    await inbox.until(1);
    await cut(client);
    await reconnectTo(client, b);
    assert.equal(client.recovered, true, "socket.recovered on B (nothing missed)");
    // Cut on B before B delivered anything: the client still holds A's offset.
    await cut(client);
    await send(sender, channel, "missed 1");
    await send(sender, channel, "missed 2");
    await reconnectTo(client, a);
    assert.equal(client.recovered, true, "socket.recovered back on A");
    await send(sender, channel, "live");
    await inbox.until(4);
    assert.deepEqual(contents(inbox, channel), ["on A", "missed 1", "missed 2", "live"]);
    client.disconnect();
    sender.disconnect();
  });

  test("deletions made while the client was away come back too: of messages it had, and as tombstones of those it missed", async () => {
    const [a, b, c] = cluster.nodes;
    const ws = await cluster.provision({ users: 2, channels: [{ members: "all" }] });
    const channel = ws.channels[0].id;
    const sender = await c.connectUser(ws.users[0], ws.workspaceId);
    const client = await a.connectUser(ws.users[1], ws.workspaceId);
    const inbox = collect(client, "message:new");
    const deleted = collect(client, "message:deleted");
    const had = await send(sender, channel, "had");
    await send(sender, channel, "kept");
    await inbox.until(2);
    await cut(client);
    const del = (messageId) => emitWithAck(sender, "message:delete", { messageId }, 15000);
    assert.equal((await del(had.messageId)).success, true);
    const missed = await send(sender, channel, "missed, then deleted");
    assert.equal((await del(missed.messageId)).success, true);
    await reconnectTo(client, b);
    assert.equal(client.recovered, true, "socket.recovered");
    await inbox.until(3);
    await deleted.until(1);
    assert.deepEqual(deleted.map((d) => d.messageId), [had.messageId], "the deletion of a message it had, once");
    assert.equal(inbox[2].id, missed.messageId);
    assert.notEqual(inbox[2].deletedAt, null, "a missed message deleted meanwhile comes as its tombstone");
    const live = await send(sender, channel, "live");
    await inbox.until(4);
    assert.equal(inbox[3].id, live.messageId);
    assert.equal(inbox.length, 4, "nothing twice");
    assert.equal(deleted.length, 1, "no deletion twice");
    client.disconnect();
    sender.disconnect();
  });

  test("a membership removed while the client was away is not recovered into", async () => {
    const [a, b, c] = cluster.nodes;
    const ws = await cluster.provision({ users: 2, channels: [{ members: "all" }, { members: "all" }] });
    const [kept, removed] = ws.channels.map((ch) => ch.id);
    const sender = await c.connectUser(ws.users[0], ws.workspaceId);
    const client = await a.connectUser(ws.users[1], ws.workspaceId);
    const inbox = collect(client, "message:new");
    await send(sender, kept, "kept before");
    await send(sender, removed, "removed before");
    await inbox.until(2);
    await cut(client);
    await cluster.adminOk("DELETE", `/api/v1/channels/${removed}/members/${ws.users[1].id}`);
    await send(sender, kept, "kept missed");
    await send(sender, removed, "removed missed");
    await reconnectTo(client, b);
    assert.equal(client.recovered, true, "socket.recovered");
    await send(sender, removed, "removed live");
    await send(sender, kept, "kept live");
    await inbox.until(4);
    assert.deepEqual(contents(inbox, kept), ["kept before", "kept missed", "kept live"]);
    assert.deepEqual(contents(inbox, removed), ["removed before"], "nothing of the room it was removed from");
    const refused = await emitWithAck(client, "message:send", { targetId: removed, targetType: "channel", content: "x", clientMsgId: randomUUID() });
    assert.equal(refused.success, false, "not a member of the removed room");
    client.disconnect();
    sender.disconnect();
  });

  test("a replay from another node too large to send ends in a clean new session, still connected", async () => {
    const [a, b] = cluster.nodes;
    const ws = await cluster.provision({ users: 2, channels: [{ members: "all" }] });
    const channel = ws.channels[0].id;
    // The sender is on B: B streams the channel, so the gap is read as one replay.
    const sender = await b.connectUser(ws.users[0], ws.workspaceId);
    const client = await a.connectUser(ws.users[1], ws.workspaceId);
    const inbox = collect(client, "message:new");
    await send(sender, channel, "before");
    await inbox.until(1);
    await cut(client);
    // 80 x 16 KB: 1.3 MB, more than one replay may carry.
    for (let i = 0; i < 80; i += 8) {
      await Promise.all(Array.from({ length: 8 }, (_, j) => send(sender, channel, `${i + j} ${LONG}`)));
    }
    await reconnectTo(client, b);
    assert.equal(client.recovered, false, "a new session rather than a replay that would drop it");
    assert.ok((await b.metric("ocomms_recovery_missed_total")) >= 1, "B counts the new session");
    const live = await send(sender, channel, "live");
    await inbox.until((msgs) => msgs.some((m) => m.id === live.messageId));
    assert.equal(client.connected, true, "still connected");
    assert.equal(inbox.length, 2, "nothing replayed");
    client.disconnect();
    sender.disconnect();
  });
});
