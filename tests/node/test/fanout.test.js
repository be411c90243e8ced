// Contract §3 message:send and §5 delivery/ordering, at a size that crosses shards: 220
// real socket.io-client sockets on a 4-shard server, 200 of them in channel A.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";

import { UUID, checkMessageShape, condition, emitWithAck, pool, startServer } from "../lib/server.js";

const MEMBERS = 200;
const OUTSIDERS = 20;
const SENDERS = 5;
const PER_SENDER = 10;

describe("fan-out across shards", { timeout: 180_000 }, () => {
  let server;
  let ws;
  let chanA; // members 0..199
  let chanB; // everyone
  let sockets = [];
  // received[i] = every message:new user i's socket got, in arrival order.
  const received = [];
  const pokes = new Set();

  before(async () => {
    server = await startServer({ shards: 4 });
    const total = MEMBERS + OUTSIDERS;
    ws = await server.provision({
      users: total,
      channels: [{ members: Array.from({ length: MEMBERS }, (_, i) => i) }, { members: "all" }],
      concurrency: 8,
    });
    [chanA, chanB] = ws.channels;
    sockets = await pool(ws.users, 20, async (user, i) => {
      const socket = await server.connectUser(user, ws.workspaceId);
      received[i] = [];
      socket.on("message:new", (m) => {
        received[i].push(m);
        for (const poke of pokes) poke();
      });
      return socket;
    });
  });

  after(async () => {
    server?.closeSockets();
    await server?.stop();
  });

  /** Waits until `check()` holds, re-checking on every delivery. */
  async function until(check, timeoutMs, what) {
    const c = condition(check, timeoutMs, what);
    pokes.add(c.poke);
    try {
      await c.promise;
    } finally {
      pokes.delete(c.poke);
    }
  }

  const inA = (i) => received[i].filter((m) => m.channelId === chanA.id);

  test("every member gets each message exactly once, in sequence order; outsiders get none", async () => {
    assert.equal(sockets.length, MEMBERS + OUTSIDERS);
    assert.ok(sockets.every((s) => s.connected), "all sockets connected");

    // Each sender fires its messages back to back, then collects the acks.
    const sent = await Promise.all(
      Array.from({ length: SENDERS }, async (_, s) => {
        const socket = sockets[s];
        const user = ws.users[s];
        const outgoing = Array.from({ length: PER_SENDER }, (_, k) => ({
          targetId: chanA.id,
          targetType: "channel",
          content: `sender ${s} message ${k}`,
          clientMsgId: randomUUID(),
        }));
        const acks = await Promise.all(outgoing.map((data) => emitWithAck(socket, "message:send", data, 15_000)));
        return acks.map((ack, k) => ({ ack, data: outgoing[k], authorId: user.id }));
      }),
    );

    for (const [s, mine] of sent.entries()) {
      for (const { ack } of mine) {
        assert.equal(ack.success, true, `ack ${JSON.stringify(ack)}`);
        assert.match(ack.messageId, UUID);
        assert.ok(Number.isInteger(ack.sequence) && ack.sequence >= 1, `ack.sequence ${ack.sequence}`);
        assert.ok(!Number.isNaN(Date.parse(ack.createdAt)), `ack.createdAt ${ack.createdAt}`);
      }
      // "Messages one connection sends back to back are sequenced in the order it sent them."
      const seqs = mine.map((x) => x.ack.sequence);
      assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b), `sender ${s} sequences follow its send order`);
    }
    const all = sent.flat();
    const bySeq = new Map(all.map((x) => [x.ack.sequence, x]));
    assert.equal(bySeq.size, all.length, "sequences are unique within the channel");
    const total = all.length;

    await until(
      () => received.slice(0, MEMBERS).every((_, i) => inA(i).length >= total),
      60_000,
      `all ${MEMBERS} members receive ${total} messages`,
    );

    const ackedIds = new Set(all.map((x) => x.ack.messageId));
    for (let i = 0; i < MEMBERS; i++) {
      const got = inA(i);
      assert.equal(got.length, total, `member ${i} got ${got.length} messages, want ${total}`);
      assert.deepEqual(new Set(got.map((m) => m.id)), ackedIds, `member ${i} got exactly the acked messages`);
      for (let k = 1; k < got.length; k++) {
        assert.ok(got[k].sequence > got[k - 1].sequence, `member ${i}: sequence ${got[k].sequence} after ${got[k - 1].sequence}`);
      }
    }
    // The whole shape, once per message, from one member's view (and the sender's content).
    for (const msg of inA(MEMBERS - 1)) {
      const origin = bySeq.get(msg.sequence);
      assert.ok(origin, `message with sequence ${msg.sequence} was acked`);
      checkMessageShape(assert, msg, {
        content: origin.data.content,
        authorId: origin.authorId,
        channelId: chanA.id,
        conversationId: null,
      });
      assert.equal(msg.id, origin.ack.messageId);
      assert.equal(msg.deletedAt, null);
    }

    // "Never" made observable: one last message in channel B, which everyone is in. When it
    // has reached the outsiders, anything from A would have reached them before it.
    const last = await emitWithAck(sockets[0], "message:send", {
      targetId: chanB.id,
      targetType: "channel",
      content: "to everyone",
      clientMsgId: randomUUID(),
    });
    assert.equal(last.success, true, JSON.stringify(last));
    await until(
      () => received.every((msgs) => msgs.some((m) => m.id === last.messageId)),
      30_000,
      "everyone receives the channel B message",
    );
    for (let i = MEMBERS; i < MEMBERS + OUTSIDERS; i++) {
      assert.deepEqual(
        received[i].map((m) => m.id),
        [last.messageId],
        `outsider ${i} got only the channel B message`,
      );
    }
    for (let i = 0; i < MEMBERS; i++) {
      assert.equal(received[i].length, total + 1, `member ${i}: no duplicates after the last message`);
    }
  });
});
