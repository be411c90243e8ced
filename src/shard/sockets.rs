//! The shard's sockets, both kinds ([`Sockets`]): connections (keyed by mio token, in any
//! phase) and long-polling sessions. What reaches a socket by its [`SocketRef`] comes in
//! here (a store reply, a membership change, a deadline, a close) and is run on the
//! socket's [`Socket`] and [`Outlet`].

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use rustc_hash::FxHashMap;
use slab::Slab;

use super::connection::{Connection, Phase};
use super::polling::Polling;
use super::socket::{Close, Flow, Outlet, Socket};
use super::timers::Due;
use super::upgrade::Step;
use super::{http, Core};
use crate::chat::{self, connect, Auth, Detached, Effect};
use crate::ids::{ConnectionId, Room, SocketRef, UserId, WorkspaceId};
use crate::mesh::{ShardCommand, Standing, StoreReply};
use crate::model::MembershipChange;
use crate::transport::websocket;

/// The shard's sockets: its connections (keyed by mio token) and its polling sessions.
#[derive(Default)]
pub struct Sockets {
    /// Connections, in every phase.
    pub conns: Slab<Connection>,
    /// Long-polling sessions.
    pub polls: Polling,
}

impl Sockets {
    /// Which socket `id` names, if it is still the same one.
    pub fn find(&self, id: ConnectionId) -> Option<SocketRef> {
        let generation = match id.slot {
            SocketRef::Conn(key) => self.conns.get(key as usize).map(|c| c.generation),
            SocketRef::Poll(index) => self.polls.generation(index),
        };
        (generation == Some(id.generation)).then_some(id.slot)
    }

    /// Queues `socket` for the end-of-turn flush.
    pub fn mark(&mut self, core: &mut Core, socket: SocketRef) {
        let dirty = match socket {
            SocketRef::Conn(key) => self.conns.get_mut(key as usize).map(|c| &mut c.dirty),
            SocketRef::Poll(index) => self.polls.dirty(index),
        };
        if let Some(dirty) = dirty {
            core.mark(socket, dirty);
        }
    }

    /// Runs a chat handler on `socket` (see [`Socket::update`]), then settles what became
    /// of it.
    pub fn update(
        &mut self,
        core: &mut Core,
        socket: SocketRef,
        now: Instant,
        f: impl FnOnce(&mut Socket, &Core, ConnectionId, &mut Vec<Effect>),
    ) {
        let key = match socket {
            SocketRef::Poll(index) => return self.polls.update(core, index, now, f),
            SocketRef::Conn(key) => key,
        };
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        if conn.closing.is_some_and(|at| at <= now) {
            // Dropped at the end of this turn without its queue (a slow consumer, a reset):
            // nothing more is queued or handled for it.
            return;
        }
        let Connection {
            phase: Phase::Socket(ws),
            out,
            generation,
            dirty,
            ..
        } = conn
        else {
            return;
        };
        let id = ConnectionId {
            shard: core.id,
            slot: socket,
            generation: *generation,
        };
        match ws.update(&mut Outlet::WebSocket(out), core, id, now, f) {
            Flow::Open => core.mark(socket, dirty),
            Flow::Over => self.slow_consumer(core, socket, now),
            Flow::Ended => self.close(
                core,
                socket,
                Close::AfterFlush("client ended the session"),
                now,
            ),
        }
    }

    /// Drives `socket` after its session took input.
    pub fn drive(&mut self, core: &mut Core, socket: SocketRef, now: Instant) {
        self.update(core, socket, now, |_, _, _, _| {});
    }

    /// Closes `socket`: a connection at the end of this turn (after its queue is written,
    /// or not), a polling session at once (its held GET gets what is queued).
    pub fn close(&mut self, core: &mut Core, socket: SocketRef, how: Close, now: Instant) {
        match socket {
            SocketRef::Conn(key) => {
                let Some(conn) = self.conns.get_mut(key as usize) else {
                    return;
                };
                match how {
                    Close::Now(why) => conn.close_now(now, why),
                    Close::AfterFlush(why) => conn.close_after_flush(now, why),
                }
                core.mark(socket, &mut conn.dirty);
            }
            SocketRef::Poll(index) => {
                let (Close::Now(why) | Close::AfterFlush(why)) = how;
                self.polls.close(core, index, why, now);
            }
        }
    }

    /// Drops a client whose queue passed the bound; nobody else waits for it.
    pub fn slow_consumer(&mut self, core: &mut Core, socket: SocketRef, now: Instant) {
        let queued = match socket {
            SocketRef::Conn(key) => self.conns.get(key as usize).map(|c| c.out.bytes()),
            SocketRef::Poll(index) => self.polls.session(index).map(|p| p.packets.bytes()),
        };
        core.slow_consumer(socket, queued.unwrap_or(0));
        self.close(core, socket, Close::Now("slow consumer"), now);
    }

    /// A store (or presence) reply for one of this shard's sockets.
    pub fn reply(&mut self, core: &mut Core, to: ConnectionId, reply: StoreReply, now: Instant) {
        let Some(socket) = self.find(to) else {
            // A polling session that moved to a WebSocket: the reply follows it.
            if let Some(moved) = self.polls.moved_to(to) {
                core.send_to(moved.shard, ShardCommand::Reply(moved, reply));
            }
            return;
        };
        match (reply, socket) {
            (StoreReply::Admin { status, body }, SocketRef::Conn(key)) => {
                http::admin_answered(&mut self.conns, core, key, status, body, now)
            }
            (StoreReply::Admin { .. }, SocketRef::Poll(_)) => {}
            (StoreReply::Authenticated(result), _) => {
                self.update(core, socket, now, |s, core, _, out| {
                    core.admit(now, |adm| {
                        connect::authenticated(adm, &mut s.auth, result, out)
                    })
                })
            }
            (other, _) => self.update(core, socket, now, |s, core, _, out| {
                chat::handle_reply(&mut s.auth, other, core.limits.outbound / 4, out)
            }),
        }
    }

    /// The detached session a reconnected socket asked for (or `None`).
    pub fn recovered(
        &mut self,
        core: &mut Core,
        to: ConnectionId,
        session: Option<Detached>,
        replay: Option<Vec<bytes::Bytes>>,
        now: Instant,
    ) {
        let Some(socket) = self.find(to) else {
            // A polling session that moved to a WebSocket meanwhile (a recovery from another
            // node takes a few milliseconds): the answer follows it.
            if let Some(moved) = self.polls.moved_to(to) {
                let command = ShardCommand::Recovered {
                    to: moved,
                    session,
                    replay,
                };
                core.send_to(moved.shard, command);
            }
            return;
        };
        let found = session.map(|d| match replay {
            Some(packets) => connect::Found::Moved(d, packets),
            None => connect::Found::Here(d),
        });
        self.update(core, socket, now, |s, core, _, out| {
            core.admit(now, |adm| connect::recovered(adm, &mut s.auth, found, out))
        });
    }

    /// What the connected sockets hold, per user and workspace: the union of their channel
    /// and DM rooms (for [`crate::mesh::StoreCommand::Recheck`]).
    pub fn standings(&self) -> Vec<Standing> {
        let mut held: FxHashMap<(UserId, WorkspaceId), Vec<Room>> = FxHashMap::default();
        let conns = self.conns.iter().filter_map(|(_, c)| match &c.phase {
            Phase::Socket(s) => Some(&**s),
            _ => None,
        });
        for socket in conns.chain(self.polls.sockets()) {
            let Auth::Connected(member) = &socket.auth else {
                continue;
            };
            if member.removed {
                continue;
            }
            let rooms = held.entry((member.user.id, member.workspace)).or_default();
            for room in &member.rooms {
                if room.target().is_some() && !rooms.contains(room) {
                    rooms.push(*room);
                }
            }
        }
        held.into_iter()
            .map(|((user, workspace), rooms)| Standing {
                user,
                workspace,
                rooms,
            })
            .collect()
    }

    /// A membership changed: the user's sockets in that workspace join or leave the room.
    pub fn membership(&mut self, core: &mut Core, change: MembershipChange, now: Instant) {
        let members: Vec<SocketRef> = core.hub.members(&Room::User(change.user)).collect();
        for socket in members {
            self.update(core, socket, now, |s, _, _, out| {
                if let Auth::Connected(member) = &mut s.auth {
                    connect::membership(member, change, out);
                }
            });
        }
    }

    /// A deadline came: a heartbeat, a typing indicator, a request head or an upgrade that
    /// took too long, or the end of a closing grace.
    pub fn timeout(&mut self, core: &mut Core, due: Due, now: Instant) {
        let socket = due.socket;
        let key = match socket {
            SocketRef::Poll(index) => {
                if self.polls.timeout(core, index, due, now) {
                    self.session_timeout(core, socket, now);
                }
                return;
            }
            SocketRef::Conn(key) => key,
        };
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        if conn.generation != due.generation || conn.armed != Some(due.at) {
            // Stale: the connection re-armed for another instant, or the slot was reused.
            return;
        }
        conn.armed = None;
        core.mark(socket, &mut conn.dirty);
        if conn.closing.is_some() {
            // The flush drops it once its grace is over.
            return;
        }
        match &conn.phase {
            Phase::Http {
                deadline,
                waiting: false,
                ..
            } if *deadline <= now => {
                // Slowloris or an idle keep-alive connection: cut it off.
                core.metrics().protocol_errors.fetch_add(1, Relaxed);
                let message = "request head not received in time";
                let bytes = crate::protocol::http::json_error(408, message, false);
                conn.out.queue(bytes.into(), core.metrics());
                conn.close_after_flush(now, "request timeout");
            }
            Phase::Upgrading(up) if up.deadline <= now => {
                core.metrics().protocol_errors.fetch_add(1, Relaxed);
                let reason = "the upgrade was not completed in time";
                conn.out
                    .queue(websocket::close(1008, reason), core.metrics());
                conn.close_after_flush(now, "upgrade timeout");
            }
            Phase::Socket(_) => self.session_timeout(core, socket, now),
            Phase::Http { .. } | Phase::Upgrading(_) => {}
        }
    }

    /// A socket's deadline: ping, or drop a client that stopped answering (or never
    /// connected); end typing indicators that ran out.
    fn session_timeout(&mut self, core: &mut Core, socket: SocketRef, now: Instant) {
        let session = match socket {
            SocketRef::Conn(key) => self.conns.get_mut(key as usize).and_then(|c| c.socket()),
            SocketRef::Poll(index) => self.polls.session(index).map(|p| &mut p.socket),
        };
        let Some(session) = session.map(|s| &mut s.session) else {
            return;
        };
        if let Err(e) = session.handle_timeout(now) {
            core.metrics().protocol_errors.fetch_add(1, Relaxed);
            tracing::debug!(?socket, reason = %e, "session timed out");
            self.close(core, socket, Close::Now("ping timeout"), now);
            return;
        }
        self.update(core, socket, now, |s, core, _, out| {
            if let Auth::Connected(member) = &mut s.auth {
                connect::expire(member, &core.shared.config.limits.events, now, out);
            }
        });
    }

    /// Shutdown: closes every connection with what its phase allows; polling sessions are
    /// closed before (see `Shard::shutdown`).
    pub fn shutdown(&mut self, core: &mut Core, now: Instant) {
        for (key, conn) in self.conns.iter_mut() {
            let going_away = || websocket::close(1001, "server shutting down");
            match &conn.phase {
                Phase::Socket(_) => {
                    // 1001 "going away": socket.io-client reconnects, to another node if need be.
                    conn.out.queue(going_away(), core.metrics());
                    conn.close_after_flush(now, "shutdown");
                }
                Phase::Http { waiting: true, .. } => continue,
                // A response still queued (a polling answer) is written first.
                Phase::Http { .. } if !conn.out.is_empty() => {
                    conn.close_after_flush(now, "shutdown")
                }
                // Mid-upgrade, the client may have paused polling already: only the
                // WebSocket can still tell it, once it sends `5` (see `upgrade::input`).
                Phase::Upgrading(up) if matches!(up.step, Step::Probing) => continue,
                Phase::Upgrading(up) if matches!(up.step, Step::Switching) => {
                    conn.out.queue(going_away(), core.metrics());
                    conn.close_after_flush(now, "shutdown");
                }
                Phase::Http { .. } | Phase::Upgrading(_) => conn.close_now(now, "shutdown"),
            }
            core.mark(SocketRef::Conn(key as u32), &mut conn.dirty);
        }
    }
}
