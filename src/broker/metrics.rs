//! The broker's counters for `/metrics`: what crossed Redis, what the sequencer held back and
//! filled, and how far behind Redis deliveries run. Written by the broker's threads only
//! (relaxed atomics), read by a scrape.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use super::sequencer::Stats;

/// Counters of one node's broker.
#[derive(Debug, Default)]
pub struct BrokerMetrics {
    /// Publications sent to Redis.
    pub publishes: AtomicU64,
    /// Bytes of those publications.
    pub publish_bytes: AtomicU64,
    /// Publications not sent (Redis down, or the publish queue full); their rooms are caught
    /// up by watermarks and fills instead.
    pub unpublished: AtomicU64,
    /// Publications received from Redis.
    pub receipts: AtomicU64,
    /// Bytes received.
    pub receipt_bytes: AtomicU64,
    /// Received payloads that were not publications this node can read.
    pub decode_errors: AtomicU64,
    /// Times a Redis connection was opened again after it was lost.
    pub reconnects: AtomicU64,
    /// Channels subscribed now (confirmed by Redis).
    pub subscriptions: AtomicI64,
    /// The sequencer's counters, copied by the thread that owns it.
    pub holdbacks: AtomicU64,
    /// Arrivals dropped because they were already delivered.
    pub duplicates: AtomicU64,
    /// Gap fills asked of PostgreSQL.
    pub gap_fills: AtomicU64,
    /// Events delivered from gap fills.
    pub filled: AtomicU64,
    /// Positions found to be holes.
    pub holes: AtomicU64,
    /// Arrivals dropped at the hold-back bound.
    pub dropped: AtomicU64,
    /// Arrivals held back now.
    pub held: AtomicI64,
    /// Sum of the delays from a publication's send on its origin to its receipt here, in µs.
    pub lag_micros: AtomicU64,
    /// Receipts the lag sum counts.
    pub lag_count: AtomicU64,
    /// Largest lag seen, in µs.
    pub lag_max_micros: AtomicU64,
    /// Reads of an outage's deletions asked of PostgreSQL.
    pub deletion_reads: AtomicU64,
    /// Deletions released from those reads (no publication brought them).
    pub deletions_caught_up: AtomicU64,
    /// Reconnects that asked another node for their session and got no answer that
    /// recovers it (counted again as `ocomms_recovery_missed_total` by the socket's shard).
    pub recoveries_unanswered: AtomicU64,
    /// Sessions this node handed over to another.
    pub handovers: AtomicU64,
}

impl BrokerMetrics {
    /// Records one receipt's lag (`received - sent`, clamped at zero for skewed clocks).
    pub fn lag(&self, micros: u64) {
        self.lag_micros.fetch_add(micros, Relaxed);
        self.lag_count.fetch_add(1, Relaxed);
        self.lag_max_micros.fetch_max(micros, Relaxed);
    }

    /// Copies the sequencer's counters (its owner calls this after each turn).
    pub fn sequencer(&self, stats: Stats, held: usize) {
        self.holdbacks.store(stats.holdbacks, Relaxed);
        self.duplicates.store(stats.duplicates, Relaxed);
        self.gap_fills.store(stats.fills, Relaxed);
        self.filled.store(stats.filled, Relaxed);
        self.holes.store(stats.holes, Relaxed);
        self.dropped.store(stats.dropped, Relaxed);
        self.held
            .store(i64::try_from(held).unwrap_or(i64::MAX), Relaxed);
    }

    /// Appends the Prometheus text of these counters.
    pub fn render(&self, out: &mut String) {
        let mut one = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        let n = |a: &AtomicU64| a.load(Relaxed).to_string();
        one(
            "ocomms_broker_publishes_total",
            "counter",
            "Publications sent to Redis.",
            n(&self.publishes),
        );
        one(
            "ocomms_broker_publish_bytes_total",
            "counter",
            "Bytes published to Redis.",
            n(&self.publish_bytes),
        );
        one(
            "ocomms_broker_unpublished_total",
            "counter",
            "Publications not sent to Redis (caught up from PostgreSQL instead).",
            n(&self.unpublished),
        );
        one(
            "ocomms_broker_receipts_total",
            "counter",
            "Publications received from Redis.",
            n(&self.receipts),
        );
        one(
            "ocomms_broker_receipt_bytes_total",
            "counter",
            "Bytes received from Redis.",
            n(&self.receipt_bytes),
        );
        one(
            "ocomms_broker_decode_errors_total",
            "counter",
            "Payloads from Redis this node cannot read.",
            n(&self.decode_errors),
        );
        one(
            "ocomms_broker_reconnects_total",
            "counter",
            "Redis connections opened again after a loss.",
            n(&self.reconnects),
        );
        one(
            "ocomms_broker_subscriptions",
            "gauge",
            "Redis channels subscribed.",
            self.subscriptions.load(Relaxed).to_string(),
        );
        one(
            "ocomms_broker_holdbacks_total",
            "counter",
            "Arrivals held back for a missing position.",
            n(&self.holdbacks),
        );
        one(
            "ocomms_broker_duplicates_total",
            "counter",
            "Arrivals dropped as already delivered.",
            n(&self.duplicates),
        );
        one(
            "ocomms_broker_gap_fills_total",
            "counter",
            "Gap fills read from PostgreSQL.",
            n(&self.gap_fills),
        );
        one(
            "ocomms_broker_filled_events_total",
            "counter",
            "Events delivered from gap fills.",
            n(&self.filled),
        );
        one(
            "ocomms_broker_holes_total",
            "counter",
            "Positions found to have no event.",
            n(&self.holes),
        );
        one(
            "ocomms_broker_holdback_dropped_total",
            "counter",
            "Arrivals dropped at the hold-back bound.",
            n(&self.dropped),
        );
        one(
            "ocomms_broker_held",
            "gauge",
            "Arrivals held back now.",
            self.held.load(Relaxed).to_string(),
        );
        one(
            "ocomms_broker_deletion_reads_total",
            "counter",
            "Reads from PostgreSQL of the deletions made during an outage.",
            n(&self.deletion_reads),
        );
        one(
            "ocomms_broker_deletions_caught_up_total",
            "counter",
            "Deletions no publication brought, released from those reads.",
            n(&self.deletions_caught_up),
        );
        one(
            "ocomms_broker_recoveries_unanswered_total",
            "counter",
            "Reconnects whose session no node handed over (holder gone, slow or without it).",
            n(&self.recoveries_unanswered),
        );
        one(
            "ocomms_broker_handovers_total",
            "counter",
            "Sessions handed over to another node.",
            n(&self.handovers),
        );
        one(
            "ocomms_broker_lag_max_seconds",
            "gauge",
            "Largest delay seen from a publication's send to its receipt.",
            (self.lag_max_micros.load(Relaxed) as f64 / 1e6).to_string(),
        );
        let _ = writeln!(
            out,
            "# HELP ocomms_broker_lag_seconds Delay from a publication's send on its origin to its receipt.\n\
             # TYPE ocomms_broker_lag_seconds summary\n\
             ocomms_broker_lag_seconds_sum {}\nocomms_broker_lag_seconds_count {}",
            self.lag_micros.load(Relaxed) as f64 / 1e6,
            self.lag_count.load(Relaxed)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = BrokerMetrics::default();
        m.publishes.fetch_add(3, Relaxed);
        m.handovers.fetch_add(5, Relaxed);
        m.lag(1500);
        m.lag(500);
        m.sequencer(
            Stats {
                holdbacks: 4,
                fills: 2,
                ..Stats::default()
            },
            1,
        );
        let mut text = String::new();
        m.render(&mut text);
        for line in [
            "ocomms_broker_publishes_total 3",
            "ocomms_broker_holdbacks_total 4",
            "ocomms_broker_gap_fills_total 2",
            "ocomms_broker_held 1",
            "ocomms_broker_handovers_total 5",
            "ocomms_broker_recoveries_unanswered_total 0",
            "ocomms_broker_lag_seconds_sum 0.002",
            "ocomms_broker_lag_seconds_count 2",
            "ocomms_broker_lag_max_seconds 0.0015",
            "# TYPE ocomms_broker_subscriptions gauge",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
