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
    /// The last offset the client received, if any.
    pub offset: Option<u64>,
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
