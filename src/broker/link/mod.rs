//! The link to Redis: the only threads of a node that talk to it.
//!
//! - `broker-pub` owns the publish connections (one per primary): it drains its bounded inbox
//!   into one pipeline per primary and turn, and runs the jobs other parts of the broker give it
//!   (presence scripts, heartbeats) in order with the publications.
//! - `broker-sub` supervises one reader thread per primary (`broker-sub-N`), each with a RESP3
//!   connection that subscribes, unsubscribes and reads pushes; every message and subscription
//!   confirmation goes straight to the broker's event channel.
//!
//! Neither ever blocks a caller: [`Link::publish`] fails at once when the queue is full or
//! Redis is down, and the publication is reported back as [`Event::Unpublished`] so the broker
//! can announce a watermark instead. A lost connection is reopened with backoff (50 ms doubling
//! to 2 s, with jitter), after rediscovering the topology; every wanted channel is subscribed
//! again, and each confirmation arrives as [`Event::Subscribed`], which is where the broker
//! catches that room up from PostgreSQL. A link that stays open but stops answering is found by
//! a ping: a reader that heard nothing for a second subscribes again to one of its channels
//! (Redis confirms even a repeated subscription), and one that gets no confirmation within
//! three seconds counts as lost; a publish pipeline that gets no reply within two seconds too.

mod publisher;
mod subscriber;
pub mod topology;

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Sender, TrySendError};
use serde_json::json;

use super::config::RedisConfig;
use super::metrics::BrokerMetrics;
use super::names::{Names, NodeId};
pub use publisher::Conns;
use topology::Mode;

/// Most publications and jobs waiting for the publisher; beyond it `publish` fails at once.
pub const PUBLISH_QUEUE: usize = 65_536;

/// What the link tells the broker.
#[derive(Debug)]
pub enum Event {
    /// A publication arrived on `channel`.
    Message {
        /// The channel.
        channel: String,
        /// The payload, as received.
        payload: Bytes,
    },
    /// Redis confirmed a subscription (the first time, or again after a reconnect).
    Subscribed(String),
    /// Subscriptions were lost: until each is confirmed again, publications on it are missed.
    SubscriberDown,
    /// Publications that were not sent (Redis down, queue full, or a failed pipeline that may
    /// or may not have reached Redis).
    Unpublished(Vec<Vec<u8>>),
}

/// A piece of work for the publisher thread, run on its connections (`None` while Redis is
/// down, so the job can answer its caller with an error).
pub type Job = Box<dyn FnOnce(Option<&mut Conns>) + Send>;

pub(crate) enum PubCommand {
    Publish { channel: String, payload: Vec<u8> },
    Run(Job),
}

pub(crate) enum SubCommand {
    Subscribe(Vec<String>),
    Unsubscribe(Vec<String>),
}

/// State of one direction of the link.
pub mod state {
    /// Not connected yet, or reconnecting.
    pub const CONNECTING: u8 = 0;
    /// Connected.
    pub const UP: u8 = 1;
    /// The last attempt failed; retrying with backoff.
    pub const DOWN: u8 = 2;

    /// The word `/healthz` shows.
    pub fn name(s: u8) -> &'static str {
        match s {
            UP => "up",
            DOWN => "down",
            _ => "connecting",
        }
    }
}

/// What `/healthz` shows about the link; written by the link threads.
#[derive(Debug, Default)]
pub struct LinkStatus {
    /// Publish connections ([`state`]).
    pub publish: AtomicU8,
    /// Subscribe connections ([`state`]).
    pub subscribe: AtomicU8,
    /// 0 unknown, 1 standalone, 2 cluster.
    mode: AtomicU8,
    /// Primaries connected to (1 when standalone).
    pub primaries: AtomicI64,
    /// When the link last went down, in ms since the link started (0: it is up).
    down_since_ms: AtomicU64,
    /// The last connection error (never holds a password: it is the server's or the OS's text).
    last_error: Mutex<Option<String>>,
    started: Mutex<Option<Instant>>,
}

impl LinkStatus {
    fn now_ms(&self) -> u64 {
        let started = *self
            .started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(Instant::now);
        u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub(crate) fn set_mode(&self, mode: Mode) {
        self.mode.store(
            match mode {
                Mode::Standalone => 1,
                Mode::Cluster => 2,
            },
            Relaxed,
        );
    }

    /// The mode found at the last connect.
    pub fn mode(&self) -> Option<Mode> {
        match self.mode.load(Relaxed) {
            1 => Some(Mode::Standalone),
            2 => Some(Mode::Cluster),
            _ => None,
        }
    }

    pub(crate) fn up(&self, which: &AtomicU8) {
        which.store(state::UP, Relaxed);
        if self.publish.load(Relaxed) == state::UP && self.subscribe.load(Relaxed) == state::UP {
            self.down_since_ms.store(0, Relaxed);
        }
    }

    pub(crate) fn down(&self, which: &AtomicU8, error: &str) {
        which.store(state::DOWN, Relaxed);
        let now = self.now_ms().max(1);
        let _ = self
            .down_since_ms
            .compare_exchange(0, now, Relaxed, Relaxed);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.to_owned());
    }

    /// Whether both directions are connected.
    pub fn is_up(&self) -> bool {
        self.publish.load(Relaxed) == state::UP && self.subscribe.load(Relaxed) == state::UP
    }

    /// For `/healthz`: `{"status", "mode", "publish", "subscribe", "primaries", "downForMs",
    /// "lastError"}`.
    pub fn to_json(&self) -> serde_json::Value {
        let (p, s) = (self.publish.load(Relaxed), self.subscribe.load(Relaxed));
        let status = if p == state::UP && s == state::UP {
            "up"
        } else if p == state::DOWN || s == state::DOWN {
            "down"
        } else {
            "connecting"
        };
        let since = self.down_since_ms.load(Relaxed);
        json!({
            "status": status,
            "mode": self.mode().map(Mode::as_str),
            "publish": state::name(p),
            "subscribe": state::name(s),
            "primaries": self.primaries.load(Relaxed),
            "downForMs": (since > 0).then(|| self.now_ms().saturating_sub(since)),
            "lastError": self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        })
    }
}

/// Reconnect pacing: 50 ms doubling to 2 s, each wait shortened by up to a quarter at random
/// so nodes that lost Redis together do not all come back in the same millisecond.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
    at: Option<Instant>,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(2);

    pub(crate) fn new() -> Backoff {
        Backoff {
            next: Self::FIRST,
            at: None,
        }
    }

    /// Whether an attempt may be made now.
    pub(crate) fn ready(&self, now: Instant) -> bool {
        self.at.is_none_or(|at| now >= at)
    }

    /// Time until the next attempt.
    pub(crate) fn wait(&self, now: Instant) -> Duration {
        self.at
            .map_or(Duration::ZERO, |at| at.saturating_duration_since(now))
    }

    pub(crate) fn failed(&mut self, now: Instant) {
        let jitter = uuid::Uuid::new_v4().as_u64_pair().0 % 256;
        let wait = self.next - self.next * u32::try_from(jitter).unwrap_or(0) / 1024;
        self.at = Some(now + wait);
        self.next = (self.next * 2).min(Self::MAX);
    }

    pub(crate) fn reset(&mut self) {
        self.next = Self::FIRST;
        self.at = None;
    }
}

/// The link's threads and the handles to reach them.
pub struct Link {
    publish: Sender<PubCommand>,
    subscribe: Sender<SubCommand>,
    status: Arc<LinkStatus>,
    metrics: Arc<BrokerMetrics>,
    threads: Vec<JoinHandle<()>>,
}

impl Link {
    /// Starts the threads. They connect in the background (the link starts `connecting`);
    /// events go to `events`, which the broker must keep reading (a reader blocks on a full
    /// channel, which pushes back into Redis until Redis drops the connection as too slow:
    /// memory stays bounded either way).
    pub fn start(
        config: &RedisConfig,
        node: NodeId,
        events: Sender<Event>,
        metrics: Arc<BrokerMetrics>,
    ) -> std::io::Result<Link> {
        let status = Arc::new(LinkStatus::default());
        status.now_ms();
        let names = Names::new(&config.prefix);
        let node_channel = names.node(node);
        let (pub_tx, pub_rx) = crossbeam_channel::bounded(PUBLISH_QUEUE);
        let (sub_tx, sub_rx) = crossbeam_channel::unbounded();
        let publisher = publisher::spawn(
            config.clone(),
            pub_rx,
            events.clone(),
            Arc::clone(&status),
            Arc::clone(&metrics),
        )?;
        let subscriber = subscriber::spawn(
            config.clone(),
            node_channel,
            sub_rx,
            events,
            Arc::clone(&status),
            Arc::clone(&metrics),
        )?;
        Ok(Link {
            publish: pub_tx,
            subscribe: sub_tx,
            status,
            metrics,
            threads: vec![publisher, subscriber],
        })
    }

    /// Queues a publication; never blocks. When the queue is full it is reported back at once
    /// as [`Event::Unpublished`] by the caller's return value.
    pub fn publish(&self, channel: String, payload: Vec<u8>) -> Result<(), Vec<u8>> {
        match self
            .publish
            .try_send(PubCommand::Publish { channel, payload })
        {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(PubCommand::Publish { payload, .. }))
            | Err(TrySendError::Disconnected(PubCommand::Publish { payload, .. })) => {
                self.metrics.unpublished.fetch_add(1, Relaxed);
                Err(payload)
            }
            Err(_) => Err(Vec::new()),
        }
    }

    /// Runs `job` on the publisher thread, in order with the publications queued before it.
    /// Returns `false` (and drops the job) when the queue is full.
    pub fn run(&self, job: Job) -> bool {
        self.publish.try_send(PubCommand::Run(job)).is_ok()
    }

    /// Subscribes to channels (each is confirmed by an [`Event::Subscribed`]).
    pub fn subscribe(&self, channels: Vec<String>) {
        let _ = self.subscribe.send(SubCommand::Subscribe(channels));
    }

    /// Unsubscribes from channels.
    pub fn unsubscribe(&self, channels: Vec<String>) {
        let _ = self.subscribe.send(SubCommand::Unsubscribe(channels));
    }

    /// Whether both directions are connected now.
    pub fn is_up_now(&self) -> bool {
        self.status.is_up()
    }

    /// The link's state, for `/healthz`.
    pub fn status(&self) -> &Arc<LinkStatus> {
        &self.status
    }

    /// Closes the connections and waits for the threads.
    pub fn shutdown(self) {
        let Link {
            publish,
            subscribe,
            threads,
            ..
        } = self;
        drop(publish);
        drop(subscribe);
        for t in threads {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_bound_with_jitter() {
        let t0 = Instant::now();
        let mut b = Backoff::new();
        assert!(b.ready(t0));
        let mut waits = Vec::new();
        for _ in 0..8 {
            b.failed(t0);
            waits.push(b.wait(t0));
        }
        assert!(waits[0] <= Duration::from_millis(50) && waits[0] >= Duration::from_millis(37));
        assert!(waits[7] <= Duration::from_secs(2) && waits[7] >= Duration::from_millis(1500));
        assert!(!b.ready(t0));
        b.reset();
        assert!(b.ready(t0));
    }

    #[test]
    fn status_reports_each_direction_and_the_outage() {
        let s = LinkStatus::default();
        assert_eq!(s.to_json()["status"], "connecting");
        s.up(&s.publish);
        s.up(&s.subscribe);
        s.set_mode(Mode::Cluster);
        let j = s.to_json();
        assert_eq!(j["status"], "up");
        assert_eq!(j["mode"], "cluster");
        assert!(j["downForMs"].is_null());
        s.down(&s.subscribe, "Connection refused (os error 111)");
        let j = s.to_json();
        assert_eq!(j["status"], "down");
        assert_eq!(j["publish"], "up");
        assert_eq!(j["lastError"], "Connection refused (os error 111)");
        assert!(j["downForMs"].is_u64());
    }
}
