//! The PostgreSQL backend (`DATABASE_URL` set): the tables of contract §7, shared with the web
//! app, are the source of truth. Only dedicated threads touch the database: the store thread
//! (writes, one transaction per send batch), a few reader threads (authenticate, history,
//! membership checks) and a listener that turns membership NOTIFYs from triggers into
//! [`MembershipChange`]s. Each owns one synchronous `postgres::Client`, reconnects by itself
//! with backoff, and bounds every wait (connect and statement timeouts), so a database that is
//! down or slow turns into `StoreError::Unavailable` answers instead of a stuck server.

mod admin;
mod batch;
mod listen;
pub(crate) mod read;
pub mod testing;
mod write;

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use crossbeam_channel::Receiver;
use postgres::{Client, NoTls, Statement};

use crate::chat::auth::Credential;
use crate::ids::{ChannelId, ConversationId, MessageId, Target, UserId, WorkspaceId};
use crate::mesh::{Mesh, StoreCommand};
use crate::metrics::Metrics;
use crate::model::{Grant, MembershipChange};

use super::{Backend, Deletion, HistoryQuery, NewMessage, Reader, StoreError, Stored};

pub use listen::spawn_listener;

/// The SQL files of `migrations/`, compiled in.
mod embedded {
    #![allow(missing_docs)]
    refinery::embed_migrations!("migrations");
}

/// `application_name` of every connection this server opens. Membership NOTIFYs carry the
/// writer's name, and the listener skips those from ocomms-rt: it announced them itself.
pub const APPLICATION_NAME: &str = "ocomms-rt";

/// In a cluster: `ocomms-rt/<node id>`, set once at start, so the membership listener of
/// every node can tell its own node's writes from the others' (see [`application_name`]).
static NODE_NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Names this process's connections after its cluster node (`ocomms-rt/<node>`). Call before
/// any connection is opened; later calls change nothing.
pub fn set_node(node: impl std::fmt::Display) {
    let _ = NODE_NAME.set(format!("{APPLICATION_NAME}/{node}"));
}

/// The `application_name` of this process's connections: `ocomms-rt`, or `ocomms-rt/<node>`
/// in a cluster.
pub fn application_name() -> &'static str {
    NODE_NAME.get().map_or(APPLICATION_NAME, String::as_str)
}

/// Longest a connect or a statement may take before the caller gets `Unavailable`.
pub const DB_TIMEOUT: Duration = Duration::from_secs(5);

/// Most time between reconnect attempts while the database is down.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Key of the session-level advisory lock held while migrating ("ocomms" in ASCII), so nodes
/// starting together apply the migrations once, one after the other.
const MIGRATION_LOCK: i64 = 0x6f63_6f6d_6d73;

/// How a send batch reaches the `messages` table; the benchmark compares them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsertMethod {
    /// One statement per batch (facts, idempotency, sequences and a multi-row insert from
    /// `unnest($arrays)`; see `batch.rs`), which is its own transaction.
    Unnest,
    /// The same statement for each message alone, kept as the baseline: each message in its
    /// own transaction.
    PerMessage,
}

/// The database state shown by `/healthz` (see [`crate::metrics::StoreMetrics::db_status`]).
pub mod status {
    /// No database (embedded store) or the last attempt worked.
    pub const OK: u8 = 0;
    /// The last attempt to reach PostgreSQL failed; reconnecting.
    pub const DOWN: u8 = 1;
}

/// Opens a connection with bounded waits and this server's `application_name`.
pub fn connect(url: &str) -> Result<Client, StoreError> {
    let mut config: postgres::Config = url.parse().map_err(|e| {
        StoreError::Invalid(format!(
            "DATABASE_URL is not a PostgreSQL URL ({e}); use postgres://user@host:port/db"
        ))
    })?;
    config
        .application_name(application_name())
        .connect_timeout(DB_TIMEOUT)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        // Server-side bound on each statement and lock wait: a slow database fails the
        // batch (the senders get `success: false`) instead of holding every ack. No
        // sequential scans where an index can answer: every statement of the store is a probe
        // of an index, and this keeps it one while the table's statistics are stale (a
        // node's first minutes on a table that grew), without an ANALYZE in the ack path.
        .options(&format!(
            "-c statement_timeout={ms} -c lock_timeout={ms} -c idle_in_transaction_session_timeout={idle} -c enable_seqscan=off",
            ms = DB_TIMEOUT.as_millis(),
            idle = 2 * DB_TIMEOUT.as_millis()
        ));
    config.connect(NoTls).map_err(|e| unavailable(&e))
}

/// Applies the migrations under an advisory lock; safe on every start and from several
/// nodes at once. Returns how many were applied now.
pub fn migrate(url: &str) -> Result<usize, String> {
    let mut client = connect(url).map_err(|e| e.to_string())?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .map_err(|e| format!("cannot take the migration lock: {e}"))?;
    let result = embedded::migrations::runner()
        .run(&mut client)
        .map(|report| report.applied_migrations().len())
        .map_err(|e| format!("migration failed: {e}"));
    // Closing the connection would release the lock too; unlock to be tidy.
    let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]);
    result
}

/// Whether PostgreSQL's autovacuum works, as each new connection sees it.
pub mod autovacuum {
    use std::sync::atomic::Ordering::Relaxed;

    use postgres::Client;

    use crate::metrics::Metrics;

    /// Not known (no database, or not connected yet).
    pub const UNKNOWN: u8 = 0;
    /// `autovacuum` or `track_counts` is off.
    pub const OFF: u8 = 1;
    /// Both are on.
    pub const ON: u8 = 2;

    /// Whether autovacuum runs for this session's tables: it needs both `autovacuum` and
    /// the statistics it starts from (`track_counts`).
    pub fn works(client: &mut Client) -> Result<bool, postgres::Error> {
        client
            .query_one(
                "SELECT current_setting('autovacuum')::bool \
                 AND current_setting('track_counts')::bool",
                &[],
            )
            .map(|row| row.get(0))
    }

    /// Reads it on a new connection into `ocomms_store_pg_autovacuum`, and warns when it is
    /// found off (once, until it is seen on again).
    pub fn note(client: &mut Client, metrics: &Metrics) {
        let Ok(on) = works(client) else {
            return;
        };
        let now = if on { ON } else { OFF };
        let before = metrics.store.autovacuum.swap(now, Relaxed);
        if now == OFF && before != OFF {
            tracing::warn!(
                "PostgreSQL runs with autovacuum or track_counts off: `messages` is then not \
                 analyzed or vacuumed as it grows (the per-table settings of the migrations do \
                 nothing), and the web app's reads plan on stale statistics. The send path does \
                 not depend on them. Set autovacuum = on and track_counts = on in postgresql.conf"
            );
        }
    }
}

/// `Unavailable` for a database error the caller cannot fix, naming the cause.
pub(crate) fn unavailable(e: &postgres::Error) -> StoreError {
    let cause = match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    };
    StoreError::Unavailable(format!(
        "PostgreSQL cannot answer now ({cause}); retry shortly"
    ))
}

/// A connection and the statements prepared on it (each prepared once, then reused: a plain
/// `query(&str)` would cost a second round trip for every call).
pub(crate) struct Conn {
    client: Client,
    statements: HashMap<&'static str, Statement>,
}

impl Conn {
    /// Whether `sql` is prepared on this connection already.
    pub(crate) fn is_prepared(&self, sql: &'static str) -> bool {
        self.statements.contains_key(sql)
    }

    /// The prepared form of `sql` on this connection.
    pub(crate) fn prepare(&mut self, sql: &'static str) -> Result<Statement, postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }
}

/// The PostgreSQL [`Backend`]: one connection, opened lazily and reopened with backoff.
pub struct PgBackend {
    url: String,
    method: InsertMethod,
    conn: Option<Conn>,
    /// While the database is down, commands fail at once until this instant.
    retry_at: Option<Instant>,
    backoff: Duration,
    last_error: Option<StoreError>,
    metrics: Arc<Metrics>,
    /// Messages an ambiguous COMMIT may have stored unseen (see [`write::Unconfirmed`]).
    unconfirmed: write::Unconfirmed,
    /// Those of them found stored since, for the store thread to publish.
    orphans: Vec<crate::model::Message>,
}

impl PgBackend {
    /// A backend for `url` that reports its state in `metrics.store.db_status`. Connects on
    /// first use; call [`PgBackend::check`] to connect now.
    pub fn new(url: &str, method: InsertMethod, metrics: Arc<Metrics>) -> Self {
        PgBackend {
            url: url.to_owned(),
            method,
            conn: None,
            retry_at: None,
            backoff: Duration::from_millis(50),
            last_error: None,
            metrics,
            unconfirmed: write::Unconfirmed::default(),
            orphans: Vec::new(),
        }
    }

    /// Connects (if not connected) and reports whether the database answers (the server
    /// calls it once, at start).
    pub fn check(&mut self) -> Result<(), StoreError> {
        self.conn().map(|_| ())
    }

    /// The open connection, or a fresh one; `Unavailable` while the database is down.
    fn conn(&mut self) -> Result<&mut Conn, StoreError> {
        if self.conn.as_ref().is_some_and(|c| c.client.is_closed()) {
            self.conn = None;
        }
        if self.conn.is_none() {
            if let (Some(at), Some(e)) = (self.retry_at, &self.last_error) {
                if Instant::now() < at {
                    return Err(e.clone());
                }
            }
            match connect(&self.url) {
                Ok(mut client) => {
                    autovacuum::note(&mut client, &self.metrics);
                    self.conn = Some(Conn {
                        client,
                        statements: HashMap::new(),
                    });
                    self.retry_at = None;
                    self.last_error = None;
                    self.backoff = Duration::from_millis(50);
                    self.metrics.store.db_status.store(status::OK, Relaxed);
                }
                Err(e) => {
                    self.down(e.clone());
                    return Err(e);
                }
            }
        }
        // Just ensured above.
        self.conn
            .as_mut()
            .ok_or_else(|| StoreError::Unavailable("PostgreSQL connection vanished; retry".into()))
    }

    /// Records a failure: drop the connection, wait `backoff` before the next attempt.
    fn down(&mut self, e: StoreError) {
        self.conn = None;
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        self.metrics.store.db_status.store(status::DOWN, Relaxed);
        tracing::warn!(error = %e, "PostgreSQL is unavailable; will reconnect");
        self.last_error = Some(e);
    }

    /// Runs `f` on the connection. A database error the caller cannot fix drops the
    /// connection (it may be broken) and becomes `Unavailable`.
    fn run<T>(
        &mut self,
        f: impl FnOnce(&mut Conn) -> Result<Result<T, StoreError>, postgres::Error>,
    ) -> Result<T, StoreError> {
        let conn = self.conn()?;
        match f(conn) {
            Ok(result) => result,
            Err(e) => {
                let err = unavailable(&e);
                if e.is_closed() || e.as_db_error().is_none() || is_connection_loss(&e) {
                    self.down(err.clone());
                }
                Err(err)
            }
        }
    }
}

/// SQLSTATE classes 08 (connection exception) and 57 (operator intervention, e.g. the
/// server shutting down): the connection is gone.
fn is_connection_loss(e: &postgres::Error) -> bool {
    e.code()
        .is_some_and(|c| c.code().starts_with("08") || c.code().starts_with("57P"))
}

/// `channel <id>` or `conversation <id>`, for error texts (same words as the memory store).
pub(crate) fn describe(target: Target) -> String {
    match target {
        Target::Channel(c) => format!("channel {c}"),
        Target::Dm(d) => format!("conversation {d}"),
    }
}

/// Starts the store for `DATABASE_URL`: migrations, then the store thread, `writers` writer
/// lanes (send batches, see [`crate::store::lanes`]; each starts at most one batch per
/// `window`), `readers` reader threads and the
/// membership listener. Fails when the migrations cannot be applied.
/// The handle returned ends once the store thread has stopped (after
/// [`StoreCommand::Shutdown`]) and the listener with it.
pub fn spawn_postgres(
    url: &str,
    writers: usize,
    window: Duration,
    readers: usize,
    inbox: Receiver<StoreCommand>,
    mesh: Mesh,
    metrics: Arc<Metrics>,
) -> Result<JoinHandle<()>, String> {
    let applied = migrate(url)?;
    tracing::info!(applied, "PostgreSQL migrations are up to date");
    let mut writer = PgBackend::new(url, InsertMethod::Unnest, Arc::clone(&metrics));
    // Connect now so a wrong URL shows at start; the store retries by itself later.
    writer.check().map_err(|e| e.to_string())?;
    let backends = |n: usize| -> Vec<PgBackend> {
        (0..n)
            .map(|_| PgBackend::new(url, InsertMethod::Unnest, Arc::clone(&metrics)))
            .collect()
    };
    let pool = backends(readers.max(1));
    // One lane is the store thread's own connection: no lane threads then.
    let lanes = if writers > 1 {
        backends(writers)
    } else {
        Vec::new()
    };
    let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
    let listener = spawn_listener(url.to_owned(), mesh.clone(), Arc::clone(&metrics), stopped)
        .map_err(|e| format!("cannot start the PostgreSQL listener thread: {e}"))?;
    let store = super::spawn_pool(writer, pool, lanes, window, inbox, mesh, metrics)
        .map_err(|e| format!("cannot start the store threads: {e}"))?;
    std::thread::Builder::new()
        .name("pg-supervisor".into())
        .spawn(move || {
            let _ = store.join();
            drop(stop);
            let _ = listener.join();
        })
        .map_err(|e| format!("cannot start the store threads: {e}"))
}

impl Backend for PgBackend {
    fn authenticate(
        &mut self,
        credential: &Credential,
        workspace: WorkspaceId,
        now: DateTime<Utc>,
    ) -> Result<Grant, StoreError> {
        self.run(|c| read::authenticate(c, credential, workspace, now))
    }

    fn send_batch(
        &mut self,
        batch: Vec<NewMessage>,
        now: DateTime<Utc>,
    ) -> Vec<Result<Stored, StoreError>> {
        if self.method == InsertMethod::PerMessage {
            return batch
                .into_iter()
                .flat_map(|m| self.send_once(vec![m], now))
                .collect();
        }
        self.send_once(batch, now)
    }

    fn take_orphans(&mut self) -> Vec<crate::model::Message> {
        std::mem::take(&mut self.orphans)
    }

    fn delete(
        &mut self,
        author: UserId,
        workspace: WorkspaceId,
        message: MessageId,
        now: DateTime<Utc>,
    ) -> Result<Deletion, StoreError> {
        self.run(|c| write::delete(c, author, workspace, message, now))
    }

    fn history(
        &mut self,
        reader: Option<Reader>,
        query: &HistoryQuery,
    ) -> Result<Vec<crate::model::Message>, StoreError> {
        self.run(|c| read::history(c, reader, query))
    }

    fn floors(&mut self, rooms: &[crate::ids::Room]) -> Vec<(crate::ids::Room, u64)> {
        // A read that fails leaves the rooms without a floor: the broker then reads the
        // room's top itself, a moment later.
        self.run(|c| read::tops(&mut c.client, rooms).map(Ok))
            .unwrap_or_default()
    }

    fn check_member(
        &mut self,
        user: UserId,
        workspace: WorkspaceId,
        target: Target,
    ) -> Result<(), StoreError> {
        self.run(|c| read::check_access(c, user, Some(workspace), target))
    }

    fn create_user(
        &mut self,
        name: &str,
        email: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<UserId, StoreError> {
        self.run(|c| admin::create_user(c, name, email, now))
    }

    fn create_workspace(
        &mut self,
        slug: &str,
        name: &str,
        now: DateTime<Utc>,
    ) -> Result<WorkspaceId, StoreError> {
        self.run(|c| admin::create_workspace(c, slug, name, now))
    }

    fn add_workspace_member(
        &mut self,
        workspace: WorkspaceId,
        user: UserId,
        role: Option<&str>,
    ) -> Result<(), StoreError> {
        self.run(|c| admin::add_workspace_member(c, workspace, user, role))
    }

    fn create_channel(
        &mut self,
        workspace: WorkspaceId,
        slug: &str,
        name: &str,
        is_private: bool,
        now: DateTime<Utc>,
    ) -> Result<ChannelId, StoreError> {
        self.run(|c| admin::create_channel(c, workspace, slug, name, is_private, now))
    }

    fn add_channel_member(
        &mut self,
        channel: ChannelId,
        user: UserId,
    ) -> Result<Option<MembershipChange>, StoreError> {
        self.run(|c| admin::add_channel_member(c, channel, user))
    }

    fn remove_workspace_member(
        &mut self,
        workspace: WorkspaceId,
        user: UserId,
    ) -> Result<MembershipChange, StoreError> {
        self.run(|c| admin::remove_workspace_member(c, workspace, user))
    }

    fn remove_channel_member(
        &mut self,
        channel: ChannelId,
        user: UserId,
    ) -> Result<MembershipChange, StoreError> {
        self.run(|c| admin::remove_channel_member(c, channel, user))
    }

    fn create_conversation(
        &mut self,
        workspace: WorkspaceId,
        participants: &[UserId],
        now: DateTime<Utc>,
    ) -> Result<(ConversationId, Vec<MembershipChange>), StoreError> {
        self.run(|c| admin::create_conversation(c, workspace, participants, now))
    }

    fn create_session(
        &mut self,
        user: UserId,
        token: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.run(|c| admin::create_session(c, user, token, expires_at, now))
    }
}

impl PgBackend {
    /// One batch, one statement (see [`write::send_batch`]). A connection lost meanwhile is
    /// replaced and the open messages tried once more, after looking up which of them the
    /// lost statement did commit (those are answered as new and published now). When that
    /// fails too, the senders get `Unavailable`, and the messages wait in
    /// [`write::Unconfirmed`]: a retry with the same `clientMsgId` finds the original and, if
    /// it was stored unseen, publishes it then; otherwise the next batch's sweep finds it and
    /// the store publishes it ([`Backend::take_orphans`]). Deadlocks between nodes (SQLSTATE
    /// 40P01) roll the statement back, so they are retried too.
    fn send_once(
        &mut self,
        batch: Vec<NewMessage>,
        now: DateTime<Utc>,
    ) -> Vec<Result<Stored, StoreError>> {
        let mut pending = write::Pending::new(&batch, now);
        let mut unconfirmed = std::mem::take(&mut self.unconfirmed);
        if !unconfirmed.is_empty() {
            // Before this batch: its rooms' later messages must not overtake them.
            if let Ok(conn) = self.conn() {
                match write::sweep(conn, &mut unconfirmed) {
                    Ok(found) => self.orphans.extend(found),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot look up the messages of a broken batch yet; will retry")
                    }
                }
            }
        }
        let mut ambiguous = false;
        let mut failure = None;
        for _attempt in 0..2 {
            let conn = match self.conn() {
                Ok(c) => c,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            let result = if ambiguous {
                write::recover(conn, &mut pending)
            } else {
                Ok(())
            }
            .and_then(|()| write::send_batch(conn, &mut pending, &mut unconfirmed));
            let Err(error) = result else {
                failure = None;
                break;
            };
            let err = unavailable(&error);
            let lost =
                error.is_closed() || error.as_db_error().is_none() || is_connection_loss(&error);
            if lost {
                self.down(err.clone());
                // The first failure after an idle spell is often a connection the server
                // dropped meanwhile: try a fresh one at once.
                self.retry_at = None;
                ambiguous = true;
            }
            failure = Some(err);
            if !lost && error.code().is_none_or(|c| c.code() != "40P01") {
                break;
            }
        }
        if failure.is_some() && ambiguous {
            unconfirmed.add(pending.open_ids());
        }
        self.unconfirmed = unconfirmed;
        pending.finish(failure)
    }
}
