//! Engine.IO long-polling sessions. A session is not a TCP connection: it lives in the
//! [`Polling`] table of the shard named by its `sid` prefix, and its GETs and POSTs, which
//! may arrive on any connection of any shard, are routed there as
//! [`PollCommand::Request`]s; the answer goes back as [`PollCommand::Respond`] to the shard
//! that owns the connection (see `http.rs` for that side).
//!
//! A session's packets wait in its [`Packets`] queue (the socket's `Outlet::Polling`); at the
//! end of each turn a session that has packets answers its held GET with all of them.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use bytes::Bytes;
use rustc_hash::FxHashMap;
use slab::Slab;

use super::socket::{Flow, Outlet, Socket};
use super::timers::Due;
use super::Core;
use crate::chat::{Credentials, Effect};
use crate::ids::{new_session_id, ConnectionId, Room, SocketRef};
use crate::mesh::{Broadcast, BroadcastId, PollCommand};
use crate::protocol::http::RequestHead;
use crate::protocol::polling::{self, TEXT_PLAIN};
use crate::protocol::Session;

/// The shard's long-polling sessions, and the connections waiting for their answers.
#[derive(Debug, Default)]
pub struct Polling {
    sessions: Slab<PollSession>,
    /// Session id → key in `sessions`.
    sids: FxHashMap<Box<str>, u32>,
    /// Sessions handed to a WebSocket on another connection: (key, generation) → the new
    /// socket, and until when store replies are forwarded to it.
    moved: FxHashMap<(u32, u32), (ConnectionId, Instant)>,
    /// This shard's connections (key → generation) waiting for a polling answer, possibly
    /// from another shard: at shutdown they are answered here, as that shard may be gone.
    pub waiting: FxHashMap<u32, u32>,
}

/// A long-polling session owned by this shard.
#[derive(Debug)]
pub struct PollSession {
    /// Generation of the slot, as for connections.
    pub generation: u32,
    /// The Socket.IO state.
    pub socket: Socket,
    /// Packets waiting for a GET.
    pub packets: Packets,
    /// The long-poll GET being held open, if any.
    pub get: Option<HeldGet>,
    /// Deadline armed in the shard's timers.
    pub armed: Option<Instant>,
    /// Queued on the shard's flush list for this turn.
    pub dirty: bool,
    /// A WebSocket probed this session: GETs are answered at once (with `6` if nothing is
    /// queued) so the client can pause polling and send `5`.
    pub probed: bool,
    /// The rooms the upgrading WebSocket's shard was told to join (it keeps their
    /// broadcasts aside); the handover waits until they cover the session's rooms.
    pub told: Vec<Room>,
    /// Since when its packets have been over the slow-consumer bound with no GET to take
    /// them.
    pub stuck_since: Option<Instant>,
}

/// A polling session's packets waiting for a GET, oldest first.
#[derive(Debug, Default)]
pub struct Packets {
    queue: VecDeque<Bytes>,
    bytes: usize,
    /// While a WebSocket takes the session over (from its upgrade request on): the id of
    /// every broadcast queued, so the WebSocket's shard can tell which of the broadcasts it
    /// kept aside this session already had.
    pub seen: Option<Vec<BroadcastId>>,
}

/// A GET waiting for packets.
#[derive(Debug)]
pub struct HeldGet {
    /// The connection that sent it.
    pub from: ConnectionId,
    /// Its allowed origin (echoed in CORS headers).
    pub origin: Option<Box<str>>,
    /// Keep the connection after the answer.
    pub keep_alive: bool,
}

impl Packets {
    /// Queues a packet.
    pub fn push(&mut self, packet: Bytes) {
        self.bytes += packet.len();
        self.queue.push_back(packet);
    }

    /// Queues a broadcast's packet (sharing its buffer), noting its id during a takeover.
    pub fn push_broadcast(&mut self, broadcast: &Broadcast) {
        if let Some(seen) = &mut self.seen {
            seen.push(broadcast.id);
        }
        self.push(broadcast.packet.clone());
    }

    /// Bytes waiting.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Takes every packet, in order.
    pub fn take(&mut self) -> VecDeque<Bytes> {
        self.bytes = 0;
        std::mem::take(&mut self.queue)
    }
}

impl HeldGet {
    /// Answers the GET with `body` (packets joined by the record separator).
    pub fn answer(self, core: &mut Core, body: &[u8]) {
        let response = polling::response(
            200,
            TEXT_PLAIN,
            body,
            self.keep_alive,
            self.origin.as_deref(),
        );
        let command = PollCommand::Respond {
            to: self.from,
            response,
            keep_alive: self.keep_alive,
        };
        core.send_poll(self.from.shard, command);
    }
}

/// Answers a request of connection `to`, wherever it is, with an Engine.IO error; the
/// connection closes after it.
pub fn refuse(core: &mut Core, to: ConnectionId, code: u8, message: &str, origin: Option<&str>) {
    let response = polling::engine_error(code, message, origin);
    let command = PollCommand::Respond {
        to,
        response,
        keep_alive: false,
    };
    core.send_poll(to.shard, command);
}

impl Polling {
    /// The handshake, on a connection of this shard: a new session with the GET held, to be
    /// answered with the open packet. Returns the session's key.
    pub fn open(
        &mut self,
        core: &mut Core,
        head: &RequestHead,
        peer: Option<std::net::IpAddr>,
        get: HeldGet,
        now: Instant,
    ) -> u32 {
        let mut credentials = Credentials::from_head(head, &core.shared.config.cors_origins);
        credentials.peer = peer;
        let sid = new_session_id(core.id);
        let session =
            Session::with_upgrades(now, sid.clone(), core.shared.config.engine, &["websocket"]);
        let index = self.sessions.insert(PollSession {
            generation: core.generation(),
            socket: Socket::new(session, credentials),
            packets: Packets::default(),
            get: Some(get),
            armed: None,
            dirty: false,
            probed: false,
            told: Vec::new(),
            stuck_since: None,
        }) as u32;
        self.sids.insert(sid.into_boxed_str(), index);
        index
    }

    /// How many sessions this shard owns.
    #[cfg(test)]
    pub fn count(&self) -> usize {
        self.sessions.len()
    }

    /// The key of session `sid`.
    pub fn find(&self, sid: &str) -> Option<u32> {
        self.sids.get(sid).copied()
    }

    /// Session `index`.
    pub fn session(&mut self, index: u32) -> Option<&mut PollSession> {
        self.sessions.get_mut(index as usize)
    }

    /// The generation of session `index`.
    pub fn generation(&self, index: u32) -> Option<u32> {
        self.sessions.get(index as usize).map(|p| p.generation)
    }

    /// The flush flag of session `index`.
    pub fn dirty(&mut self, index: u32) -> Option<&mut bool> {
        self.sessions.get_mut(index as usize).map(|p| &mut p.dirty)
    }

    /// Where replies to a session that moved to a WebSocket go now.
    pub fn moved_to(&self, id: ConnectionId) -> Option<ConnectionId> {
        let SocketRef::Poll(index) = id.slot else {
            return None;
        };
        self.moved.get(&(index, id.generation)).map(|(to, _)| *to)
    }

    /// Takes session `index` out of the table (it moves to a WebSocket's shard, whose new
    /// socket `to` gets the replies still addressed to it until `until`).
    pub fn hand_over(
        &mut self,
        core: &mut Core,
        index: u32,
        to: ConnectionId,
        until: Instant,
    ) -> PollSession {
        let p = self.sessions.remove(index as usize);
        self.sids.remove(p.socket.session.sid());
        self.moved.insert((index, p.generation), (to, until));
        core.timers.push(Due {
            at: until,
            socket: SocketRef::Poll(index),
            generation: p.generation,
        });
        p
    }

    /// Runs a chat handler on session `index` (see [`Socket::update`]), then settles what
    /// became of it.
    pub fn update(
        &mut self,
        core: &mut Core,
        index: u32,
        now: Instant,
        f: impl FnOnce(&mut Socket, &Core, ConnectionId, &mut Vec<Effect>),
    ) {
        let Some(p) = self.sessions.get_mut(index as usize) else {
            return;
        };
        let socket = SocketRef::Poll(index);
        let id = ConnectionId {
            shard: core.id,
            slot: socket,
            generation: p.generation,
        };
        let outlet = &mut Outlet::Polling(&mut p.packets);
        match p.socket.update(outlet, core, id, now, f) {
            Flow::Open => core.mark(socket, &mut p.dirty),
            Flow::Over => {
                core.slow_consumer(socket, p.packets.bytes());
                self.close(core, index, "slow consumer", now);
            }
            Flow::Ended => self.close(core, index, "client ended the session", now),
        }
    }

    /// The owner's side of a GET or POST of session `sid`, from connection `from`.
    #[allow(clippy::too_many_arguments)]
    pub fn request(
        &mut self,
        core: &mut Core,
        from: ConnectionId,
        sid: &str,
        body: Option<Bytes>,
        origin: Option<Box<str>>,
        keep_alive: bool,
        now: Instant,
    ) {
        let Some(index) = self.find(sid) else {
            refuse(core, from, 1, "Session ID unknown", origin.as_deref());
            return;
        };
        let p = &mut self.sessions[index as usize];
        let Some(body) = body else {
            if p.get.is_some() {
                // The reference server closes the session on an overlapping GET: two
                // pollers would each get part of the packets.
                let message =
                    "Bad request: overlapping GET requests; a session polls with one GET at a time";
                refuse(core, from, 3, message, origin.as_deref());
                core.metrics().protocol_errors.fetch_add(1, Relaxed);
                self.close(core, index, "overlapping GET", now);
                return;
            }
            p.get = Some(HeldGet {
                from,
                origin,
                keep_alive,
            });
            core.mark(SocketRef::Poll(index), &mut p.dirty);
            return;
        };
        let failure = match std::str::from_utf8(&body) {
            Err(_) => Some("the POST body is not UTF-8 text".to_string()),
            Ok(text) => polling::split_payload(text)
                .find_map(|packet| p.socket.session.handle_text(now, packet).err())
                .map(|e| e.to_string()),
        };
        if let Some(reason) = failure {
            core.metrics().protocol_errors.fetch_add(1, Relaxed);
            let message = format!("Bad request: {reason}");
            refuse(core, from, 3, &message, origin.as_deref());
            self.update(core, index, now, |_, _, _, _| {});
            self.close(core, index, "bad POST", now);
            return;
        }
        let response = polling::response(200, TEXT_PLAIN, b"ok", keep_alive, origin.as_deref());
        let command = PollCommand::Respond {
            to: from,
            response,
            keep_alive,
        };
        core.send_poll(from.shard, command);
        self.update(core, index, now, |_, _, _, _| {});
    }

    /// The end of a turn for session `index`: answers its held GET when there is something
    /// to send (or the session is probed: then a `6` noop releases the poll), and arms its
    /// next deadline.
    pub fn flush(&mut self, core: &mut Core, index: u32, now: Instant) {
        let Some(p) = self.sessions.get_mut(index as usize) else {
            return;
        };
        p.dirty = false;
        let limits = core.limits;
        if p.packets.bytes() <= limits.outbound || p.get.is_some() {
            p.stuck_since = None;
        } else if p
            .stuck_since
            .is_some_and(|since| now >= since + limits.grace)
        {
            // Over the bound, and no GET came for the whole grace period.
            core.slow_consumer(SocketRef::Poll(index), p.packets.bytes());
            self.close(core, index, "slow consumer", now);
            return;
        } else {
            p.stuck_since.get_or_insert(now);
        }
        if p.get.is_some() && (p.packets.bytes() > 0 || p.probed) {
            let get = p.get.take().expect("checked just above");
            let packets = p.packets.take();
            let body = if packets.is_empty() {
                b"6".to_vec()
            } else {
                polling::join_payload(&packets)
            };
            let m = core.metrics();
            m.frames_out.fetch_add(packets.len() as u64, Relaxed);
            m.bytes_out.fetch_add(body.len() as u64, Relaxed);
            get.answer(core, &body);
        }
        let stuck = p.stuck_since.map(|since| since + limits.grace);
        let next = super::timers::earliest(p.socket.deadline(), stuck);
        let socket = SocketRef::Poll(index);
        core.timers.arm(&mut p.armed, next, socket, p.generation);
    }

    /// A deadline of session `index` came; returns whether it is the session's own (to
    /// ping, or drop a client that stopped polling). Forgets where a moved session went once
    /// store replies for it can no longer come.
    pub fn timeout(&mut self, core: &mut Core, index: u32, due: Due, now: Instant) -> bool {
        match self.sessions.get_mut(index as usize) {
            Some(p) if p.generation == due.generation => {
                if p.armed != Some(due.at) {
                    return false;
                }
                p.armed = None;
                core.mark(SocketRef::Poll(index), &mut p.dirty);
                true
            }
            _ => {
                let key = (index, due.generation);
                if self.moved.get(&key).is_some_and(|(_, until)| *until <= now) {
                    self.moved.remove(&key);
                }
                false
            }
        }
    }

    /// Ends session `index`: a held GET gets what is queued and the close packet `1`.
    pub fn close(&mut self, core: &mut Core, index: u32, why: &'static str, now: Instant) {
        let Some(mut p) = self.sessions.try_remove(index as usize) else {
            return;
        };
        self.sids.remove(p.socket.session.sid());
        tracing::trace!(index, why, "polling session closed");
        if let Some(get) = p.get.take() {
            p.packets.push(Bytes::from_static(b"1"));
            get.answer(core, &polling::join_payload(&p.packets.take()));
        }
        super::socket::gone(core, SocketRef::Poll(index), p.socket.auth, now);
    }

    /// Every session's socket.
    pub fn sockets(&self) -> impl Iterator<Item = &Socket> + '_ {
        self.sessions.iter().map(|(_, p)| &p.socket)
    }

    /// Closes every session (shutdown).
    pub fn close_all(&mut self, core: &mut Core, now: Instant) {
        let all: Vec<u32> = self.sessions.iter().map(|(k, _)| k as u32).collect();
        for index in all {
            self.close(core, index, "shutdown", now);
        }
    }
}
