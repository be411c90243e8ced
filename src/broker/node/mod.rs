//! The `broker` thread: what joins a node to the cluster (design: `docs/cluster.md`).
//!
//! It sits between the store, the shards and the Redis link. Its one inbox ([`Input`]) takes
//! the store's committed publications and the replies that follow them, the shards' interest
//! changes and ephemeral publications (typing), the readers' floors, and `broker-pg`'s
//! answers; the link's events come on their own bounded channel. For each room with local
//! members it keeps a stream in the [`Sequencer`], so a room's `message:new` events reach the
//! shards in sequence order whether they were committed here or on another node, and gives
//! each released durable event the node's next recovery offset. The shards never see Redis.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use rustc_hash::{FxHashMap, FxHashSet};

use super::codec::{self, Header, Kind, Place};
use super::deletions::Deletions;
use super::handover::ReleaseLog;
use super::interest::{Change, Interest, LINGER};
use super::link::{Event, Link};
use super::metrics::BrokerMetrics;
use super::names::{Names, NodeId};
use super::pg::{Answer, Ask};
use super::sequencer::{Output, Sequencer, SequencerConfig};
use super::typing::{self, RemoteTypers, Show};
use crate::ids::{Room, ShardId};
use crate::mesh::{Broadcast, BrokerHandle, Except, Publication, ShardCommand};

pub use super::input::Input;

mod admit;
mod outage;
mod resume;
mod upkeep;

use admit::Admissions;

/// How long a floor read with a membership waits for its socket to join.
const HINT_TTL: Duration = Duration::from_secs(10);

/// How long a room whose first member came without a floor waits for one (the NOTIFY of a
/// membership this node made) before its top is read instead.
const PENDING_WAIT: Duration = Duration::from_millis(1000);

/// Most deletions waiting for their message per room.
const MAX_WAITING_DELETES: usize = 1024;

/// The interest of a membership read on its way to a socket (see [`Input::Ready`]).
const PREPARING: ShardId = ShardId(u16::MAX);

/// Most rooms remembered with publications Redis did not take.
const MAX_UNPUBLISHED: usize = 100_000;

/// A room whose first member came without a floor.
struct Pending {
    since: Instant,
    asked: bool,
    held: Vec<(u64, Bytes)>,
}

/// The thread's state.
pub struct Broker {
    node: NodeId,
    names: Names,
    link: Arc<Link>,
    broker: BrokerHandle,
    metrics: Arc<BrokerMetrics>,
    pg: Sender<Ask>,
    seq: Sequencer<Room, Bytes>,
    interest: Interest<Room>,
    /// Channel name → room, for subscription confirmations.
    channels: FxHashMap<String, Room>,
    /// Channels Redis confirmed (since the subscriber's last loss).
    confirmed: FxHashSet<String>,
    /// Typers on other nodes shown here, with their timers.
    typers: RemoteTypers,
    /// Membership reads waiting for their rooms' confirmations.
    admissions: Admissions,
    hints: FxHashMap<Room, (u64, Instant)>,
    pending: FxHashMap<Room, Pending>,
    /// Deletions whose message this node has not released yet: (sequence, packet).
    deletes: FxHashMap<Room, Vec<(u64, Bytes)>>,
    /// Highest sequence per room that Redis did not take: announced as a watermark later.
    unpublished: FxHashMap<Room, u64>,
    /// Deletions Redis did not take: published again later.
    unpublished_deletes: Vec<(Room, u64, Bytes)>,
    /// Deletions released recently, and the outage whose deletions are read from PostgreSQL.
    deletions: Deletions<Room>,
    /// The next read of an outage's deletions.
    next_deletions_read: Instant,
    /// The last recovery offset given.
    offset: u64,
    /// Positions released per room at each offset (recovery on another node).
    log: ReleaseLog,
    /// Reconnects here waiting for another node's answer.
    asking: FxHashMap<u64, resume::Asking>,
    /// Other nodes' requests waiting for this node's shards.
    handing: FxHashMap<u64, resume::Handing>,
    /// Sessions handed over from here, and where to (until the window ends).
    moved: FxHashMap<Box<str>, (NodeId, Instant)>,
    /// The last request number.
    next_req: u64,
    /// The recovery window.
    window: Duration,
    /// Publication ids of this node.
    next_id: u64,
    sweep: Duration,
    next_sweep: Instant,
    subscriber_down: bool,
    out: Vec<Output<Room, Bytes>>,
}

impl Broker {
    /// The broker of `node`, over a started `link`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node: NodeId,
        names: Names,
        link: Arc<Link>,
        broker: BrokerHandle,
        metrics: Arc<BrokerMetrics>,
        pg: Sender<Ask>,
        gap_fill: Duration,
        sweep: Duration,
        linger: Duration,
    ) -> Broker {
        Broker {
            node,
            names,
            link,
            broker,
            metrics,
            pg,
            seq: Sequencer::new(SequencerConfig {
                gap_fill,
                ..SequencerConfig::default()
            }),
            // A room stays subscribed (and its stream runs) for the recovery window after its
            // last member left: a detached session's missed events must reach the shards'
            // recovery logs.
            interest: Interest::new(LINGER.max(linger)),
            channels: FxHashMap::default(),
            confirmed: FxHashSet::default(),
            admissions: Admissions::default(),
            typers: RemoteTypers::default(),
            hints: FxHashMap::default(),
            pending: FxHashMap::default(),
            deletes: FxHashMap::default(),
            unpublished: FxHashMap::default(),
            unpublished_deletes: Vec::new(),
            deletions: Deletions::new(sweep, std::time::SystemTime::now()),
            next_deletions_read: Instant::now(),
            offset: 0,
            log: ReleaseLog::new(LINGER.max(linger)),
            asking: FxHashMap::default(),
            handing: FxHashMap::default(),
            moved: FxHashMap::default(),
            next_req: 0,
            window: LINGER.max(linger),
            next_id: 1,
            sweep,
            next_sweep: Instant::now() + sweep,
            subscriber_down: false,
            out: Vec::new(),
        }
    }

    /// Runs until [`Input::Shutdown`] or until the inbox closes.
    pub fn run(mut self, inbox: &Receiver<Input>, events: &Receiver<Event>) {
        loop {
            let now = Instant::now();
            let wait = self
                .seq
                .next_due()
                .map_or(Duration::from_millis(100), |at| {
                    at.saturating_duration_since(now)
                })
                .min(Duration::from_millis(100));
            crossbeam_channel::select! {
                recv(inbox) -> input => match input {
                    Ok(Input::Shutdown) | Err(_) => break,
                    Ok(input) => {
                        self.input(input, Instant::now());
                        // Take what queued meanwhile before looking at the link again.
                        for _ in 0..256 {
                            match inbox.try_recv() {
                                Ok(Input::Shutdown) => return,
                                Ok(input) => self.input(input, Instant::now()),
                                Err(_) => break,
                            }
                        }
                    }
                },
                recv(events) -> event => if let Ok(event) = event {
                    self.event(event, Instant::now());
                },
                default(wait) => {}
            }
            self.tick(Instant::now());
        }
    }

    fn input(&mut self, input: Input, now: Instant) {
        match input {
            Input::Durable {
                room,
                deleted,
                seq,
                packet,
            } => {
                self.publish(
                    room,
                    if deleted {
                        Kind::MessageDeleted
                    } else {
                        Kind::MessageNew
                    },
                    Some(seq),
                    None,
                    &packet,
                );
                self.durable(room, deleted, seq, packet, now);
            }
            Input::Reply(to, reply) => self.broker.reply(to, reply),
            Input::Ephemeral(publication) => {
                if let Some(kind) = ephemeral_kind(&publication) {
                    let except = match publication.except {
                        Except::User(u) => Some(u),
                        _ => None,
                    };
                    self.publish(publication.room, kind, None, except, &publication.packet);
                }
                self.broker.fan_out(publication, None);
            }
            Input::TypingRefresh(publication) => {
                if let (Some(_), Except::User(user)) =
                    (ephemeral_kind(&publication), publication.except)
                {
                    let room = publication.room;
                    let packet = publication.packet;
                    self.publish(room, Kind::TypingRefresh, None, Some(user), &packet);
                }
            }
            Input::Interest {
                room,
                shard,
                joined,
            } => {
                if joined {
                    if let Change::Subscribe(room) = self.interest.add(room, shard) {
                        self.start(room, now);
                    }
                } else {
                    self.interest.remove(&room, shard, now);
                }
            }
            Input::Floors(floors) => {
                for (room, floor) in floors {
                    self.floor(room, floor, now);
                }
            }
            Input::Ready {
                floors,
                rooms,
                subscribe,
                admission,
            } => self.ready(floors, rooms, subscribe, admission, now),
            Input::Pg(answer) => self.answer(answer, now),
            Input::Recover(ask) => self.ask(ask, now),
            Input::Handed { req, session } => self.handed(req, session, now),
            Input::Shutdown => {}
        }
        self.settle(now);
    }

    /// Publishes on the room's channel; what Redis does not take is announced later.
    fn publish(
        &mut self,
        room: Room,
        kind: Kind,
        seq: Option<u64>,
        except: Option<crate::ids::UserId>,
        packet: &[u8],
    ) {
        let header = Header {
            kind,
            origin: self.node,
            id: self.next_id,
            sent_at_micros: super::now_micros(),
            room: Some(room),
            place: seq.map(|s| Place { pos: s, seq: s }),
            except,
        };
        self.next_id += 1;
        let channel = match room {
            Room::Channel(_) | Room::Dm(_) => self.names.room(room),
            _ => return,
        };
        if self
            .link
            .publish(channel, codec::encode(&header, packet))
            .is_err()
        {
            self.lost(room, kind, seq, packet);
        }
    }

    /// A durable publication Redis did not take: its room gets a watermark once it can (a
    /// deletion is published again).
    fn lost(&mut self, room: Room, kind: Kind, seq: Option<u64>, packet: &[u8]) {
        match (kind, seq) {
            (Kind::MessageDeleted, Some(seq)) => self.lost_deletion(room, seq, packet),
            (Kind::MessageNew | Kind::Watermark, Some(seq))
                if self.unpublished.len() < MAX_UNPUBLISHED
                    || self.unpublished.contains_key(&room) =>
            {
                let top = self.unpublished.entry(room).or_default();
                *top = (*top).max(seq);
            }
            _ => {}
        }
    }

    /// A durable event for this node's members (committed here or received).
    fn durable(&mut self, room: Room, deleted: bool, seq: u64, packet: Bytes, now: Instant) {
        if deleted {
            self.deletion(room, seq, packet, now);
            return;
        }
        if let Some(p) = self.pending.get_mut(&room) {
            if p.held.len() < MAX_WAITING_DELETES {
                p.held.push((seq, packet));
            }
            return;
        }
        self.seq.arrive(&room, seq, packet, now, &mut self.out);
    }

    /// A room gained its first member on this node: subscribe, and start its stream at the
    /// floor read with the membership (or wait a moment for one).
    fn start(&mut self, room: Room, now: Instant) {
        if matches!(room, Room::User(_)) {
            return;
        }
        let channel = self.names.room(room);
        if room.target().is_some() {
            match self.hints.remove(&room) {
                Some((floor, _)) => {
                    self.seq.start(room, floor);
                    self.log.start(room, floor);
                }
                None => {
                    self.pending.insert(
                        room,
                        Pending {
                            since: now,
                            asked: false,
                            held: Vec::new(),
                        },
                    );
                }
            }
        }
        self.channels.insert(channel.clone(), room);
        self.link.subscribe(vec![channel]);
    }

    /// A floor read with a membership: kept until the room's first member joins (the lowest
    /// one wins), or starts a room that waited for it.
    fn floor(&mut self, room: Room, floor: u64, now: Instant) {
        if let Some(p) = self.pending.remove(&room) {
            self.begin(room, floor, p.held, now);
            return;
        }
        if self.seq.released(&room).is_some() {
            return;
        }
        let hint = self.hints.entry(room).or_insert((floor, now));
        if floor < hint.0 || now.duration_since(hint.1) > HINT_TTL {
            *hint = (floor, now);
        }
    }

    /// Starts a pending room's stream at `floor` and lets what waited arrive.
    fn begin(&mut self, room: Room, floor: u64, held: Vec<(u64, Bytes)>, now: Instant) {
        self.seq.start(room, floor);
        self.log.start(room, floor);
        for (seq, packet) in held {
            self.seq.arrive(&room, seq, packet, now, &mut self.out);
        }
        // Its subscription may have been confirmed while it waited.
        self.seq.confirmed(&room, &mut self.out);
    }

    fn answer(&mut self, answer: Answer, now: Instant) {
        match answer {
            Answer::Filled {
                room,
                rows,
                top,
                complete,
            } => self
                .seq
                .filled(&room, rows, top, complete, now, &mut self.out),
            Answer::FillFailed(room) => self.seq.fill_failed(&room, now),
            Answer::Replayed { req, packets } => {
                self.admissions.replayed(req, packets);
                self.admit(now);
            }
            Answer::Deletions { found, at, cut } => {
                self.deletions.read(at, cut);
                self.caught_up(found, now);
            }
            Answer::Tops(tops) => {
                for (room, top) in tops {
                    if let Some(p) = self.pending.remove(&room) {
                        self.begin(room, top, p.held, now);
                    } else {
                        self.seq.watermark(&room, top, &mut self.out);
                    }
                }
            }
        }
    }

    fn event(&mut self, event: Event, now: Instant) {
        match event {
            Event::Message { payload, .. } => self.receive(payload, now),
            Event::Subscribed(channel) => {
                if let Some(room) = self.channels.get(&channel).copied() {
                    self.seq.confirmed(&room, &mut self.out);
                }
                self.admissions.confirmed(&channel);
                self.confirmed.insert(channel);
                self.admit(now);
            }
            Event::SubscriberDown => {
                self.subscriber_down = true;
                self.deletions.down();
                self.confirmed.clear();
            }
            Event::Unpublished(payloads) => {
                for payload in payloads {
                    if let Ok(p) = codec::decode(Bytes::from(payload)) {
                        if let (Some(room), Some(place)) = (p.header.room, p.header.place) {
                            self.lost(room, p.header.kind, Some(place.pos), &p.packet);
                        }
                    }
                }
            }
        }
        self.settle(now);
    }

    /// A publication from Redis.
    fn receive(&mut self, payload: Bytes, now: Instant) {
        let publication = match codec::decode(payload) {
            Ok(p) => p,
            Err(e) => {
                self.metrics
                    .decode_errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(error = %e, "dropped a publication this node cannot read");
                return;
            }
        };
        let h = publication.header;
        // Presence updates are published by Redis's script, with this node as origin too:
        // every node, this one included, shows them as they come.
        if h.origin == self.node && h.kind != Kind::Presence {
            return;
        }
        self.metrics
            .lag(super::now_micros().saturating_sub(h.sent_at_micros));
        if h.kind == Kind::Control {
            return self.control_message(&publication.packet, now);
        }
        let Some(room) = h.room else { return };
        match (h.kind, h.place) {
            (Kind::MessageNew, Some(place)) => {
                self.durable(room, false, place.seq, publication.packet, now)
            }
            (Kind::MessageDeleted, Some(place)) => {
                self.durable(room, true, place.seq, publication.packet, now)
            }
            (Kind::Watermark, Some(place)) => self.seq.watermark(&room, place.pos, &mut self.out),
            (Kind::Typing | Kind::TypingRefresh, _) => {
                let packet = publication.packet;
                let show = match (h.except, typing::is_start(&packet)) {
                    (Some(user), Some(start)) => {
                        let key = (room, user, h.origin);
                        if h.kind == Kind::TypingRefresh {
                            self.typers.refresh(key, &packet, now)
                        } else {
                            self.typers.update(key, start, &packet, now)
                        }
                    }
                    // Not a typer's packet this node can time: shown as it came.
                    _ if h.kind == Kind::Typing => Show::AsIs,
                    _ => Show::Nothing,
                };
                if show == Show::AsIs {
                    self.local(room, h.except.map_or(Except::Nobody, Except::User), packet);
                }
            }
            (Kind::Presence, _) => self.local(
                room,
                h.except.map_or(Except::Nobody, Except::User),
                publication.packet,
            ),
            _ => {}
        }
    }

    /// An ephemeral event from another node, for this node's members.
    fn local(&mut self, room: Room, except: Except, packet: Bytes) {
        let broadcast = Arc::new(Broadcast {
            id: self.broker.next_id(),
            room,
            except,
            offset: None,
            packet,
        });
        self.send(room, broadcast);
    }

    /// Hands a released durable event to the room's shards, or holds it back while an
    /// admission on the room waits (see [`admit`]).
    /// `position` is the sequence of a `message:new` (a deletion has none).
    fn release(&mut self, room: Room, seq: u64, position: Option<u64>, packet: Bytes) {
        if let Some(packet) = self.admissions.hold(room, seq, position, packet) {
            self.release_now(room, seq, position, packet);
        }
    }

    /// Hands a durable event to the room's shards with the node's next offset,
    /// `<node>:<counter>` on the wire (the node names whose counter it is).
    /// A deletion (no `position`) is kept with the sequence of its message, `seq`, for a
    /// recovery on another node.
    fn release_now(&mut self, room: Room, seq: u64, position: Option<u64>, packet: Bytes) {
        self.offset += 1;
        let packet = if self.broker.recovery() {
            let now = Instant::now();
            match position {
                Some(position) => self.log.record(room, self.offset, position, now),
                None => self
                    .log
                    .record_deletion(room, self.offset, seq, packet.clone(), now),
            }
            let offset = format!("{}:{}", self.node, self.offset);
            Bytes::from(codec::with_offset(&packet, &offset))
        } else {
            packet
        };
        let broadcast = Arc::new(Broadcast {
            id: self.broker.next_id(),
            room,
            except: Except::Nobody,
            offset: Some(self.offset),
            packet,
        });
        // Every shard, as on one node: each keeps durable events in its recovery log, also
        // for rooms whose members there went away within the window.
        for shard in self.broker.shards() {
            shard.send(ShardCommand::Deliver(Arc::clone(&broadcast)));
        }
    }

    fn send(&self, room: Room, broadcast: Arc<Broadcast>) {
        let shards = self.broker.shards();
        for id in self.interest.shards(&room) {
            if let Some(shard) = shards.get(usize::from(id.0)) {
                shard.send(ShardCommand::Deliver(Arc::clone(&broadcast)));
            }
        }
    }
}

/// The wire kind of an ephemeral publication that crosses nodes: on channel and DM rooms
/// that is `typing:update` (presence is published by Redis's script; while Redis is down the
/// presence thread announces to local members only).
fn ephemeral_kind(p: &Publication) -> Option<Kind> {
    match p.room {
        Room::Channel(_) | Room::Dm(_) => Some(Kind::Typing),
        _ => None,
    }
}
