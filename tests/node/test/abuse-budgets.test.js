// Contract §3 "Every client event has a budget": a client over one is told once with an
// `error` event, its extra events are refused, and one that goes on is cut; the other
// clients notice nothing. Budgets are set small here so the floods are short.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { collect, emitWithAck, once, startServer } from "../lib/server.js";

const SEND_BURST = 20;
const REFUSED = 100;
const PRESENCE_BURST = 5;
const HONEST = 30;

describe("event budgets", { timeout: 120_000 }, () => {
  let server;
  let ws;

  before(async () => {
    server = await startServer({
      shards: 2,
      env: {
        // Bursts that do not refill during the test, so the counts below are exact.
        CHAT_LIMIT_SENDS: `${SEND_BURST}/3600s`,
        CHAT_LIMIT_PRESENCE: `${PRESENCE_BURST}/3600s`,
        CHAT_LIMIT_REFUSED: `${REFUSED}/3600s`,
      },
    });
    ws = await server.provision({ users: HONEST + 2, channels: [{ members: "all" }] });
  });

  after(async () => {
    server?.closeSockets();
    await server?.stop();
  });

  const channel = () => ws.channels[0].id;
  const send = (socket, content) =>
    emitWithAck(socket, "message:send", { targetId: channel(), targetType: "channel", content }, 15_000);

  test("a send flood is refused, told once, then cut; an honest sender is not affected", async () => {
    const flooder = await server.connectUser(ws.users[0], ws.workspaceId);
    const honest = await server.connectUser(ws.users[1], ws.workspaceId);
    const reader = await server.connectUser(ws.users[2], ws.workspaceId);
    const got = collect(reader, "message:new");
    const errors = collect(flooder, "error");
    const cut = once(flooder, "disconnect", 30_000);

    // The burst, acked one by one: all stored.
    for (let i = 0; i < SEND_BURST; i++) assert.equal((await send(flooder, `f${i}`)).success, true);
    // Over the budget: refused with the reason, and the one error event.
    const refused = await send(flooder, "over");
    assert.equal(refused.success, false);
    assert.match(refused.error, /message:send are limited to 20 per 3600 s/);
    await errors.until(1);
    // The honest sender goes on as before.
    assert.equal((await send(honest, "still here")).success, true);
    // The flood goes on without acks: the socket is cut once REFUSED events were refused.
    for (let i = 0; i < REFUSED + 50; i++) {
      flooder.emit("message:send", { targetId: channel(), targetType: "channel", content: `x${i}` });
    }
    // Cut: a Socket.IO DISCONNECT ("io server disconnect", which the client does not retry)
    // after the reason; while the flood is still arriving the kernel may reset the
    // connection before the client reads them ("transport close"), or, over long-polling,
    // the POST carrying the flood fails once the session is gone ("transport error").
    const reason = await cut;
    assert.match(reason, /^(io server disconnect|transport close|transport error)$/);
    assert.ok(errors.length <= 2, `told once (and maybe why it was cut): ${JSON.stringify(errors)}`);
    if (errors.length === 2) assert.match(errors[1].message, /disconnected: this socket went on sending/);
    assert.equal(await server.metric("ocomms_clients_cut_total"), 1, "cut for its budget");

    await got.until((g) => g.some((m) => m.content === "still here"));
    const fromFlooder = got.filter((m) => m.authorId === ws.users[0].id);
    assert.equal(fromFlooder.length, SEND_BURST, "only the burst was stored and delivered");
    assert.ok(honest.connected && reader.connected, "the others are still connected");
    honest.disconnect();
    reader.disconnect();
  });

  test("a presence flip loop is merged and then cut: updates stay bounded and honest sockets are not dropped", async () => {
    const flipperUser = ws.users[HONEST + 1];
    const observers = [];
    for (let i = 0; i < HONEST; i++) observers.push(await server.connectUser(ws.users[i], ws.workspaceId));
    const updates = observers.map((o) => collect(o, "presence:update"));
    const flipper = await server.connectUser(flipperUser, ws.workspaceId);
    const errors = collect(flipper, "error");
    const cut = once(flipper, "disconnect", 30_000);
    const flip = (i) => flipper.emit(i % 2 === 0 ? "presence:setAway" : "presence:setActive");
    // The burst of changes passes; the next one is over the budget: told once.
    for (let i = 0; i <= PRESENCE_BURST; i++) flip(i);
    await errors.until(1);
    // Over the budget each change waits for it (merged, the last word wins) and counts as a
    // refusal: past REFUSED of them, the flipper is cut.
    for (let i = PRESENCE_BURST + 1; i < 4 * REFUSED; i++) flip(i);
    // Cut as a send flood is (see above): the reason, then a DISCONNECT, or a reset while
    // the flips still arrive.
    const reason = await cut;
    assert.match(reason, /^(io server disconnect|transport close|transport error)$/);
    assert.ok(errors.length >= 1 && errors.length <= 2, `told once (and maybe why it was cut): ${JSON.stringify(errors)}`);
    assert.match(errors[0].message, /presence changes are limited/);
    if (errors.length === 2) assert.match(errors[1].message, /disconnected: this socket went on sending/);
    // A round trip through every observer proves they are alive and caught up.
    const seen = observers.map((o) => collect(o, "message:new"));
    const marker = await send(observers[0], "after the flips");
    assert.equal(marker.success, true);
    await Promise.all(seen.map((s) => s.until((g) => g.some((m) => m.content === "after the flips"))));
    for (const [i, u] of updates.entries()) {
      const ofFlipper = u.filter((x) => x.userId === flipperUser.id);
      // Its "active" on connect (if this observer saw it), then at most the burst of changes,
      // then its "offline" when it was cut.
      assert.ok(ofFlipper.length <= PRESENCE_BURST + 2, `observer ${i} got ${ofFlipper.length} updates`);
    }
    assert.ok(observers.every((o) => o.connected), "no honest socket was dropped");
    for (const o of observers) o.disconnect();
  });
});
