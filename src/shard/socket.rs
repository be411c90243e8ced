//! The WebSocket phase: frames in, the Engine.IO/Socket.IO session, chat events and their
//! effects, and fan-out of broadcasts to local members.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde_json::Value;

use super::connection::{Connection, Phase, Socket};
use super::polling::{is_poll, socket_of, POLL_BIT};
use super::{Close, Core, Shard};
use crate::chat::{self, Auth, Context, Effect, Member};
use crate::ids::{Room, ShardId, UserId};
use crate::mesh::{Broadcast, Except, PresenceCommand, StoreReply};
use crate::model::MembershipChange;
use crate::protocol::session::{CloseReason, SessionEvent};
use crate::protocol::ProtocolError;
use crate::transport::websocket::{self, Opcode};

impl Core {
    /// Queues a frame on a connection and counts it. Returns `true` if the connection's
    /// queue is now over the bound (a client that does not read).
    pub(super) fn queue(&self, conn: &mut Connection, frame: Bytes) -> bool {
        let m = self.metrics();
        m.frames_out.fetch_add(1, Relaxed);
        m.queued_bytes.fetch_add(frame.len() as i64, Relaxed);
        conn.out.push(frame);
        conn.out.bytes() > self.shared.config.max_outbound_bytes
    }

    /// A socket is gone: leave its rooms, stop its typing, tell presence, and keep it for
    /// recovery unless the client said goodbye.
    pub(super) fn on_socket_closed(&mut self, slot: u32, socket: Socket) {
        let Auth::Connected(mut member) = socket.auth else {
            return;
        };
        for room in &member.rooms {
            self.hub.leave(*room, slot);
        }
        for target in member.chat.typing.stop_all() {
            self.mesh
                .broker
                .publish(chat::typing_update(&member.user, target, false));
        }
        self.mesh.broker.presence(PresenceCommand::Disconnected {
            user: member.user.id,
            workspace: member.workspace,
            away: member.chat.away,
        });
        self.metrics().sockets.fetch_sub(1, Relaxed);
        self.detach(member);
    }
}

/// Whether a broadcast skips the member `slot` of shard `shard`, whether a connection or a
/// polling session. `user` is asked only for `Except::User`, so the common case touches no
/// session state.
fn is_except(
    b: &Broadcast,
    shard: ShardId,
    slot: u32,
    generation: u32,
    user: impl FnOnce() -> Option<UserId>,
) -> bool {
    match b.except {
        Except::Nobody => false,
        Except::Connection(e) => e.shard == shard && e.slot == slot && e.generation == generation,
        Except::User(except) => user() == Some(except),
    }
}

impl Shard {
    /// Handles the frame at the start of `buf`; returns the bytes it used (0: need more).
    pub(super) fn socket_input(&mut self, slot: u32, buf: &mut [u8], now: Instant) -> usize {
        let max = self.core.shared.config.engine.max_payload;
        match websocket::decode(buf, max) {
            // The frame is not complete yet.
            Ok(None) => 0,
            Ok(Some((frame, used))) => {
                let payload = &buf[frame.payload.clone()];
                self.on_frame(slot, frame.opcode, frame.fin, payload, now);
                used
            }
            Err(e) => {
                self.fail(slot, e.code, &e.reason);
                buf.len()
            }
        }
    }

    /// Closes a socket for a protocol error, telling the client why in the close frame.
    pub(super) fn fail(&mut self, slot: u32, code: u16, reason: &str) {
        self.core.metrics().protocol_errors.fetch_add(1, Relaxed);
        tracing::debug!(slot, code, reason, "closing socket for a protocol error");
        if let Some(conn) = self.conns.get_mut(slot as usize) {
            self.core.queue(conn, websocket::close(code, reason));
        }
        self.close(slot, Close::AfterFlush, "protocol error");
    }

    fn on_frame(&mut self, slot: u32, opcode: Opcode, fin: bool, payload: &[u8], now: Instant) {
        let max = self.core.shared.config.engine.max_payload;
        let Some(conn) = self.conns.get_mut(slot as usize) else {
            return;
        };
        let Phase::Socket(socket) = &mut conn.phase else {
            return;
        };
        match opcode {
            Opcode::Text | Opcode::Binary if socket.fragment.is_some() => {
                self.fail(
                    slot,
                    1002,
                    "a new message began before the fragmented one ended",
                );
            }
            Opcode::Text if fin => self.on_text(slot, payload, now),
            Opcode::Text => socket.fragment = Some(payload.to_vec()),
            Opcode::Continuation => {
                let Some(fragment) = &mut socket.fragment else {
                    self.fail(
                        slot,
                        1002,
                        "continuation frame without a message to continue",
                    );
                    return;
                };
                if fragment.len() + payload.len() > max {
                    self.fail(slot, 1009, &format!("message is over the {max}-byte limit"));
                    return;
                }
                fragment.extend_from_slice(payload);
                if fin {
                    let whole = socket.fragment.take().unwrap_or_default();
                    self.on_text(slot, &whole, now);
                }
            }
            Opcode::Binary => {
                let reason = match socket.session.handle_binary(now, payload) {
                    Err(e) => e.to_string(),
                    Ok(()) => "binary frames are not supported".to_string(),
                };
                self.fail(slot, 1003, &reason);
            }
            Opcode::Ping | Opcode::Pong | Opcode::Close => {
                self.control_frame(slot, opcode, payload)
            }
        }
    }

    /// Ping, pong and close frames, the same in every WebSocket phase.
    pub(super) fn control_frame(&mut self, slot: u32, opcode: Opcode, payload: &[u8]) {
        let Some(conn) = self.conns.get_mut(slot as usize) else {
            return;
        };
        match opcode {
            Opcode::Ping => {
                self.core.queue(conn, websocket::pong(payload));
                self.mark(slot);
            }
            Opcode::Close => {
                self.core.queue(conn, websocket::close(1000, ""));
                self.close(slot, Close::AfterFlush, "client sent close");
            }
            _ => {}
        }
    }

    fn on_text(&mut self, slot: u32, payload: &[u8], now: Instant) {
        let Ok(text) = std::str::from_utf8(payload) else {
            self.fail(slot, 1007, "text frame is not valid UTF-8");
            return;
        };
        let Some(socket) = socket_of(&mut self.conns, &mut self.polls, slot) else {
            return;
        };
        if let Err(e) = socket.session.handle_text(now, text) {
            self.session_failed(slot, &e, now);
            return;
        }
        self.drive(slot, now);
    }

    /// The session ended on a protocol error: send what it queued, then close with the reason.
    pub(super) fn session_failed(&mut self, slot: u32, e: &ProtocolError, now: Instant) {
        self.drive(slot, now);
        self.fail(slot, e.close_code(), &e.to_string());
    }

    /// Moves the session's queued packets to the outbound queue and handles its events.
    pub(super) fn drive(&mut self, slot: u32, now: Instant) {
        loop {
            if is_poll(slot) {
                // A polling session: packets wait in its queue for the next GET.
                if !self.drain_poll(slot) {
                    return;
                }
            } else {
                let Some(conn) = self.conns.get_mut(slot as usize) else {
                    return;
                };
                let Phase::Socket(socket) = &mut conn.phase else {
                    return;
                };
                let mut over = false;
                while let Some(text) = socket.session.poll_transmit() {
                    let frame = websocket::text(text.as_bytes());
                    let m = self.core.metrics();
                    m.frames_out.fetch_add(1, Relaxed);
                    m.queued_bytes.fetch_add(frame.len() as i64, Relaxed);
                    conn.out.push(frame);
                    over |= conn.out.bytes() > self.core.shared.config.max_outbound_bytes;
                }
                if over {
                    self.slow_consumer(slot);
                    return;
                }
            }
            let Some(socket) = socket_of(&mut self.conns, &mut self.polls, slot) else {
                return;
            };
            let Some(event) = socket.session.poll_event() else {
                break;
            };
            match event {
                SessionEvent::Connect { auth, pid, offset } => {
                    self.on_connect(slot, auth, pid, offset)
                }
                SessionEvent::Event { name, args, ack } => {
                    self.on_event(slot, &name, args, ack, now)
                }
                SessionEvent::Closed { reason } => {
                    tracing::trace!(slot, reason = reason.as_str(), "client ended the session");
                    // A Socket.IO DISCONNECT is a goodbye: nothing to recover. A bare
                    // transport close may be followed by a reconnect.
                    let goodbye = reason == CloseReason::ClientDisconnect;
                    self.close_socket(slot, goodbye);
                    return;
                }
            }
        }
        if is_poll(slot) {
            self.poll_flush(slot, now);
        } else {
            self.mark(slot);
        }
    }

    /// Closes a socket whose client ended it. After a goodbye (Socket.IO DISCONNECT) there is
    /// nothing to recover.
    fn close_socket(&mut self, slot: u32, goodbye: bool) {
        if goodbye {
            if let Some(Auth::Connected(member)) =
                socket_of(&mut self.conns, &mut self.polls, slot).map(|s| &mut s.auth)
            {
                member.pid = None;
            }
        }
        self.close(slot, Close::AfterFlush, "client ended the session");
    }

    pub(super) fn slow_consumer(&mut self, slot: u32) {
        self.core
            .metrics()
            .slow_consumers_dropped
            .fetch_add(1, Relaxed);
        tracing::debug!(slot, "dropping a client that does not read");
        self.close(slot, Close::Now, "slow consumer");
    }

    fn on_event(
        &mut self,
        slot: u32,
        name: &str,
        args: Vec<Value>,
        ack: Option<u64>,
        now: Instant,
    ) {
        self.core.metrics().events_in.fetch_add(1, Relaxed);
        let Some(conn_id) = self.connection_id(slot) else {
            return;
        };
        let Some(socket) = socket_of(&mut self.conns, &mut self.polls, slot) else {
            return;
        };
        let mut effects = Vec::new();
        match &mut socket.auth {
            Auth::Connected(member) => {
                let hub = &self.core.hub;
                let in_room = |room: Room| hub.contains(&room, slot);
                let ctx = Context {
                    conn: conn_id,
                    user: &member.user,
                    workspace: member.workspace,
                    max_message_chars: self.core.shared.config.max_message_chars,
                    now,
                    in_room: &in_room,
                };
                chat::handle_event(&ctx, &mut member.chat, name, args, ack, &mut effects);
            }
            _ => chat::refuse(
                ack,
                "not connected: send CONNECT and wait for it to be accepted",
                &mut effects,
            ),
        }
        self.apply(slot, effects, now);
    }

    /// Carries out a handler's effects for the socket in `slot`.
    pub(super) fn apply(&mut self, slot: u32, effects: Vec<Effect>, now: Instant) {
        for effect in effects {
            let Some(socket) = socket_of(&mut self.conns, &mut self.polls, slot) else {
                return;
            };
            match effect {
                Effect::Ack(id, data) => socket.session.ack(id, &data),
                Effect::Emit(name, data) => socket.session.emit(name, &data),
                Effect::Store(command) => {
                    // The store only goes away at shutdown; the client's ack then times out.
                    self.core.mesh.store.send(command);
                }
                Effect::Publish(broadcast) => self.core.mesh.broker.publish(broadcast),
                Effect::Presence(command) => self.core.mesh.broker.presence(command),
                Effect::Join(room) => {
                    if let Auth::Connected(member) = &mut socket.auth {
                        if self.core.hub.join(room, slot) {
                            member.rooms.push(room);
                        }
                    }
                }
                Effect::Leave(room) => {
                    if let Auth::Connected(member) = &mut socket.auth {
                        leave(&mut self.core, slot, member, room);
                    }
                }
            }
        }
        self.drive(slot, now);
    }

    /// Typing timers that ran out: tell the rooms the user stopped.
    pub(super) fn expire_typing(&mut self, slot: u32, now: Instant) {
        let Some(socket) = socket_of(&mut self.conns, &mut self.polls, slot) else {
            return;
        };
        if let Auth::Connected(member) = &mut socket.auth {
            for target in member.chat.typing.expire(now) {
                self.core
                    .mesh
                    .broker
                    .publish(chat::typing_update(&member.user, target, false));
            }
        }
    }

    /// A store reply for one of this shard's connections.
    pub(super) fn on_reply(
        &mut self,
        to: crate::ids::ConnectionId,
        reply: StoreReply,
        now: Instant,
    ) {
        let Some(slot) = self.lookup(to) else {
            // A polling session that moved to a WebSocket: the reply follows it.
            if let Some((moved_to, _)) = self.moved.get(&(to.slot, to.generation)) {
                self.core.mesh.reply(*moved_to, reply);
            }
            return;
        };
        match reply {
            StoreReply::Authenticated(result) => self.on_authenticated(slot, result, now),
            StoreReply::Admin { status, body } => self.on_admin_reply(slot, status, body, now),
            other => {
                let mut effects = Vec::new();
                chat::handle_reply(other, &mut effects);
                self.apply(slot, effects, now);
            }
        }
    }

    /// Queues a broadcast's frame on every local member of its room. Members whose queue
    /// passes the bound are dropped afterwards; nobody else waits for them.
    pub(super) fn deliver(&mut self, broadcast: &Arc<Broadcast>, now: Instant) {
        self.core.recovery.remember(now, broadcast);
        let core = &mut self.core;
        let max = core.shared.config.max_outbound_bytes;
        let mut delivered = 0u64;
        // Made on the first WebSocket member, once for all of them.
        let mut frame: Option<Bytes> = None;
        let mut framed = 0i64;
        let mut over = Vec::new();
        let mut polled = Vec::new();
        for slot in core.hub.members(&broadcast.room) {
            if slot & POLL_BIT != 0 {
                // A polling member gets the Engine.IO packet without the frame header, still
                // sharing the broadcast's buffer.
                let Some(p) = self.polls.get_mut((slot & !POLL_BIT) as usize) else {
                    continue;
                };
                let user = || match &p.socket.auth {
                    Auth::Connected(m) => Some(m.user.id),
                    _ => None,
                };
                if is_except(broadcast, core.id, slot, p.generation, user) {
                    continue;
                }
                p.queued += broadcast.packet.len();
                if let Some(seen) = &mut p.seen {
                    seen.push(broadcast.id);
                }
                p.queue.push_back(broadcast.packet.clone());
                delivered += 1;
                polled.push(slot);
                continue;
            }
            let Some(conn) = self.conns.get_mut(slot as usize) else {
                continue;
            };
            if conn.closing.is_some()
                || is_except(broadcast, core.id, slot, conn.generation, || {
                    conn.user().map(|u| u.id)
                })
                || broadcast
                    .offset
                    .is_some_and(|o| o <= conn.delivered_through)
            {
                continue;
            }
            if let Phase::Upgrading(up) = &mut conn.phase {
                // Kept aside until the session arrives from its polling shard.
                up.shadow.push(Arc::clone(broadcast));
                continue;
            }
            let frame = frame.get_or_insert_with(|| websocket::text(&broadcast.packet));
            conn.out.push(frame.clone());
            framed += 1;
            delivered += 1;
            if !conn.dirty {
                conn.dirty = true;
                core.dirty.push(slot);
            }
            if conn.out.bytes() > max {
                over.push(slot);
            }
        }
        let m = core.metrics();
        m.deliveries.fetch_add(delivered, Relaxed);
        m.frames_out.fetch_add(delivered, Relaxed);
        if let Some(frame) = &frame {
            m.queued_bytes
                .fetch_add(framed * frame.len() as i64, Relaxed);
        }
        for slot in over {
            self.slow_consumer(slot);
        }
        let max = self.core.shared.config.max_outbound_bytes;
        for slot in polled {
            let size = self
                .polls
                .get((slot & !POLL_BIT) as usize)
                .map(|p| p.queued);
            if size.is_some_and(|s| s > max) {
                self.slow_consumer(slot);
            } else {
                self.poll_flush(slot, now);
            }
        }
    }

    /// A membership changed: the user's sockets in that workspace join or leave the room.
    pub(super) fn on_membership(&mut self, change: MembershipChange) {
        let slots: Vec<u32> = self.core.hub.members(&Room::User(change.user)).collect();
        for slot in slots {
            let Some(socket) = socket_of(&mut self.conns, &mut self.polls, slot) else {
                continue;
            };
            let Auth::Connected(member) = &mut socket.auth else {
                continue;
            };
            if member.workspace != change.workspace {
                continue;
            }
            if change.joined {
                if self.core.hub.join(change.room, slot) {
                    member.rooms.push(change.room);
                }
            } else {
                leave(&mut self.core, slot, member, change.room);
            }
        }
    }
}

/// Takes a socket out of a room, and ends its typing there.
fn leave(core: &mut Core, slot: u32, member: &mut Member, room: Room) {
    if core.hub.leave(room, slot) {
        member.rooms.retain(|r| *r != room);
    }
    if let Some(target) = room.target() {
        if member.chat.typing.stop(target) {
            core.mesh
                .broker
                .publish(chat::typing_update(&member.user, target, false));
        }
    }
}
