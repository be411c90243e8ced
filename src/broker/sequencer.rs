//! The per-room sequencer: every durable event a node delivers goes through it, whether it
//! was committed by this node or arrived from Redis, so each room's events reach the shards in
//! event-position order, with no gap and nothing twice.
//!
//! Positions come from PostgreSQL: every durable event of a room (a message, a deletion) takes
//! the room's next position under the room's counter row lock, so positions are committed in
//! order, and when position `p` is committed every position below it is committed too (or is a
//! *hole*: reserved by a transaction that committed without its row, which a read of the room
//! shows). Publications cross Redis in any order; the sequencer puts them back:
//!
//! - an arrival at the room's next position is released at once, with whatever it unblocks;
//! - an arrival ahead of it is held, and if the gap outlives the gap-fill deadline the sequencer
//!   asks for the missing positions from PostgreSQL ([`Output::Fill`]);
//! - an arrival below it is a duplicate (the node's own publication coming back from Redis, a
//!   row already filled) and is dropped;
//! - a fill's rows are released in order; positions the rows skip are holes.
//!
//! Memory is bounded: past `max_held_per_room` (or `max_held` over all rooms) arrivals are
//! dropped instead of held, and the room is read from PostgreSQL instead.
//!
//! It does no IO and reads no clock: callers pass `now` and carry out the fills.

use std::collections::BTreeMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use rustc_hash::{FxHashMap, FxHashSet};

/// Limits and deadlines.
#[derive(Clone, Copy, Debug)]
pub struct SequencerConfig {
    /// How long a gap may wait for its publications before it is read from PostgreSQL.
    pub gap_fill: Duration,
    /// Arrivals held per room at most.
    pub max_held_per_room: usize,
    /// Arrivals held over all rooms at most.
    pub max_held: usize,
}

impl Default for SequencerConfig {
    fn default() -> Self {
        SequencerConfig {
            gap_fill: Duration::from_millis(200),
            max_held_per_room: 1024,
            max_held: 65_536,
        }
    }
}

/// What the caller must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output<K, T> {
    /// Hand `item` to the room's local members; `pos` is its event position.
    Deliver {
        /// The room.
        room: K,
        /// Its position.
        pos: u64,
        /// What was published (or read back from PostgreSQL).
        item: T,
    },
    /// Read the room's durable events after position `after` from PostgreSQL and answer with
    /// [`Sequencer::filled`] (or [`Sequencer::fill_failed`]).
    Fill {
        /// The room.
        room: K,
        /// Every event up to this position has been released.
        after: u64,
    },
}

/// What became of one arrival.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Released (possibly with held ones after it).
    Released,
    /// Held until the positions before it are known.
    Held,
    /// Already released: dropped.
    Duplicate,
    /// Not held (the bound is reached): the room is read from PostgreSQL instead.
    Dropped,
    /// No stream for this room here (no local member): dropped.
    Unknown,
}

/// Counters for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events released.
    pub released: u64,
    /// Arrivals dropped as duplicates.
    pub duplicates: u64,
    /// Arrivals held back for a missing position.
    pub holdbacks: u64,
    /// Fills asked for.
    pub fills: u64,
    /// Events released from fills.
    pub filled: u64,
    /// Positions found to be holes.
    pub holes: u64,
    /// Arrivals dropped at the bound.
    pub dropped: u64,
}

#[derive(Debug)]
struct Stream<T> {
    /// The next position to release.
    next: u64,
    /// Arrivals ahead of `next`.
    held: BTreeMap<u64, T>,
    /// A fill is out.
    filling: bool,
    /// Ask again as soon as the fill that is out returns.
    again: bool,
    /// When to ask for a fill (a gap past its deadline, a failed fill to retry).
    due: Option<Instant>,
    /// A fill was asked for and has not been answered yet (a tail check, a resync): it is
    /// retried after a failure even when nothing is held.
    owed: bool,
    /// Highest position dropped at the bound: a fill must reach it.
    dropped_up_to: u64,
}

/// The sequencer of every room a node has local members in. `K` names a room, `T` is what is
/// delivered.
#[derive(Debug)]
pub struct Sequencer<K, T> {
    config: SequencerConfig,
    streams: FxHashMap<K, Stream<T>>,
    /// Rooms with a `due` fill.
    waiting: FxHashSet<K>,
    held: usize,
    stats: Stats,
}

impl<K: Clone + Eq + Hash, T> Sequencer<K, T> {
    /// An empty sequencer.
    pub fn new(config: SequencerConfig) -> Self {
        Sequencer {
            config,
            streams: FxHashMap::default(),
            waiting: FxHashSet::default(),
            held: 0,
            stats: Stats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Arrivals held now, over all rooms.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Rooms with a stream.
    pub fn rooms(&self) -> usize {
        self.streams.len()
    }

    /// The last position released in `room` (`None`: no stream).
    pub fn released(&self, room: &K) -> Option<u64> {
        self.streams.get(room).map(|s| s.next - 1)
    }

    /// Starts a room's stream when the node gains its first local member there. `floor` is
    /// a position no later than the room's top when that member joined (read with its
    /// membership): positions above it are owed to the member, positions at or below are not.
    /// Returns `false` when the room already had a stream, which goes on unchanged (its members
    /// joined earlier and everything after its `next` is owed to everyone).
    pub fn start(&mut self, room: K, floor: u64) -> bool {
        if self.streams.contains_key(&room) {
            return false;
        }
        self.streams.insert(
            room,
            Stream {
                next: floor + 1,
                held: BTreeMap::new(),
                filling: false,
                again: false,
                due: None,
                owed: false,
                dropped_up_to: 0,
            },
        );
        true
    }

    /// Ends a room's stream (the node's last member left); held arrivals are dropped.
    pub fn stop(&mut self, room: &K) {
        if let Some(s) = self.streams.remove(room) {
            self.held -= s.held.len();
            self.waiting.remove(room);
        }
    }

    /// The room's Redis subscription is confirmed (first time, or again after the link came
    /// back): whatever was committed before it may never arrive, so read the room from its
    /// next position (the tail check that closes the subscribe race and catches up after an
    /// outage).
    pub fn confirmed(&mut self, room: &K, out: &mut Vec<Output<K, T>>) {
        self.request(room, out);
    }

    /// Asks every room for a fill (after the link to Redis was lost and came back, or a peer
    /// died): each is read from its next position.
    pub fn resync_all(&mut self, out: &mut Vec<Output<K, T>>) {
        let rooms: Vec<K> = self.streams.keys().cloned().collect();
        for room in &rooms {
            self.request(room, out);
        }
    }

    /// "The room is committed up to `top`" (a watermark publication, or a sweep that read the
    /// room's counter): anything at or above the next position is missing, so fill now.
    pub fn watermark(&mut self, room: &K, top: u64, out: &mut Vec<Output<K, T>>) {
        if self.streams.get(room).is_some_and(|s| top >= s.next) {
            self.request(room, out);
        }
    }

    /// A publication (local or from Redis) at position `pos`.
    pub fn arrive(
        &mut self,
        room: &K,
        pos: u64,
        item: T,
        now: Instant,
        out: &mut Vec<Output<K, T>>,
    ) -> Arrival {
        let Some(s) = self.streams.get_mut(room) else {
            return Arrival::Unknown;
        };
        if pos < s.next || s.held.contains_key(&pos) {
            self.stats.duplicates += 1;
            return Arrival::Duplicate;
        }
        if pos > s.next {
            if s.held.len() >= self.config.max_held_per_room || self.held >= self.config.max_held {
                s.dropped_up_to = s.dropped_up_to.max(pos);
                self.stats.dropped += 1;
                self.request(room, out);
                return Arrival::Dropped;
            }
            s.held.insert(pos, item);
            self.held += 1;
            self.stats.holdbacks += 1;
            if s.due.is_none() && !s.filling {
                s.due = Some(now + self.config.gap_fill);
                self.waiting.insert(room.clone());
            }
            return Arrival::Held;
        }
        out.push(Output::Deliver {
            room: room.clone(),
            pos,
            item,
        });
        self.stats.released += 1;
        s.next += 1;
        self.drain(room, now, out);
        Arrival::Released
    }

    /// The answer to a fill: the room's events after `after` in position order (`rows`), and
    /// the room's committed top when they were read. `complete` says the rows reach `top`
    /// (else they are one page, and the next page is asked for).
    pub fn filled(
        &mut self,
        room: &K,
        rows: Vec<(u64, T)>,
        top: u64,
        complete: bool,
        now: Instant,
        out: &mut Vec<Output<K, T>>,
    ) {
        let Some(s) = self.streams.get_mut(room) else {
            return;
        };
        s.filling = false;
        s.owed = false;
        for (pos, item) in rows {
            if pos < s.next {
                self.stats.duplicates += 1;
                continue;
            }
            // Rows are everything committed in order: a position they skip is a hole (or, if
            // it was held, released from the held copy).
            Self::release_to(room, s, pos, &mut self.held, &mut self.stats, out);
            if s.held.remove(&pos).is_some() {
                self.held -= 1;
                self.stats.duplicates += 1;
            }
            out.push(Output::Deliver {
                room: room.clone(),
                pos,
                item,
            });
            self.stats.released += 1;
            self.stats.filled += 1;
            s.next = pos + 1;
        }
        if complete && top >= s.next {
            Self::release_to(room, s, top + 1, &mut self.held, &mut self.stats, out);
        }
        self.drain(room, now, out);
        let Some(s) = self.streams.get_mut(room) else {
            return;
        };
        let short = !complete || s.next <= s.dropped_up_to;
        let again = std::mem::take(&mut s.again);
        if short || again {
            self.request(room, out);
        }
    }

    /// A fill could not be read (PostgreSQL is down): try again after the gap-fill deadline.
    pub fn fill_failed(&mut self, room: &K, now: Instant) {
        if let Some(s) = self.streams.get_mut(room) {
            s.filling = false;
            s.again = false;
            s.due = Some(now + self.config.gap_fill);
            self.waiting.insert(room.clone());
        }
    }

    /// Asks for the fills that are due.
    pub fn tick(&mut self, now: Instant, out: &mut Vec<Output<K, T>>) {
        let due: Vec<K> = self
            .waiting
            .iter()
            .filter(|room| {
                self.streams
                    .get(*room)
                    .and_then(|s| s.due)
                    .is_some_and(|at| at <= now)
            })
            .cloned()
            .collect();
        for room in &due {
            self.request(room, out);
        }
    }

    /// The earliest due fill, for the caller's timer.
    pub fn next_due(&self) -> Option<Instant> {
        self.waiting
            .iter()
            .filter_map(|room| self.streams.get(room).and_then(|s| s.due))
            .min()
    }

    /// Asks for a fill now, or right after the one that is out.
    fn request(&mut self, room: &K, out: &mut Vec<Output<K, T>>) {
        let Some(s) = self.streams.get_mut(room) else {
            return;
        };
        s.due = None;
        s.owed = true;
        self.waiting.remove(room);
        if s.filling {
            s.again = true;
            return;
        }
        s.filling = true;
        self.stats.fills += 1;
        out.push(Output::Fill {
            room: room.clone(),
            after: s.next - 1,
        });
    }

    /// Moves `next` up to `until` (exclusive), releasing held arrivals on the way and counting
    /// the positions without one as holes.
    fn release_to(
        room: &K,
        s: &mut Stream<T>,
        until: u64,
        held: &mut usize,
        stats: &mut Stats,
        out: &mut Vec<Output<K, T>>,
    ) {
        while s.next < until {
            match s.held.remove(&s.next) {
                Some(item) => {
                    *held -= 1;
                    stats.released += 1;
                    out.push(Output::Deliver {
                        room: room.clone(),
                        pos: s.next,
                        item,
                    });
                }
                None => stats.holes += 1,
            }
            s.next += 1;
        }
    }

    /// Releases held arrivals that became next in line; re-arms or clears the gap deadline.
    fn drain(&mut self, room: &K, now: Instant, out: &mut Vec<Output<K, T>>) {
        let Some(s) = self.streams.get_mut(room) else {
            return;
        };
        while let Some(item) = s.held.remove(&s.next) {
            self.held -= 1;
            self.stats.released += 1;
            out.push(Output::Deliver {
                room: room.clone(),
                pos: s.next,
                item,
            });
            s.next += 1;
        }
        if s.held.is_empty() {
            if !s.filling && !s.owed && s.dropped_up_to < s.next {
                s.due = None;
                self.waiting.remove(room);
            }
        } else if s.due.is_none() && !s.filling {
            s.due = Some(now + self.config.gap_fill);
            self.waiting.insert(room.clone());
        }
    }
}

#[cfg(test)]
mod tests;
