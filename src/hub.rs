//! One shard's room index: which of its local sockets are in which room. No IO and no locks:
//! the shard that owns the sockets owns the hub.
//!
//! Members (the shard's `SocketRef`s) are kept in an insertion-ordered set, so a broadcast
//! walks a dense array, and leaving is O(1) (swap-remove) even in a workspace room of
//! 100,000 sockets.

use std::hash::Hash;

use indexmap::IndexSet;
use rustc_hash::{FxBuildHasher, FxHashMap};

use crate::ids::Room;

/// Room → local members.
#[derive(Debug)]
pub struct Hub<M> {
    rooms: FxHashMap<Room, IndexSet<M, FxBuildHasher>>,
    /// When counted (in a cluster): rooms that gained their first member (`true`) or lost
    /// their last one, in order, until [`Hub::take_changes`].
    changes: Option<Vec<(Room, bool)>>,
}

impl<M> Default for Hub<M> {
    fn default() -> Self {
        Hub {
            rooms: FxHashMap::default(),
            changes: None,
        }
    }
}

impl<M> Hub<M> {
    /// Counts rooms gained and lost from now on (a cluster subscribes where there are members).
    pub fn track_changes(&mut self) {
        self.changes.get_or_insert_with(Vec::new);
    }

    /// The rooms gained (`true`) and lost since the last call, in order.
    pub fn take_changes(&mut self) -> Vec<(Room, bool)> {
        self.changes
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }
}

impl<M: Copy + Eq + Hash> Hub<M> {
    /// Adds `member` to `room`; returns `false` if it was already there.
    pub fn join(&mut self, room: Room, member: M) -> bool {
        let members = self.rooms.entry(room).or_default();
        if members.is_empty() {
            if let Some(changes) = &mut self.changes {
                changes.push((room, true));
            }
        }
        members.insert(member)
    }

    /// Removes `member` from `room`; returns `false` if it was not there. An emptied room is
    /// dropped so the index does not grow with rooms nobody is in.
    pub fn leave(&mut self, room: Room, member: M) -> bool {
        let Some(members) = self.rooms.get_mut(&room) else {
            return false;
        };
        let removed = members.swap_remove(&member);
        if members.is_empty() {
            self.rooms.remove(&room);
            if let Some(changes) = &mut self.changes {
                changes.push((room, false));
            }
        }
        removed
    }

    /// Local members of `room`, in no particular order.
    pub fn members(&self, room: &Room) -> impl Iterator<Item = M> + '_ {
        self.rooms.get(room).into_iter().flatten().copied()
    }

    /// Whether `member` is in `room`.
    pub fn contains(&self, room: &Room, member: M) -> bool {
        self.rooms.get(room).is_some_and(|m| m.contains(&member))
    }

    /// Number of rooms with at least one local member.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ChannelId;

    #[test]
    fn join_leave_and_members() {
        let mut hub = Hub::default();
        let a = Room::Channel(ChannelId(uuid::Uuid::from_u128(1)));
        let b = Room::Channel(ChannelId(uuid::Uuid::from_u128(2)));
        assert!(hub.join(a, 1));
        assert!(!hub.join(a, 1), "joining twice is a no-op");
        hub.join(a, 2);
        hub.join(b, 2);
        let mut m: Vec<u32> = hub.members(&a).collect();
        m.sort();
        assert_eq!(m, vec![1, 2]);
        assert!(hub.leave(a, 1));
        assert!(!hub.leave(a, 1));
        assert_eq!(hub.members(&a).collect::<Vec<_>>(), vec![2]);
        hub.leave(a, 2);
        hub.leave(b, 2);
        assert_eq!(hub.room_count(), 0, "empty rooms are dropped");
        assert_eq!(hub.members(&a).count(), 0);
    }

    #[test]
    fn tracked_changes_are_first_joins_and_last_leaves() {
        let mut hub = Hub::default();
        let a = Room::Channel(ChannelId(uuid::Uuid::from_u128(1)));
        hub.join(a, 1);
        assert!(hub.take_changes().is_empty(), "not tracked by default");
        hub.leave(a, 1);
        hub.track_changes();
        hub.join(a, 1);
        hub.join(a, 2);
        hub.leave(a, 1);
        hub.leave(a, 2);
        hub.join(a, 3);
        assert_eq!(hub.take_changes(), vec![(a, true), (a, false), (a, true)]);
        assert!(hub.take_changes().is_empty());
    }
}
