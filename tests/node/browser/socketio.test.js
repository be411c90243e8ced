// The real socket.io-client (its browser bundle from node_modules, served by a stand-in web
// app on another origin) in real Chromium against the real server: default transports
// (polling, then the upgrade), the better-auth session cookie with `withCredentials` through
// CHAT_CORS_ORIGINS, and connection state recovery after the test cuts the network.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { after, before, describe, test } from "node:test";

import { browserMissing, launch, newPage, startProxy, startStatic } from "../lib/browser.js";
import { collect, emitWithAck, startServer } from "../lib/server.js";

const WAIT_MS = 10000;
const bundle = () =>
  readFileSync(path.resolve(import.meta.dirname, "..", "node_modules", "socket.io-client", "dist", "socket.io.min.js"), "utf8");

// The app's page: it holds no token (the session cookie is HttpOnly), so the server can only
// authenticate it by the cookie the browser sends along with `withCredentials`.
const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><link rel="icon" href="data:,"><script src="/socket.io.min.js"></script></head>
<body><script>
  window.log = { messages: [], connects: [], disconnects: [], errors: [], transports: [] };
  window.start = (url, workspaceId) => new Promise((resolve) => {
    const socket = io(url, { withCredentials: true, auth: { workspaceId } });
    window.socket = socket;
    socket.io.on("open", () => {
      log.transports.push(socket.io.engine.transport.name);
      socket.io.engine.on("upgrade", (t) => log.transports.push(t.name));
    });
    socket.on("connect", () => { log.connects.push({ id: socket.id, recovered: socket.recovered }); resolve(log.connects.at(-1)); });
    socket.on("connect_error", (e) => { log.errors.push(e.message); resolve({ error: e.message }); });
    socket.on("disconnect", (reason) => log.disconnects.push(reason));
    socket.on("message:new", (m) => log.messages.push({ content: m.content, sequence: m.sequence }));
  });
</script></body></html>`;

describe("socket.io-client in Chromium", { skip: browserMissing ?? false }, () => {
  let app; // the web app's origin, allowed by CHAT_CORS_ORIGINS
  let stranger; // another origin, not allowed
  let server;
  let proxy;
  let browser;
  let world;
  let token;

  before(async () => {
    const routes = (cookie) => ({
      "/": { type: "text/html; charset=utf-8", body: PAGE, headers: cookie ? { "set-cookie": cookie } : {} },
      "/socket.io.min.js": { type: "text/javascript", body: bundle() },
    });
    // Each origin sets the cookie the way the web app's better-auth would: HttpOnly, the
    // token before the first dot, a signature after it.
    let cookie = "";
    app = await startStatic(new Proxy({}, { get: (_, p) => routes(cookie)[p] }));
    stranger = await startStatic(new Proxy({}, { get: (_, p) => routes(cookie)[p] }));
    server = await startServer({ shards: 2, env: { CHAT_CORS_ORIGINS: app.origin } });
    proxy = await startProxy({ host: server.host, port: server.port });
    world = await server.provision({ users: 2, channels: [{ members: "all" }] });
    ({ token } = await server.session(world.users[0].id));
    cookie = `better-auth.session_token=${token}.c2lnbmF0dXJl; Path=/; HttpOnly; SameSite=Lax`;
    browser = await launch();
  });

  after(async () => {
    await browser?.close();
    await proxy?.close();
    await app?.close();
    await stranger?.close();
    await server?.stop();
  });

  test("polling then upgrade, the cookie across origins, and a recovered reconnect", async () => {
    const page = await newPage(await browser.newContext());
    page.setDefaultTimeout(WAIT_MS);
    const [channel] = world.channels;
    const other = await server.connectUser(world.users[1], world.workspaceId);
    const seenByOther = collect(other, "message:new");

    await page.goto(app.origin);
    assert.equal(await page.evaluate(() => document.cookie), "", "the page cannot read the HttpOnly cookie");
    const connected = await page.evaluate(([url, ws]) => start(url, ws), [proxy.url, world.workspaceId]);
    assert.ok(connected.id, `connected by cookie: ${JSON.stringify(connected)} ${page.problems}`);
    await page.waitForFunction(() => log.transports.join() === "polling,websocket");

    // Both ways, after the upgrade.
    const hello = await emitWithAck(other, "message:send", { targetId: channel.id, targetType: "channel", content: "to the browser" });
    assert.equal(hello.success, true);
    await page.waitForFunction(() => log.messages.some((m) => m.content === "to the browser"));
    const ack = await page.evaluate(
      ([targetId]) => socket.timeout(5000).emitWithAck("message:send", { targetId, targetType: "channel", content: "from the browser" }),
      [channel.id],
    );
    assert.equal(ack.success, true, JSON.stringify(ack));
    await seenByOther.until((got) => got.some((m) => m.content === "from the browser"), WAIT_MS, "the browser's message");

    // Cut the network, send while the browser is away, give the network back.
    proxy.cut();
    await page.waitForFunction(() => log.disconnects.length === 1);
    const missed = [];
    for (const n of [1, 2, 3]) {
      const sent = await emitWithAck(other, "message:send", { targetId: channel.id, targetType: "channel", content: `missed ${n}` });
      assert.equal(sent.success, true);
      missed.push(sent.sequence);
    }
    proxy.restore();
    await page.waitForFunction(() => log.connects.length === 2, null, { timeout: 15000 });
    const log = await page.evaluate(() => log);
    assert.equal(log.connects[1].recovered, true, `socket.recovered after the cut: ${JSON.stringify(log)}`);
    const sequences = log.messages.map((m) => m.sequence);
    assert.deepEqual(
      log.messages.filter((m) => m.content.startsWith("missed")).map((m) => m.sequence),
      missed,
      "the missed messages were replayed, in order",
    );
    assert.deepEqual(sequences, [...new Set(sequences)].sort((a, b) => a - b), "in order, nothing twice");
    await page.waitForFunction(() => log.transports.join() === "polling,websocket,polling,websocket");
    other.disconnect();
    assert.deepEqual(page.problems.filter((p) => !p.includes("ERR_CONNECTION_RESET")), [], "no page errors");
  });

  test("a page on an origin outside CHAT_CORS_ORIGINS cannot connect", async () => {
    const page = await newPage(await browser.newContext());
    page.setDefaultTimeout(WAIT_MS);
    await page.goto(stranger.origin);
    const result = await page.evaluate(([url, ws]) => start(url, ws), [server.url, world.workspaceId]);
    assert.ok(result.error, `refused: ${JSON.stringify(result)}`);
    assert.ok(page.problems.some((p) => p.includes("CORS")), `the browser blocked it for CORS: ${page.problems}`);
    await page.evaluate(() => socket.disconnect());
  });
});
