//! The broker thread's side of deletions no publication brought (see
//! [`super::super::deletions`]): deletions Redis did not take are published again once it
//! takes them, and while the subscriber is down (and a moment after) the deletions of this
//! node's rooms are read from PostgreSQL every second (with each sweep of tops, too: see
//! `upkeep.rs`).

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use super::super::codec::Kind;
use super::super::pg::{Ask, Found};
use super::{Broker, MAX_WAITING_DELETES};
use crate::ids::Room;

/// Most deletions kept for publishing again (past it the receivers' reads from PostgreSQL
/// still find them, when their subscriber was down too).
const MAX_UNPUBLISHED_DELETES: usize = 10_000;

/// How often an outage's deletions are read.
const READ_EVERY: Duration = Duration::from_secs(1);

impl Broker {
    /// A deletion Redis did not take: published again once it can.
    pub(super) fn lost_deletion(&mut self, room: Room, seq: u64, packet: &[u8]) {
        if self.unpublished_deletes.len() < MAX_UNPUBLISHED_DELETES {
            self.unpublished_deletes
                .push((room, seq, Bytes::copy_from_slice(packet)));
        }
    }

    /// Publishes again the deletions Redis did not take, and reads an outage's deletions.
    pub(super) fn outage_tick(&mut self, now: Instant) {
        if !self.unpublished_deletes.is_empty() && self.link.status().is_up() {
            for (room, seq, packet) in std::mem::take(&mut self.unpublished_deletes) {
                self.publish(room, Kind::MessageDeleted, Some(seq), None, &packet);
            }
        }
        self.deletions.trim(now);
        if now < self.next_deletions_read {
            return;
        }
        self.next_deletions_read = now + READ_EVERY;
        if !self.deletions.due(now) {
            return;
        }
        let rooms = self.streamed_rooms();
        if !rooms.is_empty() {
            self.read_deletions(rooms);
        }
    }

    /// The channel and DM rooms whose streams have started here.
    pub(super) fn streamed_rooms(&self) -> Vec<Room> {
        self.interest
            .rooms()
            .copied()
            .filter(|r| r.target().is_some() && self.seq.released(r).is_some())
            .collect()
    }

    /// Asks `broker-pg` for the deletions in `rooms` made since shortly before the last read
    /// that came back whole (or after the last row of a read cut at its page limit).
    pub(super) fn read_deletions(&mut self, rooms: Vec<Room>) {
        self.metrics.deletion_reads.fetch_add(1, Relaxed);
        let since = self.deletions.since();
        let at = SystemTime::now();
        let _ = self.pg.send(Ask::Deletions { rooms, since, at });
    }

    /// Deletions read from PostgreSQL: those not released yet are released now.
    pub(super) fn caught_up(&mut self, found: Found, now: Instant) {
        for (room, seq, packet) in found {
            if self.deletion(room, seq, packet, now) {
                self.metrics.deletions_caught_up.fetch_add(1, Relaxed);
            }
        }
    }

    /// A deletion, whichever way it came: released (or kept until its message is), the first
    /// time only, in a room whose stream runs here; `true` then.
    pub(super) fn deletion(&mut self, room: Room, seq: u64, packet: Bytes, now: Instant) -> bool {
        if !self.deletions.first(room, seq, now) {
            return false;
        }
        match self.seq.released(&room) {
            Some(released) if seq <= released => self.release(room, seq, None, packet),
            Some(_) => {
                let waiting = self.deletes.entry(room).or_default();
                if waiting.len() < MAX_WAITING_DELETES {
                    waiting.push((seq, packet));
                }
            }
            None => return false,
        }
        true
    }
}
