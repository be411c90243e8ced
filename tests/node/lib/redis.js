// A private redis-server for one test file: on a free port, in a temporary directory, never
// persisting, killed when stopped and in any case when the test process exits (a failed test
// never leaves one behind). Tests never touch the shared Redis on 6379, so never FLUSHALL.

import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";

const running = new Set();
process.on("exit", () => {
  for (const r of running) r.kill();
});

/** A free TCP port on 127.0.0.1 (the kernel picks it; released again for the server). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Encodes one command in RESP. */
function resp(args) {
  return `*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(String(a))}\r\n${a}\r\n`).join("")}`;
}

/**
 * Sends one command over a fresh connection and resolves with the first reply line's text
 * (simple replies and short bulk strings: enough for PING, INFO fields, CONFIG).
 */
export function redisCommand(port, args, timeoutMs = 2000) {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, "127.0.0.1");
    let buf = "";
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`redis ${args[0]} on port ${port}: no answer within ${timeoutMs} ms`));
    }, timeoutMs);
    sock.on("error", (err) => {
      clearTimeout(timer);
      reject(new Error(`redis ${args[0]} on port ${port}: ${err.message}`));
    });
    sock.on("data", (d) => {
      buf += d.toString("utf8");
      const first = buf.indexOf("\r\n");
      if (first < 0) return;
      const head = buf.slice(0, first);
      if (head[0] === "$") {
        const len = Number(head.slice(1));
        if (len < 0) return done(null);
        if (buf.length < first + 2 + len + 2) return;
        return done(buf.slice(first + 2, first + 2 + len));
      }
      return done(head.slice(1));
    });
    const done = (value) => {
      clearTimeout(timer);
      sock.end();
      resolve(value);
    };
    sock.write(resp(args));
  });
}

/** One running redis-server. */
export class Redis {
  constructor(port, dir) {
    this.port = port;
    this.dir = dir;
    this.child = null;
  }

  /** `redis://127.0.0.1:PORT` */
  get url() {
    return `redis://127.0.0.1:${this.port}`;
  }

  /** The server's pid while it runs (for /proc CPU readings). */
  get pid() {
    return this.child?.pid ?? null;
  }

  async spawn() {
    const child = spawn(
      "redis-server",
      ["--bind", "127.0.0.1", "--port", String(this.port), "--save", "", "--appendonly", "no", "--dir", this.dir],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    this.output = "";
    const keep = (c) => {
      this.output = (this.output + c.toString("utf8")).slice(-20000);
    };
    child.stdout.on("data", keep);
    child.stderr.on("data", keep);
    this.child = child;
    running.add(this);
    this.exited = new Promise((resolve) => child.on("exit", resolve));
    const spawnError = new Promise((_, reject) =>
      child.on("error", (e) => reject(new Error(`cannot start redis-server (is it installed?): ${e.message}`))),
    );
    const deadline = Date.now() + 10000;
    for (;;) {
      try {
        const pong = await Promise.race([redisCommand(this.port, ["PING"], 500), spawnError]);
        if (pong === "PONG") return;
      } catch (err) {
        if (err.message.startsWith("cannot start")) throw err;
      }
      if (child.exitCode !== null) throw new Error(`redis-server exited early:\n${this.output}`);
      if (Date.now() > deadline) throw new Error(`redis-server did not answer PING within 10 s:\n${this.output}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** Runs one command (see redisCommand). */
  command(...args) {
    return redisCommand(this.port, args);
  }

  /** SIGKILL: connections drop, data is gone (an outage). */
  kill() {
    if (this.child && this.child.exitCode === null && this.child.signalCode === null) {
      try {
        this.child.kill("SIGCONT");
        this.child.kill("SIGKILL");
      } catch {
        // already gone
      }
    }
  }

  /** Stops the server and waits for its exit. */
  async stopProcess() {
    if (!this.child) return;
    this.kill();
    await this.exited;
    running.delete(this);
    this.child = null;
  }

  /** Starts it again on the same port (empty). */
  async restart() {
    await this.stopProcess();
    await this.spawn();
  }

  /** SIGSTOP (true) or SIGCONT (false): a server that stops answering with its sockets open. */
  pause(paused) {
    this.child?.kill(paused ? "SIGSTOP" : "SIGCONT");
  }

  /** Stops it for good and removes its directory. */
  async stop() {
    await this.stopProcess();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Starts a private redis-server on a free port. */
export async function startRedis() {
  const dir = mkdtempSync(path.join(os.tmpdir(), "ocomms-redis-"));
  const redis = new Redis(await freePort(), dir);
  try {
    await redis.spawn();
  } catch (err) {
    await redis.stop();
    throw err;
  }
  return redis;
}
