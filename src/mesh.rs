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
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
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
    /// An admin API request, already authorised by the admin token.
    Admin {
        /// The HTTP connection waiting for the response.
        from: ConnectionId,
        /// What it asks.
        request: AdminRequest,
    },
    /// Finish what is queued, then exit.
    Shutdown,
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
}

impl ShardHandle {
    /// Wraps an inbox and the waker registered with that shard's `Poll`.
    pub fn new(id: ShardId, inbox: Sender<ShardCommand>, waker: Arc<mio::Waker>) -> Self {
        ShardHandle { id, inbox, waker }
    }

    /// Commands waiting in the shard's inbox.
    pub fn depth(&self) -> usize {
        self.inbox.len()
    }

    /// Sends a command and wakes the shard. A shard that has exited drops it.
    pub fn send(&self, command: ShardCommand) {
        if self.inbox.send(command).is_ok() {
            // A failed wake means the shard's poll is gone, i.e. it is shutting down.
            let _ = self.waker.wake();
        }
    }
}

/// The store thread's inbox.
#[derive(Clone, Debug)]
pub struct StoreHandle {
    inbox: Sender<StoreCommand>,
}

impl StoreHandle {
    /// Wraps the store thread's inbox.
    pub fn new(inbox: Sender<StoreCommand>) -> Self {
        StoreHandle { inbox }
    }

    /// Queues a command. Returns `false` when the store thread has exited.
    pub fn send(&self, command: StoreCommand) -> bool {
        self.inbox.send(command).is_ok()
    }

    /// Commands waiting.
    pub fn depth(&self) -> usize {
        self.inbox.len()
    }
}

/// The seam between this node and the others. On one node it loops publications straight
/// back to the local shards and keeps presence in a thread of its own; with Redis the same
/// handle will also carry them to other nodes, without the shards or the store knowing which
/// they have.
#[derive(Clone, Debug)]
pub struct BrokerHandle {
    shards: Vec<ShardHandle>,
    presence: Option<Sender<PresenceCommand>>,
    /// The next broadcast id. Ids only need to differ, so any thread may take one.
    ids: Arc<AtomicU64>,
    /// Whether durable events carry their offset on the wire (connection state recovery).
    recovery: bool,
    /// In a cluster (`REDIS_URL`): the `broker` thread's inbox. Every publication, reply to a
    /// send and interest change goes there instead of straight to the shards.
    cluster: Option<Sender<crate::broker::node::Input>>,
}

impl BrokerHandle {
    /// A broker for a single node, without presence and recovery offsets.
    pub fn local(shards: Vec<ShardHandle>) -> Self {
        BrokerHandle {
            shards,
            presence: None,
            ids: Arc::new(AtomicU64::new(1)),
            recovery: false,
            cluster: None,
        }
    }

    /// Sends every publication through the cluster's `broker` thread (`inbox`).
    pub fn with_cluster(mut self, inbox: Sender<crate::broker::node::Input>) -> Self {
        self.cluster = Some(inbox);
        self
    }

    /// Whether this node is part of a cluster.
    pub fn is_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    /// The next broadcast id (the cluster's `broker` thread takes them here too).
    pub fn next_id(&self) -> BroadcastId {
        BroadcastId(self.ids.fetch_add(1, Relaxed))
    }

    /// Whether durable packets carry their recovery offset.
    pub fn recovery(&self) -> bool {
        self.recovery
    }

    /// The shard handles.
    pub fn shards(&self) -> &[ShardHandle] {
        &self.shards
    }

    /// In a cluster: hands `input` to the `broker` thread and returns `None`; on one node
    /// returns it.
    fn to_cluster(&self, input: crate::broker::node::Input) -> Option<crate::broker::node::Input> {
        match &self.cluster {
            Some(inbox) => {
                let _ = inbox.send(input);
                None
            }
            None => Some(input),
        }
    }

    /// A shard's first local member joined `room` (`joined`), or its last one left. Only a
    /// cluster counts them (to subscribe where there are members).
    pub fn interest(&self, room: Room, shard: ShardId, joined: bool) {
        self.to_cluster(crate::broker::node::Input::Interest {
            room,
            shard,
            joined,
        });
    }

    /// Each room's top sequence, read with a membership no later than its members join:
    /// where a cluster starts the room's stream (see `docs/cluster.md`, starting mid-stream).
    pub fn floors(&self, floors: Vec<(Room, u64)>) {
        if !floors.is_empty() {
            self.to_cluster(crate::broker::node::Input::Floors(floors));
        }
    }

    /// In a cluster, before a membership read reaches its socket: the rooms' floors, and their
    /// subscriptions made and confirmed by Redis (waited for at most a second), so the socket
    /// receives what other nodes publish from the moment it joins. Nothing on one node.
    pub fn prepare(&self, floors: Vec<(Room, u64)>, rooms: &[Room]) {
        let Some(inbox) = &self.cluster else { return };
        self.floors(floors);
        let (ready, wait) = crossbeam_channel::bounded(1);
        let rooms = rooms.to_vec();
        if inbox
            .send(crate::broker::node::Input::Ready { rooms, ready })
            .is_ok()
        {
            let _ = wait.recv_timeout(std::time::Duration::from_secs(1));
        }
    }

    /// The answer to a send, sent after the publications the store handed over before it
    /// (so the sender has its own `message:new` first, on one node as in a cluster).
    pub fn reply_after_publications(&self, to: ConnectionId, reply: StoreReply) {
        if let Some(crate::broker::node::Input::Reply(to, reply)) =
            self.to_cluster(crate::broker::node::Input::Reply(to, reply))
        {
            if let Some(shard) = self.shards.get(usize::from(to.shard.0)) {
                shard.send(ShardCommand::Reply(to, reply));
            }
        }
    }

    /// Routes presence commands to the presence keeper's inbox.
    pub fn with_presence(mut self, inbox: Sender<PresenceCommand>) -> Self {
        self.presence = Some(inbox);
        self
    }

    /// Puts offsets on the wire (connection state recovery is on).
    pub fn with_recovery(mut self) -> Self {
        self.recovery = true;
        self
    }

    /// Publishes an ephemeral event (typing, presence): no offset, nothing to replay.
    pub fn publish(&self, publication: Publication) {
        if let Some(crate::broker::node::Input::Ephemeral(publication)) =
            self.to_cluster(crate::broker::node::Input::Ephemeral(publication))
        {
            self.fan_out(publication, None);
        }
    }

    /// Gives the publication an id and hands it to every shard of this node (each keeps
    /// only its members). On one node every publication leaves through here; in a cluster
    /// the `broker` thread calls it for local ephemeral events.
    pub fn fan_out(&self, publication: Publication, offset: Option<u64>) {
        let broadcast = Arc::new(Broadcast {
            id: BroadcastId(self.ids.fetch_add(1, Relaxed)),
            room: publication.room,
            except: publication.except,
            offset,
            packet: publication.packet,
        });
        for shard in &self.shards {
            shard.send(ShardCommand::Deliver(Arc::clone(&broadcast)));
        }
    }

    /// Tells every shard of a membership change.
    pub fn membership(&self, change: MembershipChange) {
        for shard in &self.shards {
            shard.send(ShardCommand::Membership(change));
        }
    }

    /// Tells the presence keeper (dropped when there is none, as in store tests).
    pub fn presence(&self, command: PresenceCommand) {
        if let Some(inbox) = &self.presence {
            let _ = inbox.send(command);
        }
    }
}

/// The publisher of durable events (`message:new`, `message:deleted`) and the one owner of
/// their offsets. Shards log durable events by offset for connection state recovery and to
/// hand a session over at a transport upgrade, so offsets must rise in publication order:
/// the store thread, which publishes every durable event after its commit, owns the only
/// one. It is not `Clone`, and needs no atomics.
#[derive(Debug)]
pub struct DurablePublisher {
    broker: BrokerHandle,
    next: u64,
}

impl DurablePublisher {
    /// The publisher of a node's durable events, through `broker`.
    pub fn new(broker: BrokerHandle) -> Self {
        DurablePublisher { broker, next: 1 }
    }

    /// Publishes `event` to every member of `room` with the next offset. With recovery on,
    /// Socket.IO carries the offset as the event's last argument. `seq` is the message's
    /// sequence (the deleted one's for `message:deleted`): in a cluster the `broker` thread
    /// orders the room's events by it and gives the offsets itself.
    pub fn publish(&mut self, room: Room, event: &str, data: &impl serde::Serialize, seq: i64) {
        if let Some(inbox) = &self.broker.cluster {
            let _ = inbox.send(crate::broker::node::Input::Durable {
                room,
                deleted: event == "message:deleted",
                seq: u64::try_from(seq).unwrap_or(0),
                packet: Bytes::from(packet::event(event, data, None)),
            });
            return;
        }
        let offset = self.next;
        self.next += 1;
        let text = self.broker.recovery.then(|| offset.to_string());
        let publication = Publication {
            room,
            except: Except::Nobody,
            packet: Bytes::from(packet::event(event, data, text.as_deref())),
        };
        self.broker.fan_out(publication, Some(offset));
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

/// Commands the store's inbox may hold before clients' requests are refused (each holds at
/// most one message: at most 8,192 x 16 KB of content with the default limits).
pub const STORE_INBOX_LIMIT: usize = 8192;
/// Commands a shard's inbox may hold before clients' requests are refused (mostly shared
/// broadcasts, each a pointer).
pub const SHARD_INBOX_LIMIT: usize = 65_536;

impl Mesh {
    /// Why a client's request to the store should be refused now, if it should: the store,
    /// or a shard that delivers its broadcasts, is that far behind.
    pub fn congested(&self) -> Option<String> {
        let store = self.store.depth();
        if store >= STORE_INBOX_LIMIT {
            return Some(format!(
                "the server is busy ({store} requests wait for the store); try again in a moment"
            ));
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
mod tests {
    use super::*;

    #[test]
    fn a_full_store_inbox_refuses_client_requests_and_says_why() {
        let (tx, _rx) = crossbeam_channel::unbounded();
        let mesh = Mesh {
            shards: Vec::new(),
            store: StoreHandle::new(tx),
            broker: BrokerHandle::local(Vec::new()),
        };
        assert_eq!(mesh.congested(), None);
        for _ in 0..STORE_INBOX_LIMIT {
            mesh.store.send(StoreCommand::Shutdown);
        }
        let why = mesh.congested().expect("the store is that far behind");
        assert!(why.contains("8192 requests wait for the store"), "{why}");
    }
}
