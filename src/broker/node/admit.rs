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
    /// A recovered session's (exact, or not at all): `Some` with the replay it waits for, if
    /// any. It goes only once nothing up to its floors is held back; if that takes longer
    /// than [`READY_WAIT`] the socket gets a clean new session instead.
    resume: Option<Option<u64>>,
}

/// A room with admissions in line.
#[derive(Default)]
struct Held {
    /// Events above this sequence are held back (the lowest floor in line).
    above: u64,
    /// Events held back, in release order: (sequence, position if a `message:new`, packet).
    events: Vec<(u64, Option<u64>, Bytes)>,
    /// An event went on past the bound: an admission waiting on the room may miss it (a
    /// recovery is then a new session).
    overflowed: bool,
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
    pub(super) fn hold(
        &mut self,
        room: Room,
        seq: u64,
        position: Option<u64>,
        packet: Bytes,
    ) -> Option<Bytes> {
        if self.held.is_empty() {
            return Some(packet);
        }
        match self.held.get_mut(&room) {
            Some(h) if seq > h.above && h.events.len() < MAX_HELD_PER_ROOM => {
                h.events.push((seq, position, packet));
                None
            }
            Some(h) if seq > h.above => {
                h.overflowed = true;
                Some(packet)
            }
            _ => Some(packet),
        }
    }

    /// A recovery's replay came (`None`: it could not be read: a clean new session).
    pub(super) fn replayed(&mut self, req: u64, packets: Option<Vec<Bytes>>) {
        for w in &mut self.line {
            if w.resume != Some(Some(req)) {
                continue;
            }
            w.resume = Some(None);
            if let Admission::Resume {
                session, replay, ..
            } = &mut w.admission
            {
                match packets {
                    Some(packets) => replay.extend(packets),
                    None => *session = None,
                }
            }
            return;
        }
    }

    /// Whether an event up to `floor` of `room` is held back, or one went on past the bound.
    fn holds_up_to(&self, room: &Room, floor: u64) -> bool {
        self.held
            .get(room)
            .is_some_and(|h| h.overflowed || h.events.iter().any(|(seq, _, _)| *seq <= floor))
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
        self.ready_with(floors, rooms, subscribe, admission, None, now);
    }

    /// Puts an admission in line; `resume` as [`Waiter::resume`].
    pub(super) fn ready_with(
        &mut self,
        floors: Vec<(Room, u64)>,
        rooms: Vec<Room>,
        subscribe: bool,
        admission: Admission,
        resume: Option<Option<u64>>,
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
                overflowed: false,
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
            resume,
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
            let exact = w.resume.is_none()
                || w.resume == Some(None)
                    && w.rooms.iter().all(|(room, floor)| {
                        floor.is_none_or(|f| !self.admissions.holds_up_to(room, f))
                    });
            let late = now.duration_since(w.since) >= READY_WAIT;
            let due = (w.channels.is_empty() && reached && exact) || late;
            if due && !w.rooms.iter().any(|(r, _)| blocked.contains(r)) {
                let mut admission = w.admission;
                if let Admission::Resume {
                    session, replay, ..
                } = &mut admission
                {
                    if exact {
                        let offset = format!("{}:{}", self.node, self.offset);
                        *replay = super::resume::with_offsets(std::mem::take(replay), &offset);
                    } else {
                        *session = None;
                    }
                }
                done.push(admission);
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
                for (seq, position, packet) in h.events {
                    self.release_now(room, seq, position, packet);
                }
            }
        }
        // A room still in line lets go what is up to every floor still waiting on it (those
        // admissions want it before them; a leave lets nothing go).
        let mut upto: FxHashMap<Room, u64> = FxHashMap::default();
        for w in &self.admissions.line {
            for (room, floor) in &w.rooms {
                let f = floor.unwrap_or(0);
                let e = upto.entry(*room).or_insert(f);
                *e = (*e).min(f);
            }
        }
        for (room, upto) in upto {
            let Some(h) = self.admissions.held.get_mut(&room) else {
                continue;
            };
            let n = h
                .events
                .iter()
                .take_while(|(seq, _, _)| *seq <= upto)
                .count();
            if n == 0 {
                continue;
            }
            let go: Vec<_> = h.events.drain(..n).collect();
            for (seq, position, packet) in go {
                self.release_now(room, seq, position, packet);
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
        assert!(a
            .hold(waiting, 9, Some(9), Bytes::from_static(b"x"))
            .is_some());
        a.held.insert(
            waiting,
            Held {
                above: 5,
                events: Vec::new(),
                overflowed: false,
            },
        );
        assert!(a
            .hold(other, 9, Some(9), Bytes::from_static(b"y"))
            .is_some());
        assert!(
            a.hold(waiting, 5, Some(5), Bytes::from_static(b"at the floor"))
                .is_some(),
            "an event up to the floor goes before the admission"
        );
        for seq in 6..6 + MAX_HELD_PER_ROOM as u64 {
            assert!(a
                .hold(waiting, seq, Some(seq), Bytes::from_static(b"z"))
                .is_none());
        }
        assert!(
            a.hold(
                waiting,
                1 << 40,
                None,
                Bytes::from_static(b"past the bound")
            )
            .is_some(),
            "past the bound an event goes on rather than grow the buffer"
        );
        assert!(a.held[&waiting].overflowed);
    }

    #[test]
    fn a_recovery_waits_for_its_replay_and_sees_what_is_held_up_to_its_floor() {
        use crate::ids::{ConnectionId, UserId, WorkspaceId};
        let mut a = Admissions::default();
        let room = Room::Channel(ChannelId(Uuid::new_v4()));
        let session = crate::chat::state::Detached {
            user: UserId(Uuid::new_v4()),
            workspace: WorkspaceId(Uuid::new_v4()),
            since_offset: 0,
        };
        let waiter = |req| Waiter {
            channels: Vec::new(),
            rooms: vec![(room, Some(5))],
            admission: Admission::Resume {
                to: ConnectionId {
                    shard: crate::ids::ShardId(0),
                    slot: crate::ids::SocketRef::Conn(0),
                    generation: 0,
                },
                session: Some(session),
                replay: Vec::new(),
            },
            since: Instant::now(),
            resume: Some(Some(req)),
        };
        a.line.push(waiter(1));
        a.line.push(waiter(2));
        a.replayed(1, Some(vec![Bytes::from_static(b"m")]));
        a.replayed(2, None);
        assert_eq!(a.line[0].resume, Some(None));
        assert!(
            matches!(&a.line[0].admission, Admission::Resume { session: Some(_), replay, .. } if replay.len() == 1),
            "the replay follows what the admission carried (the deletions)"
        );
        assert!(
            matches!(
                &a.line[1].admission,
                Admission::Resume { session: None, .. }
            ),
            "a replay that could not be read: a new session"
        );
        a.held.insert(
            room,
            Held {
                above: 3,
                events: vec![(4, Some(4), Bytes::from_static(b"4"))],
                overflowed: false,
            },
        );
        assert!(a.holds_up_to(&room, 5));
        assert!(!a.holds_up_to(&room, 3));
        a.held.get_mut(&room).unwrap().overflowed = true;
        assert!(a.holds_up_to(&room, 3), "past the bound: not exact");
    }
}
