//! What the `broker` thread is told ([`Input`]), by the store, the shards, the readers, the
//! membership listener and `broker-pg`.

use bytes::Bytes;
use crossbeam_channel::Sender;

use super::pg::Answer;
use crate::ids::{ConnectionId, Room, ShardId};
use crate::mesh::{Publication, StoreReply};

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
    /// Subscribe to these rooms now (they linger if no socket joins), and answer on `ready`
    /// once Redis confirmed every one: a membership is answered only then, so a socket that
    /// joined already receives what other nodes publish (typing and presence too).
    Ready {
        /// The rooms a socket is about to join.
        rooms: Vec<Room>,
        /// Where to answer.
        ready: Sender<()>,
    },
    /// `broker-pg` answered.
    Pg(Answer),
    /// Stop.
    Shutdown,
}
