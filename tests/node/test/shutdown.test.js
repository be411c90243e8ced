// SIGTERM with clients connected: they see a disconnect and the process exits 0.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { once, startServer, within } from "../lib/server.js";

describe("graceful shutdown", { timeout: 60_000 }, () => {
  test("SIGTERM disconnects every client and exits 0", async () => {
    // One process, also when the suite runs against a cluster: this signals that process.
    const server = await startServer({ single: true });
    try {
      const ws = await server.provision({ users: 5, channels: [{ members: "all" }] });
      const sockets = await Promise.all(ws.users.map((u) => server.connectUser(u, ws.workspaceId)));
      const disconnects = sockets.map((s) => once(s, "disconnect", 15_000));
      // stop() would close the sockets itself first; this test signals the process directly.
      server.child.kill("SIGTERM");
      const reasons = await within(Promise.all(disconnects), 15_000, "every client sees a disconnect");
      for (const reason of reasons) {
        assert.match(reason, /transport close|io server disconnect|transport error/, `disconnect reason ${reason}`);
      }
      const exit = await within(server.exited, 15_000, "process exit after SIGTERM");
      assert.deepEqual(exit, { code: 0, signal: null }, `exit status (output:\n${server.tail()})`);
    } finally {
      await server.stop({ signal: "SIGKILL" });
    }
  });

  test("SIGINT also exits 0", async () => {
    const server = await startServer({ shards: 1 });
    const exit = await server.stop({ signal: "SIGINT" });
    assert.deepEqual(exit, { code: 0, signal: null }, server.tail());
  });
});
