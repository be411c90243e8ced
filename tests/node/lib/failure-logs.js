// When a test file fails, the last lines of the servers it started go to stderr (the test
// runner shows them under the file's results): a failure seen once in CI can then be read
// from the servers' own account. Only the most recent servers are kept.

const KEPT = 6;
const LINES = 80;
const recent = [];

/** Keeps `server` (anything with `pid` and `tail(lines)`) among the recent ones. */
export function remember(server) {
  recent.push(server);
  if (recent.length > KEPT) recent.shift();
}

process.on("exit", (code) => {
  if ((process.exitCode ?? code) === 0) return;
  for (const server of recent) {
    process.stderr.write(`--- ocomms-rt pid ${server.pid}: its last ${LINES} lines ---\n${server.tail(LINES)}\n`);
  }
});
