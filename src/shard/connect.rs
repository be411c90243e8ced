//! CONNECT: the token is checked on the shard (JWT signature and expiry), the store resolves
//! the user, the workspace membership and the rooms; then the socket is admitted, possibly
//! recovering a session that went away (connection state recovery), whose detached state may
//! live on another shard: the `pid` names it.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use serde_json::Value;

use super::polling::socket_of;
use super::{Core, Shard};
use crate::chat::{self, Auth, ChatState, Detached, Member, Recovery};
use crate::ids::{new_session_id, session_shard, ConnectionId};
use crate::mesh::{PresenceCommand, ShardCommand, StoreCommand};
use crate::model::Grant;
use crate::store::request::StoreError;

impl Core {
    /// Keeps a socket that went away for the recovery window.
    pub(super) fn detach(&mut self, member: Member) {
        if let Some(pid) = member.pid {
            let session = Detached {
                user: member.user.id,
                workspace: member.workspace,
                since_offset: member.since_offset,
            };
            // A session that moved here with a WebSocket upgrade keeps the pid of the shard
            // that made it, where a reconnect will look for it.
            match session_shard(&pid, self.mesh.shards.len()) {
                Some(owner) if owner != self.id => {
                    let command = crate::mesh::PollCommand::Detach { pid, session };
                    self.mesh.shards[usize::from(owner.0)]
                        .send(ShardCommand::Polling(Box::new(command)));
                }
                _ => self.recovery.detach(Instant::now(), pid, session),
            }
        }
    }
}

impl Shard {
    /// The client's CONNECT packet.
    pub(super) fn on_connect(
        &mut self,
        slot: u32,
        auth: Option<Value>,
        pid: Option<String>,
        offset: Option<String>,
    ) {
        let Some(from) = self.connection_id(slot) else {
            return;
        };
        let recovery_on = self.core.recovery.enabled();
        let Some(socket) = socket_of(&mut self.conns, &mut self.polls, slot) else {
            return;
        };
        let Auth::Pending(creds) = &mut socket.auth else {
            // Already connected or being checked: a repeated CONNECT changes nothing.
            return;
        };
        let request = chat::auth::extract(
            auth.as_ref(),
            creds.bearer.as_deref(),
            creds.cookie.as_deref(),
        );
        let checked = match (request.token, request.workspace) {
            (None, _) => Err(chat::auth::NO_TOKEN.to_string()),
            (Some(_), Err(e)) => Err(e),
            (Some(token), Ok(workspace)) => self
                .core
                .shared
                .jwt
                .credential(&token)
                .map(|credential| (credential, workspace)),
        };
        match checked {
            Ok((credential, workspace)) => {
                let recover = pid.filter(|_| recovery_on).map(|pid| Recovery {
                    pid,
                    offset: offset.and_then(|o| o.parse().ok()),
                });
                socket.auth = Auth::Checking(std::mem::take(creds), recover);
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

    /// The store's answer to CONNECT.
    pub(super) fn on_authenticated(
        &mut self,
        slot: u32,
        result: Result<Grant, StoreError>,
        now: Instant,
    ) {
        let Some(from) = self.connection_id(slot) else {
            return;
        };
        let Some(socket) = socket_of(&mut self.conns, &mut self.polls, slot) else {
            return;
        };
        let Auth::Checking(creds, recover) = socket.auth.take() else {
            return;
        };
        let grant = match result {
            Ok(grant) => grant,
            Err(e) => {
                socket.auth = Auth::Pending(creds);
                socket.session.refuse(e.message());
                self.core.metrics().auth_failures.fetch_add(1, Relaxed);
                self.drive(slot, now);
                return;
            }
        };
        let Some(recover) = recover else {
            self.admit(slot, grant, None, now);
            return;
        };
        match session_shard(&recover.pid, self.core.mesh.shards.len()) {
            Some(owner) if owner == self.core.id => {
                let found = self.core.recovery.take(now, &recover.pid);
                self.admit(slot, grant, found.map(|d| (recover, d)), now);
            }
            Some(owner) => {
                let pid = recover.pid.clone();
                socket.auth = Auth::Recovering(grant, recover);
                self.core.mesh.shards[usize::from(owner.0)]
                    .send(ShardCommand::Recover { pid, to: from });
            }
            // A pid this node never made (another node, or a restart): a new session.
            _ => self.admit(slot, grant, None, now),
        }
    }

    /// Another shard asks for a detached session of this shard.
    pub(super) fn on_recover_request(&mut self, pid: &str, to: ConnectionId, now: Instant) {
        let session = self.core.recovery.take(now, pid);
        if let Some(shard) = self.core.mesh.shards.get(usize::from(to.shard.0)) {
            shard.send(ShardCommand::Recovered { to, session });
        }
    }

    /// The owning shard's answer to a recovery request.
    pub(super) fn on_recovered(
        &mut self,
        to: ConnectionId,
        session: Option<Detached>,
        now: Instant,
    ) {
        let Some(slot) = self.lookup(to) else { return };
        let Some(socket) = socket_of(&mut self.conns, &mut self.polls, slot) else {
            return;
        };
        let Auth::Recovering(grant, recover) = socket.auth.take() else {
            return;
        };
        self.admit(slot, grant, session.map(|d| (recover, d)), now);
    }

    /// Accepts an authenticated socket: joins its rooms, tells presence, and, when a
    /// detached session of the same user and workspace was found and its missed events are
    /// all still in the log, recovers it: same `pid`, and the missed events replayed in order.
    fn admit(
        &mut self,
        slot: u32,
        grant: Grant,
        found: Option<(Recovery, Detached)>,
        now: Instant,
    ) {
        let recovered = found.and_then(|(r, d)| {
            let after = r.offset.unwrap_or(d.since_offset);
            let same = d.user == grant.user.id && d.workspace == grant.workspace;
            (same && self.core.recovery.can_replay(after)).then_some((r.pid, after))
        });
        let pid = match &recovered {
            Some((pid, _)) => Some(pid.clone()),
            None if self.core.recovery.enabled() => Some(new_session_id(self.core.id)),
            None => None,
        };
        for room in &grant.rooms {
            self.core.hub.join(*room, slot);
        }
        let Some(socket) = socket_of(&mut self.conns, &mut self.polls, slot) else {
            return;
        };
        let sid = new_session_id(self.core.id);
        socket.session.accept(&sid, pid.as_deref());
        self.core.mesh.broker.presence(PresenceCommand::Connected {
            user: grant.user.id,
            workspace: grant.workspace,
        });
        socket.auth = Auth::Connected(Member {
            user: grant.user,
            workspace: grant.workspace,
            rooms: grant.rooms,
            chat: ChatState::new(now),
            pid: pid.map(String::into_boxed_str),
            since_offset: self.core.recovery.newest(),
        });
        self.core.metrics().sockets.fetch_add(1, Relaxed);
        // The CONNECT answer goes out before any replayed event.
        self.drive(slot, now);
        if let Some((_, after)) = recovered {
            if super::polling::is_poll(slot) {
                self.replay_poll(slot, after, now);
                return;
            }
            let Some(conn) = self.conns.get_mut(slot as usize) else {
                return;
            };
            let rooms = match &conn.phase {
                super::connection::Phase::Socket(s) => match &s.auth {
                    Auth::Connected(m) => m.rooms.clone(),
                    _ => Vec::new(),
                },
                _ => Vec::new(),
            };
            let mut over = false;
            for broadcast in self.core.recovery.replay(after, &rooms) {
                over |= self
                    .core
                    .queue(conn, crate::transport::websocket::text(&broadcast.packet));
            }
            if over {
                self.slow_consumer(slot);
                return;
            }
            self.mark(slot);
        }
    }
}
