//! The store thread driven through its inbox, with real shard inboxes and a real `mio::Waker`,
//! asserting the `ShardCommand`s the shard would receive. No sockets.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use chrono::{DateTime, TimeZone};
use crossbeam_channel::{Receiver, Sender};
use serde_json::Value;

use super::*;
use crate::api::AdminRequest;
use crate::chat::auth::Credential;
use crate::ids::{ChannelId, ConversationId};
use crate::ids::{Room, ShardId, Target};
use crate::mesh::{BrokerHandle, ShardCommand, ShardHandle, StoreHandle};
use crate::model::{Grant, MembershipChange};

mod admin;
mod connect;
mod lanes;
mod messages;
mod window;

// The same test files again, on PostgreSQL: loading them twice is the point.
#[allow(clippy::duplicate_mod)]
mod on_postgres;

/// A fixed clock for backend tests.
pub(super) fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

/// Two workspaces. `ws`: ann and bob (members of `general` and of the DM), carl (workspace
/// member, in no room), `quiet` (ann only). `ws2`: ann, with channel `elsewhere`. dave is in
/// no workspace.
pub(super) struct World {
    pub ann: UserId,
    pub bob: UserId,
    pub carl: UserId,
    pub dave: UserId,
    pub ws: WorkspaceId,
    pub ws2: WorkspaceId,
    pub general: ChannelId,
    pub quiet: ChannelId,
    pub elsewhere: ChannelId,
    pub dm: ConversationId,
}

pub(super) fn world() -> (MemoryBackend, World) {
    let mut b = MemoryBackend::new();
    let w = world_in(&mut b);
    (b, w)
}

/// Fills any backend with the `world()` rows.
pub(super) fn world_in<B: Backend>(b: &mut B) -> World {
    let now = t0();
    let ann = b.create_user("Ann", Some("ann@example.com"), now).unwrap();
    let bob = b.create_user("Bob", None, now).unwrap();
    let carl = b.create_user("Carl", None, now).unwrap();
    let dave = b.create_user("Dave", None, now).unwrap();
    let ws = b.create_workspace("acme", "Acme", now).unwrap();
    let ws2 = b.create_workspace("other", "Other", now).unwrap();
    for u in [ann, bob, carl] {
        b.add_workspace_member(ws, u, None).unwrap();
    }
    b.add_workspace_member(ws2, ann, Some("admin")).unwrap();
    let general = b
        .create_channel(ws, "general", "General", false, now)
        .unwrap();
    let quiet = b.create_channel(ws, "quiet", "Quiet", true, now).unwrap();
    let elsewhere = b
        .create_channel(ws2, "general", "General", false, now)
        .unwrap();
    b.add_channel_member(general, ann).unwrap();
    b.add_channel_member(general, bob).unwrap();
    b.add_channel_member(quiet, ann).unwrap();
    b.add_channel_member(elsewhere, ann).unwrap();
    let (dm, _) = b.create_conversation(ws, &[ann, bob], now).unwrap();
    World {
        ann,
        bob,
        carl,
        dave,
        ws,
        ws2,
        general,
        quiet,
        elsewhere,
        dm,
    }
}

pub(super) fn new_message(
    author: UserId,
    ws: WorkspaceId,
    target: Target,
    text: &str,
) -> NewMessage {
    NewMessage {
        author,
        workspace: Some(ws),
        target,
        content: text.into(),
        client_msg_id: None,
    }
}

const CONN: ConnectionId = ConnectionId {
    shard: ShardId(0),
    slot: crate::ids::SocketRef::Conn(7),
    generation: 1,
};

/// A mesh of one shard, whose inbox is returned (with the `Poll` its waker needs), and the
/// store behind `store`.
fn mesh(store: Sender<StoreCommand>) -> (Mesh, Receiver<ShardCommand>, mio::Poll) {
    let poll = mio::Poll::new().unwrap();
    let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).unwrap());
    let (shard_tx, shard) = crossbeam_channel::unbounded();
    let shards = vec![ShardHandle::new(ShardId(0), shard_tx, waker)];
    let mesh = Mesh {
        shards: shards.clone(),
        store: StoreHandle::new(store),
        broker: BrokerHandle::local(shards),
    };
    (mesh, shard, poll)
}

/// The store thread with one shard inbox to watch.
struct Harness {
    inbox: Option<Sender<StoreCommand>>,
    shard: Receiver<ShardCommand>,
    thread: Option<JoinHandle<()>>,
    metrics: Arc<Metrics>,
    _poll: mio::Poll,
    w: World,
    /// The database of a PostgreSQL harness, dropped after the threads.
    _db: Option<pg::testing::TestDb>,
}

impl Harness {
    /// Spawns the store over the `world()` data; `queued` commands are in its inbox before
    /// the thread starts, so the first drain takes them all at once.
    fn start(queued: impl FnOnce(&World) -> Vec<StoreCommand>) -> Harness {
        let (backend, w) = world();
        Self::start_on(backend, w, None, queued)
    }

    /// [`Harness::start`] on a fresh PostgreSQL database.
    fn start_pg(queued: impl FnOnce(&World) -> Vec<StoreCommand>) -> Harness {
        let db = pg::testing::TestDb::create();
        pg::migrate(&db.url()).unwrap();
        let mut backend = pg::PgBackend::new(
            &db.url(),
            pg::InsertMethod::Unnest,
            Arc::new(Metrics::new(1)),
        );
        let w = world_in(&mut backend);
        Self::start_on(backend, w, Some(db), queued)
    }

    /// [`Harness::start_pg`] with `lanes` writer lanes (see [`super::lanes`]).
    fn start_pg_lanes(lanes: usize, queued: impl FnOnce(&World) -> Vec<StoreCommand>) -> Harness {
        let db = pg::testing::TestDb::create();
        pg::migrate(&db.url()).unwrap();
        let metrics = Arc::new(Metrics::new(1));
        let backend =
            || pg::PgBackend::new(&db.url(), pg::InsertMethod::Unnest, Arc::clone(&metrics));
        let mut writer = backend();
        let w = world_in(&mut writer);
        let lanes = (0..lanes).map(|_| backend()).collect();
        Self::spawn(writer, lanes, w, Some(db), queued)
    }

    fn start_on<B: Backend + Send + 'static>(
        backend: B,
        w: World,
        db: Option<pg::testing::TestDb>,
        queued: impl FnOnce(&World) -> Vec<StoreCommand>,
    ) -> Harness {
        Self::spawn(backend, Vec::new(), w, db, queued)
    }

    fn spawn<B: Backend + Send + 'static>(
        backend: B,
        lanes: Vec<B>,
        w: World,
        db: Option<pg::testing::TestDb>,
        queued: impl FnOnce(&World) -> Vec<StoreCommand>,
    ) -> Harness {
        let (inbox, store_rx) = crossbeam_channel::unbounded();
        let (mesh, shard, poll) = mesh(inbox.clone());
        for command in queued(&w) {
            inbox.send(command).unwrap();
        }
        let metrics = Arc::new(Metrics::new(1));
        let thread = spawn_pool(
            backend,
            Vec::new(),
            lanes,
            Duration::ZERO,
            store_rx,
            mesh,
            Arc::clone(&metrics),
        )
        .unwrap();
        Harness {
            inbox: Some(inbox),
            shard,
            thread: Some(thread),
            metrics,
            _poll: poll,
            w,
            _db: db,
        }
    }

    fn send(&self, command: StoreCommand) {
        self.inbox.as_ref().unwrap().send(command).unwrap();
    }

    fn next(&self) -> ShardCommand {
        self.shard
            .recv_timeout(Duration::from_secs(10))
            .expect("the store answers")
    }

    /// The next command must be a reply to `CONN`.
    fn reply(&self) -> StoreReply {
        match self.next() {
            ShardCommand::Reply(to, reply) => {
                assert_eq!(to, CONN);
                reply
            }
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    /// The next command must be a broadcast: its room, event name and data.
    fn broadcast(&self) -> (Room, String, Value) {
        match self.next() {
            ShardCommand::Deliver(b) => {
                let (name, data) = event_of(&b.packet);
                (b.room, name, data)
            }
            other => panic!("expected a broadcast, got {other:?}"),
        }
    }

    fn membership(&self) -> MembershipChange {
        match self.next() {
            ShardCommand::Membership(change) => change,
            other => panic!("expected a membership change, got {other:?}"),
        }
    }

    fn asker(&self, user: UserId) -> Asker {
        Asker {
            from: CONN,
            user,
            workspace: self.w.ws,
        }
    }

    fn authenticate(
        &self,
        credential: Credential,
        workspace: WorkspaceId,
    ) -> Result<Grant, StoreError> {
        self.send(StoreCommand::Authenticate {
            from: CONN,
            credential,
            workspace,
        });
        match self.reply() {
            StoreReply::Authenticated(result) => result,
            other => panic!("expected Authenticated, got {other:?}"),
        }
    }

    /// Sends and expects only the reply (no broadcast before it).
    fn send_message(&self, message: NewMessage) -> Result<Message, StoreError> {
        self.send(StoreCommand::Send {
            asker: self.asker(message.author),
            ack: Some(3),
            message,
            received: std::time::Instant::now(),
        });
        match self.reply() {
            StoreReply::Sent { ack, result } => {
                assert_eq!(ack, Some(3));
                result
            }
            other => panic!("expected Sent, got {other:?}"),
        }
    }

    /// Sends a message that must be stored: expects `message:new`, then the reply.
    fn post(&self, author: UserId, target: Target, text: &str) -> Message {
        self.send(StoreCommand::Send {
            asker: self.asker(author),
            ack: None,
            message: new_message(author, self.w.ws, target, text),
            received: std::time::Instant::now(),
        });
        let (room, name, data) = self.broadcast();
        assert_eq!((room, name.as_str()), (target.room(), "message:new"));
        let StoreReply::Sent { result: Ok(m), .. } = self.reply() else {
            panic!("send refused")
        };
        assert_eq!(data["sequence"], m.sequence);
        m
    }

    fn delete(&self, user: UserId, message: MessageId) -> Result<(), StoreError> {
        self.send(StoreCommand::Delete {
            asker: self.asker(user),
            ack: Some(1),
            message,
        });
        match self.reply() {
            StoreReply::Deleted { result, .. } => result,
            other => panic!("expected Deleted, got {other:?}"),
        }
    }

    fn history(&self, user: UserId, query: HistoryQuery) -> Result<Vec<i64>, StoreError> {
        self.send(StoreCommand::History {
            asker: self.asker(user),
            ack: Some(2),
            query,
        });
        match self.reply() {
            StoreReply::History { result, .. } => {
                result.map(|page| page.iter().map(|m| m.sequence).collect())
            }
            other => panic!("expected History, got {other:?}"),
        }
    }

    fn admin(&self, request: AdminRequest) -> (u16, Value) {
        self.send(StoreCommand::Admin {
            from: CONN,
            request,
        });
        self.admin_reply()
    }

    fn admin_reply(&self) -> (u16, Value) {
        match self.reply() {
            StoreReply::Admin { status, body } => (status, serde_json::from_str(&body).unwrap()),
            other => panic!("expected Admin, got {other:?}"),
        }
    }

    /// Shuts the store down and waits for the thread; nothing may be left for the shard.
    fn stop(mut self) {
        self.send(StoreCommand::Shutdown);
        self.thread.take().unwrap().join().unwrap();
        assert!(
            self.shard.try_recv().is_err(),
            "nothing unexpected was sent"
        );
    }
}

/// `(name, data)` of a `42["name",data]` event packet.
fn event_of(packet: &[u8]) -> (String, Value) {
    let text = std::str::from_utf8(packet).unwrap();
    let packet: Value = serde_json::from_str(text.strip_prefix("42").unwrap()).unwrap();
    (packet[0].as_str().unwrap().to_owned(), packet[1].clone())
}

fn query(target: Target, before: Option<i64>, after: Option<i64>, limit: u32) -> HistoryQuery {
    HistoryQuery {
        target,
        before,
        after,
        limit,
    }
}
