//! Counters for `/metrics`. Each shard writes only its own [`ShardMetrics`] (relaxed atomics,
//! so no lock and no contended cache line on the hot path); a scrape sums them.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering::Relaxed};

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
    /// Bytes currently queued for clients.
    pub queued_bytes: AtomicI64,
    /// Commands waiting in this shard's inbox at the last loop turn.
    pub inbox_depth: AtomicI64,
}

/// The store thread's counters.
#[derive(Debug, Default)]
pub struct StoreMetrics {
    /// Write batches committed.
    pub batches: AtomicU64,
    /// Messages committed.
    pub messages: AtomicU64,
    /// Sum of batch commit times in microseconds.
    pub batch_micros: AtomicU64,
    /// Largest batch seen.
    pub max_batch: AtomicU64,
    /// Commands waiting in the store inbox at the last batch.
    pub inbox_depth: AtomicI64,
    /// The database as last seen: `store::pg::status::OK` (also: no database) or `DOWN`.
    pub db_status: AtomicU8,
}

/// All counters of the node.
#[derive(Debug)]
pub struct Metrics {
    /// Indexed by shard id.
    pub shards: Vec<ShardMetrics>,
    /// The store thread.
    pub store: StoreMetrics,
}

impl Metrics {
    /// Zeroed counters for `shards` shards.
    pub fn new(shards: usize) -> Self {
        Metrics {
            shards: (0..shards).map(|_| ShardMetrics::default()).collect(),
            store: StoreMetrics::default(),
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
        let s = &self.store;
        let _ = writeln!(out, "# HELP ocomms_store_batches_total Write batches committed.\n# TYPE ocomms_store_batches_total counter\nocomms_store_batches_total {}", s.batches.load(Relaxed));
        let _ = writeln!(out, "# HELP ocomms_store_messages_total Messages committed.\n# TYPE ocomms_store_messages_total counter\nocomms_store_messages_total {}", s.messages.load(Relaxed));
        let _ = writeln!(out, "# HELP ocomms_store_batch_seconds_total Time spent committing batches.\n# TYPE ocomms_store_batch_seconds_total counter\nocomms_store_batch_seconds_total {}", s.batch_micros.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "# HELP ocomms_store_batch_max Largest batch committed.\n# TYPE ocomms_store_batch_max gauge\nocomms_store_batch_max {}", s.max_batch.load(Relaxed));
        let _ = writeln!(out, "# HELP ocomms_store_inbox_depth Commands waiting for the store.\n# TYPE ocomms_store_inbox_depth gauge\nocomms_store_inbox_depth {}", s.inbox_depth.load(Relaxed));
        out
    }
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
}
