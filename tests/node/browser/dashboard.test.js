// The dashboard in a real browser: it asks for the admin token, refuses a wrong one, and then
// shows the node's store and Redis status, its shards, and live rates while clients chat.

import assert from "node:assert/strict";
import { setTimeout as pace } from "node:timers/promises";
import { after, before, describe, test } from "node:test";

import { browserMissing, launch, newPage, screenshotPath } from "../lib/browser.js";
import { emitWithAck, startServer } from "../lib/server.js";

const WAIT_MS = 10000;
// How long the chat load runs before the screenshot (tools/screenshots asks for longer, so
// that the charts have a history to show).
const LOAD_SECONDS = Number(process.env.OCOMMS_DASHBOARD_LOAD_SECONDS ?? 3);

describe("dashboard", { skip: browserMissing ?? false }, () => {
  let server;
  let browser;
  let page;

  before(async () => {
    server = await startServer({ shards: 2 });
    browser = await launch();
    page = await newPage(await browser.newContext({ viewport: { width: 1200, height: 860 } }));
    page.setDefaultTimeout(WAIT_MS);
  });

  after(async () => {
    if (page?.problems.length) console.log(page.problems.join("\n"));
    await browser?.close();
    await server?.stop();
  });

  test("asks for the admin token and refuses a wrong one", async () => {
    await page.goto(`${server.url}/dashboard`);
    await page.waitForSelector("#login:not([hidden])");
    assert.equal(await page.isHidden("#board"), true, "nothing is shown without a token");
    await page.fill("#token", "not-the-token");
    await page.click("#token-form button");
    await page.waitForSelector('#login-error:has-text("does not match CHAT_ADMIN_TOKEN")');
    assert.equal(await page.isHidden("#board"), true);
  });

  test("shows status, shards and live rates while clients chat", async () => {
    page.problems.length = 0; // the refused token's 401s above are expected
    await page.fill("#token", server.adminToken);
    await page.click("#token-form button");
    await page.waitForSelector('#state[data-state="connected"]');
    assert.equal(await page.textContent("#store"), "memory: ok");
    assert.equal(await page.textContent("#redis"), "not configured");
    await page.waitForFunction(() => document.querySelectorAll("#shards tr").length === 2);

    const world = await server.provision({ users: 24, channels: [{ members: "all" }] });
    const [channel] = world.channels;
    const sockets = [];
    let stop = false;
    // Clients arrive one by one and take turns sending, about 25 messages a second.
    const load = (async () => {
      for (let i = 0; !stop; i++) {
        if (sockets.length < world.users.length) sockets.push(await server.connectUser(world.users[sockets.length], world.workspaceId));
        const from = sockets[i % sockets.length];
        const ack = await emitWithAck(from, "message:send", { targetId: channel.id, targetType: "channel", content: `load ${i}` });
        assert.equal(ack.success, true, JSON.stringify(ack));
        await pace(40);
      }
    })();
    try {
      // Each chart says what it shows now in its aria-label.
      const shows = (id, pattern) =>
        page.waitForFunction(([id, source]) => new RegExp(source).test(document.getElementById(id).getAttribute("aria-label")), [
          id,
          pattern.source,
        ]);
      await shows("chart-acks", /acks: [1-9]/);
      await shows("chart-deliveries", /deliveries: [1-9]/);
      await shows("chart-latency", /p50: [0-9.]+ ms/);
      await shows("chart-connections", /shard 0: \d+.*shard 1: \d+/);
      await pace(LOAD_SECONDS * 1000);
      // Connections per shard add up to the total the tile shows.
      const rows = await page.$$eval("#shards tr", (trs) => trs.map((tr) => Number(tr.children[2].textContent)));
      const tile = Number((await page.textContent("#connections")).replace(/\D/g, ""));
      assert.equal(rows.reduce((a, b) => a + b, 0), tile, `per-shard rows ${rows} vs total ${tile}`);
      await page.screenshot({ path: screenshotPath("dashboard.png") });
    } finally {
      stop = true;
      await load;
      for (const s of sockets) s.disconnect();
    }
    assert.deepEqual(page.problems, [], "no page errors");
  });
});
