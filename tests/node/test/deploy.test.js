// The operator files in deploy/ name only metrics the server really exports: every `ocomms_*`
// and `process_*` name in the Prometheus rules and the Grafana dashboard is looked up in a
// live /metrics (a histogram's `_bucket`, `_sum` and `_count` samples included).

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { after, before, describe, test } from "node:test";

import { emitWithAck, repoRoot, startServer } from "../lib/server.js";

const FILES = ["deploy/prometheus/ocomms-rt.rules.yml", "deploy/grafana/ocomms-rt.json"];

/** Metric names a file refers to. */
function named(file) {
  const text = readFileSync(path.join(repoRoot, file), "utf8");
  return new Set(text.match(/\b(?:ocomms|process)_[a-z0-9_]+/g) ?? []);
}

/** Every sample name and metric family in a /metrics body. */
function exported(text) {
  const names = new Set();
  for (const line of text.split("\n")) {
    const family = /^# TYPE (\S+)/.exec(line);
    if (family) names.add(family[1]);
    const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]/.exec(line);
    if (sample) names.add(sample[1]);
  }
  return names;
}

describe("deploy/ files", () => {
  let server;
  let metrics;

  before(async () => {
    server = await startServer({ shards: 2 });
    // One acked send, so that every counter and the ack histogram have moved.
    const world = await server.provision({ users: 1, channels: [{ members: "all" }] });
    const socket = await server.connectUser(world.users[0], world.workspaceId);
    const ack = await emitWithAck(socket, "message:send", { targetId: world.channels[0].id, targetType: "channel", content: "x" });
    assert.equal(ack.success, true);
    metrics = (await server.request("GET", "/metrics")).text;
  });

  after(() => server?.stop());

  for (const file of FILES) {
    test(`${file} names only exported metrics`, () => {
      const names = named(file);
      assert.ok(names.size >= 8, `${file} names ${names.size} metrics`);
      const have = exported(metrics);
      const missing = [...names].filter((n) => !have.has(n));
      assert.deepEqual(missing, [], `${file} names metrics /metrics does not export`);
    });
  }

  test("the ack histogram counted the send", () => {
    const count = /^ocomms_send_ack_seconds_count (\d+)$/m.exec(metrics);
    assert.ok(count && Number(count[1]) >= 1, `ocomms_send_ack_seconds_count in\n${metrics}`);
  });

  test("the Grafana dashboard is valid JSON with a query per panel", () => {
    const dashboard = JSON.parse(readFileSync(path.join(repoRoot, FILES[1]), "utf8"));
    const panels = dashboard.panels.filter((p) => p.type !== "row");
    assert.ok(panels.length >= 10);
    for (const p of panels) assert.ok(p.targets?.length >= 1 && p.targets.every((t) => t.expr), p.title);
  });
});
