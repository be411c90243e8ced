//! What the main thread and the client workers share: the run phases, progress counters,
//! each worker's configuration and connection plans, and the results a worker hands back.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::stats::{latency_histogram, MemberRecord, SeqSet};

/// Workers connect and hold; publishers do not send yet.
pub const PH_CONNECT: u8 = 0;
/// Publishers send at their paced rate.
pub const PH_PUBLISH: u8 = 1;
/// Publishers stop; everyone keeps receiving.
pub const PH_DRAIN: u8 = 2;
/// Workers close everything and return their results.
pub const PH_STOP: u8 = 3;

/// State the main thread and all workers share.
#[derive(Debug)]
pub struct Shared {
    /// The loadgen's epoch: publishers stamp content with nanoseconds since it.
    pub start: Instant,
    /// One of the `PH_*` phases.
    pub phase: AtomicU8,
    /// Connections that completed the Socket.IO CONNECT.
    pub established: AtomicUsize,
    /// Connections that failed before completing it.
    pub failed: AtomicUsize,
    /// Established connections that were lost afterwards.
    pub dropped: AtomicUsize,
    /// Messages sent (progress).
    pub sent: AtomicU64,
    /// Acks received, successful or not (progress).
    pub acks: AtomicU64,
    /// `message:new` (or, in typing runs, `typing:update`) events received (progress).
    pub deliveries: AtomicU64,
    /// Completed connect/disconnect cycles (progress, `connect` runs).
    pub cycles: AtomicU64,
    /// `typing` runs: start/stop events sent per publisher index.
    pub typing_sent: Vec<AtomicU64>,
    /// `typing` runs: send stamps (nanoseconds since `start`), [`TYPING_RING`] per publisher;
    /// the n-th send of publisher k is at `k * TYPING_RING + n % TYPING_RING`.
    pub typing_stamps: Vec<AtomicU64>,
    /// `soak` runs: what the workers measured since the main thread last took it.
    pub live: Mutex<Live>,
}

/// Honest traffic measured over a stretch of a `soak` run: workers add what they saw every
/// [`LIVE_PUSH`], and the main thread takes the sum once per report interval.
#[derive(Debug, Clone)]
pub struct Live {
    /// send -> ack of `message:send`.
    pub ack: Histogram<u64>,
    /// send -> receipt of `message:new`, per receiver.
    pub delivery: Histogram<u64>,
    /// request -> reply of `message:history`.
    pub history: Histogram<u64>,
    /// Successful `message:send` acks.
    pub acked_ok: u64,
    /// Refused `message:send` acks.
    pub acked_err: u64,
    /// Refused `message:history` replies.
    pub history_err: u64,
}

/// How often a worker hands its [`Live`] figures to the main thread.
pub const LIVE_PUSH: Duration = Duration::from_millis(200);

impl Live {
    /// Empty figures.
    pub fn new() -> Self {
        Live {
            ack: latency_histogram(),
            delivery: latency_histogram(),
            history: latency_histogram(),
            acked_ok: 0,
            acked_err: 0,
            history_err: 0,
        }
    }

    /// Adds `other` and empties it.
    pub fn absorb(&mut self, other: &mut Live) {
        // Histograms share bounds, so adding cannot fail.
        let _ = self.ack.add(&other.ack);
        let _ = self.delivery.add(&other.delivery);
        let _ = self.history.add(&other.history);
        self.acked_ok += other.acked_ok;
        self.acked_err += other.acked_err;
        self.history_err += other.history_err;
        *other = Live::new();
    }
}

impl Default for Live {
    fn default() -> Self {
        Self::new()
    }
}

/// `soak` runs: what an honest publisher does besides sending messages. With every send
/// whose number is a multiple of `typing_every` it first sends `typing:start`, and with every
/// multiple of `history_every` it reads the channel's last `history_limit` messages (0: never).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoakMix {
    /// Sends per `typing:start`.
    pub typing_every: u64,
    /// Sends per `message:history`.
    pub history_every: u64,
    /// Messages per history page asked for.
    pub history_limit: u32,
}

/// Send stamps kept per typing publisher; a receiver lagging further behind than this gets no
/// latency sample for that update (it is still counted).
pub const TYPING_RING: usize = 1024;

/// What the connections do once connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Publishers send `message:send` to their group's channel.
    Messages,
    /// Publishers alternate `typing:start` / `typing:stop` in their group's channel.
    Typing,
    /// In the publish phase, every connection that completes CONNECT is closed and opened
    /// again (`connect` runs); nothing is published.
    Cycle,
}

impl Shared {
    /// Fresh shared state with room for `typing_publishers` typing publishers.
    pub fn with_typing(typing_publishers: usize) -> Self {
        let mut s = Self::new();
        s.typing_sent = (0..typing_publishers).map(|_| AtomicU64::new(0)).collect();
        s.typing_stamps = (0..typing_publishers * TYPING_RING)
            .map(|_| AtomicU64::new(0))
            .collect();
        s
    }

    /// Fresh shared state in the connect phase.
    pub fn new() -> Self {
        Shared {
            start: Instant::now(),
            phase: AtomicU8::new(PH_CONNECT),
            established: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            dropped: AtomicUsize::new(0),
            sent: AtomicU64::new(0),
            acks: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            cycles: AtomicU64::new(0),
            typing_sent: Vec::new(),
            typing_stamps: Vec::new(),
            live: Mutex::new(Live::new()),
        }
    }

    pub(crate) fn nanos(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_nanos() as u64
    }
}

impl WorkerConfig {
    /// The node connection `plan` goes to: its address, `Host` header and index.
    pub fn node_of(&self, plan: &ConnPlan) -> (SocketAddr, &str, usize) {
        if self.nodes.len() < 2 || (plan.publisher && !self.spread_publishers) {
            return (self.server, &self.host, 0);
        }
        let i = plan.index % self.nodes.len();
        (self.nodes[i].0, &self.nodes[i].1, i)
    }
}

impl Default for Shared {
    fn default() -> Self {
        Self::new()
    }
}

/// What a worker needs to know about the server and the run.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Worker number, used in clientMsgIds.
    pub id: usize,
    /// Server address.
    pub server: SocketAddr,
    /// `Host` header value.
    pub host: String,
    /// Every node of a cluster, `server` first (empty: one server). Publishers connect to the
    /// first (unless `spread_publishers`); connection `index` of the others to
    /// `nodes[index % nodes.len()]`.
    pub nodes: Arc<Vec<(SocketAddr, String)>>,
    /// Spread publishers over the nodes like everyone else.
    pub spread_publishers: bool,
    /// The run's channels; a connection publishes to `channels[plan.group]`.
    pub channels: Arc<Vec<String>>,
    /// What connections do once connected.
    pub mode: Mode,
    /// Pick each next publisher at random instead of round-robin.
    pub random_senders: bool,
    /// Loopback source addresses to rotate over (0: let the kernel choose).
    pub sources: usize,
    /// Connections this worker starts per second (0: as fast as `max_inflight` allows).
    pub ramp_per_sec: f64,
    /// Most connections between TCP connect and Socket.IO CONNECT at once.
    pub max_inflight: usize,
    /// Messages per second this worker publishes in the publish phase.
    pub publish_rate: f64,
    /// Bytes of padding appended to each message's content.
    pub content_pad: usize,
    /// Keep a [`MemberRecord`] per connection.
    pub track_members: bool,
    /// `soak` runs: typing and history reads besides sends, and [`Live`] figures.
    pub soak: Option<SoakMix>,
}

/// One connection to open.
#[derive(Debug, Clone)]
pub struct ConnPlan {
    /// Global connection number (source address rotation).
    pub index: usize,
    /// The CONNECT packet's text, `40{"token":...,"workspaceId":...}`.
    pub connect_packet: Arc<str>,
    /// Whether this connection publishes.
    pub publisher: bool,
    /// Which of the run's channels this connection's user is a member of.
    pub group: u32,
}

/// Everything a worker measured.
#[derive(Debug)]
pub struct WorkerResult {
    /// Connections that completed CONNECT.
    pub established: u64,
    /// Connections that failed before.
    pub failed: u64,
    /// Established connections lost later.
    pub dropped: u64,
    /// Failure reason -> count.
    pub reasons: HashMap<String, u64>,
    /// TCP connect start -> `40{"sid"}`.
    pub connect_hist: Histogram<u64>,
    /// send -> ack.
    pub ack_hist: Histogram<u64>,
    /// send -> receipt, per receiving member.
    pub delivery_hist: Histogram<u64>,
    /// Cluster runs: the same, for receivers on the publishers' node.
    pub delivery_local_hist: Histogram<u64>,
    /// Cluster runs: the same, for receivers on the other nodes.
    pub delivery_remote_hist: Histogram<u64>,
    /// Messages sent.
    pub sent: u64,
    /// Successful acks.
    pub acked_ok: u64,
    /// Failed acks.
    pub acked_err: u64,
    /// Sequences of successful acks, per channel group.
    pub acked: Vec<SeqSet>,
    /// `message:new` receipts (`typing:update` in typing runs).
    pub deliveries: u64,
    /// Completed connect/disconnect cycles.
    pub cycles: u64,
    /// Connect latency of the cycles (TCP connect start -> `40{"sid"}`).
    pub cycle_hist: Histogram<u64>,
    /// Pings answered.
    pub pings: u64,
    /// One record per member connection (with `track_members`).
    pub members: Vec<MemberRecord>,
    /// First send, nanoseconds since [`Shared::start`].
    pub first_send_nanos: Option<u64>,
    /// Last receipt, nanoseconds since [`Shared::start`].
    pub last_delivery_nanos: u64,
    /// This thread's CPU time over its whole run.
    pub thread_cpu: Duration,
    /// This thread's wall time.
    pub wall: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(index: usize, publisher: bool) -> ConnPlan {
        ConnPlan {
            index,
            connect_packet: "40".into(),
            publisher,
            group: 0,
        }
    }

    #[test]
    fn publishers_stay_on_the_first_node_and_the_rest_go_round_robin() {
        let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let nodes: Vec<(SocketAddr, String)> =
            (1..=3).map(|p| (addr(p), format!("n{p}"))).collect();
        let cfg = WorkerConfig {
            id: 0,
            server: addr(1),
            host: "n1".into(),
            nodes: Arc::new(nodes),
            spread_publishers: false,
            channels: Arc::default(),
            mode: Mode::Messages,
            random_senders: false,
            sources: 0,
            ramp_per_sec: 0.0,
            max_inflight: 1,
            publish_rate: 0.0,
            content_pad: 0,
            track_members: false,
            soak: None,
        };
        let node = |i, publisher| cfg.node_of(&plan(i, publisher)).2;
        assert_eq!(
            (0..6).map(|i| node(i, false)).collect::<Vec<_>>(),
            [0, 1, 2, 0, 1, 2]
        );
        assert_eq!(node(4, true), 0);
        assert_eq!(cfg.node_of(&plan(5, false)).1, "n3");
        let spread = WorkerConfig {
            spread_publishers: true,
            ..cfg.clone()
        };
        assert_eq!(spread.node_of(&plan(4, true)).2, 1, "publishers spread too");
        let single = WorkerConfig {
            nodes: Arc::default(),
            ..cfg
        };
        assert_eq!(
            single.node_of(&plan(5, false)).2,
            0,
            "one server: everyone on it"
        );
    }
}
