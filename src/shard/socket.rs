//! A socket, whichever transport carries it: its Socket.IO state ([`Socket`]) and where its
//! packets leave ([`Outlet`]: a WebSocket connection's outbound queue, as frames, or a
//! polling session's queue, which its held GET takes). Driving a socket (moving its packets
//! out, handing what the client did to `chat`, carrying out the effects), delivering a
//! broadcast to the members of a room ([`deliver`], the hot path of a fan-out) and
//! replaying missed broadcasts ([`replay`]) are each written once here, for both
//! transports.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use bytes::Bytes;
use serde_json::Value;

use std::sync::Arc;

use super::connection::{Outbound, Phase};
use super::polling::Packets;
use super::sockets::Sockets;
use super::timers::earliest;
use super::Core;
use crate::chat::{self, connect, Auth, Context, Credentials, Detached, Effect};
use crate::ids::{new_session_id, pid_shard, ConnectionId, Room, ShardId, SocketRef, UserId};
use crate::mesh::{Broadcast, BroadcastId, Except, ShardCommand, StoreCommand};
use crate::metrics::ShardMetrics;
use crate::protocol::{Session, SessionEvent};
use crate::transport::websocket;

/// A socket's Socket.IO state, the same on a WebSocket connection and a polling session.
#[derive(Debug)]
pub struct Socket {
    /// Engine.IO / Socket.IO state machine.
    pub session: Session,
    /// Where authentication stands, and who it is once connected (chat's state).
    pub auth: Auth,
    /// A fragmented WebSocket message being reassembled (rare: socket.io-client sends whole
    /// frames). Always `None` on a polling session.
    pub fragment: Option<Vec<u8>>,
    /// Chat cut the socket (`Effect::Cut`): write what is queued, then close.
    pub cut: bool,
}

/// Where a socket's packets leave.
pub enum Outlet<'a> {
    /// A WebSocket connection's outbound queue: each packet as a frame, written at the end
    /// of the turn.
    WebSocket(&'a mut Outbound),
    /// A polling session's queue: packets, taken by its held (or next) GET.
    Polling(&'a mut Packets),
}

/// What became of a socket after it was driven.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// It goes on.
    Open,
    /// Its queue passed the hard bound: a client that does not read, dropped at once.
    Over,
    /// The client ended it: write what is queued, then close.
    Ended,
}

/// Why a socket is closed, and so how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// Drop it at once, without writing what is queued.
    Now(&'static str),
    /// Write what is queued, then drop it.
    AfterFlush(&'static str),
}

impl Socket {
    /// A socket that has not sent its CONNECT yet; `credentials` are what its upgrade or
    /// handshake request carried.
    pub fn new(session: Session, credentials: Credentials) -> Self {
        Socket {
            session,
            auth: Auth::Pending(credentials),
            fragment: None,
            cut: false,
        }
    }

    /// The authenticated user, if any.
    pub fn user(&self) -> Option<UserId> {
        match &self.auth {
            Auth::Connected(member) => Some(member.user.id),
            _ => None,
        }
    }

    /// When the socket must be looked at next: the session's heartbeat or CONNECT deadline,
    /// or a typing indicator running out.
    pub fn deadline(&self) -> Option<Instant> {
        let typing = match &self.auth {
            Auth::Connected(member) => member.chat.poll_timeout(),
            _ => None,
        };
        earliest(self.session.poll_timeout(), typing)
    }

    /// Runs `f` (a chat handler, given the socket, the shard and the socket's id), carries
    /// out the effects it returns, then drives the socket.
    pub fn update(
        &mut self,
        outlet: &mut Outlet<'_>,
        core: &mut Core,
        id: ConnectionId,
        now: Instant,
        f: impl FnOnce(&mut Socket, &Core, ConnectionId, &mut Vec<Effect>),
    ) -> Flow {
        let mut effects = Vec::new();
        f(self, core, id, &mut effects);
        self.apply(outlet, core, id, effects, now);
        self.drive(outlet, core, id, now)
    }

    /// Moves the session's packets to `outlet` and hands what the client did to `chat`,
    /// until neither has more.
    pub fn drive(
        &mut self,
        outlet: &mut Outlet<'_>,
        core: &mut Core,
        id: ConnectionId,
        now: Instant,
    ) -> Flow {
        let max = core.limits.outbound_hard;
        loop {
            while let Some(text) = self.session.poll_transmit() {
                outlet.packet(text, core.metrics());
            }
            if outlet.bytes() > max {
                return Flow::Over;
            }
            if self.cut {
                return Flow::Ended;
            }
            let Some(event) = self.session.poll_event() else {
                return Flow::Open;
            };
            let mut effects = Vec::new();
            match event {
                SessionEvent::Connect { .. } if !self.connect_allowed(core, now) => {}
                SessionEvent::Connect { auth, pid, offset } => connect::connect(
                    id,
                    &core.shared.jwt,
                    &core.shared.config.limits.events,
                    core.recovery.enabled(),
                    &mut self.auth,
                    auth,
                    pid,
                    offset,
                    &mut effects,
                ),
                SessionEvent::Event { name, args, ack } => {
                    core.metrics().events_in.fetch_add(1, Relaxed);
                    self.event(core, id, &name, args, ack, now, &mut effects);
                }
                SessionEvent::Closed { reason } => {
                    tracing::trace!(?id, reason = reason.as_str(), "client ended the session");
                    connect::client_closed(&mut self.auth, reason);
                    return Flow::Ended;
                }
            }
            self.apply(outlet, core, id, effects, now);
        }
    }

    /// Whether the gate lets this socket's address try a CONNECT now; if not, the CONNECT
    /// is refused with the reason. Only a CONNECT that would be checked is counted.
    fn connect_allowed(&mut self, core: &Core, now: Instant) -> bool {
        let Auth::Pending(credentials) = &self.auth else {
            return true;
        };
        let Some(ip) = credentials.peer else {
            return true;
        };
        match core.shared.gate.connect_attempt(ip, now) {
            Ok(()) => true,
            Err(refusal) => {
                core.metrics().auth_failures.fetch_add(1, Relaxed);
                self.session.refuse(&refusal.0);
                false
            }
        }
    }

    /// A client event, for `chat` to handle.
    #[allow(clippy::too_many_arguments)]
    fn event(
        &mut self,
        core: &Core,
        id: ConnectionId,
        name: &str,
        args: Vec<Value>,
        ack: Option<u64>,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        let Auth::Connected(member) = &mut self.auth else {
            let reason = "not connected: send CONNECT and wait for it to be accepted";
            chat::refuse(ack, reason, out);
            return;
        };
        if member.removed {
            let reason = format!(
                "{} {}; nothing more can be done on this socket",
                connect::REMOVED,
                member.workspace
            );
            // Told once when it was removed; only acks are answered from then on.
            if ack.is_some() {
                chat::refuse(ack, &reason, out);
            }
            return;
        }
        let hub = &core.hub;
        let in_room = |room: Room| hub.contains(&room, id.slot);
        let ctx = Context {
            conn: id,
            user: &member.user,
            workspace: member.workspace,
            max_message_chars: core.shared.config.max_message_chars,
            budgets: &core.shared.config.limits.events,
            now,
            in_room: &in_room,
        };
        chat::handle_event(&ctx, &mut member.chat, name, args, ack, out);
    }

    /// Carries out a chat handler's effects for this socket.
    fn apply(
        &mut self,
        outlet: &mut Outlet<'_>,
        core: &mut Core,
        id: ConnectionId,
        effects: Vec<Effect>,
        now: Instant,
    ) {
        let socket = id.slot;
        for effect in effects {
            match effect {
                Effect::Ack(ack, data) => self.session.ack(ack, &data),
                Effect::Emit(name, data) => self.session.emit(name, &data),
                Effect::Store(command) => {
                    if let Some(ack) = client_request(&command) {
                        if let Some(why) = core.mesh.congested(now) {
                            // Bounded inboxes: the client is told, and may try again.
                            tracing::debug!(?id, reason = why, "request refused");
                            core.metrics().requests_busy.fetch_add(1, Relaxed);
                            let mut refusal = Vec::new();
                            chat::refuse(ack, &why, &mut refusal);
                            self.apply(outlet, core, id, refusal, now);
                            continue;
                        }
                    }
                    // The store only goes away at shutdown; the client's ack then times out.
                    core.mesh.store.send(command);
                }
                Effect::Publish(publication) => core.mesh.broker.publish(publication),
                Effect::TypingRefresh(publication) => core.mesh.broker.typing_refresh(publication),
                Effect::Presence(command) => core.mesh.broker.presence(command),
                Effect::Join(room) => {
                    if let Auth::Connected(member) = &mut self.auth {
                        if core.hub.join(room, socket) {
                            member.rooms.push(room);
                        }
                    }
                }
                Effect::Leave(room) => {
                    if let Auth::Connected(member) = &mut self.auth {
                        if core.hub.leave(room, socket) {
                            member.rooms.retain(|r| *r != room);
                        }
                    }
                }
                Effect::Refuse(reason) => {
                    core.metrics().auth_failures.fetch_add(1, Relaxed);
                    self.session.refuse(&reason);
                }
                Effect::Accept { pid, recovery } => {
                    self.session
                        .accept(&new_session_id(core.id), pid.as_deref());
                    core.metrics().sockets.fetch_add(1, Relaxed);
                    if let Some(recovery) = recovery {
                        core.metrics().recovery(recovery);
                    }
                }
                Effect::Recover(pid) => match pid_shard(&pid, core.mesh.shards.len()) {
                    Some(owner) => core.send_to(owner, ShardCommand::Recover { pid, to: id }),
                    // A pid this node never made (another node, or a restart): a new session.
                    None => core.send_to(core.id, ShardCommand::new_session(id)),
                },
                Effect::RecoverFrom {
                    node,
                    pid,
                    offset,
                    user,
                    workspace,
                    rooms,
                } => {
                    let ask = crate::mesh::RecoverAsk {
                        to: id,
                        node,
                        pid,
                        offset,
                        user,
                        workspace,
                        rooms,
                    };
                    if !core.mesh.broker.recover(ask) {
                        // Not a cluster after all: a new session.
                        core.send_to(core.id, ShardCommand::new_session(id));
                    }
                }
                Effect::Replay(after) => {
                    // The CONNECT answer goes out before any replayed event.
                    while let Some(text) = self.session.poll_transmit() {
                        outlet.packet(text, core.metrics());
                    }
                    if let Auth::Connected(member) = &self.auth {
                        replay(outlet, core, after, &member.rooms, |_| false);
                    }
                }
                Effect::ReplayPackets(packets) => {
                    while let Some(text) = self.session.poll_transmit() {
                        outlet.packet(text, core.metrics());
                    }
                    for packet in packets {
                        outlet.raw(packet, core.metrics());
                    }
                }
                Effect::Detach(pid, session) => detach(core, pid, session, now),
                Effect::Cut(reason) => {
                    core.metrics().clients_cut.fetch_add(1, Relaxed);
                    tracing::info!(?id, user = ?self.user(), "{reason}");
                    self.session
                        .emit("error", &serde_json::json!({"message": reason}));
                    self.session.disconnect();
                    self.cut = true;
                }
            }
        }
    }
}

impl Outlet<'_> {
    /// Queues a packet the session made (an ack, an emit, a ping, the CONNECT answer).
    pub fn packet(&mut self, text: String, metrics: &ShardMetrics) {
        match self {
            Outlet::WebSocket(out) => out.queue(websocket::text(text.as_bytes()), metrics),
            Outlet::Polling(packets) => packets.push(Bytes::from(text)),
        }
    }

    /// Queues a packet made elsewhere (a replay read by the broker).
    pub fn raw(&mut self, packet: Bytes, metrics: &ShardMetrics) {
        match self {
            Outlet::WebSocket(out) => out.queue(websocket::text(&packet), metrics),
            Outlet::Polling(packets) => packets.push(packet),
        }
    }

    /// Queues a broadcast: on a WebSocket its frame (made on first use and kept in `frame`
    /// for the next WebSocket), on a polling session its packet. Returns the bytes queued on
    /// a WebSocket, which the caller counts (in bulk for a delivery to a whole room).
    #[inline]
    pub fn broadcast(&mut self, broadcast: &Broadcast, frame: &mut Option<Bytes>) -> usize {
        match self {
            Outlet::WebSocket(out) => {
                let frame = frame.get_or_insert_with(|| websocket::text(&broadcast.packet));
                out.push(frame.clone());
                frame.len()
            }
            Outlet::Polling(packets) => {
                packets.push_broadcast(broadcast);
                0
            }
        }
    }

    /// Bytes waiting to leave.
    pub fn bytes(&self) -> usize {
        match self {
            Outlet::WebSocket(out) => out.bytes(),
            Outlet::Polling(packets) => packets.bytes(),
        }
    }
}

/// Queues a broadcast on every local member of its room: each WebSocket gets the frame
/// this shard makes once, each polling session the packet. Members whose queue passes
/// the hard bound are dropped afterwards (those over the soft bound get a grace period, see
/// `Connection::stuck`). The hot path of a fan-out.
pub fn deliver(sockets: &mut Sockets, core: &mut Core, broadcast: &Arc<Broadcast>, now: Instant) {
    core.recovery.remember(now, broadcast);
    let max = core.limits.outbound_hard;
    let mut frame: Option<Bytes> = None;
    let (mut delivered, mut framed) = (0u64, 0usize);
    let mut over = Vec::new();
    for socket in core.hub.members(&broadcast.room) {
        match socket {
            SocketRef::Conn(key) => {
                let Some(conn) = sockets.conns.get_mut(key as usize) else {
                    continue;
                };
                let user = || match &conn.phase {
                    Phase::Socket(ws) => ws.user(),
                    _ => None,
                };
                if conn.closing.is_some()
                    || is_except(broadcast, core.id, socket, conn.generation, user)
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
                framed += Outlet::WebSocket(&mut conn.out).broadcast(broadcast, &mut frame);
                if !conn.dirty {
                    conn.dirty = true;
                    core.dirty.push(socket);
                }
                if conn.out.bytes() > max {
                    over.push(socket);
                }
            }
            SocketRef::Poll(index) => {
                let Some(p) = sockets.polls.session(index) else {
                    continue;
                };
                if is_except(broadcast, core.id, socket, p.generation, || p.socket.user()) {
                    continue;
                }
                Outlet::Polling(&mut p.packets).broadcast(broadcast, &mut frame);
                if !p.dirty {
                    p.dirty = true;
                    core.dirty.push(socket);
                }
                if p.packets.bytes() > max {
                    over.push(socket);
                }
            }
        }
        delivered += 1;
    }
    let m = core.metrics();
    m.deliveries.fetch_add(delivered, Relaxed);
    m.frames_out.fetch_add(delivered, Relaxed);
    m.queued_bytes.fetch_add(framed as i64, Relaxed);
    for socket in over {
        sockets.slow_consumer(core, socket, now);
    }
}

/// Queues on `outlet`, in order, the durable broadcasts after offset `after` to any of
/// `rooms`, but those `skip` names.
pub fn replay(
    outlet: &mut Outlet<'_>,
    core: &Core,
    after: u64,
    rooms: &[Room],
    skip: impl Fn(BroadcastId) -> bool,
) {
    let (mut count, mut framed) = (0, 0);
    for broadcast in core.recovery.replay(after, rooms) {
        if !skip(broadcast.id) {
            framed += outlet.broadcast(broadcast, &mut None);
            count += 1;
        }
    }
    if framed > 0 {
        let m = core.metrics();
        m.frames_out.fetch_add(count, Relaxed);
        m.queued_bytes.fetch_add(framed as i64, Relaxed);
    }
}

/// The ack id of a client event's request to the store (`None` for CONNECT's check, which
/// is not refused for load).
fn client_request(command: &StoreCommand) -> Option<Option<u64>> {
    match command {
        StoreCommand::Send { ack, .. }
        | StoreCommand::Delete { ack, .. }
        | StoreCommand::History { ack, .. }
        | StoreCommand::CheckMember { ack, .. } => Some(*ack),
        _ => None,
    }
}

/// Whether a broadcast skips socket `socket` of shard `shard`. `user` is asked only for
/// `Except::User`, so the common case touches no socket state.
#[inline]
fn is_except(
    broadcast: &Broadcast,
    shard: ShardId,
    socket: SocketRef,
    generation: u32,
    user: impl FnOnce() -> Option<UserId>,
) -> bool {
    match broadcast.except {
        Except::Nobody => false,
        Except::Connection(e) => e.shard == shard && e.slot == socket && e.generation == generation,
        Except::User(except) => user() == Some(except),
    }
}

/// A socket is gone (its connection closed, its polling session ended, or its session moved
/// away): it leaves its rooms here, and chat says what else ends with it.
pub fn gone(core: &mut Core, socket: SocketRef, auth: Auth, now: Instant) {
    let Auth::Connected(member) = &auth else {
        return;
    };
    for room in &member.rooms {
        core.hub.leave(*room, socket);
    }
    core.metrics().sockets.fetch_sub(1, Relaxed);
    let mut effects = Vec::new();
    connect::gone(auth, &mut effects);
    for effect in effects {
        match effect {
            Effect::Publish(publication) => core.mesh.broker.publish(publication),
            Effect::Presence(command) => core.mesh.broker.presence(command),
            Effect::Detach(pid, session) => detach(core, pid, session, now),
            other => debug_assert!(false, "{other:?} for a socket that is gone"),
        }
    }
}

/// Keeps a session that went away for the recovery window, on the shard that made its pid
/// (a session that moved here with a WebSocket upgrade keeps the pid of its first shard,
/// where a reconnect will look for it).
fn detach(core: &mut Core, pid: Box<str>, session: Detached, now: Instant) {
    match pid_shard(&pid, core.mesh.shards.len()) {
        Some(owner) if owner != core.id => {
            core.send_to(owner, ShardCommand::Detach { pid, session })
        }
        _ => core.recovery.detach(now, pid, session),
    }
}
