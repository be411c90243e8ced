//! The broker seam ([`BrokerHandle`]) and the publisher of durable events
//! ([`DurablePublisher`]): how publications leave a shard, the store or the presence keeper,
//! to this node's shards on one node, or through the `broker` thread in a cluster.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use crossbeam_channel::Sender;

use super::{
    Broadcast, BroadcastId, Except, PresenceCommand, Publication, ShardCommand, ShardHandle,
    StoreReply,
};
use crate::broker::input::Admission;
use crate::ids::{ConnectionId, Room, ShardId};
use crate::model::MembershipChange;
use crate::protocol::packet;

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
    /// In a cluster, this node's id (16 hex digits): in pids and offsets.
    node: Option<Arc<str>>,
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
            node: None,
        }
    }

    /// Sends every publication through the cluster's `broker` thread (`inbox`) of node
    /// `node`.
    pub fn with_cluster(
        mut self,
        inbox: Sender<crate::broker::node::Input>,
        node: crate::broker::names::NodeId,
    ) -> Self {
        self.cluster = Some(inbox);
        self.node = Some(node.to_string().into());
        self
    }

    /// In a cluster, this node's id as pids and offsets carry it.
    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }

    /// Asks the node that holds a detached session for it (through the `broker` thread); the
    /// answer comes to the socket's shard as [`ShardCommand::Recovered`]. `false` on one node.
    pub fn recover(&self, ask: super::RecoverAsk) -> bool {
        match &self.cluster {
            Some(inbox) => {
                let _ = inbox.send(crate::broker::node::Input::Recover(ask));
                true
            }
            None => false,
        }
    }

    /// A shard's answer to [`ShardCommand::Handover`].
    pub fn handed(&self, req: u64, session: Option<crate::chat::state::Detached>) {
        self.to_cluster(crate::broker::node::Input::Handed { req, session });
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

    /// A reply that joins its socket to `rooms` (CONNECT, `room:join`), read with their
    /// `floors`. In a cluster the `broker` thread hands it over once the rooms are subscribed
    /// (and holds their events back until then; see [`crate::broker::node::Input::Ready`]);
    /// on one node it goes now.
    pub fn admit_reply(
        &self,
        floors: Vec<(Room, u64)>,
        rooms: Vec<Room>,
        to: ConnectionId,
        reply: StoreReply,
    ) {
        self.admit(floors, rooms, true, Admission::Reply(to, reply));
    }

    /// Another node's membership change, read with the room's `floor` (a join's): in a
    /// cluster it reaches the shards through the `broker` thread, in line with the room's
    /// other admissions and ahead of its events (see [`crate::broker::node::Input::Ready`]).
    pub fn admit_membership(&self, floor: Option<u64>, change: MembershipChange) {
        let floors = floor.map(|f| vec![(change.room, f)]).unwrap_or_default();
        let admission = Admission::Membership(change);
        self.admit(floors, vec![change.room], change.joined, admission);
    }

    /// An admission: through the `broker` thread in a cluster, carried out now on one node.
    fn admit(
        &self,
        floors: Vec<(Room, u64)>,
        rooms: Vec<Room>,
        subscribe: bool,
        admission: Admission,
    ) {
        match &self.cluster {
            Some(inbox) => {
                let _ = inbox.send(crate::broker::node::Input::Ready {
                    floors,
                    rooms,
                    subscribe,
                    admission,
                });
            }
            None => self.carry_out(admission),
        }
    }

    /// Hands an admission to the shards now: the reply to its socket's shard, a membership
    /// change to every shard.
    pub fn carry_out(&self, admission: Admission) {
        match admission {
            Admission::Reply(to, reply) => self.reply(to, reply),
            Admission::Membership(change) => self.membership(change),
            Admission::Resume {
                to,
                session,
                replay,
            } => {
                let replay = session.is_some().then_some(replay);
                if let Some(shard) = self.shards.get(usize::from(to.shard.0)) {
                    shard.send(ShardCommand::Recovered {
                        to,
                        session,
                        replay,
                    });
                }
            }
        }
    }

    /// Hands a store reply to the shard that owns its connection.
    pub fn reply(&self, to: ConnectionId, reply: StoreReply) {
        if let Some(shard) = self.shards.get(usize::from(to.shard.0)) {
            shard.send(ShardCommand::Reply(to, reply));
        }
    }

    /// The answer to a send, sent after the publications the store handed over before it
    /// (so the sender has its own `message:new` first, on one node as in a cluster).
    pub fn reply_after_publications(&self, to: ConnectionId, reply: StoreReply) {
        if let Some(crate::broker::node::Input::Reply(to, reply)) =
            self.to_cluster(crate::broker::node::Input::Reply(to, reply))
        {
            self.reply(to, reply);
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

    /// A typer's refresh: published to other nodes so their timers for it keep running;
    /// nothing on one node (the origin's own timer is the one that counts there).
    pub fn typing_refresh(&self, publication: Publication) {
        if let Some(inbox) = &self.cluster {
            let _ = inbox.send(crate::broker::node::Input::TypingRefresh(publication));
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
