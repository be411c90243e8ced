// Contract §3–§5 for the ephemeral parts: typing indicators, presence across tabs, and
// connection state recovery as socket.io-client expects it.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { collect, emitWithAck, once, startServer } from "../lib/server.js";


const typing = (socket, name, channelId) => socket.emit(name, { targetId: channelId, targetType: "channel" });

describe("typing", { timeout: 60_000 }, () => {
  let server;
  let ws;
  before(async () => {
    server = await startServer({ shards: 2 });
    ws = await server.provision({ users: 4, channels: [{ members: [0, 1, 2] }] });
  });
  after(async () => {
    server?.closeSockets();
    await server?.stop();
  });

  test("goes to the other members only, refreshes quietly, and stops on typing:stop", async () => {
    const channel = ws.channels[0].id;
    const [a, a2, b, outsider] = await Promise.all(
      [0, 0, 1, 3].map((i) => server.connectUser(ws.users[i], ws.workspaceId)),
    );
    const atB = collect(b, "typing:update");
    const atA2 = collect(a2, "typing:update");
    const atOutsider = collect(outsider, "typing:update");
    typing(a, "typing:start", channel);
    typing(a, "typing:start", channel);
    typing(a, "typing:start", channel);
    typing(a, "typing:stop", channel);
    await atB.until((g) => g.length >= 2);
    assert.deepEqual(atB[0], { userId: ws.users[0].id, userName: ws.users[0].name, targetId: channel, isTyping: true });
    assert.equal(atB[1].isTyping, false);
    // b's own typing reaches a's tabs: by then a's other tab would have had a's updates.
    typing(b, "typing:start", channel);
    await atA2.until((g) => g.length >= 1);
    assert.deepEqual(
      atA2.map((u) => u.userId),
      [ws.users[1].id],
      "the typing user's own tabs never get its updates",
    );
    assert.equal(atB.length, 2, "repeated typing:start sent no new update");
    typing(outsider, "typing:start", channel);
    typing(b, "typing:stop", channel);
    await atA2.until((g) => g.length >= 2);
    assert.ok(atB.every((u) => u.userId !== ws.users[3].id), "typing in a room one is not in is ignored");
    assert.equal(atOutsider.length, 0, "non-members see no typing");
    for (const s of [a, a2, b, outsider]) s.disconnect();
  });

  test("stops by itself 5 s after the last typing:start", async () => {
    const channel = ws.channels[0].id;
    const [a, b] = await Promise.all([0, 1].map((i) => server.connectUser(ws.users[i], ws.workspaceId)));
    const atB = collect(b, "typing:update");
    typing(a, "typing:start", channel);
    await atB.until((g) => g.length >= 1);
    const started = Date.now();
    await atB.until(2, 9000, "typing updates (expiry)");
    const elapsed = Date.now() - started;
    assert.equal(atB[1].isTyping, false);
    assert.ok(elapsed >= 4500, `expired after ${elapsed} ms, not before the 5 s timeout`);
    a.disconnect();
    b.disconnect();
  });

  test("stops at once when the typing user disconnects", async () => {
    const channel = ws.channels[0].id;
    const [a, b] = await Promise.all([0, 1].map((i) => server.connectUser(ws.users[i], ws.workspaceId)));
    const atB = collect(b, "typing:update");
    typing(a, "typing:start", channel);
    await atB.until((g) => g.length >= 1);
    const closed = Date.now();
    a.disconnect();
    await atB.until(2, 4000, "typing updates (false after disconnect)");
    assert.equal(atB[1].isTyping, false);
    assert.ok(Date.now() - closed < 4000, "well before the 5 s expiry");
    b.disconnect();
  });

  test("a flood is throttled for the flooder alone", async () => {
    const channel = ws.channels[0].id;
    const [a, b, c] = await Promise.all([0, 1, 2].map((i) => server.connectUser(ws.users[i], ws.workspaceId)));
    const atB = collect(b, "typing:update");
    const errors = collect(a, "error");
    for (let i = 0; i < 200; i++) typing(a, i % 2 === 0 ? "typing:start" : "typing:stop", channel);
    await errors.until((g) => g.length >= 1);
    assert.match(errors[0].message, /typing events are limited/);
    // c is not throttled: its update arrives, after whatever of a's flood got through.
    typing(c, "typing:start", channel);
    await atB.until((g) => g.some((u) => u.userId === ws.users[2].id));
    const fromA = atB.filter((u) => u.userId === ws.users[0].id).length;
    assert.ok(fromA <= 12, `at most the burst of a's 200 events reached b (got ${fromA})`);
    assert.equal(errors.length, 1, "the flooder is told once");
    for (const s of [a, b, c]) s.disconnect();
  });
});

describe("presence", { timeout: 60_000 }, () => {
  let server;
  let ws;
  before(async () => {
    // One process also in the cluster run: this test closes a tab the moment the other tab's
    // CONNECT is answered, and across nodes the second tab's presence script may still be on
    // its way then (docs/cluster.md, presence: known limits). Presence across nodes is tested
    // in cluster/cluster.test.js.
    server = await startServer({ shards: 2, single: true });
    ws = await server.provision({ users: 3 });
  });
  after(async () => {
    server?.closeSockets();
    await server?.stop();
  });

  test("two tabs: closing one keeps the user present; away only when every tab is away", async () => {
    const observer = await server.connectUser(ws.users[0], ws.workspaceId);
    const updates = collect(observer, "presence:update");
    const x = ws.users[1];
    const ofX = () => updates.filter((u) => u.userId === x.id).map((u) => u.status);
    const tab1 = await server.connectUser(x, ws.workspaceId);
    await updates.until(() => ofX().length >= 1);
    const tab2 = await server.connectUser(x, ws.workspaceId);
    tab1.disconnect();
    const query = await emitWithAck(observer, "presence:query", { userIds: [x.id, ws.users[2].id] });
    assert.deepEqual(query, { success: true, presence: { [x.id]: "active", [ws.users[2].id]: "offline" } });
    tab2.emit("presence:setAway");
    await updates.until(() => ofX().length >= 2);
    assert.deepEqual(ofX(), ["active", "away"], "no update for the second tab or for closing the first");
    tab2.emit("presence:setActive");
    await updates.until(() => ofX().length >= 3);
    tab2.disconnect();
    await updates.until(() => ofX().length >= 4);
    assert.deepEqual(ofX(), ["active", "away", "active", "offline"]);
    const last = await emitWithAck(observer, "presence:query", { userIds: [x.id] });
    assert.equal(last.presence[x.id], "offline");
    const bad = await emitWithAck(observer, "presence:query", { userIds: "everyone" });
    assert.equal(bad.success, false);
    observer.disconnect();
  });
});

describe("connection state recovery", { timeout: 60_000 }, () => {
  let server;
  let ws;
  before(async () => {
    server = await startServer({ shards: 4 });
    ws = await server.provision({ users: 2, channels: [{ members: "all" }] });
  });
  after(async () => {
    server?.closeSockets();
    await server?.stop();
  });

  test("a client whose transport is cut gets its rooms and every missed event back, in order", async () => {
    const channel = ws.channels[0].id;
    const sender = await server.connectUser(ws.users[0], ws.workspaceId);
    const client = await server.connectUser(ws.users[1], ws.workspaceId);
    const inbox = collect(client, "message:new");
    const send = (content) =>
      emitWithAck(sender, "message:send", { targetId: channel, targetType: "channel", content });
    await send("before");
    await inbox.until(1);
    const disconnected = once(client, "disconnect");
    client.io.engine.close();
    await disconnected;
    const missed = [];
    for (let i = 0; i < 5; i++) missed.push(await send(`missed ${i}`));
    const reconnected = once(client, "connect", 8000);
    client.connect();
    await reconnected;
    assert.equal(client.recovered, true, "socket.recovered");
    assert.ok((await server.metric("ocomms_recovered_local_total")) >= 1, "/metrics counts the recovery");
    await inbox.until(6);
    assert.deepEqual(
      inbox.map((m) => m.content),
      ["before", "missed 0", "missed 1", "missed 2", "missed 3", "missed 4"],
    );
    // Back in its rooms: a live message arrives too.
    const live = await send("live");
    await inbox.until(7);
    assert.equal(inbox[6].id, live.messageId);
    assert.equal(inbox.length, 7, "nothing twice");
    sender.disconnect();
    client.disconnect();
  });

  test("after the window the client gets a clean new session", async () => {
    const short = await startServer({ shards: 2, env: { CHAT_RECOVERY_WINDOW_MS: "300" } });
    try {
      const w = await short.provision({ users: 2, channels: [{ members: "all" }] });
      const client = await short.connectUser(w.users[1], w.workspaceId);
      const disconnected = once(client, "disconnect");
      client.io.engine.close();
      await disconnected;
      // The window is time: let it pass.
      await new Promise((resolve) => setTimeout(resolve, 700));
      const reconnected = once(client, "connect", 8000);
      client.connect();
      await reconnected;
      assert.equal(client.recovered, false);
      const inbox = collect(client, "message:new");
      const sender = await short.connectUser(w.users[0], w.workspaceId);
      await emitWithAck(sender, "message:send", { targetId: w.channels[0].id, targetType: "channel", content: "hi" });
      await inbox.until(1);
      assert.equal(inbox[0].content, "hi", "the new session is in its rooms");
    } finally {
      short.closeSockets();
      await short.stop();
    }
  });
});
