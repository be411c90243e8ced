//! The wiring: every command that crosses a thread, and the handles that carry them.
//!
//! Threads share nothing but these inboxes (crossbeam channels). A shard's inbox is paired
//! with its `mio::Waker`, so a command wakes the shard's event loop. Reading this file gives
//! the whole diagram: shards ask the store ([`StoreCommand`]), the store answers the asking
//! shard ([`ShardCommand::Reply`]) and publishes what it committed ([`DurablePublisher`]),
//! and the broker ([`BrokerHandle`]) hands every shard a [`Broadcast`] to fan out
//! ([`ShardCommand::Deliver`]). Shards talk to each other for polling sessions
//! ([`PollCommand`]) and connection state recovery. The records these commands carry belong
//! to the modules that make them (`store::request`, `chat`, `api`, `model`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use crossbeam_channel::Sender;

use crate::api::AdminRequest;
use crate::chat::auth::Credential;
use crate::chat::state::{Auth, Detached};
use crate::ids::{ConnectionId, MessageId, Room, ShardId, Target, UserId, WorkspaceId};
use crate::model::{Grant, MembershipChange, Message, PresenceStatus};
use crate::protocol::{packet, Session};
use crate::store::request::{HistoryQuery, NewMessage, StoreError};

mod broker;
mod store;
pub use crate::broker::input::RecoverAsk;
pub use broker::{BrokerHandle, DurablePublisher};
pub use store::{waited_since, StoreHandle, STORE_INBOX_LIMIT, WAIT_BOUND_MIN_QUEUE};

/// An event for every socket of a room but those it skips, as a publisher (a chat handler,
/// the presence keeper, the store) hands it to the broker.
#[derive(Debug)]
pub struct Publication {
    /// Who receives it.
    pub room: Room,
    /// Sockets left out.
    pub except: Except,
    /// The Engine.IO packet, `42["event",data]`, encoded once.
    pub packet: Bytes,
}

impl Publication {
    /// `event` with `data` to every member of `room` but `except`.
    pub fn event(room: Room, event: &str, data: &impl serde::Serialize, except: Except) -> Self {
        Publication {
            room,
            except,
            packet: Bytes::from(packet::event(event, data, None)),
        }
    }
}

/// Who a broadcast skips.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Except {
    /// Every member receives it.
    Nobody,
    /// One socket (the sender).
    Connection(ConnectionId),
    /// Every socket of one user (a typing user's own tabs).
    User(UserId),
}

/// Names one broadcast among all those of this node, so a shard can tell whether a socket
/// already had it (at a transport upgrade, two shards see the same broadcasts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BroadcastId(pub u64);

/// A publication on its way to every shard, with its id and, for a durable event, its
/// offset. This is what the broker carries (and what would travel between nodes): the
/// Socket.IO packet, not a frame. Each shard frames it once for its WebSocket members;
/// polling sessions queue the packet itself.
#[derive(Debug)]
pub struct Broadcast {
    /// Unique on this node.
    pub id: BroadcastId,
    /// Who receives it.
    pub room: Room,
    /// Sockets left out.
    pub except: Except,
    /// Connection state recovery offset (durable events only), replayed to sockets that
    /// reconnect having missed it.
    pub offset: Option<u64>,
    /// The Engine.IO packet, shared by every recipient on every shard.
    pub packet: Bytes,
}

/// What a shard's event loop is asked to do by other threads (and by itself: a command
/// a shard addresses to itself is handled later in the same loop turn).
#[derive(Debug)]
pub enum ShardCommand {
    /// Queue the broadcast on every local member of its room.
    Deliver(Arc<Broadcast>),
    /// The store (or the presence keeper) answered a request of one of this shard's sockets.
    Reply(ConnectionId, StoreReply),
    /// A membership changed: the user's sockets in that workspace join or leave the room.
    Membership(MembershipChange),
    /// Changes may have been missed (the membership listener was cut off): tell the store
    /// what every connected socket holds, so it can take them out of what they lost.
    Recheck,
    /// Connection state recovery: a reconnected socket (`to`) asks the shard that made `pid`
    /// for the session detached under it.
    Recover {
        /// The session's private id.
        pid: String,
        /// The reconnected socket that wants it.
        to: ConnectionId,
    },
    /// The answer to `Recover`: the detached session, if it is still within its window.
    Recovered {
        /// The reconnected socket.
        to: ConnectionId,
        /// What the old socket was.
        session: Option<Detached>,
        /// When another node held the session: the events it missed, read for the rooms
        /// granted now (`None`: they are in this shard's log).
        replay: Option<Vec<Bytes>>,
    },
    /// In a cluster, from the `broker` thread: another node asks for the session detached
    /// under `pid` (take it, and answer the broker with request `req`).
    Handover {
        /// The session's private id.
        pid: String,
        /// The broker's request number.
        req: u64,
    },
    /// To the shard that made `pid`: keep this session that went away for the recovery
    /// window, where a reconnect will look for it.
    Detach {
        /// The session's private id.
        pid: Box<str>,
        /// What the socket was.
        session: Detached,
    },
    /// Engine.IO long-polling and the upgrade: between the shard that owns a TCP connection
    /// and the shard that owns the polling session it speaks for.
    Polling(Box<PollCommand>),
    /// Stop accepting, close every socket, and finish queued writes before `deadline`.
    Shutdown {
        /// When unfinished writes are abandoned.
        deadline: Instant,
    },
}

impl ShardCommand {
    /// The answer to a recovery that found nothing: `to` gets a new session.
    pub fn new_session(to: ConnectionId) -> Self {
        ShardCommand::Recovered {
            to,
            session: None,
            replay: None,
        }
    }
}

/// What the shards tell the presence keeper (contract §5: presence per user and workspace,
/// across every connection).
#[derive(Debug)]
pub enum PresenceCommand {
    /// A socket authenticated (it starts active).
    Connected {
        /// Whose.
        user: UserId,
        /// Where.
        workspace: WorkspaceId,
    },
    /// A socket switched between away (`true`) and active.
    Away {
        /// Whose.
        user: UserId,
        /// Where.
        workspace: WorkspaceId,
        /// The socket's new state.
        away: bool,
    },
    /// A socket closed; `away` is the state it was in.
    Disconnected {
        /// Whose.
        user: UserId,
        /// Where.
        workspace: WorkspaceId,
        /// Its last state.
        away: bool,
    },
    /// `presence:query`.
    Query {
        /// The asking socket.
        asker: Asker,
        /// Ack id.
        ack: Option<u64>,
        /// Whose status.
        users: Vec<UserId>,
    },
    /// Exit.
    Shutdown,
}

/// What crosses shards for a long-polling session. The session lives on the shard whose id
/// starts its `sid` (the owner); its HTTP requests and its WebSocket upgrade may arrive on
/// any shard, which is named by the connection's id. The upgrade's steps are explained in
/// `shard::upgrade`.
#[derive(Debug)]
pub enum PollCommand {
    /// To the owner: a GET (long-poll) or POST (packets) of session `sid`.
    Request {
        /// The TCP connection that waits for the answer.
        from: ConnectionId,
        /// Session id from the query.
        sid: String,
        /// `None` for a GET, the body for a POST.
        body: Option<Bytes>,
        /// The request's origin when it is allowed (echoed in CORS headers).
        origin: Option<Box<str>>,
        /// Keep the TCP connection after the answer.
        keep_alive: bool,
    },
    /// To the TCP connection's shard: the whole HTTP answer to write.
    Respond {
        /// The connection that asked.
        to: ConnectionId,
        /// Status line, headers and body.
        response: Vec<u8>,
        /// Keep the connection for the next request.
        keep_alive: bool,
    },
    /// To the owner: WebSocket `from` (its `101` not sent yet) asks to take over session
    /// `sid` (`transport=websocket&sid=…`).
    Upgrade(ConnectionId, String),
    /// To the WebSocket's shard: the session exists, with the rooms it is in now (to join
    /// while the probe runs), or not (`None`: answer "Session ID unknown").
    Upgradable(ConnectionId, Option<Vec<Room>>),
    /// To the owner: the client probed the WebSocket of session `sid` (`2probe`).
    Probe(String),
    /// To the owner: the WebSocket of session `sid` closed before the switch.
    Cancel(String),
    /// To the owner: the client sent `5` on WebSocket `from`: hand session `sid` over.
    Switch(ConnectionId, String),
    /// To the WebSocket's shard: the session (`None`: it closed meanwhile).
    Adopt(ConnectionId, Option<Box<Handover>>),
}

/// A polling session on its way to the shard of the WebSocket that took it over.
#[derive(Debug)]
pub struct Handover {
    /// The Engine.IO / Socket.IO state.
    pub session: Session,
    /// Where its authentication stands, and who it is once connected.
    pub auth: Auth,
    /// Packets polling had not sent, oldest first.
    pub packets: VecDeque<Bytes>,
    /// The broadcasts the owner queued since the upgrade began, sent by polling or not.
    pub seen: Vec<BroadcastId>,
    /// The newest durable offset the owner had delivered when it let go: every durable event
    /// of the session's rooms after it is the new shard's to deliver.
    pub newest: u64,
}

/// Who asks the store for something on a socket: the connection, the user it authenticated
/// as, and its workspace scope.
#[derive(Clone, Copy, Debug)]
pub struct Asker {
    /// The connection that gets the reply.
    pub from: ConnectionId,
    /// The socket's user.
    pub user: UserId,
    /// The socket's workspace.
    pub workspace: WorkspaceId,
}

/// What the shards ask the store thread.
#[derive(Debug)]
pub enum StoreCommand {
    /// CONNECT: resolve the credential, check workspace membership, list the rooms to join.
    Authenticate {
        /// Connection waiting for the answer.
        from: ConnectionId,
        /// Token as the shard checked it.
        credential: Credential,
        /// `workspaceId` of the auth payload.
        workspace: WorkspaceId,
    },
    /// `message:send`: store, ack, then publish `message:new`.
    Send {
        /// The asking socket.
        asker: Asker,
        /// Socket.IO ack id, if the client asked for one.
        ack: Option<u64>,
        /// The message.
        message: NewMessage,
        /// When the shard read the event (the start of `ocomms_send_ack_seconds`).
        received: Instant,
    },
    /// `message:delete` (author only, soft delete).
    Delete {
        /// The asking socket.
        asker: Asker,
        /// Socket.IO ack id.
        ack: Option<u64>,
        /// Which message.
        message: MessageId,
    },
    /// `message:history`.
    History {
        /// The asking socket.
        asker: Asker,
        /// Socket.IO ack id.
        ack: Option<u64>,
        /// Which messages.
        query: HistoryQuery,
    },
    /// `room:join`: may this user join the target's room?
    CheckMember {
        /// The asking socket.
        asker: Asker,
        /// Socket.IO ack id.
        ack: Option<u64>,
        /// Channel or DM.
        target: Target,
    },
    /// What a shard's connected sockets hold, per user and workspace (the union of their
    /// channel and DM rooms): the store reads each user's standing now and announces the
    /// removals that were missed as membership changes (a removal from the workspace, or a
    /// leave per room).
    Recheck(Vec<Standing>),
    /// An admin API request, already authorised by the admin token.
    Admin {
        /// The HTTP connection waiting for the response.
        from: ConnectionId,
        /// What it asks.
        request: AdminRequest,
    },
    /// A writer lane's batch is done: its answer waits in the lanes' own channel. Sent by
    /// the store's lanes only, so the store thread waits on its inbox alone (a select over
    /// two channels contended for a lock on its wake-ups).
    LaneDone,
    /// Finish what is queued, then exit.
    Shutdown,
}

/// What a shard's sockets of one user in one workspace hold (see [`StoreCommand::Recheck`]).
#[derive(Debug)]
pub struct Standing {
    /// The user.
    pub user: UserId,
    /// The workspace the sockets are scoped to.
    pub workspace: WorkspaceId,
    /// Their channel and DM rooms.
    pub rooms: Vec<Room>,
}

/// The store's answer to one [`StoreCommand`], routed back to the asking connection.
#[derive(Debug)]
pub enum StoreReply {
    /// Answer to `Authenticate`.
    Authenticated(Result<Grant, StoreError>),
    /// Answer to `Send`: the committed message (already published to the room).
    Sent {
        /// Ack id to answer.
        ack: Option<u64>,
        /// The stored message or why not.
        result: Result<Message, StoreError>,
    },
    /// Answer to `Delete`.
    Deleted {
        /// Ack id to answer.
        ack: Option<u64>,
        /// Ok or why not.
        result: Result<(), StoreError>,
    },
    /// Answer to `History`.
    History {
        /// Ack id to answer.
        ack: Option<u64>,
        /// What was asked (the page's direction and size).
        query: HistoryQuery,
        /// Ascending by sequence.
        result: Result<Vec<Message>, StoreError>,
    },
    /// Answer to `CheckMember`.
    Member {
        /// Ack id to answer.
        ack: Option<u64>,
        /// The room asked about.
        target: Target,
        /// Ok: the user is a member.
        result: Result<(), StoreError>,
    },
    /// Answer to `presence:query` (from the presence keeper).
    Presence {
        /// Ack id to answer.
        ack: Option<u64>,
        /// Each user asked about, with their presence in the asker's workspace.
        statuses: Vec<(UserId, PresenceStatus)>,
    },
    /// Answer to an admin request: status and JSON body.
    Admin {
        /// HTTP status.
        status: u16,
        /// JSON body.
        body: String,
    },
}

/// A shard's inbox and the waker of its event loop.
#[derive(Clone, Debug)]
pub struct ShardHandle {
    /// Which shard.
    pub id: ShardId,
    inbox: Sender<ShardCommand>,
    waker: Arc<mio::Waker>,
    /// Where the broadcasts dropped at the inbox limits are counted.
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl ShardHandle {
    /// Wraps an inbox and the waker registered with that shard's `Poll`.
    pub fn new(id: ShardId, inbox: Sender<ShardCommand>, waker: Arc<mio::Waker>) -> Self {
        ShardHandle {
            id,
            inbox,
            waker,
            metrics: None,
        }
    }

    /// Counts what [`ShardHandle::send`] drops in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Commands waiting in the shard's inbox.
    pub fn depth(&self) -> usize {
        self.inbox.len()
    }

    /// Sends a command and wakes the shard. A shard that has exited drops it, and so does a
    /// shard [`SHARD_INBOX_LIMIT`] commands behind for an ephemeral broadcast (typing,
    /// presence): its inbox stays bounded whatever other sockets and nodes publish. Durable
    /// broadcasts are bounded where they start (past the limit, this node's clients' sends
    /// are refused, [`Mesh::congested`]); those from other nodes are dropped only past
    /// [`SHARD_INBOX_HARD_LIMIT`], where the shard has long stopped serving its sockets
    /// (their clients fill the gap with `message:history`).
    pub fn send(&self, command: ShardCommand) {
        if let ShardCommand::Deliver(b) = &command {
            let bound = if b.offset.is_none() {
                SHARD_INBOX_LIMIT
            } else {
                SHARD_INBOX_HARD_LIMIT
            };
            if self.inbox.len() >= bound {
                if let Some(m) = self
                    .metrics
                    .as_ref()
                    .and_then(|m| m.shards.get(usize::from(self.id.0)))
                {
                    m.broadcasts_dropped
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                return;
            }
        }
        if self.inbox.send(command).is_ok() {
            // A failed wake means the shard's poll is gone, i.e. it is shutting down.
            let _ = self.waker.wake();
        }
    }
}

/// Every handle a thread may need. Cloned into each thread at start.
#[derive(Clone, Debug)]
pub struct Mesh {
    /// One per shard, indexed by `ShardId`.
    pub shards: Vec<ShardHandle>,
    /// The store thread.
    pub store: StoreHandle,
    /// Fan-out.
    pub broker: BrokerHandle,
}

/// Commands a shard's inbox may hold before clients' requests are refused (mostly shared
/// broadcasts, each a pointer).
pub const SHARD_INBOX_LIMIT: usize = 65_536;
/// Commands a shard's inbox may hold at all: past it even durable broadcasts are dropped
/// (see [`ShardHandle::send`]).
pub const SHARD_INBOX_HARD_LIMIT: usize = 4 * SHARD_INBOX_LIMIT;

impl Mesh {
    /// Why a client's request to the store should be refused now, if it should: the store,
    /// or a shard that delivers its broadcasts, is that far behind.
    pub fn congested(&self, now: Instant) -> Option<String> {
        if let Some(why) = self.store.busy(now) {
            return Some(why);
        }
        let behind = self.shards.iter().map(ShardHandle::depth).max()?;
        (behind >= SHARD_INBOX_LIMIT).then(|| {
            format!("the server is busy ({behind} deliveries wait); try again in a moment")
        })
    }

    /// Routes a store reply to the shard that owns the connection.
    pub fn reply(&self, to: ConnectionId, reply: StoreReply) {
        if let Some(shard) = self.shards.get(usize::from(to.shard.0)) {
            shard.send(ShardCommand::Reply(to, reply));
        }
    }
}

#[cfg(test)]
mod tests;
