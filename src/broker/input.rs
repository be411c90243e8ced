//! What the `broker` thread is told ([`Input`]), by the store, the shards, the readers, the
//! membership listener and `broker-pg`.

use bytes::Bytes;

use super::pg::Answer;
use crate::ids::{ConnectionId, Room, ShardId, UserId, WorkspaceId};
use crate::mesh::{Publication, StoreReply};
use crate::model::MembershipChange;

/// A reconnect that asks another node of the cluster for its detached session (see
/// `docs/cluster.md`, connection state recovery across nodes).
#[derive(Debug)]
pub struct RecoverAsk {
    /// The reconnected socket.
    pub to: ConnectionId,
    /// The node that holds the session (16 hex digits).
    pub node: String,
    /// The session's private id.
    pub pid: String,
    /// The client's last offset, a counter of `node`.
    pub offset: Option<u64>,
    /// Who reconnected (the session must be theirs).
    pub user: UserId,
    /// Where.
    pub workspace: WorkspaceId,
    /// The rooms granted now.
    pub rooms: Vec<Room>,
}

/// What a membership read admits once its rooms are ready (see [`Input::Ready`]).
#[derive(Debug)]
pub enum Admission {
    /// A reply that joins its socket to rooms (CONNECT, `room:join`).
    Reply(ConnectionId, StoreReply),
    /// A membership change another node made, for this node's sockets of its user.
    Membership(MembershipChange),
    /// A session recovered from another node: the socket's shard gets the session and its
    /// replay, each packet given the node's offset when it is carried out.
    Resume {
        /// The reconnected socket.
        to: ConnectionId,
        /// The session (`None`: a clean new session after all).
        session: Option<crate::chat::state::Detached>,
        /// The replay: `42["message:new",…]` packets without offsets, in order.
        replay: Vec<Bytes>,
    },
}

/// What the `broker` thread is told.
#[derive(Debug)]
pub enum Input {
    /// The store committed `message:new` (or `message:deleted` of the message with sequence
    /// `seq`); `packet` has no recovery offset yet.
    Durable {
        /// The message's room.
        room: Room,
        /// A deletion.
        deleted: bool,
        /// The message's sequence.
        seq: u64,
        /// `42["message:new",{…}]`.
        packet: Bytes,
    },
    /// A reply the store sent after the publications before it.
    Reply(ConnectionId, StoreReply),
    /// An ephemeral event (typing, or presence while Redis is down).
    Ephemeral(Publication),
    /// A typer's refresh (its `typing:update` start), published for other nodes only.
    TypingRefresh(Publication),
    /// A shard's first member joined a room, or its last one left.
    Interest {
        /// The room.
        room: Room,
        /// The shard.
        shard: ShardId,
        /// First member (`true`) or last one gone.
        joined: bool,
    },
    /// Rooms' tops read with a membership, before its sockets join.
    Floors(Vec<(Room, u64)>),
    /// A membership read on its way to its sockets: its rooms start at `floors`, are
    /// subscribed (when `subscribe`; they linger if no socket joins), and `admission` is carried
    /// out once Redis confirmed every one (or after a second), after any admission before it
    /// on the same rooms. Until then the rooms' durable events are held back, so the socket is
    /// in its rooms before the first event after the floor reaches its shard, and receives what
    /// other nodes publish from then on (typing and presence too).
    Ready {
        /// Each room's top sequence read with the membership.
        floors: Vec<(Room, u64)>,
        /// The rooms the admission joins (or leaves).
        rooms: Vec<Room>,
        /// Subscribe the rooms (a join); a leave only keeps its place in line.
        subscribe: bool,
        /// What to carry out.
        admission: Admission,
    },
    /// A reconnect asks another node for its detached session.
    Recover(crate::mesh::RecoverAsk),
    /// A shard's answer to [`crate::mesh::ShardCommand::Handover`].
    Handed {
        /// The broker's request number.
        req: u64,
        /// The session, if it was still kept.
        session: Option<crate::chat::state::Detached>,
    },
    /// `broker-pg` answered.
    Pg(Answer),
    /// Stop.
    Shutdown,
}
