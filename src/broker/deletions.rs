//! Deletions that no publication brought, the part without I/O (design: `docs/cluster.md`,
//! "Outages").
//!
//! A `message:new` that crossed no node is found again by its sequence: the room's stream
//! has a gap, which the sweep of tops and the gap fill close from PostgreSQL. A deletion of a
//! message the node already released leaves no gap. So the `broker` thread reads from
//! PostgreSQL the deletions of its rooms, and releases those it has not released yet:
//! - while its subscriber is down, and for [`SETTLE`] after it is back (its rooms are
//!   subscribed again by then), every second;
//! - with each sweep of tops (a node that died between a deletion's commit and its publish,
//!   a deletion the web app wrote into the table).
//!
//! Each read starts [`MARGIN`] before the start of the last read that came back whole, so an
//! outage costs what was deleted meanwhile, and a read that failed is made up by the next. A
//! read cut at its page limit is carried on by the next from its last row ([`Cursor`]), so a
//! backlog of any size is read through in pages rather than read from its start again.
//!
//! [`Deletions`] says when to read and from which moment, and remembers the deletions the node
//! released recently, so each reaches the node's members once: whether it came from this
//! node's store, from Redis (the deleting node publishes again what Redis did not take), or
//! from PostgreSQL.

use std::collections::VecDeque;
use std::hash::Hash;
use std::time::{Duration, Instant, SystemTime};

use rustc_hash::FxHashSet;
use uuid::Uuid;

/// How long before the outage was noticed a deletion is looked for: the moment the
/// subscriber broke is before it was noticed, and nodes' clocks differ a little.
pub const MARGIN: Duration = Duration::from_secs(5);

/// How long after the subscriber is back the reads go on (its subscriptions are made again
/// within it).
pub const SETTLE: Duration = Duration::from_secs(5);

/// How long a released deletion is remembered at least once no outage is in doubt (it covers
/// [`MARGIN`], and the late copies the deleting node publishes after its own outage); longer
/// when the sweeps are further apart (see [`Deletions::new`]).
pub const KEEP: Duration = Duration::from_secs(60);

/// Most deletions remembered: past it the oldest are forgotten, and a copy of one of those
/// would reach the members twice (the contract's event is idempotent for a client: the
/// message is already a tombstone).
pub const MAX_KEPT: usize = 100_000;

/// Where a read starts: after this `(deleted_at, id)`, in PostgreSQL's order (a uuid compares
/// as its bytes, as `Uuid` does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    /// The wall clock's moment (`deleted_at`).
    pub at: SystemTime,
    /// The message's id (nil: from the moment on).
    pub id: Uuid,
}

impl Cursor {
    /// Every deletion from `at` on.
    pub fn from(at: SystemTime) -> Self {
        Cursor {
            at,
            id: Uuid::nil(),
        }
    }
}

/// An outage whose deletions are still looked for.
#[derive(Debug, Clone, Copy)]
struct Doubt {
    /// The subscriber is back; the reads stop at this instant (`None`: it is still down).
    until: Option<Instant>,
}

/// The deletions released recently, and the outage being caught up.
#[derive(Debug)]
pub struct Deletions<K> {
    seen: FxHashSet<(K, u64)>,
    order: VecDeque<(Instant, K, u64)>,
    doubt: Option<Doubt>,
    /// When the last outage's reads ended: deletions released before it are kept `keep`.
    settled: Option<Instant>,
    /// Every deletion committed before this moment (the wall clock, as PostgreSQL's
    /// `deleted_at`) was read: the start of the last read that came back whole.
    covered: SystemTime,
    /// Reads cut at their page limit since the last whole one: the start of the first, and
    /// the last row read, where the next read goes on.
    cut: Option<(SystemTime, Cursor)>,
    keep: Duration,
}

impl<K: Copy + Eq + Hash> Deletions<K> {
    /// The deletions of a node that started at `start` (its rooms start after it: nothing
    /// deleted before matters), swept about every `sweep`: what a sweep reads is remembered
    /// until the sweep after next has read past it (and [`KEEP`] at least).
    pub fn new(sweep: Duration, start: SystemTime) -> Self {
        Deletions {
            seen: FxHashSet::default(),
            order: VecDeque::new(),
            doubt: None,
            settled: None,
            covered: start,
            cut: None,
            keep: KEEP.max(sweep.saturating_mul(2) + MARGIN * 2),
        }
    }

    /// Where the next read starts: after the last row of a read cut at its page limit, else
    /// [`MARGIN`] before the last whole read.
    pub fn since(&self) -> Cursor {
        match self.cut {
            Some((_, last)) => last,
            None => Cursor::from(self.covered.checked_sub(MARGIN).unwrap_or(self.covered)),
        }
    }

    /// A read started at `at` came back: whole (`cut` is `None`), or stopped at its page
    /// limit after the row `cut`.
    ///
    /// Once reads cut in turn end with a whole one, every deletion committed before the
    /// first of them started has been read (a later one's rows behind the cursor were
    /// committed before it, or within [`MARGIN`] of their `deleted_at`, which the next read's
    /// start covers).
    pub fn read(&mut self, at: SystemTime, cut: Option<Cursor>) {
        match (cut, self.cut) {
            (None, None) => self.covered = self.covered.max(at),
            (None, Some((first, _))) => {
                self.covered = self.covered.max(first.min(at));
                self.cut = None;
            }
            (Some(last), None) => self.cut = Some((at, last)),
            (Some(last), Some((first, before))) => {
                self.cut = Some((first.min(at), before.max(last)));
            }
        }
    }

    /// The deletion of `room`'s message at `seq` is about to be released: `true` the first
    /// time, `false` for a copy.
    pub fn first(&mut self, room: K, seq: u64, now: Instant) -> bool {
        if !self.seen.insert((room, seq)) {
            return false;
        }
        self.order.push_back((now, room, seq));
        self.trim(now);
        true
    }

    /// The subscriber is down: what other nodes delete may cross no node.
    pub fn down(&mut self) {
        self.doubt = Some(Doubt { until: None });
    }

    /// The subscriber is back: the reads go on for [`SETTLE`].
    pub fn up(&mut self, now: Instant) {
        if let Some(d) = &mut self.doubt {
            if d.until.is_none() {
                d.until = Some(now + SETTLE);
            }
        }
    }

    /// Whether an outage's deletions are to be read now (every second while one is in doubt).
    pub fn due(&mut self, now: Instant) -> bool {
        let Some(d) = self.doubt else {
            return false;
        };
        if d.until.is_some_and(|until| now >= until) {
            self.doubt = None;
            self.settled = Some(now);
            return false;
        }
        true
    }

    /// Deletions remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Forgets what is past [`MAX_KEPT`], and what is older than `keep` once no outage is
    /// in doubt and the last one's reads ended `keep` ago.
    pub fn trim(&mut self, now: Instant) {
        let keep = self.keep;
        let in_doubt = self.doubt.is_some()
            || self
                .settled
                .is_some_and(|s| now.saturating_duration_since(s) <= keep);
        if !in_doubt {
            self.settled = None;
        }
        while let Some(&(at, room, seq)) = self.order.front() {
            let old = !in_doubt && now.saturating_duration_since(at) > keep;
            if !old && self.order.len() <= MAX_KEPT {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&(room, seq));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wall(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    fn deletions() -> Deletions<u8> {
        Deletions::new(Duration::ZERO, wall(0))
    }

    #[test]
    fn a_deletion_is_released_once_whichever_way_it_comes() {
        let mut d = deletions();
        let t0 = Instant::now();
        assert!(d.first(1, 7, t0));
        assert!(
            !d.first(1, 7, t0),
            "the copy from PostgreSQL or a republish"
        );
        assert!(
            d.first(2, 7, t0),
            "another room's message at the same sequence"
        );
        assert!(d.first(1, 8, t0));
        assert_eq!(d.len(), 3);
    }

    #[test]
    fn each_read_starts_shortly_before_the_last_whole_one() {
        let mut d = deletions();
        assert_eq!(
            d.since(),
            Cursor::from(wall(0) - MARGIN),
            "from shortly before the node started"
        );
        d.read(wall(30), None);
        assert_eq!(d.since(), Cursor::from(wall(30) - MARGIN));
        // A late answer of an older read does not move it back.
        d.read(wall(90), None);
        d.read(wall(61), None);
        assert_eq!(d.since(), Cursor::from(wall(90) - MARGIN));
    }

    #[test]
    fn a_read_cut_at_its_page_limit_is_carried_on_from_its_last_row() {
        let mut d = deletions();
        d.read(wall(30), None);
        let row = |secs, id| Cursor {
            at: wall(secs),
            id: Uuid::from_u128(id),
        };
        // A backlog larger than a read: each read goes on where the last one stopped, so it
        // is read through however large it is.
        d.read(wall(60), Some(row(40, 7)));
        assert_eq!(d.since(), row(40, 7));
        d.read(wall(61), Some(row(45, 2)));
        assert_eq!(d.since(), row(45, 2));
        // The same deleted_at: the id orders them.
        d.read(wall(62), Some(row(45, 9)));
        assert_eq!(d.since(), row(45, 9));
        // The last read is whole: what was committed before the first cut read started is
        // read, and the next read starts shortly before that (a deletion committed late,
        // behind a cursor, is within MARGIN of it).
        d.read(wall(63), None);
        assert_eq!(d.since(), Cursor::from(wall(60) - MARGIN));
        // A cut read after that starts a new run from its own start.
        d.read(wall(70), Some(row(66, 1)));
        assert_eq!(d.since(), row(66, 1));
        d.read(wall(71), None);
        assert_eq!(d.since(), Cursor::from(wall(70) - MARGIN));
    }

    #[test]
    fn sweeps_further_apart_keep_deletions_longer() {
        let mut d = Deletions::new(Duration::from_secs(120), wall(0));
        let t0 = Instant::now();
        d.first(1u8, 1, t0);
        d.trim(t0 + Duration::from_secs(200));
        assert!(
            !d.first(1, 1, t0),
            "still known after 200 s: the next sweep may read it"
        );
        d.trim(t0 + Duration::from_secs(300));
        assert!(d.is_empty());
    }

    #[test]
    fn no_outage_reads_without_an_outage() {
        let mut d = deletions();
        let t0 = Instant::now();
        assert!(!d.due(t0));
        d.up(t0);
        assert!(!d.due(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn outage_reads_last_until_settled_after_the_subscriber_is_back() {
        let mut d = deletions();
        let t0 = Instant::now();
        d.down();
        assert!(d.due(t0));
        assert!(
            d.due(t0 + Duration::from_secs(600)),
            "however long it is down"
        );
        let back = t0 + Duration::from_secs(900);
        d.up(back);
        assert!(d.due(back + SETTLE - Duration::from_millis(1)));
        assert!(!d.due(back + SETTLE));
        d.down();
        assert!(d.due(back + SETTLE), "a later outage reads again");
    }

    #[test]
    fn a_loss_after_the_subscriber_came_back_keeps_reading() {
        let mut d = deletions();
        let t0 = Instant::now();
        d.down();
        d.up(t0);
        d.down();
        assert!(d.due(t0 + SETTLE * 3), "down again: no end yet");
    }

    #[test]
    fn remembered_through_the_outage_then_for_keep() {
        let mut d = deletions();
        let t0 = Instant::now();
        assert!(d.first(1, 1, t0));
        d.down();
        // Far past KEEP while in doubt: still remembered.
        let late = t0 + KEEP * 5;
        assert!(d.first(1, 2, late));
        d.trim(late);
        assert!(
            !d.first(1, 1, late),
            "a deletion from before the outage is still known"
        );
        d.up(late);
        let settled = late + SETTLE;
        assert!(!d.due(settled));
        d.trim(settled + KEEP - Duration::from_secs(1));
        assert!(!d.first(1, 1, settled), "kept KEEP after the reads ended");
        d.trim(settled + KEEP + Duration::from_secs(1));
        assert!(d.is_empty(), "forgotten KEEP after the reads ended");
    }

    #[test]
    fn without_an_outage_deletions_are_kept_for_keep_only() {
        let mut d = deletions();
        let t0 = Instant::now();
        d.first(1, 1, t0);
        d.trim(t0 + KEEP);
        assert_eq!(d.len(), 1);
        d.trim(t0 + KEEP + Duration::from_millis(1));
        assert!(d.is_empty());
    }

    #[test]
    fn bounded_in_memory_even_in_an_endless_outage() {
        let mut d = deletions();
        let t0 = Instant::now();
        d.down();
        for seq in 0..(MAX_KEPT as u64 + 10) {
            d.first(0, seq, t0);
        }
        assert_eq!(d.len(), MAX_KEPT);
        assert!(d.first(0, 0, t0), "the oldest was forgotten");
    }
}
