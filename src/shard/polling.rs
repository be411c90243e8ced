//! Engine.IO long-polling sessions. A session is not a TCP connection: it lives in the slab
//! `Shard::polls` of the shard named by its `sid` prefix, and its GETs and POSTs, which may
//! arrive on any connection of any shard, are routed there as [`PollCommand::Request`]s;
//! the answer goes back as [`PollCommand::Respond`] to the shard that owns the connection.
//!
//! A session's slot carries [`POLL_BIT`], so the hub, the timers and store replies name it
//! with the same `u32` as a connection: the socket code (`socket.rs`) runs unchanged on it,
//! only the last step differs (packets wait in `queue` for a GET instead of being framed).

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use bytes::Bytes;
use slab::Slab;

use super::connection::{socket_at, Connection, Phase, Socket};
use super::timers::Due;
use super::Shard;
use crate::chat::{Auth, Credentials};
use crate::ids::{new_session_id, session_shard, ConnectionId};
use crate::mesh::{BroadcastId, PollCommand, ShardCommand};
use crate::protocol::http::RequestHead;
use crate::protocol::polling::{self, TEXT_PLAIN};
use crate::protocol::session::Session;

/// Set in the slot number of a polling session (connection slots stay far below it).
pub(super) const POLL_BIT: u32 = 1 << 31;

/// Whether `slot` names a polling session rather than a connection.
pub(super) fn is_poll(slot: u32) -> bool {
    slot & POLL_BIT != 0
}

/// Index in `Shard::polls` of a polling slot.
fn index(slot: u32) -> usize {
    (slot & !POLL_BIT) as usize
}

/// A long-polling session owned by this shard.
#[derive(Debug)]
pub(super) struct PollSession {
    /// Generation of the slot, as for connections.
    pub generation: u32,
    /// The Socket.IO state, shared with the WebSocket code.
    pub socket: Box<Socket>,
    /// Engine.IO packets waiting for a GET, oldest first.
    pub queue: VecDeque<Bytes>,
    /// Bytes in `queue`.
    pub queued: usize,
    /// The long-poll GET being held open, if any.
    pub get: Option<HeldGet>,
    /// Deadline armed in the shard's timers.
    pub armed: Option<Instant>,
    /// A WebSocket probed this session: GETs are answered at once (with `6` if nothing is
    /// queued) so the client can pause polling and send `5`.
    pub upgrading: bool,
    /// While a WebSocket takes the session over (from its upgrade request on): the id of
    /// every broadcast queued here, so the WebSocket's shard can tell which of the
    /// broadcasts it kept aside this session already had.
    pub seen: Option<Vec<BroadcastId>>,
    /// The rooms the upgrading WebSocket's shard was told to join (it keeps their
    /// broadcasts aside); the handover waits until they cover the session's rooms.
    pub told: Vec<crate::ids::Room>,
}

/// A GET waiting for packets.
#[derive(Debug)]
pub(super) struct HeldGet {
    pub from: ConnectionId,
    pub origin: Option<Box<str>>,
    pub keep_alive: bool,
}

/// A session on its way to the shard of the WebSocket that took it over: the Socket.IO
/// state and the packets polling had not sent yet.
#[derive(Debug)]
pub struct Handover {
    pub(super) socket: Box<Socket>,
    pub(super) queue: VecDeque<Bytes>,
    pub(super) seen: Vec<BroadcastId>,
    /// The newest durable offset the owner had delivered when it let go: every durable event
    /// of the session's rooms after it is the new shard's to deliver.
    pub(super) newest: u64,
}

/// The Socket.IO state behind `slot`, whether a WebSocket connection or a polling session.
pub(super) fn socket_of<'a>(
    conns: &'a mut Slab<Connection>,
    polls: &'a mut Slab<PollSession>,
    slot: u32,
) -> Option<&'a mut Socket> {
    if is_poll(slot) {
        polls.get_mut(index(slot)).map(|p| &mut *p.socket)
    } else {
        socket_at(conns, slot)
    }
}

impl Shard {
    /// Sends a polling command to `shard`, or handles it at once when that is this shard.
    pub(super) fn send_poll(&mut self, shard: u16, command: PollCommand, now: Instant) {
        if shard == self.core.id.0 {
            self.on_poll_command(command, now);
        } else if let Some(handle) = self.core.mesh.shards.get(usize::from(shard)) {
            handle.send(ShardCommand::Polling(Box::new(command)));
        }
    }

    /// Handles one [`PollCommand`], from the mesh or from this shard itself.
    pub(super) fn on_poll_command(&mut self, command: PollCommand, now: Instant) {
        match command {
            PollCommand::Request {
                from,
                sid,
                body,
                origin,
                keep_alive,
            } => self.on_poll_request(from, &sid, body, origin, keep_alive, now),
            PollCommand::Respond {
                to,
                response,
                keep_alive,
            } => self.on_poll_respond(to, response, keep_alive, now),
            PollCommand::Upgrade { from, sid } => self.on_upgrade_request(from, &sid, now),
            PollCommand::Upgradable { to, rooms } => self.on_upgradable(to, rooms, now),
            PollCommand::Probe { sid } => {
                if let Some(slot) = self.poll_slot(&sid) {
                    self.polls[index(slot)].upgrading = true;
                    self.poll_flush(slot, now);
                }
            }
            PollCommand::Cancel { sid } => {
                if let Some(slot) = self.poll_slot(&sid) {
                    let p = &mut self.polls[index(slot)];
                    p.upgrading = false;
                    p.seen = None;
                }
            }
            PollCommand::Switch { from, sid } => self.on_switch(from, &sid, now),
            PollCommand::Adopt { to, handover } => self.on_adopt(to, handover, now),
            PollCommand::Detach { pid, session } => self.core.recovery.detach(now, pid, session),
        }
    }

    /// `/socket.io/?EIO=4&transport=polling…` on connection `slot`: the handshake creates a
    /// session here; a request with a `sid` goes to the session's shard.
    pub(super) fn polling_request(
        &mut self,
        slot: u32,
        head: &RequestHead,
        body: &[u8],
        now: Instant,
    ) {
        let origin = polling::allowed_origin(head, &self.core.shared.config.cors_origins);
        let keep_alive = head.keep_alive;
        if head.method == "OPTIONS" {
            let bytes = polling::preflight(head, origin.as_deref(), keep_alive);
            self.respond(slot, bytes, keep_alive, now);
            return;
        }
        let Some(from) = self.connection_id(slot) else {
            return;
        };
        let Some(sid) = head.query_param("sid") else {
            if head.method != "GET" {
                let bytes = polling::engine_error(
                    2,
                    &format!(
                        "Bad handshake method: {}; open a session with GET",
                        head.method
                    ),
                    origin.as_deref(),
                );
                self.respond(slot, bytes, false, now);
                return;
            }
            self.wait(slot, keep_alive);
            self.open_polling(from, head, origin, keep_alive, now);
            return;
        };
        let body = match head.method.as_str() {
            "GET" => None,
            "POST" => Some(Bytes::copy_from_slice(body)),
            other => {
                let message =
                    format!("Bad request: method {other}; long-polling uses GET and POST");
                let bytes = polling::engine_error(3, &message, origin.as_deref());
                self.respond(slot, bytes, false, now);
                return;
            }
        };
        let Some(owner) = session_shard(&sid, self.core.shared.config.shards) else {
            let bytes = polling::engine_error(1, "Session ID unknown", origin.as_deref());
            self.respond(slot, bytes, false, now);
            return;
        };
        if self.core.shutdown.is_some() {
            // The node is stopping and the session's shard may be gone: the close packet
            // tells the client at once ("transport close"), so it reconnects elsewhere.
            let bytes = polling::response(200, TEXT_PLAIN, b"1", false, origin.as_deref());
            self.respond(slot, bytes, false, now);
            return;
        }
        self.wait(slot, keep_alive);
        self.poll_waiting.insert(slot, from.generation);
        let command = PollCommand::Request {
            from,
            sid,
            body,
            origin,
            keep_alive,
        };
        self.send_poll(owner.0, command, now);
    }

    /// Input on `slot` waits until the pending answer is written.
    fn wait(&mut self, slot: u32, keep: bool) {
        if let Some(Phase::Http {
            waiting,
            keep_alive,
            ..
        }) = self.conns.get_mut(slot as usize).map(|c| &mut c.phase)
        {
            *waiting = true;
            *keep_alive = keep;
        }
    }

    /// The handshake: a new session on this shard, answered with its open packet.
    fn open_polling(
        &mut self,
        from: ConnectionId,
        head: &RequestHead,
        origin: Option<Box<str>>,
        keep_alive: bool,
        now: Instant,
    ) {
        let bearer = head.bearer_token().map(Box::from);
        let cookie = crate::chat::auth::session_cookie(head).map(Box::from);
        let sid = new_session_id(self.core.id);
        let session = Session::with_upgrades(
            now,
            sid.clone(),
            self.core.shared.config.engine,
            &["websocket"],
        );
        let generation = self.core.next_generation;
        self.core.next_generation = generation.wrapping_add(1);
        let index = self.polls.insert(PollSession {
            generation,
            socket: Box::new(Socket {
                session,
                auth: Auth::Pending(Credentials { bearer, cookie }),
                fragment: None,
            }),
            queue: VecDeque::new(),
            queued: 0,
            get: Some(HeldGet {
                from,
                origin,
                keep_alive,
            }),
            armed: None,
            upgrading: false,
            seen: None,
            told: Vec::new(),
        });
        let slot = index as u32 | POLL_BIT;
        self.poll_sids.insert(sid.into_boxed_str(), slot);
        self.drive(slot, now);
    }

    /// The slot of session `sid` on this shard.
    pub(super) fn poll_slot(&self, sid: &str) -> Option<u32> {
        self.poll_sids.get(sid).copied()
    }

    /// The owner's side of a GET or POST.
    fn on_poll_request(
        &mut self,
        from: ConnectionId,
        sid: &str,
        body: Option<Bytes>,
        origin: Option<Box<str>>,
        keep_alive: bool,
        now: Instant,
    ) {
        let Some(slot) = self.poll_slot(sid) else {
            let bytes = polling::engine_error(1, "Session ID unknown", origin.as_deref());
            self.answer(from, bytes, false, now);
            return;
        };
        let Some(body) = body else {
            let session = &mut self.polls[index(slot)];
            if session.get.is_some() {
                // The reference server closes the session on an overlapping GET: two
                // pollers would each get part of the packets.
                let bytes = polling::engine_error(
                    3,
                    "Bad request: overlapping GET requests; a session polls with one GET at a time",
                    origin.as_deref(),
                );
                self.answer(from, bytes, false, now);
                self.core.metrics().protocol_errors.fetch_add(1, Relaxed);
                self.close_poll(slot, "overlapping GET", now);
                return;
            }
            session.get = Some(HeldGet {
                from,
                origin,
                keep_alive,
            });
            self.poll_flush(slot, now);
            return;
        };
        let failure = match std::str::from_utf8(&body) {
            Err(_) => Some("the POST body is not UTF-8 text".to_string()),
            Ok(text) => {
                let socket = &mut self.polls[index(slot)].socket;
                polling::split_payload(text)
                    .find_map(|packet| socket.session.handle_text(now, packet).err())
                    .map(|e| e.to_string())
            }
        };
        if let Some(reason) = failure {
            self.core.metrics().protocol_errors.fetch_add(1, Relaxed);
            let bytes =
                polling::engine_error(3, &format!("Bad request: {reason}"), origin.as_deref());
            self.answer(from, bytes, false, now);
            self.drive(slot, now);
            self.close_poll(slot, "bad POST", now);
            return;
        }
        let bytes = polling::response(200, TEXT_PLAIN, b"ok", keep_alive, origin.as_deref());
        self.answer(from, bytes, keep_alive, now);
        self.drive(slot, now);
    }

    /// Sends an HTTP answer to the connection `to`, wherever it is.
    pub(super) fn answer(
        &mut self,
        to: ConnectionId,
        response: Vec<u8>,
        keep_alive: bool,
        now: Instant,
    ) {
        let command = PollCommand::Respond {
            to,
            response,
            keep_alive,
        };
        self.send_poll(to.shard.0, command, now);
    }

    /// The answer to a request of connection `to` came back: write it, then take the next
    /// pipelined request.
    fn on_poll_respond(
        &mut self,
        to: ConnectionId,
        response: Vec<u8>,
        keep_alive: bool,
        now: Instant,
    ) {
        let Some(slot) = self.lookup(to) else {
            // The client went away before its answer.
            return;
        };
        self.poll_waiting.remove(&slot);
        if self.conns[slot as usize].closing.is_some() {
            // Shutdown answered it already.
            return;
        }
        match &mut self.conns[slot as usize].phase {
            Phase::Http { waiting, .. } => *waiting = false,
            _ => return,
        }
        self.respond(slot, response, keep_alive, now);
        self.resume_input(slot, now);
    }

    /// Processes bytes that arrived while `slot` was waiting.
    pub(super) fn resume_input(&mut self, slot: u32, now: Instant) {
        let Some(conn) = self.conns.get_mut(slot as usize) else {
            return;
        };
        if conn.closing.is_none() && !conn.inbuf.is_empty() {
            let pending = std::mem::take(&mut conn.inbuf);
            self.resume(slot, pending, now);
        }
    }

    /// Moves the session's new packets to its queue. Returns `false` when `slot` is gone
    /// or was dropped for queueing more than the outbound bound.
    pub(super) fn drain_poll(&mut self, slot: u32) -> bool {
        let Some(p) = self.polls.get_mut(index(slot)) else {
            return false;
        };
        while let Some(text) = p.socket.session.poll_transmit() {
            p.queued += text.len();
            p.queue.push_back(Bytes::from(text));
        }
        if p.queued > self.core.shared.config.max_outbound_bytes {
            self.slow_consumer(slot);
            return false;
        }
        true
    }

    /// Answers the held GET when there is something to send (or the session is upgrading:
    /// then a `6` noop releases the poll) and arms the session's next deadline.
    pub(super) fn poll_flush(&mut self, slot: u32, now: Instant) {
        let Some(p) = self.polls.get_mut(index(slot)) else {
            return;
        };
        if p.get.is_some() && (!p.queue.is_empty() || p.upgrading) {
            let get = p.get.take().expect("checked just above");
            let body = if p.queue.is_empty() {
                b"6".to_vec()
            } else {
                polling::join_payload(&p.queue)
            };
            let m = self.core.metrics();
            m.frames_out.fetch_add(p.queue.len() as u64, Relaxed);
            m.bytes_out.fetch_add(body.len() as u64, Relaxed);
            p.queue.clear();
            p.queued = 0;
            let bytes = polling::response(
                200,
                TEXT_PLAIN,
                &body,
                get.keep_alive,
                get.origin.as_deref(),
            );
            self.answer(get.from, bytes, get.keep_alive, now);
        }
        let Some(p) = self.polls.get_mut(index(slot)) else {
            return;
        };
        let typing = match &p.socket.auth {
            Auth::Connected(m) => m.chat.typing.poll_timeout(),
            _ => None,
        };
        let next = match (p.socket.session.poll_timeout(), typing) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(at) = next {
            if p.armed.is_none_or(|armed| at < armed) {
                p.armed = Some(at);
                self.core.timers.push(Due {
                    at,
                    slot,
                    generation: p.generation,
                });
            }
        }
    }

    /// A polling session's deadline came: ping, or drop a client that stopped polling.
    pub(super) fn poll_timer(&mut self, due: Due, now: Instant) {
        let Some(p) = self.polls.get_mut(index(due.slot)) else {
            self.expire_moved(due, now);
            return;
        };
        if p.generation != due.generation {
            self.expire_moved(due, now);
            return;
        }
        if p.armed != Some(due.at) {
            return;
        }
        p.armed = None;
        if let Err(e) = p.socket.session.handle_timeout(now) {
            self.core.metrics().protocol_errors.fetch_add(1, Relaxed);
            tracing::debug!(slot = due.slot, reason = %e, "polling session timed out");
            self.close_poll(due.slot, "ping timeout", now);
            return;
        }
        self.expire_typing(due.slot, now);
        self.drive(due.slot, now);
    }

    /// Forgets where a moved session went once store replies for it can no longer come.
    fn expire_moved(&mut self, due: Due, now: Instant) {
        let key = (due.slot, due.generation);
        if self.moved.get(&key).is_some_and(|(_, until)| *until <= now) {
            self.moved.remove(&key);
        }
    }

    /// Ends a polling session: a held GET gets what is queued and the close packet `1`.
    pub(super) fn close_poll(&mut self, slot: u32, why: &'static str, now: Instant) {
        let i = index(slot);
        if !self.polls.contains(i) {
            return;
        }
        let mut p = self.polls.remove(i);
        self.poll_sids.remove(p.socket.session.sid());
        tracing::trace!(slot, why, "polling session closed");
        if let Some(get) = p.get.take() {
            p.queue.push_back(Bytes::from_static(b"1"));
            let body = polling::join_payload(&p.queue);
            let bytes = polling::response(
                200,
                TEXT_PLAIN,
                &body,
                get.keep_alive,
                get.origin.as_deref(),
            );
            self.answer(get.from, bytes, get.keep_alive, now);
        }
        self.core.on_socket_closed(slot, *p.socket);
    }

    /// The `ConnectionId` of a polling slot (store replies come back to it).
    pub(super) fn poll_id(&self, slot: u32) -> Option<ConnectionId> {
        self.polls.get(index(slot)).map(|p| ConnectionId {
            shard: self.core.id,
            slot,
            generation: p.generation,
        })
    }

    /// Whether `id` names a live polling session of this shard.
    pub(super) fn poll_lookup(&self, id: ConnectionId) -> Option<u32> {
        self.polls
            .get(index(id.slot))
            .filter(|p| p.generation == id.generation)
            .map(|_| id.slot)
    }

    /// Shutdown: answers every connection still waiting for a polling answer with the close
    /// packet `1` (so the client reports "transport close"), as the session's shard may
    /// exit before it answers.
    pub(super) fn release_poll_waiters(&mut self, now: Instant) {
        for (slot, generation) in std::mem::take(&mut self.poll_waiting) {
            let waiting = self.conns.get(slot as usize).is_some_and(|c| {
                c.generation == generation
                    && c.closing.is_none()
                    && matches!(c.phase, Phase::Http { waiting: true, .. })
            });
            if waiting {
                if let Phase::Http { waiting, .. } = &mut self.conns[slot as usize].phase {
                    *waiting = false;
                }
                let bytes = polling::response(200, TEXT_PLAIN, b"1", false, None);
                self.respond(slot, bytes, false, now);
            }
        }
    }

    /// Connection state recovery on a polling session: queues the missed broadcasts (their
    /// Engine.IO packets) after the CONNECT answer.
    pub(super) fn replay_poll(&mut self, slot: u32, after: u64, now: Instant) {
        let Some(p) = self.polls.get_mut(index(slot)) else {
            return;
        };
        let rooms = match &p.socket.auth {
            Auth::Connected(member) => member.rooms.clone(),
            _ => return,
        };
        for broadcast in self.core.recovery.replay(after, &rooms) {
            p.queued += broadcast.packet.len();
            p.queue.push_back(broadcast.packet.clone());
        }
        if p.queued > self.core.shared.config.max_outbound_bytes {
            self.slow_consumer(slot);
            return;
        }
        self.poll_flush(slot, now);
    }

    /// Closes every polling session (shutdown).
    pub(super) fn close_all_polls(&mut self, now: Instant) {
        let slots: Vec<u32> = self
            .polls
            .iter()
            .map(|(k, _)| k as u32 | POLL_BIT)
            .collect();
        for slot in slots {
            self.close_poll(slot, "shutdown", now);
        }
    }
}

#[cfg(test)]
mod tests;
