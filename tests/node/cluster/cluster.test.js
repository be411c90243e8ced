// Several real ocomms-rt nodes as one cluster (REDIS_URL + one PostgreSQL database, a private
// redis-server per cluster): fan-out across nodes in order, membership changes made on one
// node (or written into the tables) reaching sockets on another, typing and presence across
// nodes, a node SIGKILLed under load, and Redis restarted under load. Needs PostgreSQL
// (OCOMMS_TEST_PG or the default 127.0.0.1:5432) and redis-server.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { after, describe, test } from "node:test";

import { startCluster } from "../lib/cluster.js";
import { collect, emitWithAck, waitFor } from "../lib/server.js";

const send = (socket, targetId, content) =>
  emitWithAck(socket, "message:send", { targetId, targetType: "channel", content, clientMsgId: randomUUID() }, 15000);

/** Asserts that `got` (message:new payloads) are sequences 1..n in order, once each. */
function assertOneToN(got, n, who) {
  const seqs = got.map((m) => m.sequence);
  assert.deepEqual(seqs, Array.from({ length: n }, (_, i) => i + 1), `${who} sees 1..${n} in order, once each`);
}

/** Sends from `socket` with `inFlight` sends outstanding until `stop()` is true; returns acks. */
function sendLoop(socket, channelId, tag, inFlight, stopped) {
  const acked = [];
  let n = 0;
  const worker = async () => {
    while (!stopped()) {
      const ack = await send(socket, channelId, `${tag}-${n++}`).catch(() => null);
      if (ack?.success) acked.push(ack.sequence);
      else if (!socket.connected) return;
    }
  };
  const done = Promise.all(Array.from({ length: inFlight }, worker));
  return { acked, done };
}

describe("cluster: three nodes over Redis", { timeout: 240_000 }, () => {
  const clusters = [];
  after(async () => {
    for (const c of clusters) await c.stop();
  });
  const start = async (opts = {}) => {
    // One cluster at a time: each node holds several PostgreSQL connections, and the
    // server's max_connections is shared with everything else on the machine.
    while (clusters.length > 0) await clusters.pop().stop();
    const c = await startCluster({ nodes: 3, shards: 2, ...opts });
    clusters.push(c);
    return c;
  };

  test("two nodes send into one channel at full speed: every receiver on every node sees 1..N in order", async () => {
    const cluster = await start();
    const ws = await cluster.provision({ users: 8, channels: [{ members: "all" }] });
    const channel = ws.channels[0].id;
    const [a, b] = [cluster.nodes[0], cluster.nodes[1]];
    const senders = [await a.connectUser(ws.users[0], ws.workspaceId), await b.connectUser(ws.users[1], ws.workspaceId)];
    const listeners = [];
    for (let i = 2; i < 8; i++) listeners.push(await cluster.nodes[i % 3].connectUser(ws.users[i], ws.workspaceId));
    const everyone = [...senders, ...listeners];
    const inboxes = everyone.map((s) => collect(s, "message:new"));
    const PER = 150;
    const acks = await Promise.all(
      senders.flatMap((s, i) => Array.from({ length: PER }, (_, n) => send(s, channel, `s${i}-${n}`))),
    );
    assert.ok(acks.every((x) => x.success), "every send is acked");
    for (const [i, inbox] of inboxes.entries()) {
      await inbox.until(2 * PER, 30000);
      assertOneToN(inbox, 2 * PER, `socket ${i}`);
    }
    assert.ok((await cluster.metric("ocomms_broker_receipts_total")) > 0, "publications crossed Redis");
    for (const s of everyone) s.disconnect();
  });

  test("membership made through the admin API on one node, or written into the tables, reaches sockets on another", async () => {
    const cluster = await start();
    const ws = await cluster.provision({ users: 3, channels: [{ members: [0] }, { members: [0] }] });
    const [first, second] = ws.channels.map((c) => c.id);
    // The sender on node 1, the new member on node 2, the admin API on node 0.
    const sender = await cluster.nodes[1].connectUser(ws.users[0], ws.workspaceId);
    const member = await cluster.nodes[2].connectUser(ws.users[1], ws.workspaceId);
    const got = collect(member, "message:new");
    await cluster.adminOk("POST", `/api/v1/channels/${first}/members`, { userId: ws.users[1].id });
    const one = await send(sender, first, "after the admin add");
    await got.until((g) => g.some((m) => m.id === one.messageId), 5000, "the message after the admin add");

    // The web app writes the table itself (no ocomms-rt connection involved).
    execFileSync("psql", [cluster.database.url, "-qc", `INSERT INTO channel_members (channel_id, user_id) VALUES ('${second}', '${ws.users[1].id}')`]);
    const two = await send(sender, second, "after the table insert");
    await got.until((g) => g.some((m) => m.id === two.messageId), 5000, "the message after the table insert");

    // Removal through the admin API: the socket on node 2 leaves the room at once.
    await cluster.adminOk("DELETE", `/api/v1/channels/${first}/members/${ws.users[1].id}`);
    const control = await cluster.nodes[2].connectUser(ws.users[0], ws.workspaceId);
    const controlGot = collect(control, "message:new");
    const three = await send(sender, first, "after the removal");
    await controlGot.until((g) => g.some((m) => m.id === three.messageId), 5000, "the control socket's copy");
    assert.ok(!got.some((m) => m.id === three.messageId), "a removed member gets nothing more");
    for (const s of [sender, member, control]) s.disconnect();
  });

  test("a deletion no publication announced (written into the table, as by a node that died after its COMMIT) reaches every node's members with the sweep, once", async () => {
    const cluster = await start({ env: { CHAT_SWEEP_MS: "1000" } });
    const ws = await cluster.provision({ users: 4, channels: [{ members: "all" }] });
    const channel = ws.channels[0].id;
    const sender = await cluster.nodes[0].connectUser(ws.users[0], ws.workspaceId);
    const receivers = await Promise.all([1, 2, 3].map((u, i) => cluster.nodes[i].connectUser(ws.users[u], ws.workspaceId)));
    const inboxes = receivers.map((r) => collect(r, "message:new"));
    const deletions = receivers.map((r) => collect(r, "message:deleted"));
    const sent = await send(sender, channel, "deleted behind every node's back");
    for (const inbox of inboxes) await inbox.until((g) => g.some((m) => m.id === sent.messageId), 10000, "the message");
    execFileSync("psql", [cluster.database.url, "-qc", `UPDATE messages SET deleted_at = now(), updated_at = now() WHERE id = '${sent.messageId}'`]);
    for (const [i, got] of deletions.entries()) {
      await got.until((g) => g.some((d) => d.messageId === sent.messageId), 10000, `node ${i}'s member gets the deletion`);
      assert.equal(got[0].sequence, sent.sequence);
    }
    // Each sweep reads from shortly before the last one: the same deletion is read several
    // times, and released once.
    const reads = await cluster.metric("ocomms_broker_deletion_reads_total");
    await waitFor(async () => (await cluster.metric("ocomms_broker_deletion_reads_total")) >= reads + 3 * 8, 20000, "eight more sweeps on every node");
    for (const [i, got] of deletions.entries()) assert.equal(got.length, 1, `node ${i}'s member got the deletion once`);
    for (const s of [sender, ...receivers]) s.disconnect();
  });

  test("typing and presence cross nodes; presence:query answers for the cluster", async () => {
    const cluster = await start();
    const ws = await cluster.provision({ users: 2, channels: [{ members: "all" }] });
    const channel = ws.channels[0].id;
    const a = await cluster.nodes[0].connectUser(ws.users[0], ws.workspaceId);
    const presence = collect(a, "presence:update");
    const b = await cluster.nodes[1].connectUser(ws.users[1], ws.workspaceId);
    await presence.until((g) => g.some((u) => u.userId === ws.users[1].id && u.status === "active"), 5000);
    const query = await emitWithAck(a, "presence:query", { userIds: [ws.users[1].id] });
    assert.deepEqual(query.presence, { [ws.users[1].id]: "active" }, "node 0 answers for a user on node 1");

    const typing = collect(a, "typing:update");
    b.emit("typing:start", { targetId: channel, targetType: "channel" });
    await typing.until(1, 5000);
    assert.deepEqual(typing[0], { userId: ws.users[1].id, userName: ws.users[1].name, targetId: channel, isTyping: true });
    // Disconnecting stops the typing at once and, as the user's last socket, makes them offline.
    b.disconnect();
    await typing.until(2, 5000);
    assert.equal(typing[1].isTyping, false);
    await presence.until((g) => g.some((u) => u.userId === ws.users[1].id && u.status === "offline"), 5000);
    a.disconnect();
  });

  test("a tab that closes on one node as another opens on a second: the user is never shown offline in between", async () => {
    const cluster = await start();
    const ws = await cluster.provision({ users: 3, channels: [{ members: "all" }] });
    const [watcherUser, user, markerUser] = ws.users;
    const watcher = await cluster.nodes[2].connectUser(watcherUser, ws.workspaceId);
    const updates = collect(watcher, "presence:update");
    const of = (u) => updates.filter((p) => p.userId === u.id).map((p) => p.status);
    const first = await cluster.nodes[0].connectUser(user, ws.workspaceId);
    await updates.until(() => of(user).includes("active"), 10000, "the user shown active");
    first.disconnect();
    const second = await cluster.nodes[1].connectUser(user, ws.workspaceId);
    // Presence updates all cross the workspace's one Redis channel, in order: the marker's
    // comes after anything the swap of tabs published.
    const marker = await cluster.nodes[0].connectUser(markerUser, ws.workspaceId);
    await updates.until(() => of(markerUser).includes("active"), 10000, "the marker shown active");
    assert.deepEqual(of(user), ["active"], "no offline (nor a second active) while a tab was open somewhere");
    second.disconnect();
    await updates.until(() => of(user).includes("offline"), 10000, "offline once the last tab is gone");
    assert.deepEqual(of(user), ["active", "offline"]);
    for (const s of [watcher, marker]) s.disconnect();
  });

  test("a typer who keeps typing shows once on other nodes; when its node dies, the others stop it within 7.5 s", async () => {
    const cluster = await start();
    const ws = await cluster.provision({ users: 2, channels: [{ members: "all" }] });
    const channel = ws.channels[0].id;
    const a = await cluster.nodes[0].connectUser(ws.users[0], ws.workspaceId);
    const b = await cluster.nodes[1].connectUser(ws.users[1], ws.workspaceId);
    const typing = collect(a, "typing:update");
    // Past the other nodes' 7.5 s timers: only b's refreshes (every 2 s) keep them running.
    const keystrokes = 9;
    for (let i = 0; i < keystrokes; i++) {
      const ack = await emitWithAck(b, "typing:start", { targetId: channel, targetType: "channel" });
      assert.equal(ack.success, true);
      if (i === 0) await typing.until(1, 5000);
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
    assert.deepEqual(
      typing.map((t) => t.isTyping),
      [true],
      "one start while b keeps typing, and no stop from a timer that ran out",
    );
    const killedAt = Date.now();
    await cluster.kill(1);
    await typing.until(2, 10000, "the stop for a typer whose node died");
    assert.deepEqual(typing[1], { userId: ws.users[1].id, userName: ws.users[1].name, targetId: channel, isTyping: false });
    assert.ok(Date.now() - killedAt <= 8500, `the stop came ${Date.now() - killedAt} ms after the node died`);
    a.disconnect();
  });

  test("SIGKILL one of three nodes under load: no acked message missing or twice, presence corrected within the TTL", async () => {
    const cluster = await start({
      env: { CHAT_HEARTBEAT_MS: "300", CHAT_HEARTBEAT_TTL_MS: "1500", CHAT_SWEEP_MS: "500" },
    });
    const ws = await cluster.provision({ users: 7, channels: [{ members: "all" }] });
    const channel = ws.channels[0].id;
    const on = (i, u) => cluster.nodes[i].connectUser(ws.users[u], ws.workspaceId);
    const senders = [await on(0, 0), await on(1, 1), await on(2, 2)];
    const receivers = [await on(0, 3), await on(1, 4), await on(2, 5)];
    const watcher = await on(0, 6);
    const presence = collect(watcher, "presence:update");
    const inboxes = receivers.map((r) => collect(r, "message:new"));
    let stop = false;
    const loops = senders.map((s, i) => sendLoop(s, channel, `n${i}`, 4, () => stop));
    await inboxes[0].until(60, 20000);
    await cluster.kill(2);
    // Keep sending through the two survivors for a while after the death.
    const before = loops[0].acked.length + loops[1].acked.length;
    await waitFor(() => loops[0].acked.length + loops[1].acked.length >= before + 60, 30000, "60 more acks after the death");
    stop = true;
    await Promise.all(loops.map((l) => l.done));
    const acked = loops.flatMap((l) => l.acked);
    const { messages: stored } = await cluster.adminOk("GET", `/api/v1/channels/${channel}/messages?limit=100&afterSequence=${Math.max(...acked) - 1}`);
    const top = Math.max(...acked, ...stored.map((m) => m.sequence));
    for (const i of [0, 1]) {
      await inboxes[i].until(top, 20000);
      assertOneToN(inboxes[i], top, `the receiver on node ${i}`);
    }
    // The dead node's receiver reconnects elsewhere and fills the rest from history.
    const had = inboxes[2].map((m) => m.sequence);
    assertOneToN(inboxes[2], had.length, "the receiver on the dead node, up to its death");
    const back = await cluster.nodes[0].connectUser(ws.users[5], ws.workspaceId);
    const seqs = [...had];
    for (let after = had.length; after < top; ) {
      const page = await emitWithAck(back, "message:history", { targetId: channel, targetType: "channel", afterSequence: after, limit: 100 });
      assert.equal(page.success, true, JSON.stringify(page));
      seqs.push(...page.messages.map((m) => m.sequence));
      if (page.messages.length === 0) break;
      after = page.messages.at(-1).sequence;
    }
    assert.deepEqual(seqs, Array.from({ length: top }, (_, i) => i + 1), "live plus history: every message once");
    for (const s of acked) assert.ok(s <= top, `acked ${s} is delivered`);
    // User 2 was only on the dead node: offline for the others within the TTL (and a sweep).
    await presence.until((g) => g.some((u) => u.userId === ws.users[2].id && u.status === "offline"), 15000);
    for (const s of [...senders, ...receivers, watcher, back]) s.disconnect();
  });

  test("Redis restarted under load: local delivery goes on, then every member has every acked message and deletion, in order, once", async () => {
    // The senders go at full speed through the outage (local acks are quick): over the
    // default send budget within a second or two.
    const cluster = await start({ env: { CHAT_SWEEP_MS: "1000", CHAT_LIMIT_SENDS: "100000/1s" } });
    const ws = await cluster.provision({ users: 5, channels: [{ members: "all" }] });
    const channel = ws.channels[0].id;
    const on = (i, u) => cluster.nodes[i].connectUser(ws.users[u], ws.workspaceId);
    const senders = [await on(0, 0), await on(1, 1)];
    const receivers = [await on(0, 2), await on(1, 3), await on(2, 4)];
    const inboxes = receivers.map((r) => collect(r, "message:new"));
    const deletions = receivers.map((r) => collect(r, "message:deleted"));
    let stop = false;
    const loops = senders.map((s, i) => sendLoop(s, channel, `n${i}`, 3, () => stop));
    await inboxes[2].until(40, 20000);
    // A message every member already has, deleted on node 1 while Redis is down.
    const doomed = await send(senders[1], channel, "deleted while Redis is down");
    assert.equal(doomed.success, true, JSON.stringify(doomed));
    for (const inbox of inboxes) await inbox.until((g) => g.some((m) => m.id === doomed.messageId), 10000, "the doomed message");
    await cluster.redis.stopProcess();
    // Redis is down: sends still commit and ack, and a member on the sender's node gets them.
    const during = await send(senders[0], channel, "while Redis is down");
    assert.equal(during.success, true, JSON.stringify(during));
    await inboxes[0].until((g) => g.some((m) => m.id === during.messageId), 10000, "local delivery during the outage");
    const deleted = await emitWithAck(senders[1], "message:delete", { messageId: doomed.messageId }, 15000);
    assert.equal(deleted.success, true, JSON.stringify(deleted));
    // No publication crosses a node now: nodes 0 and 2 read the deletion from PostgreSQL.
    const gotDeletion = (g) => g.some((d) => d.messageId === doomed.messageId);
    for (const [i, got] of deletions.entries()) {
      await got.until(gotDeletion, 15000, `node ${i}'s member gets the deletion made on node 1 during the outage`);
    }
    assert.ok((await cluster.metric("ocomms_broker_deletions_caught_up_total")) >= 2, "nodes 0 and 2 caught the deletion up from PostgreSQL");
    await cluster.redis.spawn();
    const base = loops[0].acked.length + loops[1].acked.length;
    await waitFor(() => loops[0].acked.length + loops[1].acked.length >= base + 40, 30000, "40 more acks after Redis is back");
    stop = true;
    await Promise.all(loops.map((l) => l.done));
    const top = Math.max(during.sequence, ...loops.flatMap((l) => l.acked));
    for (const [i, inbox] of inboxes.entries()) {
      await inbox.until(top, 30000);
      assertOneToN(inbox, top, `the receiver on node ${i}`);
    }
    // Node 1 publishes again the deletion Redis did not take; nodes 0 and 2 had it already.
    for (const [i, got] of deletions.entries()) {
      assert.equal(got.filter((d) => d.messageId === doomed.messageId).length, 1, `node ${i}'s member got the deletion once`);
      assert.equal(got.find((d) => d.messageId === doomed.messageId).sequence, doomed.sequence);
    }
    const health = (await cluster.nodes[2].request("GET", "/healthz")).json;
    assert.equal(health.status, "ok");
    assert.ok(["up", "connecting", "down"].includes(health.redis.status), JSON.stringify(health.redis));
    assert.ok((await cluster.metric("ocomms_broker_gap_fills_total")) > 0, "the outage was caught up from PostgreSQL");
    for (const s of [...senders, ...receivers]) s.disconnect();
  });
});
