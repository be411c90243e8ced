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
}

impl<M> Default for Hub<M> {
    fn default() -> Self {
        Hub {
            rooms: FxHashMap::default(),
        }
    }
}

impl<M: Copy + Eq + Hash> Hub<M> {
    /// Adds `member` to `room`; returns `false` if it was already there.
    pub fn join(&mut self, room: Room, member: M) -> bool {
        self.rooms.entry(room).or_default().insert(member)
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
}
