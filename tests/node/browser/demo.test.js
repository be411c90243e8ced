// The demo chat page in a real browser: two people chat, see each other type and come and go,
// a reload brings the history back, and a cut network ends in a recovered session.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { browserMissing, launch, newPage, screenshotPath, startProxy } from "../lib/browser.js";
import { startServer } from "../lib/server.js";

const WAIT_MS = 10000;

describe("demo chat page", { skip: browserMissing ?? false }, () => {
  let server;
  let proxy;
  let browser;
  let ada; // through the proxy, whose network the test cuts
  let grace; // straight to the server

  before(async () => {
    server = await startServer({ shards: 2, env: { CHAT_DEMO: "1" } });
    proxy = await startProxy({ host: server.host, port: server.port });
    browser = await launch();
  });

  after(async () => {
    for (const page of [ada, grace]) if (page?.problems.length) console.log(page.problems.join("\n"));
    await browser?.close();
    await proxy?.close();
    await server?.stop();
  });

  /** Opens the page in a fresh context (its own cookies and storage) and signs in as `name`. */
  async function signIn(url, name) {
    const context = await browser.newContext({ viewport: { width: 1100, height: 640 } });
    const page = await newPage(context);
    page.setDefaultTimeout(WAIT_MS);
    await page.goto(url);
    await page.click(`#users button[data-user="${name}"]`);
    await page.waitForSelector('#state[data-state="connected"]');
    return page;
  }

  const say = async (page, text) => {
    await page.fill("#input", text);
    await page.press("#input", "Enter");
  };
  const messageNamed = (text) => `#messages li.message:not(.pending):has(p:text-is("${text}"))`;

  test("two people chat, and see each other type and come online", async () => {
    ada = await signIn(proxy.url, "Ada");
    grace = await signIn(server.url, "Grace");

    // The seeded history is there, and each sees the other online.
    await ada.waitForSelector(messageNamed("Everything lives in memory here: stop the server and it is gone."));
    await grace.waitForSelector('#people li[data-user="Ada"][data-presence="active"]');
    await ada.waitForSelector('#people li[data-user="Grace"][data-presence="active"]');

    await say(grace, "Hello Ada, can you read me?");
    await ada.waitForSelector(messageNamed("Hello Ada, can you read me?"));

    await ada.type("#input", "Loud and cl", { delay: 20 });
    await grace.waitForSelector('#typing:text-is("Ada is typing…")');
    await grace.mouse.move(0, 0);
    await grace.screenshot({ path: screenshotPath("demo-chat.png") });
    await ada.type("#input", "ear");
    await ada.press("#input", "Enter");
    await grace.waitForSelector(messageNamed("Loud and clear"));
    await grace.waitForSelector('#typing:text-is("")');

    // Both see the same messages in the same order.
    const read = (page) => page.$$eval("#messages li.message:not(.pending) p", (ps) => ps.map((p) => p.textContent));
    assert.deepEqual(await read(ada), await read(grace));
  });

  test("a reload brings the history back", async () => {
    await grace.reload();
    await grace.waitForSelector('#state[data-state="connected"]');
    await grace.waitForSelector(messageNamed("Hello Ada, can you read me?"));
    await grace.waitForSelector(messageNamed("Loud and clear"));
    assert.equal(await grace.textContent("#me"), "Grace", "the tab is still signed in as Grace");
  });

  test("after a network cut the session is recovered with what was missed", async () => {
    proxy.cut();
    await ada.waitForSelector('#state[data-state="reconnecting"]');
    await say(grace, "Sent while Ada was cut off");
    await grace.waitForSelector(messageNamed("Sent while Ada was cut off"));
    proxy.restore();
    await ada.waitForSelector('#state[data-state="recovered"]');
    await ada.waitForSelector(messageNamed("Sent while Ada was cut off"));
    const sequences = await ada.$$eval("#messages li.message:not(.pending)", (lis) => lis.map((li) => Number(li.dataset.seq)));
    assert.deepEqual(sequences, [...sequences].sort((a, b) => a - b), "in sequence order");
    assert.equal(new Set(sequences).size, sequences.length, "nothing twice");
    await ada.mouse.move(0, 0);
    await ada.screenshot({ path: screenshotPath("demo-recovered.png") });
  });

  test("someone who leaves shows as offline", async () => {
    await grace.context().close();
    await ada.waitForSelector('#people li[data-user="Grace"][data-presence="offline"]');
    grace = null;
  });
});
