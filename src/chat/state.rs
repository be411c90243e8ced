//! What chat keeps for each socket: where its authentication stands ([`Auth`]) and, once
//! it is connected, who it is and its own chat state ([`Member`]); and what is kept of a
//! socket that went away without a goodbye ([`Detached`]).

use std::time::Instant;

use crate::ids::{Room, UserId, WorkspaceId};
use crate::model::{Grant, User};
use crate::protocol::http::RequestHead;

use super::budget::Budgets;
use super::typing;

/// Authentication of a socket.
#[derive(Debug)]
pub enum Auth {
    /// No CONNECT accepted yet; credentials the upgrade request carried, kept until then.
    Pending(Credentials),
    /// A CONNECT is with the store.
    Checking(Credentials, Option<Recovery>),
    /// Authenticated; waiting for another shard to hand over the detached session it asked
    /// to recover.
    Recovering(Grant, Recovery),
    /// Authenticated.
    Connected(Member),
}

impl Auth {
    /// Takes the state out, leaving `Pending` with no credentials (for transitions that use
    /// up the old state).
    pub fn take(&mut self) -> Auth {
        std::mem::replace(self, Auth::Pending(Credentials::default()))
    }
}

/// What the upgrade request carried, for a CONNECT without a token in its payload.
#[derive(Debug, Default)]
pub struct Credentials {
    /// `Authorization: Bearer` value.
    pub bearer: Option<Box<str>>,
    /// `better-auth.session_token` cookie value.
    pub cookie: Option<Box<str>>,
    /// The `Origin` of a request whose cookie was not taken, as it is not allowed.
    pub foreign_origin: Option<Box<str>>,
    /// CONNECTs this socket tried.
    pub attempts: u32,
    /// The client's address, when the gate counts it (its CONNECTs are limited per address).
    pub peer: Option<std::net::IpAddr>,
}

impl Credentials {
    /// What an upgrade or handshake request carries: its `Authorization: Bearer` token and
    /// its better-auth session cookie. The cookie counts only from an origin in `allowed`
    /// (`CHAT_CORS_ORIGINS`) or without an `Origin` header (contract §2): a page elsewhere
    /// cannot borrow a user's cookie. Browsers do not let a page set `Authorization` on a
    /// WebSocket, so the bearer token needs no such check.
    pub fn from_head(head: &RequestHead, allowed: &[String]) -> Self {
        let mut cookie = super::auth::session_cookie(head).map(Box::from);
        let mut foreign_origin = None;
        if let Some(origin) = head.header("origin") {
            if cookie.is_some() && !allowed.iter().any(|a| a == origin) {
                cookie = None;
                foreign_origin = Some(Box::from(origin));
            }
        }
        Credentials {
            bearer: head.bearer_token().map(Box::from),
            cookie,
            foreign_origin,
            attempts: 0,
            peer: None,
        }
    }
}

/// A CONNECT that asks to recover a session (socket.io-client's `pid` and `offset`).
#[derive(Debug)]
pub struct Recovery {
    /// The session's private id.
    pub pid: String,
    /// The last offset the client received, if any: a counter of the node that delivered it.
    pub offset: Option<u64>,
    /// In a cluster, the node whose counter `offset` is (offsets read `<node>:<counter>`).
    pub offset_node: Option<String>,
    /// The `broker` thread was asked already (another node, or where the session went from
    /// here).
    pub asked: bool,
}

impl Recovery {
    /// A recovery of `pid` from socket.io-client's last `offset`: `<counter>` on one node,
    /// `<node>:<counter>` in a cluster. An offset that reads as neither counts as none.
    pub fn new(pid: String, offset: Option<&str>) -> Recovery {
        let (offset_node, counter) = match offset.map(|o| o.split_once(':').ok_or(o)) {
            Some(Ok((node, counter))) => (Some(node.to_owned()), counter),
            Some(Err(counter)) => (None, counter),
            None => (None, ""),
        };
        let offset = counter.parse().ok();
        Recovery {
            pid,
            offset_node: offset.and(offset_node),
            offset,
            asked: false,
        }
    }

    /// Where the session is to be looked for, seen from node `own` (`None` on one node): `None`
    /// here, or the other node that holds it (the node of the offset, else the pid's), with
    /// the offset when it is that node's counter.
    pub fn holder(&self, own: Option<&str>) -> Option<(String, Option<u64>)> {
        let own = own?;
        let node = self
            .offset_node
            .as_deref()
            .or_else(|| crate::ids::pid_node(&self.pid))?;
        (node != own).then(|| {
            let offset = self
                .offset
                .filter(|_| self.offset_node.as_deref() == Some(node));
            (node.to_owned(), offset)
        })
    }

    /// The offset as a counter of node `own` (`None` on one node): an offset another node
    /// gave counts as none (the session's own starting point is used instead).
    pub fn local_offset(&self, own: Option<&str>) -> Option<u64> {
        match (own, self.offset_node.as_deref()) {
            (Some(own), Some(node)) if node != own => None,
            _ => self.offset,
        }
    }
}

/// An authenticated socket: who it is, where, and its own chat state.
#[derive(Debug)]
pub struct Member {
    /// Who.
    pub user: User,
    /// Workspace scope.
    pub workspace: WorkspaceId,
    /// Rooms joined in the shard's hub, for leaving them on close.
    pub rooms: Vec<Room>,
    /// Typing and away state.
    pub chat: ChatState,
    /// Private session id for connection state recovery (when it is on).
    pub pid: Option<Box<str>>,
    /// The newest recovery offset this shard had seen when the socket connected: a recovering
    /// client that received no offset has missed everything after it.
    pub since_offset: u64,
    /// The user was removed from the workspace: out of its rooms, every event refused.
    pub removed: bool,
}

/// A connected socket's own chat state.
#[derive(Debug)]
pub struct ChatState {
    /// Where it is typing.
    pub typing: typing::Typing,
    /// `presence:setAway` was its last word (until `presence:setActive`), as announced.
    pub away: bool,
    /// A change of `away` the socket asked for while over its presence budget, and when the
    /// budget allows it: announced then (the last word wins).
    pub pending_away: Option<(bool, Instant)>,
    /// Its event budgets.
    pub budgets: Budgets,
}

impl ChatState {
    /// A socket that just connected: active, not typing, with full budgets.
    pub fn new(now: Instant) -> Self {
        ChatState {
            typing: typing::Typing::new(),
            away: false,
            pending_away: None,
            budgets: Budgets::new(now),
        }
    }

    /// When something of this state must be looked at: a typing indicator running out, or a
    /// presence change waiting for its budget.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let typing = self.typing.poll_timeout();
        match (typing, self.pending_away.map(|(_, at)| at)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// A socket that went away without saying goodbye, kept for the recovery window so that a
/// reconnect with its `pid` gets its rooms and missed events back. The rooms come from the
/// reconnect's fresh authentication, so a membership removed meanwhile stays removed.
#[derive(Clone, Copy, Debug)]
pub struct Detached {
    /// Who it was.
    pub user: UserId,
    /// Its workspace.
    pub workspace: WorkspaceId,
    /// The newest offset its shard had seen when it connected (replay starts after it when
    /// the client received no offset at all).
    pub since_offset: u64,
}

#[cfg(test)]
mod tests {
    use super::Recovery;

    const A: &str = "00000000000000aa";
    const B: &str = "00000000000000bb";

    #[test]
    fn offsets_read_with_or_without_their_node() {
        let r = Recovery::new("p".into(), Some("00000000000000aa:17"));
        assert_eq!((r.offset, r.offset_node.as_deref()), (Some(17), Some(A)));
        let r = Recovery::new("p".into(), Some("17"));
        assert_eq!((r.offset, r.offset_node), (Some(17), None));
        let r = Recovery::new("p".into(), Some("aa:x"));
        assert_eq!((r.offset, r.offset_node), (None, None), "not a counter");
        let r = Recovery::new("p".into(), None);
        assert_eq!((r.offset, r.offset_node), (None, None));
    }

    #[test]
    fn the_holder_is_the_offsets_node_else_the_pids() {
        let pid = format!("{A}0{}", "1".repeat(20));
        // One node: always here.
        let r = Recovery::new(pid.clone(), Some("5"));
        assert_eq!(r.holder(None), None);
        assert_eq!(r.local_offset(None), Some(5));
        // Offset from B, pid from A, reconnect on A: ask B, with B's counter.
        let r = Recovery::new(pid.clone(), Some(&format!("{B}:9")));
        assert_eq!(r.holder(Some(A)), Some((B.to_owned(), Some(9))));
        // The same on B: here, and the offset is B's.
        assert_eq!(r.holder(Some(B)), None);
        assert_eq!(r.local_offset(Some(B)), Some(9));
        // No offset: the pid's node, without an offset.
        let r = Recovery::new(pid.clone(), None);
        assert_eq!(r.holder(Some(B)), Some((A.to_owned(), None)));
        assert_eq!(r.holder(Some(A)), None);
        // Here, with an offset another node gave: it counts as none.
        let r = Recovery::new(pid, Some(&format!("{B}:9")));
        assert_eq!(r.local_offset(Some(A)), None);
    }
}
