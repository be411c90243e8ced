//! The WebSocket phase: frames in, the Engine.IO/Socket.IO session, CONNECT with
//! authentication, chat events and their effects, and fan-out of broadcasts to local members.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use bytes::Bytes;
use serde_json::Value;

use super::connection::{Auth, Connection, Phase, Socket};
use super::{Close, Core, Shard};
use crate::chat::{self, Context, Effect};
use crate::ids::{Room, ShardId};
use crate::mesh::{Broadcast, Credential, MembershipChange, StoreCommand, StoreError, StoreReply};
use crate::model::Grant;
use crate::protocol::session::SessionEvent;
use crate::transport::websocket::{self, Opcode};

impl Core {
    /// Queues a frame on a connection and counts it. Returns `true` if the connection's
    /// queue is now over the bound (a client that does not read).
    pub(super) fn queue(&self, conn: &mut Connection, frame: Bytes) -> bool {
        let m = &self.shared.metrics.shards[usize::from(self.id.0)];
        m.frames_out.fetch_add(1, Relaxed);
        m.queued_bytes.fetch_add(frame.len() as i64, Relaxed);
        conn.out.push(frame);
        conn.out.bytes() > self.shared.config.max_outbound_bytes
    }

    /// A socket is gone: leave its rooms.
    pub(super) fn on_socket_closed(&mut self, slot: u32, socket: Socket) {
        if let Auth::Connected { rooms, .. } = socket.auth {
            for room in rooms {
                self.hub.leave(room, slot);
            }
            self.shared.metrics.shards[usize::from(self.id.0)]
                .sockets
                .fetch_sub(1, Relaxed);
        }
    }
}

fn is_except(b: &Broadcast, shard: ShardId, slot: u32, generation: u32) -> bool {
    b.except
        .is_some_and(|e| e.shard == shard && e.slot == slot && e.generation == generation)
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
    fn fail(&mut self, slot: u32, code: u16, reason: &str) {
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
            Opcode::Ping => {
                self.core.queue(conn, websocket::pong(payload));
                self.mark(slot);
            }
            Opcode::Pong => {}
            Opcode::Close => {
                self.core.queue(conn, websocket::close(1000, ""));
                self.close(slot, Close::AfterFlush, "client sent close");
            }
        }
    }

    fn on_text(&mut self, slot: u32, payload: &[u8], now: Instant) {
        let Ok(text) = std::str::from_utf8(payload) else {
            self.fail(slot, 1007, "text frame is not valid UTF-8");
            return;
        };
        let Some(socket) = self
            .conns
            .get_mut(slot as usize)
            .and_then(Connection::socket)
        else {
            return;
        };
        if let Err(e) = socket.session.handle_text(now, text) {
            let code = if matches!(
                e,
                crate::protocol::error::ProtocolError::PayloadTooLarge { .. }
            ) {
                1009
            } else {
                1008
            };
            // Send what the session queued (e.g. an error packet) before the close.
            self.drive(slot, now);
            self.fail(slot, code, &e.to_string());
            return;
        }
        self.drive(slot, now);
    }

    /// Moves the session's queued packets to the outbound queue and handles its events.
    pub(super) fn drive(&mut self, slot: u32, now: Instant) {
        loop {
            let Some(conn) = self.conns.get_mut(slot as usize) else {
                return;
            };
            let Phase::Socket(socket) = &mut conn.phase else {
                return;
            };
            let mut over = false;
            while let Some(text) = socket.session.poll_transmit() {
                let frame = crate::protocol::frame::text(text.as_bytes());
                let m = &self.core.shared.metrics.shards[usize::from(self.core.id.0)];
                m.frames_out.fetch_add(1, Relaxed);
                m.queued_bytes.fetch_add(frame.len() as i64, Relaxed);
                conn.out.push(frame);
                over |= conn.out.bytes() > self.core.shared.config.max_outbound_bytes;
            }
            if over {
                self.slow_consumer(slot);
                return;
            }
            let Some(event) = socket.session.poll_event() else {
                break;
            };
            match event {
                SessionEvent::Connect { auth, .. } => self.on_connect(slot, auth),
                SessionEvent::Event { name, args, ack } => {
                    self.on_event(slot, &name, args, ack, now)
                }
                SessionEvent::Closed { reason } => {
                    tracing::trace!(slot, reason, "client ended the session");
                    self.close(slot, Close::AfterFlush, "client disconnect");
                    return;
                }
            }
        }
        self.mark(slot);
    }

    fn slow_consumer(&mut self, slot: u32) {
        self.core
            .metrics()
            .slow_consumers_dropped
            .fetch_add(1, Relaxed);
        tracing::debug!(slot, "dropping a client that does not read");
        self.close(slot, Close::Now, "slow consumer");
    }

    /// CONNECT: check the token on the shard (JWT signature and expiry), then ask the store
    /// for the user, the workspace membership and the rooms.
    fn on_connect(&mut self, slot: u32, auth: Option<Value>) {
        let Some(from) = self.connection_id(slot) else {
            return;
        };
        let Some(socket) = self
            .conns
            .get_mut(slot as usize)
            .and_then(Connection::socket)
        else {
            return;
        };
        let Auth::Pending { bearer, cookie } = &mut socket.auth else {
            // Already connected or being checked: a repeated CONNECT changes nothing.
            return;
        };
        let request = chat::auth::extract(auth.as_ref(), bearer.as_deref(), cookie.as_deref());
        let checked = match (request.token, request.workspace) {
            (None, _) => Err(chat::auth::NO_TOKEN.to_string()),
            (Some(_), Err(e)) => Err(e),
            (Some(token), Ok(workspace)) => self
                .core
                .shared
                .jwt
                .credential(&token)
                .map(|credential: Credential| (credential, workspace)),
        };
        match checked {
            Ok((credential, workspace)) => {
                let (bearer, cookie) = (bearer.take(), cookie.take());
                socket.auth = Auth::Checking { bearer, cookie };
                self.core.mesh.store.send(StoreCommand::Authenticate {
                    from,
                    credential,
                    workspace,
                });
            }
            Err(reason) => {
                self.core.metrics().auth_failures.fetch_add(1, Relaxed);
                socket.session.refuse(&reason);
            }
        }
    }

    fn on_authenticated(&mut self, slot: u32, result: Result<Grant, StoreError>, now: Instant) {
        let Some(socket) = self
            .conns
            .get_mut(slot as usize)
            .and_then(Connection::socket)
        else {
            return;
        };
        let Auth::Checking { bearer, cookie } = &mut socket.auth else {
            return;
        };
        match result {
            Ok(grant) => {
                for room in &grant.rooms {
                    self.core.hub.join(*room, slot);
                }
                socket.auth = Auth::Connected {
                    user: grant.user,
                    workspace: grant.workspace,
                    rooms: grant.rooms,
                };
                let sid = super::http::new_sid(self.core.id.0);
                socket.session.accept(&sid, None);
                self.core.metrics().sockets.fetch_add(1, Relaxed);
            }
            Err(e) => {
                socket.auth = Auth::Pending {
                    bearer: bearer.take(),
                    cookie: cookie.take(),
                };
                socket.session.refuse(e.message());
                self.core.metrics().auth_failures.fetch_add(1, Relaxed);
            }
        }
        self.drive(slot, now);
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
        let Some(socket) = self
            .conns
            .get_mut(slot as usize)
            .and_then(Connection::socket)
        else {
            return;
        };
        let mut effects = Vec::new();
        match &socket.auth {
            Auth::Connected {
                user, workspace, ..
            } => {
                let ctx = Context {
                    conn: conn_id,
                    user,
                    workspace: *workspace,
                    max_message_chars: self.core.shared.config.max_message_chars,
                };
                chat::handle_event(&ctx, name, args, ack, &mut effects);
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
    fn apply(&mut self, slot: u32, effects: Vec<Effect>, now: Instant) {
        for effect in effects {
            let Some(socket) = self
                .conns
                .get_mut(slot as usize)
                .and_then(Connection::socket)
            else {
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
                Effect::Join(room) => {
                    if let Auth::Connected { rooms, .. } = &mut socket.auth {
                        if self.core.hub.join(room, slot) {
                            rooms.push(room);
                        }
                    }
                }
                Effect::Leave(room) => {
                    if let Auth::Connected { rooms, .. } = &mut socket.auth {
                        if self.core.hub.leave(room, slot) {
                            rooms.retain(|r| *r != room);
                        }
                    }
                }
            }
        }
        self.drive(slot, now);
    }

    /// A store reply for one of this shard's connections.
    pub(super) fn on_reply(
        &mut self,
        to: crate::ids::ConnectionId,
        reply: StoreReply,
        now: Instant,
    ) {
        let Some(slot) = self.lookup(to) else { return };
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
    pub(super) fn deliver(&mut self, broadcast: &Broadcast) {
        let Core {
            hub,
            dirty,
            id,
            shared,
            ..
        } = &mut self.core;
        let max = shared.config.max_outbound_bytes;
        let mut delivered = 0u64;
        let mut queued = 0i64;
        let mut over = Vec::new();
        for slot in hub.members(&broadcast.room) {
            let Some(conn) = self.conns.get_mut(slot as usize) else {
                continue;
            };
            if conn.closing.is_some() || is_except(broadcast, *id, slot, conn.generation) {
                continue;
            }
            conn.out.push(broadcast.frame.clone());
            delivered += 1;
            queued += broadcast.frame.len() as i64;
            if !conn.dirty {
                conn.dirty = true;
                dirty.push(slot);
            }
            if conn.out.bytes() > max {
                over.push(slot);
            }
        }
        let m = &shared.metrics.shards[usize::from(id.0)];
        m.deliveries.fetch_add(delivered, Relaxed);
        m.frames_out.fetch_add(delivered, Relaxed);
        m.queued_bytes.fetch_add(queued, Relaxed);
        for slot in over {
            self.slow_consumer(slot);
        }
    }

    /// A membership changed: the user's sockets in that workspace join or leave the room.
    pub(super) fn on_membership(&mut self, change: MembershipChange) {
        let slots: Vec<u32> = self.core.hub.members(&Room::User(change.user)).collect();
        for slot in slots {
            let Some(socket) = self
                .conns
                .get_mut(slot as usize)
                .and_then(Connection::socket)
            else {
                continue;
            };
            let Auth::Connected {
                workspace, rooms, ..
            } = &mut socket.auth
            else {
                continue;
            };
            if *workspace != change.workspace {
                continue;
            }
            if change.joined {
                if self.core.hub.join(change.room, slot) {
                    rooms.push(change.room);
                }
            } else if self.core.hub.leave(change.room, slot) {
                rooms.retain(|r| *r != change.room);
            }
        }
    }
}
