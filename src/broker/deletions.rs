//! Deletions that no publication brought, the part without I/O (design: `docs/cluster.md`,
//! "Outages").
//!
//! A `message:new` that crossed no node is found again by its sequence: the room's stream
//! has a gap, which the sweep of tops and the gap fill close from PostgreSQL. A deletion of a
//! message the node already released leaves no gap. So the `broker` thread reads from
//! PostgreSQL the deletions of its rooms, and releases those it has not released yet:
//! - while its subscriber is down, and for [`SETTLE`] after it is back (its rooms are
//!   subscribed again by then), every second, those made since shortly before the outage
//!   began;
//! - with each sweep of tops, those made since shortly before the last sweep (a node that
//!   died between a deletion's commit and its publish).
//!
//! [`Deletions`] says when to read and from which moment, and remembers the deletions the node
//! released recently, so each reaches the node's members once: whether it came from this
//! node's store, from Redis (the deleting node publishes again what Redis did not take), or
//! from PostgreSQL.

use std::collections::VecDeque;
use std::hash::Hash;
use std::time::{Duration, Instant, SystemTime};

use rustc_hash::FxHashSet;

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

/// An outage whose deletions are still looked for.
#[derive(Debug, Clone, Copy)]
struct Doubt {
    /// Deletions made from this moment on (the wall clock, as PostgreSQL's `deleted_at`).
    since: SystemTime,
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
    /// When the last sweep was (the wall clock).
    swept: Option<SystemTime>,
    keep: Duration,
}

impl<K: Copy + Eq + Hash> Default for Deletions<K> {
    fn default() -> Self {
        Deletions::new(Duration::ZERO)
    }
}

impl<K: Copy + Eq + Hash> Deletions<K> {
    /// Deletions swept about every `sweep`: what a sweep reads is remembered until the sweep
    /// after next has read past it (and [`KEEP`] at least).
    pub fn new(sweep: Duration) -> Self {
        Deletions {
            seen: FxHashSet::default(),
            order: VecDeque::new(),
            doubt: None,
            settled: None,
            swept: None,
            keep: KEEP.max(sweep.saturating_mul(2) + MARGIN * 2),
        }
    }

    /// A sweep at `wall`: from which moment its read starts (`None` for the first sweep, as
    /// the node's rooms started after it had no deletions to miss).
    pub fn sweep(&mut self, wall: SystemTime) -> Option<SystemTime> {
        let since = self.swept.map(|s| s.checked_sub(MARGIN).unwrap_or(s));
        self.swept = Some(wall);
        since
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

    /// The subscriber is down (noticed at `wall`): what other nodes delete from shortly before
    /// now on may cross no node.
    pub fn down(&mut self, wall: SystemTime) {
        let since = wall.checked_sub(MARGIN).unwrap_or(wall);
        self.doubt = Some(Doubt {
            since: self.doubt.map_or(since, |d| d.since.min(since)),
            until: None,
        });
    }

    /// The subscriber is back: the reads go on for [`SETTLE`].
    pub fn up(&mut self, now: Instant) {
        if let Some(d) = &mut self.doubt {
            if d.until.is_none() {
                d.until = Some(now + SETTLE);
            }
        }
    }

    /// From which moment deletions are to be read now (`None`: no outage is in doubt).
    pub fn due(&mut self, now: Instant) -> Option<SystemTime> {
        let d = self.doubt?;
        if d.until.is_some_and(|until| now >= until) {
            self.doubt = None;
            self.settled = Some(now);
            return None;
        }
        Some(d.since)
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

    #[test]
    fn a_deletion_is_released_once_whichever_way_it_comes() {
        let mut d = Deletions::default();
        let t0 = Instant::now();
        assert!(d.first(1u8, 7, t0));
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
    fn each_sweep_reads_from_shortly_before_the_last() {
        let mut d: Deletions<u8> = Deletions::new(Duration::from_secs(30));
        assert_eq!(d.sweep(wall(0)), None, "the first sweep reads nothing");
        assert_eq!(d.sweep(wall(30)), Some(wall(0) - MARGIN));
        assert_eq!(d.sweep(wall(61)), Some(wall(30) - MARGIN));
    }

    #[test]
    fn sweeps_further_apart_keep_deletions_longer() {
        let mut d = Deletions::new(Duration::from_secs(120));
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
    fn no_reads_without_an_outage() {
        let mut d: Deletions<u8> = Deletions::default();
        let t0 = Instant::now();
        assert_eq!(d.due(t0), None);
        d.up(t0);
        assert_eq!(d.due(t0 + Duration::from_secs(1)), None);
    }

    #[test]
    fn reads_start_before_the_outage_and_last_until_settled_after_it() {
        let mut d: Deletions<u8> = Deletions::default();
        let t0 = Instant::now();
        d.down(wall(100));
        assert_eq!(d.due(t0), Some(wall(100) - MARGIN));
        // A second loss while still in doubt keeps the earlier start.
        d.down(wall(130));
        assert_eq!(
            d.due(t0 + Duration::from_secs(60)),
            Some(wall(100) - MARGIN)
        );
        let back = t0 + Duration::from_secs(90);
        d.up(back);
        assert!(d.due(back + SETTLE - Duration::from_millis(1)).is_some());
        assert_eq!(d.due(back + SETTLE), None);
        // A later outage starts its own window.
        d.down(wall(400));
        assert_eq!(d.due(back + SETTLE), Some(wall(400) - MARGIN));
    }

    #[test]
    fn a_loss_after_the_subscriber_came_back_keeps_reading() {
        let mut d: Deletions<u8> = Deletions::default();
        let t0 = Instant::now();
        d.down(wall(100));
        d.up(t0);
        d.down(wall(102));
        assert_eq!(
            d.due(t0 + SETTLE * 3),
            Some(wall(100) - MARGIN),
            "down again: no end yet"
        );
    }

    #[test]
    fn remembered_through_the_outage_then_for_keep() {
        let mut d = Deletions::default();
        let t0 = Instant::now();
        assert!(d.first(1u8, 1, t0));
        d.down(wall(0));
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
        assert_eq!(d.due(settled), None);
        d.trim(settled + KEEP - Duration::from_secs(1));
        assert!(!d.first(1, 1, settled), "kept KEEP after the reads ended");
        d.trim(settled + KEEP + Duration::from_secs(1));
        assert!(d.is_empty(), "forgotten KEEP after the reads ended");
    }

    #[test]
    fn without_an_outage_deletions_are_kept_for_keep_only() {
        let mut d = Deletions::default();
        let t0 = Instant::now();
        d.first(1u8, 1, t0);
        d.trim(t0 + KEEP);
        assert_eq!(d.len(), 1);
        d.trim(t0 + KEEP + Duration::from_millis(1));
        assert!(d.is_empty());
    }

    #[test]
    fn bounded_in_memory_even_in_an_endless_outage() {
        let mut d = Deletions::default();
        let t0 = Instant::now();
        d.down(wall(0));
        for seq in 0..(MAX_KEPT as u64 + 10) {
            d.first(0u8, seq, t0);
        }
        assert_eq!(d.len(), MAX_KEPT);
        assert!(d.first(0, 0, t0), "the oldest was forgotten");
    }
}
