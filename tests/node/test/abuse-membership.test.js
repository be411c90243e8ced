// Contract §2/§3/§5: who may do what. An authorization matrix (every client event x member,
// non-member, other workspace, removed mid-session), and a removal from the workspace taking
// effect on a live socket, through the admin API and by a row deleted in the table.

import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { after, before, describe, test } from "node:test";

import { collect, emitWithAck, freshDatabase, startServer } from "../lib/server.js";

/** Two round trips on `socket`: a broadcast published before them has been handled by then. */
async function settle(socket) {
  await emitWithAck(socket, "presence:query", { userIds: [] }, 10_000);
  await emitWithAck(socket, "presence:query", { userIds: [] }, 10_000);
}

describe("authorization matrix", { timeout: 120_000 }, () => {
  let server;
  let ws; // users 0 (author), 1 (not in the channel), 2 (removed mid-session)
  let other; // another workspace; its user 0 is ws.users[3]
  let msgId;
  const sockets = {};

  before(async () => {
    server = await startServer({ shards: 2 });
    ws = await server.provision({ users: 4, channels: [{ members: [0, 2] }] });
    other = await server.adminOk("POST", "/api/v1/workspaces", { slug: `o-${Date.now()}`, name: "other" });
    await server.adminOk("POST", `/api/v1/workspaces/${other.id}/members`, { userId: ws.users[3].id });
    sockets.member = await server.connectUser(ws.users[0], ws.workspaceId);
    sockets.nonMember = await server.connectUser(ws.users[1], ws.workspaceId);
    sockets.removed = await server.connectUser(ws.users[2], ws.workspaceId);
    sockets.otherWorkspace = await server.connectUser(ws.users[3], other.id);
    const sent = await emitWithAck(sockets.member, "message:send", { targetId: ws.channels[0].id, targetType: "channel", content: "m" });
    msgId = sent.messageId;
    const told = collect(sockets.removed, "error");
    const res = await server.admin("DELETE", `/api/v1/workspaces/${ws.workspaceId}/members/${ws.users[2].id}`);
    assert.equal(res.status, 200, res.text);
    await told.until(1);
    assert.match(told[0].message, /you were removed from workspace/);
  });

  after(async () => {
    server?.closeSockets();
    await server?.stop();
  });

  const target = () => ({ targetId: ws.channels[0].id, targetType: "channel" });
  const room = () => ({ roomId: ws.channels[0].id, roomType: "channel" });
  const events = [
    ["message:send", () => ({ ...target(), content: "hello" })],
    ["message:delete", () => ({ messageId: msgId })],
    ["message:history", () => target()],
    ["room:join", () => room()],
    ["room:leave", () => room()],
    ["typing:start", () => target()],
    ["typing:stop", () => target()],
    ["presence:setAway", () => undefined],
    ["presence:setActive", () => undefined],
    ["presence:query", () => ({ userIds: [ws.users[0].id] })],
  ];
  // true: {success: true}; a RegExp: refused with a matching error. Leaving, typing where
  // one is not a member (ignored, contract §3) and presence are harmless, so they succeed.
  const refusedMember = /not a member|another workspace|not found|does not exist|only the author/i;
  const expected = {
    member: { default: true },
    nonMember: { default: true, "message:send": refusedMember, "message:delete": refusedMember, "message:history": refusedMember, "room:join": refusedMember },
    otherWorkspace: { default: true, "message:send": refusedMember, "message:delete": refusedMember, "message:history": refusedMember, "room:join": refusedMember },
    removed: { default: /you were removed from workspace/ },
  };

  for (const who of Object.keys(expected)) {
    test(`${who}: every event`, async () => {
      const socket = sockets[who];
      // The member deletes last: the others try to delete its message first.
      const order = who === "member" ? [...events.filter(([n]) => n !== "message:delete"), events[1]] : events;
      for (const [name, data] of order) {
        const want = expected[who][name] ?? expected[who].default;
        const payload = data();
        const ack = payload === undefined
          ? await new Promise((resolve) => socket.timeout(10_000).emit(name, (err, res) => resolve(err ? { timeout: true } : res)))
          : await emitWithAck(socket, name, payload, 10_000);
        if (want === true) assert.equal(ack.success, true, `${who} ${name}: ${JSON.stringify(ack)}`);
        else {
          assert.equal(ack.success, false, `${who} ${name} must be refused: ${JSON.stringify(ack)}`);
          assert.match(ack.error, want, `${who} ${name}`);
        }
      }
      assert.ok(socket.connected, "refusals do not disconnect");
    });
  }

  test("the removed socket receives nothing more from the workspace", async () => {
    const got = collect(sockets.removed, "message:new");
    await emitWithAck(sockets.member, "message:send", { ...target(), content: "after the removal" });
    await settle(sockets.removed);
    assert.deepEqual(got.map((m) => m.content), []);
  });
});

describe("removed from the workspace by a row deleted in the table", { timeout: 60_000 }, () => {
  let server;
  let database;

  before(async (t) => {
    const base = process.env.OCOMMS_TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
    try {
      database = freshDatabase(base);
    } catch (e) {
      t.skip(`no PostgreSQL at ${base}: ${e.message}`);
      return;
    }
    server = await startServer({ shards: 2, databaseUrl: database.url });
  });

  after(async () => {
    server?.closeSockets();
    await server?.stop();
    database?.drop();
  });

  test("the user's live socket leaves every room within 2 s; sends are refused", async (t) => {
    if (!server) return t.skip("no PostgreSQL");
    const ws = await server.provision({ users: 2, channels: [{ members: "all" }] });
    const [stay, go] = await Promise.all(ws.users.map((u) => server.connectUser(u, ws.workspaceId)));
    const told = collect(go, "error");
    execFileSync("psql", [database.url, "-qc", `DELETE FROM workspace_members WHERE user_id = '${ws.users[1].id}'`]);
    await told.until(1, 2000, "the removal, within 2 s");
    const got = collect(go, "message:new");
    const target = { targetId: ws.channels[0].id, targetType: "channel" };
    const refused = await emitWithAck(go, "message:send", { ...target, content: "still here?" });
    assert.equal(refused.success, false);
    assert.match(refused.error, /you were removed/);
    assert.equal((await emitWithAck(stay, "message:send", { ...target, content: "bye" })).success, true);
    await settle(go);
    assert.deepEqual(got.map((m) => m.content), [], "nothing more from the workspace rooms");
  });
  test("a removal written while the membership listener was cut off takes effect once it listens again", async (t) => {
    if (!server) return t.skip("no PostgreSQL");
    const ws = await server.provision({ users: 2, channels: [{ members: "all" }] });
    const [stay, go] = await Promise.all(ws.users.map((u) => server.connectUser(u, ws.workspaceId)));
    const told = collect(go, "error");
    // Lose the removal's NOTIFY for good. A psql session listens on the same channel; the
    // database stops taking connections (so the server's listener, once cut, cannot be back
    // before the removal commits); that session cuts the server's listener, writes the removal
    // and reads its NOTIFY; then the database takes connections again. PostgreSQL starts the
    // new listener past what the other listener has read: only a re-check finds the removal.
    const name = new URL(database.url).pathname.slice(1);
    const admin = new URL(database.url);
    admin.pathname = "/postgres";
    const allow = (yes) =>
      execFileSync("psql", [admin.href, "-qc", `ALTER DATABASE ${name} ALLOW_CONNECTIONS ${yes}`]);
    const other = spawn("psql", [database.url, "-qAt", "-v", "ON_ERROR_STOP=1"], { stdio: "pipe" });
    t.after(() => other.kill());
    let heard = "";
    const notified = new Promise((resolve, reject) => {
      other.stdout.on("data", (d) => {
        heard += d;
        if (/Asynchronous notification/.test(heard)) resolve();
      });
      other.stderr.on("data", (d) => {
        heard += d;
        if (/Asynchronous notification/.test(heard)) resolve();
      });
      other.on("exit", (code) => reject(new Error(`psql exited (${code}): ${heard}`)));
    });
    other.stdin.write("LISTEN ocomms_membership; SELECT 'listening';\n");
    await new Promise((resolve) => other.stdout.once("data", resolve));
    allow(false);
    t.after(() => allow(true));
    other.stdin.write(`SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) FROM pg_stat_activity
      WHERE datname = current_database() AND query LIKE 'LISTEN%' AND pid <> pg_backend_pid();
      DELETE FROM workspace_members WHERE user_id = '${ws.users[1].id}';
      SELECT 1;\n`);
    await notified;
    allow(true);
    assert.match(heard, /^listening\n1\n/, "the server's membership listener was cut");
    await told.until(1, 5000, "the removal, once the listener is back");
    const target = { targetId: ws.channels[0].id, targetType: "channel" };
    const got = collect(go, "message:new");
    assert.equal((await emitWithAck(stay, "message:send", { ...target, content: "after" })).success, true);
    await settle(go);
    assert.deepEqual(got.map((m) => m.content), [], "nothing more from the workspace rooms");
  });
});
