//! The store thread's handle ([`StoreHandle`]) and its admission: how far behind the store
//! may fall before clients' requests are refused as busy.
//!
//! Two bounds, whichever comes first:
//! - a count ([`STORE_INBOX_LIMIT`]), which bounds memory;
//! - a wait (`CHAT_MAX_STORE_WAIT_MS`): how long the oldest send not yet in a batch has
//!   waited. A count alone bounds the wait only through the store's speed: 8,192 sends are
//!   0.4 s of queue at 20,000 stored a second and 8 s at 1,000 (a slow disk, a busy
//!   database). The wait bound keeps an accepted send's ack within about the bound plus one
//!   batch at any speed, and refuses the rest at once with a reason the client can act on.
//!   It looks at the head of the queue, not at a count, so a burst the store absorbs within
//!   the bound is never refused; and it holds only while [`WAIT_BOUND_MIN_QUEUE`] requests
//!   wait, so a short stall of the database under light load delays sends but refuses none.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::StoreCommand;
use crate::metrics::Metrics;

/// Commands the store's inbox may hold before clients' requests are refused (each holds at
/// most one message: at most 8,192 x 16 KB of content with the default limits).
pub const STORE_INBOX_LIMIT: usize = 8192;

/// Requests queued for the store below which the wait bound does not refuse: a database
/// that stalls for a moment under light load (a checkpoint, a lock) delays a few sends, and
/// they are better late than refused. Two full batches.
pub const WAIT_BOUND_MIN_QUEUE: usize = 1024;

/// The zero of the microsecond clock the store thread and the shards share through an atomic:
/// a day before its first use, so that every arrival a queued send carries comes after it.
static EPOCH: LazyLock<Instant> = LazyLock::new(|| {
    let now = Instant::now();
    now.checked_sub(Duration::from_secs(86_400)).unwrap_or(now)
});

/// Microseconds from [`EPOCH`] to `at`, plus one (0 stands for "nothing waits").
fn stamp(at: Instant) -> u64 {
    let micros = at.saturating_duration_since(*EPOCH).as_micros();
    u64::try_from(micros).unwrap_or(u64::MAX - 1) + 1
}

/// How long the send whose arrival `since` holds ([`StoreHandle::set_waiting_since`]) has
/// waited at `now`; `None` when none waits.
pub fn waited_since(since: &AtomicU64, now: Instant) -> Option<Duration> {
    let since = since.load(Relaxed);
    (since != 0).then(|| Duration::from_micros(stamp(now).saturating_sub(since)))
}

/// The store thread's inbox, and what it tells the shards about its queue.
#[derive(Clone, Debug)]
pub struct StoreHandle {
    inbox: Sender<StoreCommand>,
    /// Sends the store thread took from its inbox and has not answered yet (queued for a
    /// writer lane, or in its batch): they count toward [`STORE_INBOX_LIMIT`] too.
    backlog: Arc<AtomicUsize>,
    /// When the oldest send waiting for its batch arrived ([`stamp`]; 0: none waits).
    waiting_since: Arc<AtomicU64>,
    /// Longest wait before requests are refused; zero: no bound but the count.
    max_wait: Duration,
}

impl StoreHandle {
    /// Wraps the store thread's inbox, with no bound on the wait.
    pub fn new(inbox: Sender<StoreCommand>) -> Self {
        StoreHandle {
            inbox,
            backlog: Arc::default(),
            waiting_since: Arc::default(),
            max_wait: Duration::ZERO,
        }
    }

    /// Refuses requests once the oldest waiting send has waited longer than `max_wait`
    /// (zero: never for that).
    pub fn with_max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// Shares the oldest send's arrival with `metrics` (`ocomms_store_wait_seconds`).
    pub fn with_metrics(mut self, metrics: &Metrics) -> Self {
        self.waiting_since = Arc::clone(&metrics.store.waiting_since);
        self
    }

    /// A handle on another inbox that shares this one's counts.
    pub fn with_inbox(&self, inbox: Sender<StoreCommand>) -> Self {
        StoreHandle {
            inbox,
            ..self.clone()
        }
    }

    /// Queues a command. Returns `false` when the store thread has exited.
    pub fn send(&self, command: StoreCommand) -> bool {
        self.inbox.send(command).is_ok()
    }

    /// Commands waiting: in the inbox, and sends taken from it but not answered yet.
    pub fn depth(&self) -> usize {
        self.inbox.len() + self.backlog.load(Relaxed)
    }

    /// Sets how many sends the store thread holds unanswered (the store thread only).
    pub fn set_backlog(&self, sends: usize) {
        self.backlog.store(sends, Relaxed);
    }

    /// Sets when the oldest send still waiting for its batch arrived (the store thread only).
    pub fn set_waiting_since(&self, since: Option<Instant>) {
        self.waiting_since.store(since.map_or(0, stamp), Relaxed);
    }

    /// How long the oldest send waiting for its batch has waited at `now`.
    pub fn waited(&self, now: Instant) -> Option<Duration> {
        waited_since(&self.waiting_since, now)
    }

    /// Why a client's request should be refused now, if the store is too far behind.
    pub fn busy(&self, now: Instant) -> Option<String> {
        let depth = self.depth();
        if depth >= STORE_INBOX_LIMIT {
            return Some(format!(
                "the server is busy ({depth} requests wait for the store); try again in a moment"
            ));
        }
        if self.max_wait.is_zero() || depth < WAIT_BOUND_MIN_QUEUE {
            return None;
        }
        let waited = self.waited(now)?;
        (waited > self.max_wait).then(|| {
            format!(
                "the server is busy (sends have waited {} ms for the store, over its {} ms \
                 bound); try again in a moment",
                waited.as_millis(),
                self.max_wait.as_millis()
            )
        })
    }
}
