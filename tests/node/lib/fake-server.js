// A stand-in for ocomms-rt used only by test/harness.test.js: prints a tracing-style start line
// (with ANSI colours, as tracing-subscriber may), serves /healthz, exits 0 on SIGTERM.
// FAKE_MODE=exit-early exits 3 after printing an error; FAKE_MODE=silent never prints.
// GET /env shows the cluster settings it was started with.
import http from "node:http";

const mode = process.env.FAKE_MODE ?? "ok";
if (mode === "exit-early") {
  console.error("Error: CHAT_SHARDS=\"zero\": not a whole number");
  process.exit(3);
}
const server = http.createServer((req, res) => {
  if (req.url === "/healthz") {
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ status: "ok", shards: Number(process.env.CHAT_SHARDS) }));
  } else if (req.url === "/env") {
    // What a cluster harness gave this node (harness self-tests only).
    const { REDIS_URL, CHAT_REDIS_PREFIX, DATABASE_URL, CHAT_JWT_SECRET, CHAT_ADMIN_TOKEN } = process.env;
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ REDIS_URL, CHAT_REDIS_PREFIX, DATABASE_URL, CHAT_JWT_SECRET, CHAT_ADMIN_TOKEN }));
  } else if (req.url === "/metrics") {
    res.writeHead(200, { "content-type": "text/plain; version=0.0.4" });
    res.end('# TYPE ocomms_slow_consumers_dropped_total counter\nocomms_slow_consumers_dropped_total{shard="0"} 2\nocomms_slow_consumers_dropped_total{shard="1"} 3\n');
  } else {
    res.writeHead(404, { "content-type": "application/json" });
    res.end(JSON.stringify({ error: `no route ${req.url}`, auth: req.headers.authorization ?? null }));
  }
});
const [host, port] = process.env.CHAT_LISTEN.split(":");
server.listen(Number(port), host, () => {
  if (mode === "silent") return;
  const { port: bound } = server.address();
  process.stdout.write(
    `2025-01-01T00:00:00Z \x1b[32m INFO\x1b[0m \x1b[2mocomms_rt::node\x1b[0m\x1b[2m:\x1b[0m ocomms-rt started \x1b[3mlisten\x1b[0m\x1b[2m=\x1b[0m${host}:${bound} \x1b[3mshards\x1b[0m\x1b[2m=\x1b[0m${process.env.CHAT_SHARDS}\n`,
  );
});
process.on("SIGTERM", () => server.close(() => process.exit(0)));
