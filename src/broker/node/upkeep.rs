//! The broker thread's upkeep: carrying out the sequencer's outputs, and the periodic tick
//! (expired interest, late floors, hints, watermarks for unpublished positions, the sweep of
//! every room's top).

use std::time::{Duration, Instant};

use super::super::codec::Kind;
use super::super::pg::Ask;
use super::super::sequencer::Output;
use super::{Broker, HINT_TTL, PENDING_WAIT};
use crate::ids::Room;

impl Broker {
    /// Carries out the sequencer's outputs: releases (and the deletions they unblock) and
    /// fills.
    pub(super) fn settle(&mut self, _now: Instant) {
        let mut touched: Vec<Room> = Vec::new();
        while !self.out.is_empty() {
            let out = std::mem::take(&mut self.out);
            for o in out {
                match o {
                    Output::Deliver { room, pos, item } => {
                        self.release(room, pos, Some(pos), item);
                        if self.deletes.contains_key(&room) && !touched.contains(&room) {
                            touched.push(room);
                        }
                    }
                    Output::Fill { room, after } => {
                        let _ = self.pg.send(Ask::Fill { room, after });
                    }
                }
            }
        }
        for room in touched {
            let released = self.seq.released(&room).unwrap_or(0);
            let Some(mut waiting) = self.deletes.remove(&room) else {
                continue;
            };
            let (ready, wait): (Vec<_>, Vec<_>) =
                waiting.drain(..).partition(|(seq, _)| *seq <= released);
            for (seq, packet) in ready {
                self.release(room, seq, None, packet);
            }
            if !wait.is_empty() {
                self.deletes.insert(room, wait);
            }
        }
        self.metrics.sequencer(self.seq.stats(), self.seq.held());
    }

    pub(super) fn tick(&mut self, now: Instant) {
        self.seq.tick(now, &mut self.out);
        for room in self.interest.expired(now) {
            if matches!(room, Room::User(_)) {
                continue;
            }
            let channel = self.names.room(room);
            self.channels.remove(&channel);
            self.confirmed.remove(&channel);
            self.seq.stop(&room);
            self.log.stop(&room);
            self.pending.remove(&room);
            self.deletes.remove(&room);
            self.link.unsubscribe(vec![channel]);
        }
        let late: Vec<Room> = self
            .pending
            .iter_mut()
            .filter(|(_, p)| !p.asked && now.duration_since(p.since) >= PENDING_WAIT)
            .map(|(room, p)| {
                p.asked = true;
                *room
            })
            .collect();
        if !late.is_empty() {
            let _ = self.pg.send(Ask::Tops(late));
        }
        self.hints
            .retain(|_, (_, at)| now.duration_since(*at) <= HINT_TTL);
        self.admit(now);
        self.resume_tick(now);
        self.log.trim(now);
        for (room, user, stop) in self.typers.expire(now) {
            self.local(room, crate::mesh::Except::User(user), stop);
        }
        if !self.unpublished.is_empty() && self.link.status().is_up() {
            for (room, top) in std::mem::take(&mut self.unpublished) {
                self.publish(room, Kind::Watermark, Some(top), None, b"");
            }
        }
        // A sweep of every room's top: finds what no publication announced (a node that died
        // between its commit and its publish, an outage). Every second while the subscriber
        // is down, else every `CHAT_SWEEP_MS`.
        if self.subscriber_down && self.link.status().is_up() {
            self.subscriber_down = false;
            self.deletions.up(now);
        }
        self.outage_tick(now);
        if now >= self.next_sweep {
            let rooms = self.streamed_rooms();
            if !rooms.is_empty() {
                // And the deletions made since the last read (a node that died between a
                // deletion's commit and its publish).
                self.read_deletions(rooms.clone());
                let _ = self.pg.send(Ask::Tops(rooms));
            }
            let every = if self.subscriber_down {
                self.sweep.min(Duration::from_secs(1))
            } else {
                self.sweep
            };
            self.next_sweep = now + every;
        }
        self.settle(now);
    }
}
