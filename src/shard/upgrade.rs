//! The upgrade from long-polling to WebSocket. Connections never change shards, sessions
//! may: the WebSocket stays where it was accepted and the session comes to it.
//!
//! 1. `transport=websocket&sid=…` arrives: ask the owner ([`PollCommand::Upgrade`]); it
//!    answers with the session's rooms ([`PollCommand::Upgradable`]), and only then is the
//!    `101` sent ("Session ID unknown" otherwise). This shard joins those rooms for the
//!    connection at once and keeps what they broadcast aside (`Upgrading::shadow`).
//! 2. `2probe` → `3probe`, and the owner is told ([`PollCommand::Probe`]): "the server
//!    \[sends\] a noop packet to the pending GET request to close it cleanly".
//! 3. `5` → [`PollCommand::Switch`]: the owner leaves its rooms, and hands the session and
//!    the packets polling did not send over ([`PollCommand::Adopt`]). Store replies still
//!    addressed to the old session are forwarded here for a while.
//! 4. Adoption writes the handed packets, then the shadowed broadcasts the owner had not
//!    queued itself (the owner lists the ids of those it queued), so nothing is lost or
//!    repeated across the switch.

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use super::connection::{Phase, Upgrading};
use super::polling::Handover;
use super::{Close, Shard};
use crate::chat::Auth;
use crate::ids::{session_shard, ConnectionId, Room};
use crate::mesh::{BroadcastId, Except, PollCommand};
use crate::protocol::http;
use crate::protocol::polling;
use crate::transport::websocket::{self, Opcode};

/// Time the client has to finish an upgrade (the reference server's `upgradeTimeout`).
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);

impl Shard {
    /// A WebSocket opened with the `sid` of a polling session, on connection `slot`.
    pub(super) fn websocket_upgrade(&mut self, slot: u32, key: &str, sid: String, now: Instant) {
        let Some(owner) = session_shard(&sid, self.core.shared.config.shards).map(|s| s.0) else {
            let bytes = polling::engine_error(1, "Session ID unknown", None);
            self.respond(slot, bytes, false, now);
            return;
        };
        let Some(from) = self.connection_id(slot) else {
            return;
        };
        self.conns[slot as usize].phase = Phase::Upgrading(Box::new(Upgrading {
            sid: sid.clone().into_boxed_str(),
            owner,
            deadline: now + UPGRADE_TIMEOUT,
            accepted: false,
            switching: false,
            rooms: Vec::new(),
            shadow: Vec::new(),
            handshake: http::websocket_accept(key),
        }));
        self.mark(slot);
        self.send_poll(owner, PollCommand::Upgrade { from, sid }, now);
    }

    /// Owner: may `sid` be taken over? Answers with its rooms.
    pub(super) fn on_upgrade_request(&mut self, from: ConnectionId, sid: &str, now: Instant) {
        let rooms = self.poll_slot(sid).map(|slot| {
            let p = &mut self.polls[index(slot)];
            p.seen.get_or_insert_with(Vec::new);
            p.told = match &p.socket.auth {
                Auth::Connected(member) => member.rooms.clone(),
                _ => Vec::new(),
            };
            p.told.clone()
        });
        self.send_poll(
            from.shard.0,
            PollCommand::Upgradable { to: from, rooms },
            now,
        );
    }

    /// WebSocket side: the owner answered the upgrade request.
    pub(super) fn on_upgradable(
        &mut self,
        to: ConnectionId,
        rooms: Option<Vec<Room>>,
        now: Instant,
    ) {
        let Some(slot) = self.lookup(to) else {
            return;
        };
        let conn = &mut self.conns[slot as usize];
        let Phase::Upgrading(up) = &mut conn.phase else {
            return;
        };
        let Some(rooms) = rooms else {
            if up.accepted {
                self.upgrade_fail(slot, 1008, "the session ended during the upgrade", now);
                return;
            }
            conn.phase = Phase::Http {
                deadline: now,
                waiting: false,
                keep_alive: false,
            };
            let bytes = polling::engine_error(1, "Session ID unknown", None);
            self.respond(slot, bytes, false, now);
            return;
        };
        if up.accepted {
            // The session joined rooms meanwhile (its CONNECT completed, or a room:join):
            // join them too, then ask for the session again.
            for room in rooms {
                if !up.rooms.contains(&room) {
                    self.core.hub.join(room, slot);
                    up.rooms.push(room);
                }
            }
            if up.switching {
                let (owner, sid) = (up.owner, up.sid.to_string());
                self.send_poll(owner, PollCommand::Switch { from: to, sid }, now);
            }
            return;
        }
        let handshake = std::mem::take(&mut up.handshake);
        up.accepted = true;
        for room in &rooms {
            self.core.hub.join(*room, slot);
        }
        up.rooms = rooms;
        self.core.queue(conn, handshake.into());
        self.mark(slot);
        self.resume_input(slot, now);
    }

    /// A WebSocket frame during the upgrade: `2probe` and `5` are all the client may send.
    pub(super) fn upgrade_input(&mut self, slot: u32, buf: &mut [u8], now: Instant) -> usize {
        let max = self.core.shared.config.engine.max_payload;
        let (frame, used) = match websocket::decode(buf, max) {
            Ok(None) => return 0,
            Ok(Some(found)) => found,
            Err(e) => {
                self.upgrade_fail(slot, e.code, &e.reason, now);
                return buf.len();
            }
        };
        let payload = &buf[frame.payload.clone()];
        let Some(from) = self.connection_id(slot) else {
            return used;
        };
        let conn = &mut self.conns[slot as usize];
        let Phase::Upgrading(up) = &mut conn.phase else {
            return used;
        };
        match frame.opcode {
            Opcode::Text if frame.fin && payload == b"2probe" => {
                let (owner, sid) = (up.owner, up.sid.to_string());
                self.core.queue(conn, websocket::text(b"3probe"));
                self.mark(slot);
                self.send_poll(owner, PollCommand::Probe { sid }, now);
            }
            Opcode::Text if frame.fin && payload == b"5" && self.core.shutdown.is_some() => {
                // The client now listens on this WebSocket; the session is closing anyway.
                self.core
                    .queue(conn, websocket::close(1001, "server shutting down"));
                self.close(slot, Close::AfterFlush, "shutdown");
            }
            Opcode::Text if frame.fin && payload == b"5" => {
                up.switching = true;
                let (owner, sid) = (up.owner, up.sid.to_string());
                self.send_poll(owner, PollCommand::Switch { from, sid }, now);
            }
            Opcode::Ping | Opcode::Pong | Opcode::Close => {
                self.control_frame(slot, frame.opcode, payload)
            }
            _ => self.upgrade_fail(
                slot,
                1008,
                "only 2probe and 5 are expected while upgrading",
                now,
            ),
        }
        used
    }

    fn upgrade_fail(&mut self, slot: u32, code: u16, reason: &str, _now: Instant) {
        self.core.metrics().protocol_errors.fetch_add(1, Relaxed);
        if let Some(conn) = self.conns.get_mut(slot as usize) {
            self.core.queue(conn, websocket::close(code, reason));
        }
        self.close(slot, Close::AfterFlush, "upgrade failed");
    }

    /// Owner: the client switched; hand the session to the WebSocket's shard.
    pub(super) fn on_switch(&mut self, from: ConnectionId, sid: &str, now: Instant) {
        let Some(slot) = self.poll_slot(sid) else {
            self.send_poll(
                from.shard.0,
                PollCommand::Adopt {
                    to: from,
                    handover: None,
                },
                now,
            );
            return;
        };
        let p = &mut self.polls[index(slot)];
        let current = match &p.socket.auth {
            Auth::Connected(member) => member.rooms.clone(),
            _ => Vec::new(),
        };
        if current.iter().any(|room| !p.told.contains(room)) {
            // The WebSocket's shard must be in every room before the session leaves these,
            // or a broadcast between the two could be missed or doubled.
            p.told.clone_from(&current);
            let command = PollCommand::Upgradable {
                to: from,
                rooms: Some(current),
            };
            self.send_poll(from.shard.0, command, now);
            return;
        }
        let mut p = self.polls.remove(index(slot));
        self.poll_sids.remove(sid);
        if let Some(get) = p.get.take() {
            // The client paused polling before `5`; a poll still held is released empty,
            // and its packets go over the WebSocket.
            let bytes = polling::response(
                200,
                polling::TEXT_PLAIN,
                b"6",
                get.keep_alive,
                get.origin.as_deref(),
            );
            self.answer(get.from, bytes, get.keep_alive, now);
        }
        if let Auth::Connected(member) = &p.socket.auth {
            for room in &member.rooms {
                self.core.hub.leave(*room, slot);
            }
            self.core.metrics().sockets.fetch_sub(1, Relaxed);
        }
        // Store replies may still come for the old slot: forward them until no request
        // can be outstanding (the client would have timed out by then).
        let engine = self.core.shared.config.engine;
        let until = now + engine.ping_interval + engine.ping_timeout;
        self.moved.insert((slot, p.generation), (from, until));
        self.core.timers.push(super::timers::Due {
            at: until,
            slot,
            generation: p.generation,
        });
        let handover = Handover {
            socket: p.socket,
            queue: p.queue,
            seen: p.seen.unwrap_or_default(),
            newest: self.core.recovery.newest(),
        };
        let command = PollCommand::Adopt {
            to: from,
            handover: Some(Box::new(handover)),
        };
        self.send_poll(from.shard.0, command, now);
    }

    /// WebSocket side: the session arrived.
    pub(super) fn on_adopt(
        &mut self,
        to: ConnectionId,
        handover: Option<Box<Handover>>,
        now: Instant,
    ) {
        let Some(slot) = self.lookup(to) else {
            return;
        };
        let Some(handover) = handover else {
            self.upgrade_fail(slot, 1008, "the session ended during the upgrade", now);
            return;
        };
        let conn = &mut self.conns[slot as usize];
        let Phase::Upgrading(up) = &mut conn.phase else {
            return;
        };
        let Handover {
            socket,
            queue,
            seen,
            newest,
        } = *handover;
        let target: &[Room] = match &socket.auth {
            Auth::Connected(member) => &member.rooms,
            _ => &[],
        };
        for room in &up.rooms {
            if !target.contains(room) {
                self.core.hub.leave(*room, slot);
            }
        }
        for room in target {
            self.core.hub.join(*room, slot);
        }
        if matches!(socket.auth, Auth::Connected(_)) {
            self.core.metrics().sockets.fetch_add(1, Relaxed);
        }
        // Everything the owner queued since the upgrade began, sent by polling or not.
        let had: HashSet<BroadcastId> = seen.into_iter().collect();
        let shadow = std::mem::take(&mut up.shadow);
        for packet in &queue {
            self.core.queue(conn, websocket::text(packet));
        }
        let user = match &socket.auth {
            Auth::Connected(member) => Some(member.user.id),
            _ => None,
        };
        // Durable events come from this shard's log, by offset: the owner delivered every one
        // up to `newest`, and this shard may have handled a later one before it joined the
        // rooms, so the shadow alone could miss it. Whatever this shard has not handled yet
        // arrives live, now that the session is in its rooms here.
        if self.core.recovery.can_replay(newest) {
            for broadcast in self.core.recovery.replay(newest, target) {
                if !had.contains(&broadcast.id) {
                    self.core.queue(conn, websocket::text(&broadcast.packet));
                }
            }
        }
        for broadcast in shadow {
            if broadcast.offset.is_some() && self.core.recovery.can_replay(newest) {
                continue;
            }
            if had.contains(&broadcast.id) {
                continue;
            }
            if matches!(broadcast.except, Except::User(u) if Some(u) == user) {
                continue;
            }
            self.core.queue(conn, websocket::text(&broadcast.packet));
        }
        // If this shard is behind the owner, durable events up to the owner's newest will
        // still come through this shard's inbox: the owner delivered them already.
        conn.delivered_through = newest;
        conn.phase = Phase::Socket(socket);
        self.drive(slot, now);
        self.resume_input(slot, now);
    }

    /// A connection still upgrading closed: leave the rooms joined for it and let polling
    /// go on.
    pub(super) fn on_upgrading_closed(&mut self, slot: u32, up: Upgrading, now: Instant) {
        for room in up.rooms {
            self.core.hub.leave(room, slot);
        }
        if up.accepted && !up.switching {
            let sid = up.sid.into_string();
            self.send_poll(up.owner, PollCommand::Cancel { sid }, now);
        }
    }
}

fn index(slot: u32) -> usize {
    (slot & !super::polling::POLL_BIT) as usize
}
