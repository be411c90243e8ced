//! Admissions: membership reads on their way to their sockets ([`Input::Ready`]).
//!
//! A read (CONNECT, `room:join`, another node's membership change) reads each room's top
//! sequence with the membership (its *floor*): the socket must receive every durable event
//! after the floor and none before it. So the read must reach the shard after the room's
//! events up to the floor and before any event after it. The read's answer used to leave from
//! the reader (or the membership listener) while the broker released the rooms' events on its
//! own, and either could pass the other. Now the broker carries the admission out itself, in
//! line: events up to the floor go on, events after it are held back, and the admission goes
//! to the shard once the room's stream has released up to the floor and Redis confirmed the
//! rooms' subscriptions (or after [`READY_WAIT`]); what was held back follows it. Admissions on
//! the same room go in the order they came (a join and the leave right after it stay in that
//! order).
//!
//! [`Input::Ready`]: super::Input::Ready

use std::time::{Duration, Instant};

use bytes::Bytes;
use rustc_hash::{FxHashMap, FxHashSet};

use super::super::interest::Change;
use super::{Broker, PREPARING};
use crate::broker::input::Admission;
use crate::ids::Room;

/// Longest an admission waits for its rooms' confirmations.
const READY_WAIT: Duration = Duration::from_secs(1);

/// Most durable events held back per room while an admission waits (past it they go on, and
/// the socket being admitted may miss them).
const MAX_HELD_PER_ROOM: usize = 4096;

/// One admission in line.
struct Waiter {
    /// Channels not confirmed yet.
    channels: Vec<String>,
    /// Its rooms (channels and DMs), with the floor read for each (none for a leave).
    rooms: Vec<(Room, Option<u64>)>,
    admission: Admission,
    since: Instant,
}

/// A room with admissions in line.
#[derive(Default)]
struct Held {
    /// Events above this sequence are held back (the lowest floor in line).
    above: u64,
    /// Events held back, in release order: (sequence, packet).
    events: Vec<(u64, Bytes)>,
}

/// The admissions in line, and the durable events they hold back.
#[derive(Default)]
pub(super) struct Admissions {
    line: Vec<Waiter>,
    held: FxHashMap<Room, Held>,
}

impl Admissions {
    /// Holds the event at `seq` back if an admission waits on `room` with a floor below it;
    /// otherwise hands it back.
    pub(super) fn hold(&mut self, room: Room, seq: u64, packet: Bytes) -> Option<Bytes> {
        if self.held.is_empty() {
            return Some(packet);
        }
        match self.held.get_mut(&room) {
            Some(h) if seq > h.above && h.events.len() < MAX_HELD_PER_ROOM => {
                h.events.push((seq, packet));
                None
            }
            _ => Some(packet),
        }
    }

    /// Redis confirmed `channel`.
    pub(super) fn confirmed(&mut self, channel: &str) {
        for w in &mut self.line {
            w.channels.retain(|c| c != channel);
        }
    }
}

impl Broker {
    /// Puts an admission in line (see [`super::Input::Ready`]).
    pub(super) fn ready(
        &mut self,
        floors: Vec<(Room, u64)>,
        rooms: Vec<Room>,
        subscribe: bool,
        admission: Admission,
        now: Instant,
    ) {
        for &(room, floor) in &floors {
            self.floor(room, floor, now);
        }
        let mut channels = Vec::new();
        let mut held = Vec::new();
        for room in rooms {
            // A user's own room crosses no node; a workspace's (presence) is waited for but
            // holds nothing back.
            if matches!(room, Room::User(_)) {
                continue;
            }
            if subscribe {
                if let Change::Subscribe(room) = self.interest.add(room, PREPARING) {
                    self.start(room, now);
                }
                self.interest.remove(&room, PREPARING, now);
            }
            let channel = self.names.room(room);
            if self.channels.contains_key(&channel) && !self.confirmed.contains(&channel) {
                channels.push(channel);
            }
            if room.target().is_none() {
                continue;
            }
            let floor = floors.iter().find(|(r, _)| *r == room).map(|(_, f)| *f);
            let h = self.admissions.held.entry(room).or_insert(Held {
                above: u64::MAX,
                events: Vec::new(),
            });
            h.above = h.above.min(floor.unwrap_or(u64::MAX));
            // A stream behind the floor (its events still on their way from Redis) is read
            // up to it now rather than at the gap-fill deadline.
            if let Some(floor) = floor {
                self.seq.watermark(&room, floor, &mut self.out);
            }
            held.push((room, floor));
        }
        self.admissions.line.push(Waiter {
            channels,
            rooms: held,
            admission,
            since: now,
        });
        self.admit(now);
    }

    /// Carries out, in line order, every admission whose rooms are confirmed and released up
    /// to their floors (or that waited long enough) and that no earlier one on the same rooms
    /// still holds up; then releases what rooms no longer waited on held back.
    pub(super) fn admit(&mut self, now: Instant) {
        if self.admissions.line.is_empty() {
            return;
        }
        let mut blocked: FxHashSet<Room> = FxHashSet::default();
        let mut done = Vec::new();
        for w in std::mem::take(&mut self.admissions.line) {
            let reached = w.rooms.iter().all(|(room, floor)| match floor {
                Some(floor) => self.seq.released(room).is_none_or(|r| r >= *floor),
                None => true,
            });
            let due =
                (w.channels.is_empty() && reached) || now.duration_since(w.since) >= READY_WAIT;
            if due && !w.rooms.iter().any(|(r, _)| blocked.contains(r)) {
                done.push(w.admission);
            } else {
                blocked.extend(w.rooms.iter().map(|(r, _)| *r));
                self.admissions.line.push(w);
            }
        }
        for admission in done {
            self.broker.carry_out(admission);
        }
        let free: Vec<Room> = self
            .admissions
            .held
            .keys()
            .filter(|r| !blocked.contains(r))
            .copied()
            .collect();
        for room in free {
            if let Some(h) = self.admissions.held.remove(&room) {
                for (_, packet) in h.events {
                    self.release_now(room, packet);
                }
            }
        }
        // Rooms still in line hold back only above their lowest floor still waiting.
        for h in self.admissions.held.values_mut() {
            h.above = u64::MAX;
        }
        for w in &self.admissions.line {
            for (room, floor) in &w.rooms {
                if let (Some(h), Some(f)) = (self.admissions.held.get_mut(room), floor) {
                    h.above = h.above.min(*f);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ChannelId;
    use uuid::Uuid;

    #[test]
    fn only_events_above_a_waiting_floor_are_held_and_each_room_holds_a_bounded_number() {
        let mut a = Admissions::default();
        let waiting = Room::Channel(ChannelId(Uuid::new_v4()));
        let other = Room::Channel(ChannelId(Uuid::new_v4()));
        assert!(a.hold(waiting, 9, Bytes::from_static(b"x")).is_some());
        a.held.insert(
            waiting,
            Held {
                above: 5,
                events: Vec::new(),
            },
        );
        assert!(a.hold(other, 9, Bytes::from_static(b"y")).is_some());
        assert!(
            a.hold(waiting, 5, Bytes::from_static(b"at the floor"))
                .is_some(),
            "an event up to the floor goes before the admission"
        );
        for seq in 6..6 + MAX_HELD_PER_ROOM as u64 {
            assert!(a.hold(waiting, seq, Bytes::from_static(b"z")).is_none());
        }
        assert!(
            a.hold(waiting, 1 << 40, Bytes::from_static(b"past the bound"))
                .is_some(),
            "past the bound an event goes on rather than grow the buffer"
        );
    }
}
