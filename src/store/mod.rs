//! The store thread: one thread owns the data (the embedded [`MemoryBackend`] here, PostgreSQL
//! later) and answers the shards' [`StoreCommand`]s in the order they arrive.
//!
//! The loop blocks for one command, then drains whatever else is already queued, so under load
//! batches form on their own: consecutive sends (socket `message:send` and the admin API's
//! publish) go to [`Backend::send_batch`] together, which a database backend turns into one
//! group commit. With writer lanes ([`lanes`], PostgreSQL) each room's sends go to its lane,
//! and the lanes store their batches at once while this thread takes the next commands; a
//! lane that comes back gets what queued for it meanwhile. Every other command first waits
//! until the sends queued before it are stored and answered, so a connection's commands take
//! effect in the order it sent them (a history after a send sees the send). Only
//! `Authenticate` may overtake queued sends: it reads users, sessions and memberships, which
//! sends never change. For each stored message the thread first publishes `message:new` to the
//! room and only then replies to the sender; this one thread doing both, with a room's batches
//! one after the other on its lane, keeps each room's broadcasts in sequence order.
//!
//! A backend with several connections (PostgreSQL) also gets a pool of reader threads
//! ([`spawn_pool`]): CONNECT, history and membership checks go there, so they never wait
//! behind a write batch. History and checks are still handed over only after the sends queued
//! before them are committed, which keeps "a history after a send sees the send".

mod admin;
mod backend;
pub mod lanes;
pub mod memory;
pub mod pg;
mod readers;
pub mod request;

use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::Utc;
use crossbeam_channel::{Receiver, Sender};

use crate::api::AdminRequest;
use crate::ids::{ConnectionId, MessageId, UserId, WorkspaceId};
use crate::mesh::{Asker, DurablePublisher, Mesh, StoreCommand, StoreReply};
use crate::metrics::Metrics;
use crate::model::Message;

pub use backend::Backend;
use lanes::{Done, Lanes};
pub use memory::MemoryBackend;
pub use readers::spawn_pool;
use readers::{serve, ReadJob};
pub use request::{HistoryQuery, NewMessage, StoreError};

/// Most messages one history page returns (the rule is `chat::validate`'s).
pub use crate::chat::validate::MAX_HISTORY_LIMIT;

/// Most commands taken from the inbox in one turn, which bounds the time before the loop
/// looks at the inbox depth (and the lanes' answers) again.
const MAX_DRAIN: usize = 512;

/// A message the backend stored, or the one it already held under the same
/// `(author, clientMsgId)`.
#[derive(Clone, Debug)]
pub struct Stored {
    /// The message as stored.
    pub message: Message,
    /// `true` when this call created it; `false` for an idempotent retry, which must not be
    /// broadcast again.
    pub created: bool,
}

/// A message after a delete.
#[derive(Clone, Debug)]
pub struct Deletion {
    /// The message, with `deleted_at` set.
    pub message: Message,
    /// `true` when this call deleted it; `false` when it was already a tombstone, which must
    /// not be announced again.
    pub first: bool,
}

/// Who reads a history through a socket: membership and workspace scope are checked for them.
#[derive(Clone, Copy, Debug)]
pub struct Reader {
    /// The socket's user.
    pub user: UserId,
    /// The socket's workspace.
    pub workspace: WorkspaceId,
}

/// Starts the store thread over `backend` (the embedded [`MemoryBackend`] when there is no
/// `DATABASE_URL`).
///
/// The thread is named `store`. It exits after [`StoreCommand::Shutdown`], once it has
/// answered everything queued before it, or when every sender of `inbox` is gone.
pub fn spawn_with<B: Backend + Send + 'static>(
    backend: B,
    inbox: Receiver<StoreCommand>,
    mesh: Mesh,
    metrics: Arc<Metrics>,
) -> io::Result<JoinHandle<()>> {
    spawn_pool(
        backend,
        Vec::new(),
        Vec::new(),
        Duration::ZERO,
        inbox,
        mesh,
        metrics,
    )
}

/// The store thread's state: the backend, the handles it answers through, and the sends
/// waiting for their batch.
pub struct Store<B> {
    backend: B,
    mesh: Mesh,
    /// `message:new` and `message:deleted`, with their offsets.
    durable: DurablePublisher,
    metrics: Arc<Metrics>,
    /// Sends waiting for their lane's next batch (one queue without lanes).
    queued: Vec<Vec<PendingSend>>,
    /// Per lane, the origins of the batch it is storing now.
    running: Vec<Option<Vec<Origin>>>,
    /// The writer lanes; without them `backend` stores the sends, on this thread.
    lanes: Option<Lanes>,
    /// Shortest time between the starts of two batches on one lane (zero: none).
    window: Duration,
    /// Per lane, when its last batch started.
    started: Vec<Option<Instant>>,
    /// Which slow batches to log.
    slow: lanes::SlowBatches,
    /// The reader pool's queue, when there is one.
    readers: Option<Sender<ReadJob>>,
}

/// A send waiting for its batch, and where its answer goes.
struct PendingSend {
    origin: Origin,
    message: NewMessage,
}

/// Who asked for a send: a socket (`Sent` reply) or the admin API (`Admin` reply), and when
/// it arrived (a socket's send: when its shard read it; a publish: when the store took it).
enum Origin {
    Socket {
        asker: Asker,
        ack: Option<u64>,
        received: Instant,
    },
    Admin {
        from: ConnectionId,
        received: Instant,
    },
}

impl Origin {
    fn received(&self) -> Instant {
        match self {
            Origin::Socket { received, .. } | Origin::Admin { received, .. } => *received,
        }
    }
}

impl<B: Backend> Store<B> {
    /// A store over `backend`, answering through `mesh`; `backend` stores the sends too.
    pub fn new(backend: B, mesh: Mesh, metrics: Arc<Metrics>) -> Self {
        Store {
            backend,
            durable: DurablePublisher::new(mesh.broker.clone()),
            mesh,
            metrics,
            queued: vec![Vec::new()],
            running: vec![None],
            lanes: None,
            window: Duration::ZERO,
            started: vec![None],
            slow: lanes::SlowBatches::default(),
            readers: None,
        }
    }

    /// Stores the sends on `lanes` instead of on this thread (see [`lanes`]).
    pub fn with_lanes(mut self, lanes: Lanes) -> Self {
        let n = lanes.count().max(1);
        self.queued = (0..n).map(|_| Vec::new()).collect();
        self.running = (0..n).map(|_| None).collect();
        self.started = vec![None; n];
        self.lanes = Some(lanes);
        self
    }

    /// Starts at most one batch per `window` on each lane (see [`Store::start_batches`]).
    pub fn with_window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Runs the loop until [`StoreCommand::Shutdown`] or until the inbox closes (which the
    /// writer lanes' senders prevent while they run).
    pub fn run(mut self, inbox: &Receiver<StoreCommand>) {
        let mut commands = Vec::with_capacity(MAX_DRAIN);
        loop {
            let first = match self.due() {
                Some(due) => match inbox.recv_deadline(due) {
                    Ok(command) => command,
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                        self.dispatch();
                        continue;
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                },
                // Fails only once every sender is gone: nobody can ask anything any more.
                None => match inbox.recv() {
                    Ok(command) => command,
                    Err(_) => break,
                },
            };
            commands.push(first);
            // Take what queued up meanwhile, without waiting: that is the batch.
            while commands.len() < MAX_DRAIN {
                match inbox.try_recv() {
                    Ok(command) => commands.push(command),
                    Err(_) => break,
                }
            }
            commands.retain(|c| !matches!(c, StoreCommand::LaneDone));
            let mut stopping = false;
            if !commands.is_empty() {
                let depth = inbox.len();
                self.metrics.store.inbox_depth.store(depth as i64, Relaxed);
                // The writer's queue as this turn found it: what it took, what still waits,
                // and the sends already with the lanes.
                let queued = depth + commands.len() + self.unanswered();
                self.metrics.store.queue_depth.record(queued as u64);
                // Shutdown came after everything queued before it, all of which is now
                // answered.
                stopping = self.turn(commands.drain(..));
            }
            // Then the lanes' answers, so a lane that is done takes this turn's sends in its
            // next batch. Each answer is in their channel before its bell: every bell taken
            // above has its answer there now.
            self.collect_landed();
            if stopping {
                break;
            }
        }
        self.settle();
        if let Some(lanes) = self.lanes.take() {
            lanes.stop();
        }
    }

    /// Handles one batch of commands and answers them all, except sends still with a lane;
    /// returns `true` when the batch held `Shutdown`.
    pub fn turn(&mut self, commands: impl IntoIterator<Item = StoreCommand>) -> bool {
        let mut stopping = false;
        for command in commands {
            stopping |= self.handle(command);
        }
        self.dispatch();
        stopping
    }

    /// Takes one command; returns `true` for `Shutdown`.
    fn handle(&mut self, command: StoreCommand) -> bool {
        match command {
            StoreCommand::Send {
                asker,
                ack,
                message,
                received,
            } => self.queue(PendingSend {
                origin: Origin::Socket {
                    asker,
                    ack,
                    received,
                },
                message,
            }),
            StoreCommand::Admin {
                from,
                request: AdminRequest::Publish(message),
            } => self.queue(PendingSend {
                origin: Origin::Admin {
                    from,
                    received: Instant::now(),
                },
                message,
            }),
            // Sends never change users, sessions or memberships, so this may overtake them.
            StoreCommand::Authenticate {
                from,
                credential,
                workspace,
            } => self.read(ReadJob::Authenticate {
                from,
                credential,
                workspace,
            }),
            StoreCommand::Delete {
                asker,
                ack,
                message,
            } => {
                self.settle();
                self.delete(asker, ack, message);
            }
            StoreCommand::History { asker, ack, query } => {
                self.settle();
                self.read(ReadJob::History { asker, ack, query });
            }
            StoreCommand::CheckMember { asker, ack, target } => {
                self.settle();
                self.read(ReadJob::CheckMember { asker, ack, target });
            }
            StoreCommand::Recheck(standings) => {
                self.settle();
                self.read(ReadJob::Recheck(standings));
            }
            StoreCommand::Admin {
                from,
                request: AdminRequest::History(query),
            } => {
                self.settle();
                self.read(ReadJob::AdminHistory { from, query });
            }
            StoreCommand::Admin { from, request } => {
                self.settle();
                let reply =
                    admin::handle(&mut self.backend, &self.mesh.broker, request, Utc::now());
                self.mesh.reply(from, reply);
            }
            StoreCommand::Shutdown => {
                self.settle();
                return true;
            }
            // Taken out in `run`; its answer is collected there.
            StoreCommand::LaneDone => {}
        }
        false
    }

    /// Hands a read to the pool, or answers it here when there is none (or it is gone).
    fn read(&mut self, job: ReadJob) {
        let job = match &self.readers {
            Some(readers) => match readers.send(job) {
                Ok(()) => return,
                Err(crossbeam_channel::SendError(job)) => job,
            },
            None => job,
        };
        serve(&mut self.backend, &self.mesh, job);
    }

    /// Queues a send for its room's lane.
    fn queue(&mut self, send: PendingSend) {
        let lane = lanes::lane_of(send.message.target, self.queued.len());
        self.queued[lane].push(send);
        self.mesh.store.set_backlog(self.unanswered());
    }

    /// Sends taken from the inbox and not answered yet.
    fn unanswered(&self) -> usize {
        let queued: usize = self.queued.iter().map(Vec::len).sum();
        let running: usize = self.running.iter().flatten().map(Vec::len).sum();
        queued + running
    }

    /// Starts the next batch of every idle lane that has sends queued, once its window
    /// allows. Without lanes, stores them here and answers at once.
    fn dispatch(&mut self) {
        self.start_batches(Instant::now(), false);
    }

    /// [`Store::dispatch`] at `now`. A lane whose last batch started less than `window` ago
    /// holds its sends until then (unless a whole batch waits, or `at_once`): each batch
    /// costs PostgreSQL a fixed part besides its rows (a statement, a commit), which at a
    /// moderate rate of sends is most of its CPU; with the window, the sends of those few
    /// milliseconds share one. A lane that was idle longer starts at once, and one whose
    /// batch took longer than the window is not held: the window costs nothing when sends
    /// are sparse and nothing at saturation.
    fn start_batches(&mut self, now: Instant, at_once: bool) {
        for lane in 0..self.queued.len() {
            while self.running[lane].is_none() && !self.queued[lane].is_empty() {
                if !at_once && self.held_until(lane).is_some_and(|due| due > now) {
                    break;
                }
                self.started[lane] = Some(now);
                let take = self.queued[lane].len().min(lanes::MAX_BATCH);
                let (origins, messages): (Vec<Origin>, Vec<NewMessage>) = self.queued[lane]
                    .drain(..take)
                    .map(|p| (p.origin, p.message))
                    .unzip();
                let messages = match &self.lanes {
                    Some(writers) => match writers.start(lane, messages) {
                        Ok(()) => {
                            self.running[lane] = Some(origins);
                            continue;
                        }
                        // The lane's thread is gone (it panicked): store them here.
                        Err(messages) => messages,
                    },
                    None => messages,
                };
                let started = Instant::now();
                let results = self.backend.send_batch(messages, Utc::now());
                let took = started.elapsed();
                let orphans = self.backend.take_orphans();
                self.answer(origins, orphans, results, took);
            }
        }
        self.mesh.store.set_backlog(self.unanswered());
        // Each lane's queue is in arrival order: its first send has waited longest.
        let oldest = self
            .queued
            .iter()
            .filter_map(|q| q.first())
            .map(|p| p.origin.received())
            .min();
        self.mesh.store.set_waiting_since(oldest);
    }

    /// When `lane`'s window lets it start its next batch, if the window may hold it: it has
    /// started one before, and less than a whole batch waits.
    fn held_until(&self, lane: usize) -> Option<Instant> {
        let started = self.started[lane]?;
        (self.queued[lane].len() < lanes::MAX_BATCH).then(|| started + self.window)
    }

    /// When the first lane that is idle with sends queued may start. After
    /// [`Store::dispatch`], every such lane is one its window holds.
    fn due(&self) -> Option<Instant> {
        (0..self.queued.len())
            .filter(|&lane| self.running[lane].is_none() && !self.queued[lane].is_empty())
            .filter_map(|lane| self.held_until(lane))
            .min()
    }

    /// Publishes and answers every lane's batch that came back, and starts their next ones.
    fn collect_landed(&mut self) {
        while let Some(done) = self.lanes.as_ref().and_then(|l| l.done.try_recv().ok()) {
            self.landed(done);
        }
        self.dispatch();
    }

    /// A lane's batch came back: publish and answer it.
    fn landed(&mut self, done: Done) {
        if let Some(origins) = self.running.get_mut(done.lane).and_then(Option::take) {
            self.answer(origins, done.orphans, done.results, done.took);
        }
        self.mesh.store.set_backlog(self.unanswered());
    }

    /// Stores every send taken so far and answers them: what comes next sees them committed
    /// ("a history after a send sees the send").
    fn settle(&mut self) {
        self.start_batches(Instant::now(), true);
        while self.running.iter().any(Option::is_some) {
            let Some(answer) = self.lanes.as_ref().and_then(|l| l.done.recv().ok()) else {
                break;
            };
            self.landed(answer);
            self.start_batches(Instant::now(), true);
        }
    }

    /// Publishes the orphans of earlier batches, then each new message of a stored batch,
    /// then answers its senders.
    fn answer(
        &mut self,
        origins: Vec<Origin>,
        orphans: Vec<Message>,
        results: Vec<Result<Stored, StoreError>>,
        took: Duration,
    ) {
        if !orphans.is_empty() {
            tracing::info!(
                messages = orphans.len(),
                "publishing messages stored by a batch whose connection broke at COMMIT"
            );
        }
        for message in &orphans {
            self.publish_new(message);
        }
        let size = origins.len();
        if let Some((batches, longest)) = self.slow.note(took, Instant::now()) {
            tracing::warn!(
                batches,
                longest_ms = longest.as_millis() as u64,
                last_batch_messages = size,
                "send batches took over {} ms to store since the last such line: the database \
                 is slow (see ocomms_store_batch_duration_seconds and PostgreSQL's log)",
                lanes::SLOW_BATCH.as_millis()
            );
        }
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let mut results = results.into_iter();
        let mut created = 0;
        for origin in origins {
            let result = results.next().unwrap_or_else(|| {
                // A backend that returns fewer results than it was given is a bug; answer
                // rather than leave the sender waiting.
                Err(StoreError::Unavailable(
                    "the store lost this message in its batch; retry".into(),
                ))
            });
            if let Ok(stored) = &result {
                if stored.created {
                    created += 1;
                    self.publish_new(&stored.message);
                }
            }
            match origin {
                Origin::Socket {
                    asker,
                    ack,
                    received,
                } => {
                    // Counted before the reply, so a client that saw its ack sees it counted.
                    self.metrics.store.send_ack.observe(received.elapsed());
                    self.mesh.broker.reply_after_publications(
                        asker.from,
                        StoreReply::Sent {
                            ack,
                            result: result.map(|s| s.message),
                        },
                    );
                }
                Origin::Admin { from, .. } => {
                    let reply = match result {
                        Ok(stored) => admin::json(201, &stored.message.to_json()),
                        Err(e) => admin::error(&e),
                    };
                    self.mesh.reply(from, reply);
                }
            }
        }

        let m = &self.metrics.store;
        m.batches.fetch_add(1, Relaxed);
        m.messages
            .fetch_add(created + orphans.len() as u64, Relaxed);
        m.batch_micros.fetch_add(micros, Relaxed);
        m.max_batch.fetch_max(size as u64, Relaxed);
        m.batch_size.record(size as u64);
        m.batch_time.observe(took);
        m.max_batch_micros.fetch_max(micros, Relaxed);
    }

    fn delete(&mut self, asker: Asker, ack: Option<u64>, message: MessageId) {
        let result = self
            .backend
            .delete(asker.user, asker.workspace, message, Utc::now());
        if let Ok(deletion) = &result {
            if deletion.first {
                self.publish_deleted(&deletion.message);
            }
        }
        self.mesh.reply(
            asker.from,
            StoreReply::Deleted {
                ack,
                result: result.map(|_| ()),
            },
        );
    }

    /// `message:new` to the message's room (contract §4).
    fn publish_new(&mut self, message: &Message) {
        self.durable.publish(
            message.room(),
            "message:new",
            &message.to_json(),
            message.sequence,
        );
    }

    /// `message:deleted {messageId, deletedAt, channelId, conversationId, sequence}` (§4).
    fn publish_deleted(&mut self, message: &Message) {
        let data = message.deleted_json();
        self.durable
            .publish(message.room(), "message:deleted", &data, message.sequence);
    }
}

#[cfg(test)]
mod tests;
