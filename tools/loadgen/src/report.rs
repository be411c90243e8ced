//! Merging worker results and measuring the processes around a measured window: the server
//! (CPU, RSS, peak RSS from /proc when its pid is known) and the loadgen itself (getrusage), so
//! a report shows whether the loadgen, not the server, was the bottleneck.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::client::WorkerResult;
use crate::stats::{
    latency_histogram, percentiles_json, percentiles_line, union_groups, MemberRecord, SeqSet,
};
use crate::sys::{self, ProcSample};
use crate::Cli;

/// Process measurements at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Snap {
    /// When.
    pub at: Instant,
    /// The server, when --server-pid was given and readable (summed with --node-pids).
    pub server: Option<ProcSample>,
    /// The Redis server, when --redis-pid was given and readable.
    pub redis: Option<ProcSample>,
    /// The loadgen's CPU so far.
    pub self_cpu: Duration,
}

fn sample(pid: u32) -> Option<ProcSample> {
    match sys::sample(pid) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("warning: {e}");
            None
        }
    }
}

/// Takes a snapshot: the server (every node of a cluster, summed), Redis, and the loadgen. An
/// unreadable pid is reported on stderr and left out.
pub fn snap(cli: &Cli) -> Snap {
    let server = cli.server_pid.and_then(|first| {
        std::iter::once(first)
            .chain(cli.node_pids.iter().copied())
            .map(sample)
            .try_fold(ProcSample::default(), |sum, s| {
                s.map(|s| ProcSample {
                    rss: sum.rss + s.rss,
                    hwm: sum.hwm + s.hwm,
                    cpu: sum.cpu + s.cpu,
                })
            })
    });
    Snap {
        at: Instant::now(),
        server,
        redis: cli.redis_pid.and_then(sample),
        self_cpu: sys::self_cpu(),
    }
}

/// Server and loadgen figures between two snapshots, as JSON, plus a warning when the loadgen
/// used most of its threads' CPU (so the numbers measure the loadgen, not the server).
pub fn window_json(
    before: &Snap,
    after: &Snap,
    threads: usize,
    work: u64,
) -> (Value, Option<String>) {
    let wall = after.at.duration_since(before.at).as_secs_f64().max(1e-9);
    let lg_cpu = after.self_cpu.saturating_sub(before.self_cpu).as_secs_f64();
    let util = lg_cpu / (wall * threads.max(1) as f64);
    let warn = (util > 0.8).then(|| {
        format!(
            "the loadgen used {:.0}% of its {threads} thread(s) over the window: it may be the bottleneck; add --threads",
            util * 100.0
        )
    });
    let server = match (before.server, after.server) {
        (Some(b), Some(a)) => {
            let cpu = a.cpu.saturating_sub(b.cpu).as_secs_f64();
            json!({
                "cpu_s": cpu,
                "cpu_util": cpu / wall,
                "work_per_cpu_s": if cpu > 0.0 { work as f64 / cpu } else { 0.0 },
                "rss_before": b.rss, "rss_after": a.rss,
                "hwm_before": b.hwm, "hwm_after": a.hwm,
            })
        }
        _ => Value::Null,
    };
    let redis = match (before.redis, after.redis) {
        (Some(b), Some(a)) => {
            let cpu = a.cpu.saturating_sub(b.cpu).as_secs_f64();
            json!({"cpu_s": cpu, "cpu_util": cpu / wall})
        }
        _ => Value::Null,
    };
    (
        json!({"wall_s": wall, "server": server, "redis": redis, "loadgen": {"cpu_s": lg_cpu, "threads": threads, "cpu_util": util}}),
        warn,
    )
}

/// All workers' results added up.
#[derive(Debug)]
pub struct Merged {
    /// Sum of established.
    pub established: u64,
    /// Sum of failed.
    pub failed: u64,
    /// Sum of dropped.
    pub dropped: u64,
    /// Failure reasons, most frequent first.
    pub reasons: Vec<(String, u64)>,
    /// Connect latency.
    pub connect: Histogram<u64>,
    /// Ack latency.
    pub ack: Histogram<u64>,
    /// Delivery latency.
    pub delivery: Histogram<u64>,
    /// Cluster runs: delivery latency of receivers on the publishers' node.
    pub delivery_local: Histogram<u64>,
    /// Cluster runs: delivery latency of receivers on the other nodes.
    pub delivery_remote: Histogram<u64>,
    /// Messages sent.
    pub sent: u64,
    /// Successful acks.
    pub acked_ok: u64,
    /// Failed acks.
    pub acked_err: u64,
    /// Every acked sequence, per channel group.
    pub acked: Vec<SeqSet>,
    /// Receipts.
    pub deliveries: u64,
    /// Completed connect/disconnect cycles.
    pub cycles: u64,
    /// Connect latency of the cycles.
    pub cycle: Histogram<u64>,
    /// Pings answered.
    pub pings: u64,
    /// Member records.
    pub members: Vec<MemberRecord>,
    /// Earliest first send, ns since loadgen start.
    pub first_send_nanos: Option<u64>,
    /// Latest receipt, ns since loadgen start.
    pub last_delivery_nanos: u64,
    /// Highest per-thread CPU / wall.
    pub max_thread_busy: f64,
}

/// Cluster runs: delivery latency on the publishers' node and on the others, and what the hop
/// between nodes added (p50 and p99 of the others minus the same on the publishers' node).
/// `None` when the run had one server.
pub fn cluster_json(m: &Merged) -> Option<Value> {
    if m.delivery_remote.is_empty() {
        return None;
    }
    let q = |h: &Histogram<u64>, p: f64| h.value_at_quantile(p) as i64;
    Some(json!({
        "delivery_latency_publishers_node": percentiles_json(&m.delivery_local),
        "delivery_latency_other_nodes": percentiles_json(&m.delivery_remote),
        "cross_node_added_us": {
            "p50": q(&m.delivery_remote, 0.5) - q(&m.delivery_local, 0.5),
            "p99": q(&m.delivery_remote, 0.99) - q(&m.delivery_local, 0.99),
        },
    }))
}

/// Prints [`cluster_json`] and the Redis CPU, when there are any.
pub fn print_cluster(j: &Value) {
    if let Some(c) = j.get("cluster").filter(|c| !c.is_null()) {
        println!(
            "cross-node: added p50 {} us, p99 {} us (receivers on other nodes vs the publishers' node)",
            c["cross_node_added_us"]["p50"], c["cross_node_added_us"]["p99"]
        );
    }
    if let Some(cpu) = j["window"]["redis"]["cpu_s"].as_f64() {
        println!(
            "redis CPU {cpu:.2}s ({:.0}% of one core)",
            j["window"]["redis"]["cpu_util"].as_f64().unwrap_or(0.0) * 100.0
        );
    }
}

/// Adds up worker results.
pub fn merge(results: Vec<WorkerResult>) -> Merged {
    let mut m = Merged {
        established: 0,
        failed: 0,
        dropped: 0,
        reasons: Vec::new(),
        connect: latency_histogram(),
        ack: latency_histogram(),
        delivery: latency_histogram(),
        delivery_local: latency_histogram(),
        delivery_remote: latency_histogram(),
        sent: 0,
        acked_ok: 0,
        acked_err: 0,
        acked: Vec::new(),
        deliveries: 0,
        cycles: 0,
        cycle: latency_histogram(),
        pings: 0,
        members: Vec::new(),
        first_send_nanos: None,
        last_delivery_nanos: 0,
        max_thread_busy: 0.0,
    };
    let mut reasons: HashMap<String, u64> = HashMap::new();
    for r in results {
        m.established += r.established;
        m.failed += r.failed;
        m.dropped += r.dropped;
        for (k, v) in r.reasons {
            *reasons.entry(k).or_default() += v;
        }
        // Histograms share bounds, so adding cannot fail; saturate to be safe anyway.
        let _ = m.connect.add(&r.connect_hist);
        let _ = m.ack.add(&r.ack_hist);
        let _ = m.delivery.add(&r.delivery_hist);
        let _ = m.delivery_local.add(&r.delivery_local_hist);
        let _ = m.delivery_remote.add(&r.delivery_remote_hist);
        m.sent += r.sent;
        m.acked_ok += r.acked_ok;
        m.acked_err += r.acked_err;
        union_groups(&mut m.acked, &r.acked);
        m.deliveries += r.deliveries;
        m.cycles += r.cycles;
        let _ = m.cycle.add(&r.cycle_hist);
        m.pings += r.pings;
        m.members.extend(r.members);
        m.first_send_nanos = match (m.first_send_nanos, r.first_send_nanos) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        m.last_delivery_nanos = m.last_delivery_nanos.max(r.last_delivery_nanos);
        let busy = r.thread_cpu.as_secs_f64() / r.wall.as_secs_f64().max(1e-9);
        m.max_thread_busy = m.max_thread_busy.max(busy);
    }
    m.reasons = reasons.into_iter().collect();
    m.reasons
        .sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    m
}

/// Failure reasons as a JSON object (the 10 most frequent).
pub fn reasons_json(m: &Merged) -> Value {
    Value::Object(
        m.reasons
            .iter()
            .take(10)
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect(),
    )
}

/// Connection counts and connect latency as JSON.
pub fn connections_json(m: &Merged) -> Value {
    json!({
        "established": m.established,
        "failed": m.failed,
        "dropped": m.dropped,
        "connect_latency": percentiles_json(&m.connect),
        "failure_reasons": reasons_json(m),
    })
}

/// Prints failure reasons for people.
pub fn print_reasons(m: &Merged) {
    for (k, v) in m.reasons.iter().take(10) {
        println!("  failure x{v}: {k}");
    }
}

/// Prints the send side of a run of `duration` seconds for people: sends, acks, and the ack
/// and delivery latencies.
pub fn print_sends(m: &Merged, duration: f64) {
    println!(
        "sent {} ; acked ok {} / refused {} ; acks/s {:.0}",
        m.sent,
        m.acked_ok,
        m.acked_err,
        m.acked_ok as f64 / duration
    );
    println!("ack latency:      {}", percentiles_line(&m.ack));
    println!("delivery latency: {}", percentiles_line(&m.delivery));
}

/// Prints where the CPU went in a run's `window` (see [`window_json`]), the server's work per
/// CPU-second counted in deliveries, and the failure reasons.
pub fn print_cpu(window: &Value, m: &Merged) {
    if let Some(s) = window["server"]["work_per_cpu_s"].as_f64() {
        println!(
            "server CPU {:.2}s ({s:.0} deliveries per CPU-second)",
            window["server"]["cpu_s"].as_f64().unwrap_or(0.0)
        );
    }
    println!(
        "loadgen CPU {:.2}s ({:.0}% of its threads; busiest thread {:.0}%)",
        window["loadgen"]["cpu_s"].as_f64().unwrap_or(0.0),
        window["loadgen"]["cpu_util"].as_f64().unwrap_or(0.0) * 100.0,
        m.max_thread_busy * 100.0
    );
    print_reasons(m);
}

/// Human-readable bytes.
pub fn fmt_bytes(b: f64) -> String {
    if b.abs() < 10_000.0 {
        format!("{b:.0} B")
    } else if b.abs() < 10_000_000.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    }
}
