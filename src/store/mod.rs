//! The store thread: one thread owns the data (the embedded [`MemoryBackend`] here, PostgreSQL
//! later) and answers the shards' [`StoreCommand`]s in the order they arrive.
//!
//! The loop blocks for one command, then drains whatever else is already queued, so under load
//! batches form on their own: consecutive sends (socket `message:send` and the admin API's
//! publish) go to [`Backend::send_batch`] together, which a database backend turns into one
//! group commit. Every other command first flushes the sends queued before it, so a
//! connection's commands take effect in the order it sent them (a history after a send sees
//! the send). Only `Authenticate` may overtake queued sends: it reads users, sessions and
//! memberships, which sends never change. For each stored message the thread first publishes
//! `message:new` to the room and only then replies to the sender; one thread doing both keeps
//! each room's broadcasts in sequence order.
//!
//! A backend with several connections (PostgreSQL) also gets a pool of reader threads
//! ([`spawn_pool`]): CONNECT, history and membership checks go there, so they never wait
//! behind a write batch. History and checks are still handed over only after the sends queued
//! before them are committed, which keeps "a history after a send sees the send".

mod admin;
pub mod memory;
pub mod pg;
mod readers;
pub mod request;

use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use chrono::{DateTime, Utc};
use crossbeam_channel::{Receiver, Sender};

use crate::api::AdminRequest;
use crate::chat::auth::Credential;
use crate::ids::{ChannelId, ConnectionId, ConversationId, MessageId, Target, UserId, WorkspaceId};
use crate::mesh::{Asker, DurablePublisher, Mesh, StoreCommand, StoreReply};
use crate::metrics::Metrics;
use crate::model::{timestamp, Grant, MembershipChange, Message};

pub use memory::MemoryBackend;
pub use readers::spawn_pool;
use readers::{serve, ReadJob};
pub use request::{HistoryQuery, NewMessage, StoreError};

/// Most messages one history page returns (the rule is `chat::validate`'s).
pub use crate::chat::validate::MAX_HISTORY_LIMIT;

/// Most commands taken from the inbox in one turn, which bounds a send batch and the time
/// before the loop looks at the inbox depth again.
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

/// What a store backend does. The thread loop ([`Store`]) drives it; the embedded
/// [`MemoryBackend`] implements it, and so will PostgreSQL. Every call takes `now` so the
/// rules about time (session expiry, `createdAt`, `deletedAt`) can be tested with a fixed
/// clock. Errors name the bad value (`"user … is not a member of channel …"`).
pub trait Backend {
    /// CONNECT (contract §2): resolves the credential to a user, checks that the user is a
    /// member of `workspace`, and lists the rooms to join: `user:`, `workspace:`, then every
    /// channel and DM of that workspace the user belongs to.
    fn authenticate(
        &mut self,
        credential: &Credential,
        workspace: WorkspaceId,
        now: DateTime<Utc>,
    ) -> Result<Grant, StoreError>;

    /// Stores a batch of messages in order, one result per message, in the same order. The
    /// target must exist, lie in `workspace` when one is given, and have the author as a
    /// member. A message whose `(author, client_msg_id)` is already stored (earlier, or
    /// earlier in this batch) yields that original with `created: false`. A new message gets
    /// the target's next sequence (from 1) and `created_at = now`.
    fn send_batch(
        &mut self,
        batch: Vec<NewMessage>,
        now: DateTime<Utc>,
    ) -> Vec<Result<Stored, StoreError>>;

    /// Soft-deletes a message for its author (`deleted_at = now` the first time only).
    fn delete(
        &mut self,
        author: UserId,
        workspace: WorkspaceId,
        message: MessageId,
        now: DateTime<Utc>,
    ) -> Result<Deletion, StoreError>;

    /// A page of a target's messages, ascending by sequence, tombstones included. With
    /// `after`, the oldest `limit` above it; otherwise the newest `limit` below `before` (or
    /// of all). `limit` is capped at one more than [`MAX_HISTORY_LIMIT`]. With a `reader`, they must be a
    /// member of the target and the target must be in their workspace; without one (admin
    /// API) only the target's existence is checked.
    fn history(
        &mut self,
        reader: Option<Reader>,
        query: &HistoryQuery,
    ) -> Result<Vec<Message>, StoreError>;

    /// Each channel and DM room's top sequence now (0 when it has no message), read after
    /// the membership that lists it: where a cluster node starts the room's stream for a
    /// member joining it. The embedded store never runs in a cluster and answers nothing.
    fn floors(&mut self, rooms: &[crate::ids::Room]) -> Vec<(crate::ids::Room, u64)> {
        let _ = rooms;
        Vec::new()
    }

    /// `Ok` when `user` is a member of `target` and the target lies in `workspace`.
    fn check_member(
        &mut self,
        user: UserId,
        workspace: WorkspaceId,
        target: Target,
    ) -> Result<(), StoreError>;

    /// Adds a user; a taken email is a conflict.
    fn create_user(
        &mut self,
        name: &str,
        email: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<UserId, StoreError>;

    /// Adds a workspace; a taken slug is a conflict.
    fn create_workspace(
        &mut self,
        slug: &str,
        name: &str,
        now: DateTime<Utc>,
    ) -> Result<WorkspaceId, StoreError>;

    /// Makes a user a member of a workspace (again: updates the role).
    fn add_workspace_member(
        &mut self,
        workspace: WorkspaceId,
        user: UserId,
        role: Option<&str>,
    ) -> Result<(), StoreError>;

    /// Adds a channel; a slug taken in the same workspace is a conflict.
    fn create_channel(
        &mut self,
        workspace: WorkspaceId,
        slug: &str,
        name: &str,
        is_private: bool,
        now: DateTime<Utc>,
    ) -> Result<ChannelId, StoreError>;

    /// Adds a workspace member to a channel. Returns the change to announce, or `None` when
    /// the user already was a member.
    fn add_channel_member(
        &mut self,
        channel: ChannelId,
        user: UserId,
    ) -> Result<Option<MembershipChange>, StoreError>;

    /// Removes a workspace member (the row only: its channel and DM rows stay, unreachable
    /// without the workspace); not being one is `NotFound`. Returns the change to announce:
    /// the user's sockets in that workspace leave every room of it.
    fn remove_workspace_member(
        &mut self,
        workspace: WorkspaceId,
        user: UserId,
    ) -> Result<MembershipChange, StoreError>;

    /// Removes a channel member; not being one is `NotFound`. Returns the change to announce.
    fn remove_channel_member(
        &mut self,
        channel: ChannelId,
        user: UserId,
    ) -> Result<MembershipChange, StoreError>;

    /// Adds a DM conversation between workspace members (duplicates ignored). Returns its id
    /// and one change per participant to announce.
    fn create_conversation(
        &mut self,
        workspace: WorkspaceId,
        participants: &[UserId],
        now: DateTime<Utc>,
    ) -> Result<(ConversationId, Vec<MembershipChange>), StoreError>;

    /// Stores a session token for a user, valid until `expires_at`.
    fn create_session(
        &mut self,
        user: UserId,
        token: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
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
    spawn_pool(backend, Vec::new(), inbox, mesh, metrics)
}

/// The store thread's state: the backend, the handles it answers through, and the sends
/// waiting for the next batch.
pub struct Store<B> {
    backend: B,
    mesh: Mesh,
    /// `message:new` and `message:deleted`, with their offsets.
    durable: DurablePublisher,
    metrics: Arc<Metrics>,
    pending: Vec<PendingSend>,
    /// The reader pool's queue, when there is one.
    readers: Option<Sender<ReadJob>>,
}

/// A send waiting for its batch, and where its answer goes.
struct PendingSend {
    origin: Origin,
    message: NewMessage,
}

/// Who asked for a send: a socket (`Sent` reply) or the admin API (`Admin` reply).
enum Origin {
    Socket {
        asker: Asker,
        ack: Option<u64>,
        received: Instant,
    },
    Admin {
        from: ConnectionId,
    },
}

impl<B: Backend> Store<B> {
    /// A store over `backend`, answering through `mesh`.
    pub fn new(backend: B, mesh: Mesh, metrics: Arc<Metrics>) -> Self {
        Store {
            backend,
            durable: DurablePublisher::new(mesh.broker.clone()),
            mesh,
            metrics,
            pending: Vec::new(),
            readers: None,
        }
    }

    /// Runs the loop until [`StoreCommand::Shutdown`] or until the inbox closes.
    pub fn run(mut self, inbox: &Receiver<StoreCommand>) {
        let mut commands = Vec::with_capacity(MAX_DRAIN);
        // `recv` fails only once every sender is gone: nobody can ask anything any more.
        while let Ok(first) = inbox.recv() {
            commands.push(first);
            // Take what queued up meanwhile, without waiting: that is the batch.
            while commands.len() < MAX_DRAIN {
                match inbox.try_recv() {
                    Ok(command) => commands.push(command),
                    Err(_) => break,
                }
            }
            let depth = inbox.len();
            self.metrics.store.inbox_depth.store(depth as i64, Relaxed);
            // The writer's queue as this turn found it: what it took plus what still waits.
            let queued = depth + commands.len();
            self.metrics.store.queue_depth.record(queued as u64);
            // Shutdown came after everything queued before it, all of which is now answered.
            if self.turn(commands.drain(..)) {
                return;
            }
        }
    }

    /// Handles one batch of commands (the sends among them are stored together) and
    /// answers them all; returns `true` when the batch held `Shutdown`.
    pub fn turn(&mut self, commands: impl IntoIterator<Item = StoreCommand>) -> bool {
        let mut stopping = false;
        for command in commands {
            stopping |= self.handle(command);
        }
        self.flush();
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
            } => self.pending.push(PendingSend {
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
            } => self.pending.push(PendingSend {
                origin: Origin::Admin { from },
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
                self.flush();
                self.delete(asker, ack, message);
            }
            StoreCommand::History { asker, ack, query } => {
                self.flush();
                self.read(ReadJob::History { asker, ack, query });
            }
            StoreCommand::CheckMember { asker, ack, target } => {
                self.flush();
                self.read(ReadJob::CheckMember { asker, ack, target });
            }
            StoreCommand::Recheck(standings) => {
                self.flush();
                self.read(ReadJob::Recheck(standings));
            }
            StoreCommand::Admin {
                from,
                request: AdminRequest::History(query),
            } => {
                self.flush();
                self.read(ReadJob::AdminHistory { from, query });
            }
            StoreCommand::Admin { from, request } => {
                self.flush();
                let reply =
                    admin::handle(&mut self.backend, &self.mesh.broker, request, Utc::now());
                self.mesh.reply(from, reply);
            }
            StoreCommand::Shutdown => {
                self.flush();
                return true;
            }
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

    /// Stores the pending sends as one batch, publishes each new message, then answers.
    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let (origins, messages): (Vec<Origin>, Vec<NewMessage>) = self
            .pending
            .drain(..)
            .map(|p| (p.origin, p.message))
            .unzip();
        let size = messages.len();
        let started = Instant::now();
        let mut results = self.backend.send_batch(messages, Utc::now()).into_iter();
        let took = started.elapsed();
        let micros = took.as_micros();

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
                Origin::Admin { from } => {
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
        m.messages.fetch_add(created, Relaxed);
        m.batch_micros
            .fetch_add(u64::try_from(micros).unwrap_or(u64::MAX), Relaxed);
        m.max_batch.fetch_max(size as u64, Relaxed);
        m.batch_size.record(size as u64);
        m.batch_time.observe(took);
        m.max_batch_micros
            .fetch_max(u64::try_from(micros).unwrap_or(u64::MAX), Relaxed);
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
        let (channel, conversation) = match message.target {
            Target::Channel(c) => (Some(c), None),
            Target::Dm(d) => (None, Some(d)),
        };
        let data = serde_json::json!({
            "messageId": message.id,
            "deletedAt": message.deleted_at.map(timestamp),
            "channelId": channel,
            "conversationId": conversation,
            "sequence": message.sequence,
        });
        self.durable
            .publish(message.room(), "message:deleted", &data, message.sequence);
    }
}

#[cfg(test)]
mod tests;
