// One process per port: a second ocomms-rt on a port in use refuses to start and says why
// (SO_REUSEPORT would otherwise let it join the first one's listeners silently).

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { after, before, describe, test } from "node:test";

import { binaryPath, startServer, within } from "../lib/server.js";

describe("one process per port", { timeout: 60_000 }, () => {
  let server;

  before(async () => {
    server = await startServer({ shards: 2 });
  });

  after(async () => {
    await server?.stop();
  });

  test("a second server on the same port exits with the reason; the first goes on", async () => {
    const env = { ...process.env, CHAT_LISTEN: `127.0.0.1:${server.port}`, CHAT_SHARDS: "2" };
    delete env.DATABASE_URL;
    delete env.REDIS_URL;
    const second = spawn(binaryPath(), [], { env, stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    second.stdout.on("data", (d) => (output += d));
    second.stderr.on("data", (d) => (output += d));
    const exit = new Promise((resolve) => second.on("exit", (code) => resolve(code)));
    let code;
    try {
      code = await within(exit, 15_000, "the second server to exit");
    } finally {
      second.kill("SIGKILL");
    }
    assert.notEqual(code, 0);
    assert.match(output, new RegExp(`cannot listen on 127\\.0\\.0\\.1:${server.port} \\(CHAT_LISTEN\\): another process listens on that port`));
    assert.doesNotMatch(output, /ocomms-rt started/);
    const health = await server.request("GET", "/healthz", { fresh: true });
    assert.equal(health.status, 200);
  });
});
