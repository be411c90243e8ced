//! The upgrade from long-polling to WebSocket. Connections never change shards, sessions
//! may: the WebSocket stays where it was accepted and the session comes to it. The
//! WebSocket's side goes through the [`Step`]s of [`Upgrading`]; the owner's side is a few
//! fields of its `PollSession`.
//!
//! 1. `transport=websocket&sid=…` arrives ([`start`], `Step::Asked`): ask the owner
//!    ([`PollCommand::Upgrade`]); it answers with the session's rooms
//!    ([`PollCommand::Upgradable`]), and only then is the `101` sent ("Session ID unknown"
//!    otherwise). This shard joins those rooms for the connection at once and keeps what
//!    they broadcast aside (`Upgrading::shadow`).
//! 2. `Step::Probing`: `2probe` → `3probe`, and the owner is told ([`PollCommand::Probe`]):
//!    "the server \[sends\] a noop packet to the pending GET request to close it cleanly".
//! 3. `5` → `Step::Switching` and [`PollCommand::Switch`]: the owner leaves its rooms, and
//!    hands the session and the packets polling did not send over ([`PollCommand::Adopt`]).
//!    Store replies still addressed to the old session are forwarded here for a while.
//! 4. Adoption writes the handed packets, then the broadcasts the owner had not queued
//!    itself (the owner lists the ids of those it queued), so nothing is lost or repeated
//!    across the switch.

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::connection::{Connection, Phase};
use super::polling::Polling;
use super::socket::{self, Outlet, Socket};
use super::sockets::Sockets;
use super::{http, ws, Core};
use crate::chat::Auth;
use crate::ids::{ConnectionId, Room, ShardId, SocketRef};
use crate::mesh::{Broadcast, BroadcastId, Except, Handover, PollCommand};
use crate::protocol::polling;
use crate::transport::websocket::{self, Opcode};

/// Time the client has to finish an upgrade (the reference server's `upgradeTimeout`).
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);

/// A WebSocket opened with the `sid` of a long-polling session, until the session is
/// handed to it. The session lives on `owner` meanwhile.
#[derive(Debug)]
pub struct Upgrading {
    /// The session's id.
    pub sid: Box<str>,
    /// The shard that owns the session.
    pub owner: ShardId,
    /// Give up (close) if the upgrade is not done by then.
    pub deadline: Instant,
    /// Where the upgrade stands.
    pub step: Step,
    /// Rooms joined in this shard's hub for this connection while upgrading.
    pub rooms: Vec<Room>,
    /// Broadcasts to those rooms received meanwhile, merged in at adoption (when the
    /// socket's user is known, for `Except::User`).
    pub shadow: Vec<Arc<Broadcast>>,
}

/// The steps of an upgrade, on the WebSocket's side.
#[derive(Debug)]
pub enum Step {
    /// The owner is asked whether the session exists; the `101` answer waits here.
    Asked {
        /// The `101` answer.
        handshake: Vec<u8>,
    },
    /// The `101` is out: the client probes (`2probe`) and switches (`5`).
    Probing,
    /// The client sent `5`: its next frames belong to the session, so they wait for it.
    Switching,
}

/// A WebSocket opened with the `sid` of a session of `owner`, on connection `key`.
pub fn start(
    conn: &mut Connection,
    core: &mut Core,
    key: u32,
    owner: ShardId,
    websocket_key: &str,
    sid: String,
    now: Instant,
) {
    let from = ConnectionId {
        shard: core.id,
        slot: SocketRef::Conn(key),
        generation: conn.generation,
    };
    conn.phase = Phase::Upgrading(Box::new(Upgrading {
        sid: sid.as_str().into(),
        owner,
        deadline: now + UPGRADE_TIMEOUT,
        step: Step::Asked {
            handshake: crate::protocol::http::websocket_accept(websocket_key),
        },
        rooms: Vec::new(),
        shadow: Vec::new(),
    }));
    core.mark(SocketRef::Conn(key), &mut conn.dirty);
    core.send_poll(owner, PollCommand::Upgrade(from, sid));
}

/// Owner: may `sid` be taken over? Answers with its rooms, and from now on notes what it
/// queues for it.
pub fn asked(polls: &mut Polling, core: &mut Core, from: ConnectionId, sid: &str) {
    let rooms = polls.find(sid).and_then(|i| polls.session(i)).map(|p| {
        p.packets.seen.get_or_insert_with(Vec::new);
        p.told = rooms_of(&p.socket.auth).to_vec();
        p.told.clone()
    });
    core.send_poll(from.shard, PollCommand::Upgradable(from, rooms));
}

/// WebSocket side: the owner answered the upgrade request, or told of rooms the session
/// joined since.
pub fn upgradable(
    sockets: &mut Sockets,
    core: &mut Core,
    to: ConnectionId,
    rooms: Option<Vec<Room>>,
    now: Instant,
) {
    let Some(SocketRef::Conn(key)) = sockets.find(to) else {
        return;
    };
    let conn = &mut sockets.conns[key as usize];
    let Phase::Upgrading(up) = &mut conn.phase else {
        return;
    };
    let socket = SocketRef::Conn(key);
    let Some(rooms) = rooms else {
        if !matches!(up.step, Step::Asked { .. }) {
            let reason = "the session ended during the upgrade";
            ws::fail(conn, core, key, 1008, reason, now);
            return;
        }
        conn.phase = Phase::Http {
            deadline: now,
            waiting: false,
            keep_alive: false,
        };
        let bytes = polling::engine_error(1, "Session ID unknown", None);
        http::respond(conn, core, key, bytes, false, now);
        return;
    };
    match &mut up.step {
        Step::Asked { handshake } => {
            let handshake = std::mem::take(handshake);
            up.step = Step::Probing;
            for room in &rooms {
                core.hub.join(*room, socket);
            }
            up.rooms = rooms;
            conn.out.queue(handshake.into(), core.metrics());
            core.mark(socket, &mut conn.dirty);
            core.resume.push(key);
        }
        step => {
            // The session joined rooms meanwhile (its CONNECT completed, or a room:join):
            // join them too, then ask for the session again.
            let switching = matches!(step, Step::Switching);
            for room in rooms {
                if !up.rooms.contains(&room) {
                    core.hub.join(room, socket);
                    up.rooms.push(room);
                }
            }
            if switching {
                core.send_poll(up.owner, PollCommand::Switch(to, up.sid.to_string()));
            }
        }
    }
}

/// A WebSocket frame while probing: `2probe` and `5` are all the client may send.
pub fn input(
    sockets: &mut Sockets,
    core: &mut Core,
    key: u32,
    buf: &mut [u8],
    now: Instant,
) -> usize {
    let max = core.shared.config.engine.max_payload;
    let conn = &mut sockets.conns[key as usize];
    let (frame, used) = match websocket::decode(buf, max) {
        Ok(None) => return 0,
        Ok(Some(found)) => found,
        Err(e) => {
            ws::fail(conn, core, key, e.code, &e.reason, now);
            return buf.len();
        }
    };
    let payload = &buf[frame.payload.clone()];
    let from = ConnectionId {
        shard: core.id,
        slot: SocketRef::Conn(key),
        generation: conn.generation,
    };
    let Phase::Upgrading(up) = &mut conn.phase else {
        return used;
    };
    match frame.opcode {
        Opcode::Text if frame.fin && payload == b"2probe" => {
            let command = PollCommand::Probe(up.sid.to_string());
            core.send_poll(up.owner, command);
            conn.out.queue(websocket::text(b"3probe"), core.metrics());
            core.mark(SocketRef::Conn(key), &mut conn.dirty);
        }
        Opcode::Text if frame.fin && payload == b"5" && core.shutdown.is_some() => {
            // The client now listens on this WebSocket; the session is closing anyway.
            let close = websocket::close(1001, "server shutting down");
            conn.out.queue(close, core.metrics());
            conn.close_after_flush(now, "shutdown");
            core.mark(SocketRef::Conn(key), &mut conn.dirty);
        }
        Opcode::Text if frame.fin && payload == b"5" => {
            up.step = Step::Switching;
            core.send_poll(up.owner, PollCommand::Switch(from, up.sid.to_string()));
        }
        Opcode::Ping | Opcode::Pong | Opcode::Close => {
            ws::control(conn, core, key, frame.opcode, payload, now)
        }
        _ => {
            let reason = "only 2probe and 5 are expected while upgrading";
            ws::fail(conn, core, key, 1008, reason, now);
        }
    }
    used
}

/// Owner: the client probed the WebSocket; a held GET is released (with `6`).
pub fn probed(polls: &mut Polling, core: &mut Core, sid: &str) {
    let Some(index) = polls.find(sid) else {
        return;
    };
    if let Some(p) = polls.session(index) {
        p.probed = true;
        core.mark(SocketRef::Poll(index), &mut p.dirty);
    }
}

/// Owner: the WebSocket closed before the switch; polling goes on as before.
pub fn cancelled(polls: &mut Polling, sid: &str) {
    if let Some(p) = polls.find(sid).and_then(|i| polls.session(i)) {
        p.probed = false;
        p.packets.seen = None;
    }
}

/// Owner: the client switched; hand the session to the WebSocket's shard.
pub fn switch(polls: &mut Polling, core: &mut Core, from: ConnectionId, sid: &str, now: Instant) {
    let Some(index) = polls.find(sid) else {
        core.send_poll(from.shard, PollCommand::Adopt(from, None));
        return;
    };
    let Some(p) = polls.session(index) else {
        return;
    };
    let current = rooms_of(&p.socket.auth);
    if current.iter().any(|room| !p.told.contains(room)) {
        // The WebSocket's shard must be in every room before the session leaves these,
        // or a broadcast between the two could be missed or doubled.
        p.told = current.to_vec();
        let command = PollCommand::Upgradable(from, Some(p.told.clone()));
        core.send_poll(from.shard, command);
        return;
    }
    // Store replies may still come for the old session: forward them until no request
    // can be outstanding (the client would have timed out by then).
    let engine = core.shared.config.engine;
    let until = now + engine.ping_interval + engine.ping_timeout;
    let mut p = polls.hand_over(core, index, from, until);
    if let Some(get) = p.get.take() {
        // The client paused polling before `5`; a poll still held is released empty, and
        // its packets go over the WebSocket.
        get.answer(core, b"6");
    }
    if let Auth::Connected(member) = &p.socket.auth {
        for room in &member.rooms {
            core.hub.leave(*room, SocketRef::Poll(index));
        }
        core.metrics().sockets.fetch_sub(1, Relaxed);
    }
    let handover = Handover {
        session: p.socket.session,
        auth: p.socket.auth,
        packets: p.packets.take(),
        seen: p.packets.seen.take().unwrap_or_default(),
        newest: core.recovery.newest(),
    };
    core.send_poll(
        from.shard,
        PollCommand::Adopt(from, Some(Box::new(handover))),
    );
}

/// WebSocket side: the session arrived (or `None`: it ended meanwhile).
pub fn adopt(
    sockets: &mut Sockets,
    core: &mut Core,
    to: ConnectionId,
    handover: Option<Box<Handover>>,
    now: Instant,
) {
    let Some(SocketRef::Conn(key)) = sockets.find(to) else {
        return;
    };
    let conn = &mut sockets.conns[key as usize];
    let Some(handover) = handover else {
        ws::fail(
            conn,
            core,
            key,
            1008,
            "the session ended during the upgrade",
            now,
        );
        return;
    };
    let Connection {
        phase,
        out,
        delivered_through,
        ..
    } = conn;
    let Phase::Upgrading(up) = phase else {
        return;
    };
    let Handover {
        session,
        auth,
        packets,
        seen,
        newest,
    } = *handover;
    let socket = SocketRef::Conn(key);
    let target = rooms_of(&auth);
    for room in &up.rooms {
        if !target.contains(room) {
            core.hub.leave(*room, socket);
        }
    }
    for room in target {
        core.hub.join(*room, socket);
    }
    let user = match &auth {
        Auth::Connected(member) => {
            core.metrics().sockets.fetch_add(1, Relaxed);
            Some(member.user.id)
        }
        _ => None,
    };
    // Everything the owner queued since the upgrade began, sent by polling or not.
    let had: HashSet<BroadcastId> = seen.into_iter().collect();
    for packet in &packets {
        out.queue(websocket::text(packet), core.metrics());
    }
    let mut outlet = Outlet::WebSocket(out);
    // Durable events come from this shard's log, by offset: the owner delivered every one
    // up to `newest`, and this shard may have handled a later one before it joined the
    // rooms, so the shadow alone could miss it. Whatever this shard has not handled yet
    // arrives live, now that the session is in its rooms here.
    let replayable = core.recovery.can_replay(newest);
    if replayable {
        socket::replay(&mut outlet, core, newest, target, |id| had.contains(&id));
    }
    let (mut count, mut framed) = (0, 0);
    for broadcast in std::mem::take(&mut up.shadow) {
        let replayed = broadcast.offset.is_some() && replayable;
        let skipped = matches!(broadcast.except, Except::User(u) if Some(u) == user);
        if !replayed && !skipped && !had.contains(&broadcast.id) {
            framed += outlet.broadcast(&broadcast, &mut None);
            count += 1;
        }
    }
    let m = core.metrics();
    m.frames_out.fetch_add(count, Relaxed);
    m.queued_bytes.fetch_add(framed as i64, Relaxed);
    // If this shard is behind the owner, durable events up to the owner's newest will
    // still come through this shard's inbox: the owner delivered them already.
    *delivered_through = newest;
    *phase = Phase::Socket(Box::new(Socket {
        session,
        auth,
        fragment: None,
        cut: false,
    }));
    sockets.drive(core, socket, now);
    core.resume.push(key);
}

/// A connection still upgrading closed: leave the rooms joined for it and let polling go on.
pub fn closed(core: &mut Core, key: u32, up: Upgrading) {
    for room in up.rooms {
        core.hub.leave(room, SocketRef::Conn(key));
    }
    if matches!(up.step, Step::Probing) {
        core.send_poll(up.owner, PollCommand::Cancel(up.sid.into_string()));
    }
}

/// The rooms a socket is in (none before it is connected).
fn rooms_of(auth: &Auth) -> &[Room] {
    match auth {
        Auth::Connected(member) => &member.rooms,
        _ => &[],
    }
}
