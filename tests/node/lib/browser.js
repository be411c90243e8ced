// Browser harness: Debian's Chromium (installed by tools/setup-browser) driven by
// playwright-core, a TCP proxy whose network the test can cut, and a static web server that
// plays the web app on another origin.

import { existsSync, mkdirSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import path from "node:path";

import { chromium } from "playwright-core";

import { repoRoot } from "./server.js";

/** The browser binary: Debian's package, never a browser build fetched by Playwright. */
export const CHROMIUM = process.env.OCOMMS_CHROMIUM ?? "/usr/bin/chromium";

/**
 * Why browser tests cannot run here, or null when they can. node:test's `skip` option
 * prints the reason, so a skipped run says so plainly.
 */
export const browserMissing = existsSync(CHROMIUM)
  ? null
  : `Chromium is not installed at ${CHROMIUM} and tools/setup-browser could not install it: browser tests skipped`;

/**
 * Starts headless Chromium. Without these flags Chromium's background connections (updates,
 * sync, QUIC probes) try to reach the outside network, which this machine refuses. Every
 * launch gets a fresh temporary profile (Playwright's own user-data-dir), so no cookie or
 * storage leaks from one run into the next.
 */
export function launch() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

/** A page whose console errors and uncaught exceptions are kept for failure messages. */
export async function newPage(context) {
  const page = await context.newPage();
  page.problems = [];
  page.on("pageerror", (e) => page.problems.push(`pageerror: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error") page.problems.push(`console: ${m.text()}`);
  });
  return page;
}

/** Where screenshots go: `OCOMMS_SCREENSHOT_DIR`, else tests/node/.tmp/screenshots. */
export function screenshotPath(name) {
  const dir = path.resolve(repoRoot, process.env.OCOMMS_SCREENSHOT_DIR ?? "tests/node/.tmp/screenshots");
  mkdirSync(dir, { recursive: true });
  return path.join(dir, name);
}

/**
 * A TCP proxy on 127.0.0.1 to `target` ({host, port}). `cut()` destroys every connection
 * through it and refuses new ones (accepted, then reset) until `restore()`: for both ends it
 * looks like the network went away.
 */
export async function startProxy(target) {
  const pairs = new Set();
  const reset = (socket) => {
    try {
      socket.resetAndDestroy();
    } catch {
      socket.destroy(); // not connected yet: nothing to reset
    }
  };
  let cut = false;
  const server = net.createServer((client) => {
    if (cut) {
      reset(client);
      return;
    }
    const upstream = net.connect(target.port, target.host);
    const pair = { client, upstream };
    pairs.add(pair);
    const end = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("error", end).on("close", end);
    upstream.on("error", end).on("close", end);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}`,
    /** Connections currently carried. */
    get open() {
      return pairs.size;
    },
    cut() {
      cut = true;
      for (const { client, upstream } of pairs) {
        reset(client);
        reset(upstream);
      }
      pairs.clear();
    },
    restore() {
      cut = false;
    },
    close() {
      this.cut();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

/**
 * A small web server standing in for the web app: `routes` maps a path to
 * `{type, body, headers?}`. Resolves with its origin (`http://127.0.0.1:PORT`) and close().
 */
export async function startStatic(routes) {
  const server = http.createServer((req, res) => {
    const route = routes[new URL(req.url, "http://x").pathname];
    if (!route) {
      res.writeHead(404, { "content-type": "text/plain" }).end("not found");
      return;
    }
    res.writeHead(200, { "content-type": route.type, "cache-control": "no-store", ...route.headers }).end(route.body);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    origin: `http://127.0.0.1:${server.address().port}`,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(resolve);
      }),
  };
}
