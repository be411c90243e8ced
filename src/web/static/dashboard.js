// The live dashboard: once a second it reads `/api/v1/metrics` (the Prometheus text of
// `/metrics`) and `/api/v1/healthz` with the admin token, and turns counters into rates.
//
// Series are keyed by node and shard: `ocomms_connections{shard="0"}` today; a `node` label,
// when the server adds one for several nodes, gives each node its own rows and lines.

import { LineChart } from "/assets/charts.js";

const $ = (id) => document.getElementById(id);
const STORAGE = "ocomms-dashboard-token";
const PERIOD_MS = 1000;

const charts = {
  connections: new LineChart($("chart-connections"), { title: "Connections per shard" }),
  deliveries: new LineChart($("chart-deliveries"), { title: "Deliveries per second", format: rate }),
  acks: new LineChart($("chart-acks"), { title: "message:send acks per second", format: rate }),
  latency: new LineChart($("chart-latency"), { title: "Ack latency (last second)", format: millis }),
};

let token = sessionStorage.getItem(STORAGE);
let previous = null; // the last scrape: {at, samples}
let timer = null;

function rate(v) {
  return v >= 100 || v === 0 ? Math.round(v).toLocaleString() : v.toFixed(1);
}

function millis(v) {
  return `${v >= 10 || v === 0 ? Math.round(v) : v.toFixed(v >= 1 ? 1 : 2)} ms`;
}

/** Prometheus text format to [{name, labels, value}]. */
function parse(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][\w:]*)(?:\{([^}]*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = {};
    for (const pair of (m[2] ?? "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[pair[1]] = pair[2];
    samples.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return samples;
}

const pick = (samples, name) => samples.filter((s) => s.name === name);
const total = (samples, name) => pick(samples, name).reduce((sum, s) => sum + s.value, 0);
const shardKey = (labels) => `${labels.node ?? "this node"}|${labels.shard}`;

/** Per-second rate of a counter summed over its series, between two scrapes. */
function perSecond(now, before, name, seconds) {
  return Math.max(0, total(now, name) - total(before, name)) / seconds;
}

/**
 * The q-quantile of a histogram's observations between two scrapes, in seconds, interpolated
 * within the bucket as Prometheus' histogram_quantile does; null when nothing was observed.
 */
function quantile(q, now, before, name) {
  const buckets = (samples) => {
    const byLe = new Map();
    for (const s of pick(samples, `${name}_bucket`)) byLe.set(s.labels.le, (byLe.get(s.labels.le) ?? 0) + s.value);
    return byLe;
  };
  const a = buckets(now);
  const b = buckets(before);
  const rows = [...a]
    .map(([le, count]) => ({ le: le === "+Inf" ? Infinity : Number(le), count: count - (b.get(le) ?? 0) }))
    .sort((x, y) => x.le - y.le);
  const count = rows.at(-1)?.count ?? 0;
  if (count <= 0) return null;
  const rank = q * count;
  let lower = 0;
  let below = 0;
  for (const { le, count: cumulative } of rows) {
    if (cumulative >= rank) {
      if (le === Infinity) return lower; // beyond the largest bound: report that bound
      const inBucket = cumulative - below;
      return lower + (le - lower) * (inBucket ? (rank - below) / inBucket : 0);
    }
    lower = le;
    below = cumulative;
  }
  return lower;
}

async function get(path) {
  const res = await fetch(path, { headers: { authorization: `Bearer ${token}` }, cache: "no-store" });
  if (!res.ok) {
    const body = await res.json().catch(() => ({}));
    const error = new Error(body.error ?? `${path} answered ${res.status}`);
    error.status = res.status;
    throw error;
  }
  return res;
}

async function tick() {
  let samples;
  let health;
  try {
    const [metrics, healthz] = await Promise.all([get("/api/v1/metrics"), get("/api/v1/healthz")]);
    samples = parse(await metrics.text());
    health = await healthz.json();
  } catch (e) {
    if (e.status === 401 || e.status === 503) return signOut(e.message);
    setState("unreachable", `server unreachable: ${e.message}`);
    return;
  }
  setState("connected", "live");
  const at = performance.now();
  show(samples, health, previous && { seconds: (at - previous.at) / 1000, samples: previous.samples });
  previous = { at, samples };
}

function show(samples, health, before) {
  const store = health.store ?? {};
  $("store").textContent = `${store.kind ?? "?"}: ${store.status ?? "?"}`;
  $("store").dataset.status = store.status;
  $("redis").textContent = health.redis?.status ?? "?";
  $("redis").dataset.status = health.redis?.status;
  $("connections").textContent = total(samples, "ocomms_connections").toLocaleString();
  $("sockets").textContent = total(samples, "ocomms_sockets").toLocaleString();
  $("uptime").textContent = duration(health.uptimeSeconds ?? 0);
  $("slow").textContent = total(samples, "ocomms_slow_consumers_dropped_total").toLocaleString();

  const shards = new Map();
  for (const s of pick(samples, "ocomms_connections")) shards.set(shardKey(s.labels), { ...s.labels, connections: s.value });
  for (const s of pick(samples, "ocomms_sockets")) Object.assign(shards.get(shardKey(s.labels)) ?? {}, { sockets: s.value });
  for (const s of pick(samples, "ocomms_shard_inbox_depth")) Object.assign(shards.get(shardKey(s.labels)) ?? {}, { inbox: s.value });
  if (before) {
    for (const s of pick(samples, "ocomms_fanout_deliveries_total")) {
      const old = before.samples.find((o) => o.name === s.name && shardKey(o.labels) === shardKey(s.labels));
      Object.assign(shards.get(shardKey(s.labels)) ?? {}, { deliveries: Math.max(0, s.value - (old?.value ?? 0)) / before.seconds });
    }
  }
  const label = (row) => (row.node ? `${row.node} shard ${row.shard}` : `shard ${row.shard}`);
  charts.connections.push(Object.fromEntries([...shards.values()].map((row) => [label(row), row.connections])));
  $("shards").replaceChildren(
    ...[...shards.values()].map((row) => {
      const tr = document.createElement("tr");
      for (const v of [row.node ?? "this node", row.shard, row.connections, row.sockets ?? 0, rate(row.deliveries ?? 0), row.inbox ?? 0]) {
        const td = document.createElement("td");
        td.textContent = String(v);
        tr.append(td);
      }
      return tr;
    }),
  );

  if (!before) return;
  const { seconds } = before;
  charts.deliveries.push({ deliveries: perSecond(samples, before.samples, "ocomms_fanout_deliveries_total", seconds) });
  charts.acks.push({ acks: perSecond(samples, before.samples, "ocomms_send_ack_seconds_count", seconds) });
  const ms = (q) => {
    const v = quantile(q, samples, before.samples, "ocomms_send_ack_seconds");
    return v === null ? null : v * 1000;
  };
  charts.latency.push({ p50: ms(0.5), p99: ms(0.99) });
}

function duration(s) {
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return h ? `${h} h ${m} min` : m ? `${m} min ${s % 60} s` : `${s} s`;
}

function setState(state, text) {
  $("state").dataset.state = state;
  $("state").textContent = text;
}

function start() {
  $("login").hidden = true;
  $("board").hidden = false;
  $("sign-out").hidden = false;
  tick();
  timer = setInterval(tick, PERIOD_MS);
}

function signOut(reason = "") {
  clearInterval(timer);
  token = null;
  previous = null;
  sessionStorage.removeItem(STORAGE);
  $("board").hidden = true;
  $("sign-out").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = reason;
  setState("closed", "signed out");
}

$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  token = $("token").value.trim();
  sessionStorage.setItem(STORAGE, token);
  start();
});
$("sign-out").addEventListener("click", () => signOut());

if (token) start();
else signOut();
