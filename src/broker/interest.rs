//! Which rooms a node subscribes to: a room is subscribed while at least one of the node's
//! shards has a local member in it, counted per shard (each shard reports its first member in
//! a room and its last one leaving). After the last shard lets go the subscription lingers a
//! moment, so a user who reconnects (or a room that empties and fills again) does not cost an
//! unsubscribe, a subscribe and a tail check.
//!
//! It does no IO and reads no clock.

use std::collections::VecDeque;
use std::hash::Hash;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use crate::ids::ShardId;

/// How long an unused subscription is kept.
pub const LINGER: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct Entry {
    /// Shards with a local member, sorted.
    shards: Vec<ShardId>,
    /// Set while no shard has a member: when it was last let go.
    idle_since: Option<Instant>,
}

/// What the caller must do after a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change<K> {
    /// Subscribe to the room's channel (and start its sequencer).
    Subscribe(K),
    /// Nothing: the room was subscribed already (possibly lingering).
    Kept,
}

/// The node's interest in rooms.
#[derive(Debug)]
pub struct Interest<K> {
    linger: Duration,
    rooms: FxHashMap<K, Entry>,
    /// Rooms let go, in the order they were (a room may be listed again after it came back).
    idle: VecDeque<(Instant, K)>,
}

impl<K: Clone + Eq + Hash> Interest<K> {
    /// No interest yet; unused subscriptions are kept for `linger`.
    pub fn new(linger: Duration) -> Self {
        Interest {
            linger,
            rooms: FxHashMap::default(),
            idle: VecDeque::new(),
        }
    }

    /// `shard` has its first local member in `room`.
    pub fn add(&mut self, room: K, shard: ShardId) -> Change<K> {
        match self.rooms.get_mut(&room) {
            Some(entry) => {
                if let Err(at) = entry.shards.binary_search(&shard) {
                    entry.shards.insert(at, shard);
                }
                entry.idle_since = None;
                Change::Kept
            }
            None => {
                self.rooms.insert(
                    room.clone(),
                    Entry {
                        shards: vec![shard],
                        idle_since: None,
                    },
                );
                Change::Subscribe(room)
            }
        }
    }

    /// `shard`'s last local member left `room`.
    pub fn remove(&mut self, room: &K, shard: ShardId, now: Instant) {
        let Some(entry) = self.rooms.get_mut(room) else {
            return;
        };
        if let Ok(at) = entry.shards.binary_search(&shard) {
            entry.shards.remove(at);
        }
        if entry.shards.is_empty() && entry.idle_since.is_none() {
            entry.idle_since = Some(now);
            self.idle.push_back((now, room.clone()));
        }
    }

    /// Rooms whose linger ran out: unsubscribe them (and stop their sequencers).
    pub fn expired(&mut self, now: Instant) -> Vec<K> {
        let mut gone = Vec::new();
        while let Some((at, _)) = self.idle.front() {
            if now.saturating_duration_since(*at) < self.linger {
                break;
            }
            let Some((at, room)) = self.idle.pop_front() else {
                break;
            };
            // Still idle since that very moment: not taken back meanwhile.
            if self
                .rooms
                .get(&room)
                .is_some_and(|e| e.idle_since == Some(at))
            {
                self.rooms.remove(&room);
                gone.push(room);
            }
        }
        gone
    }

    /// The shards with local members in `room` (where its deliveries go).
    pub fn shards(&self, room: &K) -> &[ShardId] {
        self.rooms.get(room).map_or(&[], |e| &e.shards)
    }

    /// Every subscribed room, lingering ones included (to subscribe again after a reconnect).
    pub fn rooms(&self) -> impl Iterator<Item = &K> {
        self.rooms.keys()
    }

    /// How many rooms are subscribed.
    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    /// Whether no room is subscribed.
    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_subscription_per_room_whatever_the_shards() {
        let t0 = Instant::now();
        let mut i = Interest::new(LINGER);
        assert_eq!(i.add("r", ShardId(1)), Change::Subscribe("r"));
        assert_eq!(i.add("r", ShardId(0)), Change::Kept);
        assert_eq!(i.add("r", ShardId(1)), Change::Kept, "repeated report");
        assert_eq!(i.shards(&"r"), &[ShardId(0), ShardId(1)]);
        i.remove(&"r", ShardId(1), t0);
        assert_eq!(i.shards(&"r"), &[ShardId(0)]);
        assert!(
            i.expired(t0 + LINGER * 2).is_empty(),
            "shard 0 still has a member"
        );
        i.remove(&"r", ShardId(0), t0);
        assert!(i.expired(t0 + LINGER / 2).is_empty(), "lingering");
        assert_eq!(i.len(), 1);
        assert_eq!(i.expired(t0 + LINGER), vec!["r"]);
        assert!(i.is_empty());
        assert!(i.shards(&"r").is_empty());
    }

    #[test]
    fn a_room_taken_back_while_lingering_stays_subscribed() {
        let t0 = Instant::now();
        let mut i = Interest::new(LINGER);
        i.add("r", ShardId(0));
        i.remove(&"r", ShardId(0), t0);
        assert_eq!(i.add("r", ShardId(2)), Change::Kept, "no second subscribe");
        assert!(i.expired(t0 + LINGER * 3).is_empty());
        // Let go again later: the linger counts from then.
        let t1 = t0 + LINGER * 3;
        i.remove(&"r", ShardId(2), t1);
        assert!(i.expired(t1 + LINGER / 2).is_empty());
        assert_eq!(i.expired(t1 + LINGER), vec!["r"]);
    }

    #[test]
    fn rooms_lists_what_to_subscribe_again() {
        let t0 = Instant::now();
        let mut i = Interest::new(LINGER);
        i.add(1u32, ShardId(0));
        i.add(2u32, ShardId(0));
        i.remove(&2, ShardId(0), t0);
        let mut rooms: Vec<u32> = i.rooms().copied().collect();
        rooms.sort_unstable();
        assert_eq!(rooms, vec![1, 2], "lingering rooms are still subscribed");
        i.remove(&7, ShardId(0), t0);
        assert_eq!(i.len(), 2, "letting go of an unknown room changes nothing");
    }
}
