//! Counters for `/metrics`. Each shard writes only its own [`ShardMetrics`] (relaxed atomics,
//! so no lock and no contended cache line on the hot path); a scrape sums them.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crate::chat::Recovered;

/// One shard's counters.
#[derive(Debug, Default)]
pub struct ShardMetrics {
    /// Open TCP connections (HTTP, WebSocket, handshaking).
    pub connections: AtomicI64,
    /// Authenticated Socket.IO sockets.
    pub sockets: AtomicI64,
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    /// Socket.IO events received from clients.
    pub events_in: AtomicU64,
    /// Frames queued to clients (broadcast deliveries, acks, replies).
    pub frames_out: AtomicU64,
    /// Broadcast frames queued to recipients.
    pub deliveries: AtomicU64,
    /// Bytes written to sockets.
    pub bytes_out: AtomicU64,
    /// Clients dropped because their outbound queue passed the bound.
    pub slow_consumers_dropped: AtomicU64,
    /// Connections closed for protocol errors (malformed, oversized, timeouts).
    pub protocol_errors: AtomicU64,
    /// CONNECTs refused (bad token, not a member).
    pub auth_failures: AtomicU64,
    /// Sockets disconnected for going on over their event budgets.
    pub clients_cut: AtomicU64,
    /// Sessions recovered from this node's log.
    pub recovered_here: AtomicU64,
    /// Sessions recovered from another node's hand-over.
    pub recovered_moved: AtomicU64,
    /// Recoveries asked for that ended in a new session.
    pub recovery_missed: AtomicU64,
    /// Connections and new sockets refused by the connection limits.
    pub connections_refused: AtomicU64,
    /// Bytes currently queued for clients.
    pub queued_bytes: AtomicI64,
    /// Commands waiting in this shard's inbox at the last loop turn.
    pub inbox_depth: AtomicI64,
    /// Broadcasts dropped because the inbox was full (see `mesh::ShardHandle::send`).
    pub broadcasts_dropped: AtomicU64,
    /// Client requests refused as busy (see `mesh::Mesh::congested`).
    pub requests_busy: AtomicU64,
}

impl ShardMetrics {
    /// Counts what became of a session a client asked to recover.
    pub fn recovery(&self, outcome: Recovered) {
        let counter = match outcome {
            Recovered::Here => &self.recovered_here,
            Recovered::Moved => &self.recovered_moved,
            Recovered::Missed => &self.recovery_missed,
        };
        counter.fetch_add(1, Relaxed);
    }
}

/// The store thread's counters.
#[derive(Debug)]
pub struct StoreMetrics {
    /// Write batches committed.
    pub batches: AtomicU64,
    /// Messages committed.
    pub messages: AtomicU64,
    /// Sum of batch commit times in microseconds.
    pub batch_micros: AtomicU64,
    /// Largest batch seen.
    pub max_batch: AtomicU64,
    /// Longest batch seen, in microseconds: the longest the writer stalled every ack.
    pub max_batch_micros: AtomicU64,
    /// Commands waiting in the store inbox at the last batch.
    pub inbox_depth: AtomicI64,
    /// The database as last seen: `store::pg::status::OK` (also: no database) or `DOWN`.
    pub db_status: AtomicU8,
    /// PostgreSQL's autovacuum as the store's last new connection saw it:
    /// `store::pg::autovacuum::UNKNOWN` (also: no database), `OFF` or `ON`.
    pub autovacuum: AtomicU8,
    /// Time from a shard reading a socket's `message:send` to the store answering it.
    pub send_ack: Histogram,
    /// Messages per write batch.
    pub batch_size: Histogram,
    /// Time to store one write batch (all its statements, retries included).
    pub batch_time: Histogram,
    /// Commands queued for the store (taken plus still waiting) at each turn of its loop.
    pub queue_depth: Histogram,
    /// When the oldest send waiting for its batch arrived, shared with the store's handle
    /// (see `mesh::StoreHandle::with_metrics`).
    pub waiting_since: Arc<AtomicU64>,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics {
            batches: AtomicU64::new(0),
            messages: AtomicU64::new(0),
            batch_micros: AtomicU64::new(0),
            max_batch: AtomicU64::new(0),
            max_batch_micros: AtomicU64::new(0),
            inbox_depth: AtomicI64::new(0),
            db_status: AtomicU8::new(0),
            autovacuum: AtomicU8::new(0),
            send_ack: Histogram::default(),
            batch_size: Histogram::counts(),
            batch_time: Histogram::default(),
            queue_depth: Histogram::counts(),
            waiting_since: Arc::default(),
        }
    }
}

/// Upper bounds of a latency [`Histogram`]'s buckets, in microseconds (500 µs to 10 s).
pub const BUCKETS_MICROS: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// Upper bounds of a count [`Histogram`]'s buckets (batch sizes, queue depths).
pub const BUCKETS_COUNT: [u64; 14] = [
    1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1_024, 4_096, 16_384, 65_536,
];

/// A histogram in Prometheus' shape (cumulative `le` buckets, `_sum`, `_count`), kept as one
/// relaxed counter per bucket so that recording takes no lock. [`Histogram::default`] is a
/// latency histogram in seconds; [`Histogram::counts`] one of plain counts.
#[derive(Debug)]
pub struct Histogram {
    /// Inclusive upper bounds of the buckets, in `unit`s of the rendered value.
    bounds: &'static [u64; 14],
    /// Divisor from a recorded value to the rendered one (1e6 for microseconds to seconds).
    unit: f64,
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; 15],
    /// Sum of the recorded values.
    sum: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            bounds: &BUCKETS_MICROS,
            unit: 1e6,
            buckets: Default::default(),
            sum: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// A histogram of counts (bounds [`BUCKETS_COUNT`]), recorded with [`Histogram::record`].
    pub fn counts() -> Self {
        Histogram {
            bounds: &BUCKETS_COUNT,
            unit: 1.0,
            ..Histogram::default()
        }
    }

    /// Records one duration (a latency histogram).
    pub fn observe(&self, elapsed: Duration) {
        self.record(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
    }

    /// Records one value in the histogram's own unit (microseconds, or a count).
    pub fn record(&self, value: u64) {
        let i = self.bounds.partition_point(|&bound| bound < value);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum.fetch_add(value, Relaxed);
    }

    /// Writes the histogram as metric `name` with its `# HELP` and `# TYPE` lines.
    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Relaxed);
            match self.bounds.get(i) {
                Some(&bound) => {
                    let le = bound as f64 / self.unit;
                    let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let sum = self.sum.load(Relaxed) as f64 / self.unit;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

/// All counters of the node.
#[derive(Debug)]
pub struct Metrics {
    /// Indexed by shard id.
    pub shards: Vec<ShardMetrics>,
    /// The store thread.
    pub store: StoreMetrics,
    /// In a cluster: the node, its Redis link and the broker's counters.
    pub cluster: std::sync::OnceLock<crate::broker::cluster::View>,
}

impl Metrics {
    /// Zeroed counters for `shards` shards.
    pub fn new(shards: usize) -> Self {
        Metrics {
            shards: (0..shards).map(|_| ShardMetrics::default()).collect(),
            store: StoreMetrics::default(),
            cluster: std::sync::OnceLock::new(),
        }
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        macro_rules! shard_metric {
            ($field:ident, $name:literal, $kind:literal, $help:literal) => {{
                let _ = writeln!(
                    out,
                    "# HELP {} {}\n# TYPE {} {}",
                    $name, $help, $name, $kind
                );
                for (i, s) in self.shards.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "{}{{shard=\"{}\"}} {}",
                        $name,
                        i,
                        s.$field.load(Relaxed)
                    );
                }
            }};
        }
        shard_metric!(
            connections,
            "ocomms_connections",
            "gauge",
            "Open TCP connections."
        );
        shard_metric!(
            sockets,
            "ocomms_sockets",
            "gauge",
            "Authenticated Socket.IO sockets."
        );
        shard_metric!(
            accepted,
            "ocomms_accepted_total",
            "counter",
            "Connections accepted."
        );
        shard_metric!(
            events_in,
            "ocomms_events_in_total",
            "counter",
            "Socket.IO events received."
        );
        shard_metric!(
            frames_out,
            "ocomms_frames_out_total",
            "counter",
            "Frames queued to clients."
        );
        shard_metric!(
            deliveries,
            "ocomms_fanout_deliveries_total",
            "counter",
            "Broadcast frames queued to recipients."
        );
        shard_metric!(
            bytes_out,
            "ocomms_bytes_out_total",
            "counter",
            "Bytes written to sockets."
        );
        shard_metric!(
            slow_consumers_dropped,
            "ocomms_slow_consumers_dropped_total",
            "counter",
            "Clients dropped for not reading."
        );
        shard_metric!(
            protocol_errors,
            "ocomms_protocol_errors_total",
            "counter",
            "Connections closed for protocol errors."
        );
        shard_metric!(
            auth_failures,
            "ocomms_auth_failures_total",
            "counter",
            "CONNECTs refused."
        );
        shard_metric!(
            clients_cut,
            "ocomms_clients_cut_total",
            "counter",
            "Sockets disconnected for going on over their event budgets."
        );
        shard_metric!(
            recovered_here,
            "ocomms_recovered_local_total",
            "counter",
            "Sessions recovered from this node's log."
        );
        shard_metric!(
            recovered_moved,
            "ocomms_recovered_from_node_total",
            "counter",
            "Sessions recovered from another node's hand-over."
        );
        shard_metric!(
            recovery_missed,
            "ocomms_recovery_missed_total",
            "counter",
            "Recoveries asked for that ended in a new session."
        );
        shard_metric!(
            connections_refused,
            "ocomms_connections_refused_total",
            "counter",
            "Connections and new sockets refused by the connection limits."
        );
        shard_metric!(
            queued_bytes,
            "ocomms_outbound_queued_bytes",
            "gauge",
            "Bytes queued for clients."
        );
        shard_metric!(
            inbox_depth,
            "ocomms_shard_inbox_depth",
            "gauge",
            "Commands waiting in the shard inbox."
        );
        shard_metric!(
            broadcasts_dropped,
            "ocomms_shard_broadcasts_dropped_total",
            "counter",
            "Broadcasts dropped because the shard inbox was full (typing and presence past 65,536 waiting, any past 262,144)."
        );
        shard_metric!(
            requests_busy,
            "ocomms_requests_refused_busy_total",
            "counter",
            "Client requests refused as busy: the store or a shard too far behind (CHAT_MAX_STORE_WAIT_MS, 8,192 queued)."
        );
        let s = &self.store;
        let _ = writeln!(out, "# HELP ocomms_store_batches_total Write batches committed.\n# TYPE ocomms_store_batches_total counter\nocomms_store_batches_total {}", s.batches.load(Relaxed));
        let _ = writeln!(out, "# HELP ocomms_store_messages_total Messages committed.\n# TYPE ocomms_store_messages_total counter\nocomms_store_messages_total {}", s.messages.load(Relaxed));
        let _ = writeln!(out, "# HELP ocomms_store_batch_seconds_total Time spent committing batches.\n# TYPE ocomms_store_batch_seconds_total counter\nocomms_store_batch_seconds_total {}", s.batch_micros.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "# HELP ocomms_store_batch_max Largest batch committed.\n# TYPE ocomms_store_batch_max gauge\nocomms_store_batch_max {}", s.max_batch.load(Relaxed));
        let _ = writeln!(out, "# HELP ocomms_store_batch_seconds_max Longest write batch since start, seconds.\n# TYPE ocomms_store_batch_seconds_max gauge\nocomms_store_batch_seconds_max {}", s.max_batch_micros.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "# HELP ocomms_store_inbox_depth Commands waiting for the store.\n# TYPE ocomms_store_inbox_depth gauge\nocomms_store_inbox_depth {}", s.inbox_depth.load(Relaxed));
        let waited = crate::mesh::waited_since(&s.waiting_since, std::time::Instant::now());
        let _ = writeln!(out, "# HELP ocomms_store_wait_seconds How long the oldest send not yet in a write batch has waited (0: none waits); past CHAT_MAX_STORE_WAIT_MS requests are refused as busy.\n# TYPE ocomms_store_wait_seconds gauge\nocomms_store_wait_seconds {}", waited.unwrap_or_default().as_secs_f64());
        let up = u8::from(s.db_status.load(Relaxed) == crate::store::pg::status::OK);
        let autovacuum = s.autovacuum.load(Relaxed);
        if autovacuum != crate::store::pg::autovacuum::UNKNOWN {
            let on = u8::from(autovacuum == crate::store::pg::autovacuum::ON);
            let _ = writeln!(out, "# HELP ocomms_store_pg_autovacuum 1 when PostgreSQL's autovacuum and track_counts are on, 0 when either is off (then messages is never analyzed or vacuumed as it grows; see docs/operations.md).\n# TYPE ocomms_store_pg_autovacuum gauge\nocomms_store_pg_autovacuum {on}");
        }
        let _ = writeln!(out, "# HELP ocomms_store_up 1 while the store answers (the embedded store always does), 0 while PostgreSQL is unreachable.\n# TYPE ocomms_store_up gauge\nocomms_store_up {up}");
        s.send_ack.render(
            &mut out,
            "ocomms_send_ack_seconds",
            "Time from a shard reading a message:send to the store answering it (stored, published), seconds.",
        );
        s.batch_size.render(
            &mut out,
            "ocomms_store_batch_size",
            "Messages per write batch.",
        );
        s.batch_time.render(
            &mut out,
            "ocomms_store_batch_duration_seconds",
            "Time to store one write batch, retries included, seconds.",
        );
        s.queue_depth.render(
            &mut out,
            "ocomms_store_queue_depth",
            "Commands queued for the store (taken plus still waiting) at each turn of its loop.",
        );
        if let Some(cluster) = self.cluster.get() {
            cluster.metrics.render(&mut out);
        }
        process(&mut out);
        out
    }
}

/// The process's resident memory and open-file limit, in the names Prometheus' client
/// libraries use, read from `/proc/self` (a few hundred bytes; skipped where it is missing).
fn process(out: &mut String) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if let Some(kib) = proc_field(&status, "VmRSS:") {
        let _ = writeln!(out, "# HELP process_resident_memory_bytes Resident memory size in bytes.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {}", kib * 1024);
    }
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    if let Some(max) = proc_field(&limits, "Max open files") {
        let _ = writeln!(out, "# HELP process_max_fds Maximum number of open file descriptors.\n# TYPE process_max_fds gauge\nprocess_max_fds {max}");
    }
}

/// The first number after `label` on its line of a `/proc` file.
fn proc_field(text: &str, label: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(label))?;
    line[label.len()..].split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_labels_each_shard() {
        let m = Metrics::new(2);
        m.shards[1].slow_consumers_dropped.fetch_add(3, Relaxed);
        let text = m.render();
        assert!(
            text.contains("ocomms_slow_consumers_dropped_total{shard=\"1\"} 3"),
            "{text}"
        );
        assert!(text.contains("# TYPE ocomms_connections gauge"));
    }

    #[test]
    fn store_status_and_process_figures_are_rendered() {
        let m = Metrics::new(1);
        assert!(m.render().contains("\nocomms_store_up 1\n"));
        m.store
            .db_status
            .store(crate::store::pg::status::DOWN, Relaxed);
        let text = m.render();
        assert!(text.contains("\nocomms_store_up 0\n"), "{text}");
        let rss = text
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .and_then(|v| v.parse::<u64>().ok());
        assert!(rss.is_some_and(|b| b > 1 << 20), "{text}");
        assert!(text.lines().any(|l| l.starts_with("process_max_fds ")));
        assert_eq!(
            proc_field("Max open files  20000  20000  files", "Max open files"),
            Some(20000)
        );
        assert_eq!(
            proc_field("Max open files  unlimited", "Max open files"),
            None
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_bounds_inclusive() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_micros(501));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let mut text = String::new();
        h.render(&mut text, "t", "help");
        for line in [
            "t_bucket{le=\"0.0005\"} 1",
            "t_bucket{le=\"0.001\"} 2",
            "t_bucket{le=\"0.0025\"} 2",
            "t_bucket{le=\"0.005\"} 3",
            "t_bucket{le=\"10\"} 3",
            "t_bucket{le=\"+Inf\"} 4",
            "t_count 4",
            "t_sum 60.004001",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        }
        assert!(text.contains("# TYPE t histogram"));
    }

    #[test]
    fn count_histograms_render_plain_bounds() {
        let h = Histogram::counts();
        h.record(1);
        h.record(3);
        h.record(100_000);
        let mut text = String::new();
        h.render(&mut text, "n", "help");
        for line in [
            "n_bucket{le=\"1\"} 1",
            "n_bucket{le=\"2\"} 1",
            "n_bucket{le=\"4\"} 2",
            "n_bucket{le=\"65536\"} 2",
            "n_bucket{le=\"+Inf\"} 3",
            "n_sum 100004",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        }
    }
}
