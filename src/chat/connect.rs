//! The life of a socket as chat sees it, beside its events: CONNECT (where the token comes
//! from, what the shard can check of it, the store's check), admission (its rooms, presence,
//! a recovery pid, the events it missed), and what ends with it (typing, presence, keeping
//! it for recovery). Like the event handlers, these change the socket's [`Auth`] and return
//! [`Effect`]s; the shard carries them out.
//!
//! CONNECT runs `Pending` → `Checking` (the store resolves the credential) → `Connected`,
//! through `Recovering` when the client asks to recover a session that another shard keeps.

use std::time::Instant;

use serde_json::Value;

use super::auth::{self, JwtVerifier};
use super::budget::Kind;
use super::state::{Auth, ChatState, Detached, Member, Recovery};
use super::{typing_update, Effect, Recovered};
use crate::ids::{new_pid, ConnectionId, Room, ShardId};
use crate::limits::EventBudgets;
use crate::mesh::{PresenceCommand, StoreCommand};
use crate::model::{Grant, MembershipChange, User};
use crate::protocol::CloseReason;
use crate::store::request::StoreError;

/// What admitting a socket reads about its shard.
#[derive(Clone, Copy)]
pub struct Admission<'a> {
    /// The shard, whose number starts a new pid.
    pub shard: ShardId,
    /// The current time.
    pub now: Instant,
    /// Whether connection state recovery is on (a socket then gets a pid).
    pub recovery: bool,
    /// In a cluster, this node's id (16 hex digits): it starts the pids made here, and names
    /// the node whose counter an offset is.
    pub node: Option<&'a str>,
    /// The newest durable offset this shard has seen.
    pub newest: u64,
    /// Whether every durable event after an offset to any of the rooms is still in this
    /// shard's log, and all of them fit in one replay (a replay too large to send would
    /// drop the client: it gets a new session instead and reads history).
    pub can_replay: &'a dyn Fn(u64, &[Room]) -> bool,
    /// Most bytes one replay may take (another node's replay larger than it is refused like
    /// one from the log).
    pub replay_budget: usize,
}

/// The client's CONNECT, with its auth payload and, when it asks to recover a session, the
/// session's `pid` and the last `offset` it received. The token is taken from the payload,
/// else from what the upgrade request carried; a JWT is verified here, and the store is
/// asked for the rest. A repeated CONNECT changes nothing.
#[allow(clippy::too_many_arguments)]
pub fn connect(
    from: ConnectionId,
    jwt: &JwtVerifier,
    budgets: &EventBudgets,
    recovery: bool,
    auth: &mut Auth,
    payload: Option<Value>,
    pid: Option<String>,
    offset: Option<String>,
    out: &mut Vec<Effect>,
) {
    let Auth::Pending(creds) = auth else {
        return;
    };
    let request = auth::extract(
        payload.as_ref(),
        creds.bearer.as_deref(),
        creds.cookie.as_deref(),
    );
    creds.attempts += 1;
    if creds.attempts > budgets.connect_attempts {
        let reason = format!(
            "disconnected: {} CONNECT attempts on one socket; open a new connection",
            budgets.connect_attempts
        );
        out.push(Effect::Cut(reason));
        return;
    }
    let checked = match (request.token, request.workspace) {
        (None, _) => Err(match &creds.foreign_origin {
            Some(origin) => format!(
                "the session cookie was not used: the request came from origin {origin}, \
                 which is not in CHAT_CORS_ORIGINS; add that origin to CHAT_CORS_ORIGINS, \
                 or send auth {{token}}"
            ),
            None => auth::NO_TOKEN.to_string(),
        }),
        (Some(_), Err(e)) => Err(e),
        (Some(token), Ok(workspace)) => jwt
            .credential(&token)
            .map(|credential| (credential, workspace)),
    };
    match checked {
        Ok((credential, workspace)) => {
            let recover = pid
                .filter(|_| recovery)
                .map(|pid| Recovery::new(pid, offset.as_deref()));
            *auth = Auth::Checking(std::mem::take(creds), recover);
            out.push(Effect::Store(StoreCommand::Authenticate {
                from,
                credential,
                workspace,
            }));
        }
        Err(reason) => out.push(Effect::Refuse(reason)),
    }
}

/// The store's answer to CONNECT: refuse, admit, or first fetch the session to recover.
pub fn authenticated(
    adm: &Admission<'_>,
    auth: &mut Auth,
    result: Result<Grant, StoreError>,
    out: &mut Vec<Effect>,
) {
    let Auth::Checking(creds, recover) = auth.take() else {
        return;
    };
    match (result, recover) {
        (Err(e), _) => {
            *auth = Auth::Pending(creds);
            out.push(Effect::Refuse(e.message().to_owned()));
        }
        (Ok(grant), None) => admit(adm, auth, grant, None, out),
        (Ok(grant), Some(mut recover)) => {
            out.push(match recover.holder(adm.node) {
                Some((node, offset)) => {
                    recover.asked = true;
                    recover_from(node, &recover, offset, &grant)
                }
                None => Effect::Recover(recover.pid.clone()),
            });
            *auth = Auth::Recovering(grant, recover);
        }
    }
}

/// What a recovery found.
#[derive(Debug)]
pub enum Found {
    /// The session, kept on this node: its missed events are in this shard's log.
    Here(Detached),
    /// The session, handed over by another node ([`Effect::RecoverFrom`]), with the events
    /// it missed, read for the rooms granted now.
    Moved(Detached, Vec<bytes::Bytes>),
}

/// The detached session asked for by [`Effect::Recover`] or [`Effect::RecoverFrom`], if it
/// was still kept.
pub fn recovered(
    adm: &Admission<'_>,
    auth: &mut Auth,
    found: Option<Found>,
    out: &mut Vec<Effect>,
) {
    let Auth::Recovering(grant, mut recover) = auth.take() else {
        return;
    };
    // Not here: in a cluster the session may have moved on from here to another node.
    if let (None, Some(own), false) = (&found, adm.node, recover.asked) {
        recover.asked = true;
        out.push(recover_from(own.to_owned(), &recover, None, &grant));
        *auth = Auth::Recovering(grant, recover);
        return;
    }
    admit(adm, auth, grant, Some((recover, found)), out);
}

/// Asks the `broker` thread for the session from `node`.
fn recover_from(node: String, recover: &Recovery, offset: Option<u64>, grant: &Grant) -> Effect {
    Effect::RecoverFrom {
        node,
        pid: recover.pid.clone(),
        offset,
        user: grant.user.id,
        workspace: grant.workspace,
        rooms: grant.rooms.clone(),
    }
}

/// Accepts an authenticated socket: joins its rooms, tells presence, and, when a detached
/// session of the same user and workspace was found and its missed events are all still in
/// the log, recovers it: same `pid`, and the missed events replayed in order after the
/// CONNECT answer. Otherwise it is a new session (with a new pid when recovery is on).
/// `recovery`: the session the client asked to recover and what was found of it (`None`: it
/// asked for none).
fn admit(
    adm: &Admission<'_>,
    auth: &mut Auth,
    grant: Grant,
    recovery: Option<(Recovery, Option<Found>)>,
    out: &mut Vec<Effect>,
) {
    let asked = recovery.is_some();
    let recovered = recovery.and_then(|(r, found)| {
        let (d, replay, how) = match found? {
            Found::Here(d) => {
                let after = r.local_offset(adm.node).unwrap_or(d.since_offset);
                let replay = Effect::Replay(after);
                ((adm.can_replay)(after, &grant.rooms)).then_some((d, replay, Recovered::Here))?
            }
            Found::Moved(d, packets) => {
                let bytes: usize = packets.iter().map(|p| p.len()).sum();
                let replay = Effect::ReplayPackets(packets);
                (bytes <= adm.replay_budget).then_some((d, replay, Recovered::Moved))?
            }
        };
        let same = d.user == grant.user.id && d.workspace == grant.workspace;
        same.then_some((r.pid, replay, how))
    });
    let pid = match &recovered {
        Some((pid, _, _)) => Some(pid.as_str().into()),
        None if adm.recovery => Some(new_pid(adm.shard, adm.node).into_boxed_str()),
        None => None,
    };
    out.extend(grant.rooms.iter().copied().map(Effect::Join));
    let recovery = match &recovered {
        Some((_, _, how)) => Some(*how),
        None => asked.then_some(Recovered::Missed),
    };
    out.push(Effect::Accept {
        pid: pid.clone(),
        recovery,
    });
    out.push(Effect::Presence(PresenceCommand::Connected {
        user: grant.user.id,
        workspace: grant.workspace,
    }));
    if let Some((_, replay, _)) = recovered {
        out.push(replay);
    }
    *auth = Auth::Connected(Member {
        user: grant.user,
        workspace: grant.workspace,
        rooms: Vec::with_capacity(grant.rooms.len()),
        chat: ChatState::new(adm.now),
        pid,
        since_offset: adm.newest,
        removed: false,
    });
}

/// The client ended the socket. After a goodbye (a Socket.IO DISCONNECT) there is nothing to
/// recover; a bare transport close may be followed by a reconnect.
pub fn client_closed(auth: &mut Auth, reason: CloseReason) {
    if reason == CloseReason::ClientDisconnect {
        if let Auth::Connected(member) = auth {
            member.pid = None;
        }
    }
}

/// The socket is gone (the shard already took it out of its rooms): its typing stops, presence
/// is told, and unless it said goodbye it is kept for the recovery window.
pub fn gone(auth: Auth, out: &mut Vec<Effect>) {
    let Auth::Connected(mut member) = auth else {
        return;
    };
    for target in member.chat.typing.stop_all() {
        out.push(Effect::Publish(typing_update(&member.user, target, false)));
    }
    if !member.removed {
        out.push(Effect::Presence(PresenceCommand::Disconnected {
            user: member.user.id,
            workspace: member.workspace,
            away: member.chat.away,
        }));
    }
    if let Some(pid) = member.pid {
        let session = Detached {
            user: member.user.id,
            workspace: member.workspace,
            since_offset: member.since_offset,
        };
        out.push(Effect::Detach(pid, session));
    }
}

/// Typing timers that ran out by `now`: tell the rooms the user stopped. A presence change
/// that waited for its budget is announced if the budget allows it now.
pub fn expire(member: &mut Member, budgets: &EventBudgets, now: Instant, out: &mut Vec<Effect>) {
    for target in member.chat.typing.expire(now) {
        out.push(Effect::Publish(typing_update(&member.user, target, false)));
    }
    let chat = &mut member.chat;
    if let Some((away, at)) = chat.pending_away {
        if at <= now && chat.budgets.try_take(budgets, Kind::Presence, now) {
            chat.pending_away = None;
            chat.away = away;
            out.push(Effect::Presence(PresenceCommand::Away {
                user: member.user.id,
                workspace: member.workspace,
                away,
            }));
        } else if at <= now {
            let soonest = now + std::time::Duration::from_millis(1);
            let at = chat.budgets.ready(budgets, Kind::Presence).max(soonest);
            chat.pending_away = Some((away, at));
        }
    }
}

/// A membership changed (admin API, or the web app writing the tables): the socket joins or
/// leaves the room if it is scoped to that workspace.
pub fn membership(member: &mut Member, change: MembershipChange, out: &mut Vec<Effect>) {
    if member.workspace != change.workspace || member.removed {
        return;
    }
    if change.room == Room::Workspace(change.workspace) {
        if !change.joined {
            removed(member, out);
        }
        return;
    }
    if change.joined {
        out.push(Effect::Join(change.room));
    } else {
        leave(&member.user, &mut member.chat, change.room, out);
    }
}

/// The user was removed from the socket's workspace: it leaves every room of it (its
/// `user:` room stays, so it still hears of membership changes), its presence there ends,
/// it is told once, and from then on every event is refused (see [`REMOVED`]). It is not
/// kept for recovery: a reconnect would be refused anyway.
fn removed(member: &mut Member, out: &mut Vec<Effect>) {
    member.removed = true;
    member.pid = None;
    for room in member.rooms.clone() {
        if room != Room::User(member.user.id) {
            leave(&member.user, &mut member.chat, room, out);
        }
    }
    out.push(Effect::Presence(PresenceCommand::Disconnected {
        user: member.user.id,
        workspace: member.workspace,
        away: member.chat.away,
    }));
    let message = format!("{REMOVED} {}", member.workspace);
    out.push(Effect::Emit(
        "error",
        serde_json::json!({ "message": message }),
    ));
}

/// Why every event of a socket whose user was removed from its workspace is refused.
pub const REMOVED: &str = "you were removed from workspace";

/// Takes the socket out of a room, and ends its typing there.
pub(super) fn leave(user: &User, state: &mut ChatState, room: Room, out: &mut Vec<Effect>) {
    out.push(Effect::Leave(room));
    if let Some(target) = room.target() {
        if state.typing.stop(target) {
            out.push(Effect::Publish(typing_update(user, target, false)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::state::Credentials;
    use crate::ids::{ChannelId, UserId, WorkspaceId};
    use bytes::Bytes;
    use uuid::Uuid;

    const A: &str = "00000000000000aa";
    const B: &str = "00000000000000bb";

    fn grant() -> Grant {
        Grant {
            user: User {
                id: UserId(Uuid::from_u128(1)),
                name: "ann".into(),
            },
            workspace: WorkspaceId(Uuid::from_u128(2)),
            rooms: vec![Room::Channel(ChannelId(Uuid::from_u128(3)))],
        }
    }

    fn session() -> Detached {
        let g = grant();
        Detached {
            user: g.user.id,
            workspace: g.workspace,
            since_offset: 0,
        }
    }

    fn adm<'a>(node: Option<&'a str>, can: &'a dyn Fn(u64, &[Room]) -> bool) -> Admission<'a> {
        Admission {
            shard: ShardId(0),
            now: Instant::now(),
            recovery: true,
            node,
            newest: 0,
            can_replay: can,
            replay_budget: 10,
        }
    }

    fn recovering(offset: Option<&str>) -> Auth {
        let pid = format!("{A}0{}", "1".repeat(20));
        Auth::Recovering(grant(), Recovery::new(pid, offset))
    }

    fn checking(offset: Option<&str>) -> Auth {
        let pid = format!("{A}0{}", "1".repeat(20));
        Auth::Checking(Credentials::default(), Some(Recovery::new(pid, offset)))
    }

    #[test]
    fn a_session_another_node_holds_is_asked_for_through_the_broker() {
        let can = |_: u64, _: &[Room]| true;
        let mut out = Vec::new();
        let mut auth = checking(Some(&format!("{A}:7")));
        authenticated(&adm(Some(B), &can), &mut auth, Ok(grant()), &mut out);
        assert!(
            matches!(&out[..], [Effect::RecoverFrom { node, offset: Some(7), rooms, .. }]
                if node == A && rooms == &grant().rooms),
            "{out:?}"
        );
        // Its answer: the pid back, and the replay after the CONNECT answer.
        out.clear();
        let replay = vec![Bytes::from_static(b"42[1]")];
        let found = Some(Found::Moved(session(), replay));
        recovered(&adm(Some(B), &can), &mut auth, found, &mut out);
        assert!(
            matches!(out[1], Effect::Accept { pid: Some(ref p), recovery: Some(Recovered::Moved) } if p.starts_with(A))
        );
        assert!(matches!(out.last(), Some(Effect::ReplayPackets(p)) if p.len() == 1));
    }

    #[test]
    fn a_replay_over_the_budget_is_a_new_session_with_a_pid_of_this_node() {
        let can = |_: u64, _: &[Room]| true;
        let mut out = Vec::new();
        let mut auth = recovering(None);
        let found = Some(Found::Moved(session(), vec![Bytes::from(vec![b'x'; 11])]));
        recovered(&adm(Some(B), &can), &mut auth, found, &mut out);
        assert!(
            matches!(out[1], Effect::Accept { pid: Some(ref p), recovery: Some(Recovered::Missed) } if p.starts_with(B))
        );
        assert!(!out.iter().any(|e| matches!(e, Effect::ReplayPackets(_))));
    }

    #[test]
    fn not_found_here_asks_where_it_went_once_in_a_cluster_and_never_on_one_node() {
        let can = |_: u64, _: &[Room]| true;
        let mut out = Vec::new();
        let mut auth = recovering(Some(&format!("{A}:7")));
        recovered(&adm(Some(A), &can), &mut auth, None, &mut out);
        assert!(
            matches!(&out[..], [Effect::RecoverFrom { node, offset: None, .. }] if node == A),
            "{out:?}"
        );
        out.clear();
        recovered(&adm(Some(A), &can), &mut auth, None, &mut out);
        assert!(
            matches!(
                out[1],
                Effect::Accept {
                    recovery: Some(Recovered::Missed),
                    ..
                }
            ),
            "then a new session"
        );
        let mut auth = recovering(Some("7"));
        out.clear();
        recovered(&adm(None, &can), &mut auth, None, &mut out);
        assert!(
            matches!(out[1], Effect::Accept { .. }),
            "one node: a new session"
        );
    }
}
