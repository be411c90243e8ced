//! Writes: a send batch ([`send_batch`], one statement of [`super::batch`] per batch, with
//! per-row isolation and sequence healing), and soft deletes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::ids::{MessageId, UserId, WorkspaceId};
use crate::model::{Message, User};

use super::batch::{self, Answer, Outgoing};
use super::read::message_from_row;
use super::{describe, Conn};
use crate::store::{Deletion, NewMessage, StoreError, Stored};

/// How often one batch is retried after a conflict with a row someone else inserted (a
/// sequence, or a clientMsgId of the batch).
const RETRIES: usize = 5;

/// A batch while it is being stored. It keeps its message ids across attempts, so a retry
/// after a lost connection can find the rows an ambiguous COMMIT did store.
pub(super) struct Pending<'a> {
    batch: &'a [NewMessage],
    /// `now` in microseconds, the precision of `timestamptz`.
    now: DateTime<Utc>,
    /// The id each message gets if it is new (v7: time-ordered, so the primary key index
    /// grows at its right edge).
    ids: Vec<Uuid>,
    /// The answer of each message, once known.
    results: Vec<Option<Result<Stored, StoreError>>>,
    /// A message with the same `(author, clientMsgId)` as an earlier one of the batch.
    same_as: Vec<Option<usize>>,
}

impl<'a> Pending<'a> {
    pub fn new(batch: &'a [NewMessage], now: DateTime<Utc>) -> Self {
        let mut first: HashMap<(Uuid, &str), usize> = HashMap::new();
        let same_as = batch
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let key = (m.author.0, m.client_msg_id.as_deref()?);
                match first.get(&key) {
                    Some(&j) => Some(j),
                    None => {
                        first.insert(key, i);
                        None
                    }
                }
            })
            .collect();
        Pending {
            batch,
            now: truncate_micros(now),
            ids: batch.iter().map(|_| Uuid::now_v7()).collect(),
            results: vec![None; batch.len()],
            same_as,
        }
    }

    /// Messages still without an answer (duplicates within the batch aside).
    fn open(&self) -> Vec<usize> {
        (0..self.batch.len())
            .filter(|&i| self.results[i].is_none() && self.same_as[i].is_none())
            .collect()
    }

    /// Ids of the open messages.
    pub fn open_ids(&self) -> Vec<Uuid> {
        self.open().into_iter().map(|i| self.ids[i]).collect()
    }

    /// One answer per message in batch order; open ones get `error`.
    pub fn finish(self, error: Option<StoreError>) -> Vec<Result<Stored, StoreError>> {
        let mut out: Vec<Result<Stored, StoreError>> = Vec::with_capacity(self.batch.len());
        for (result, same_as) in self.results.into_iter().zip(self.same_as) {
            let result = match (result, same_as) {
                (Some(r), _) => r,
                (None, Some(j)) => match &out[j] {
                    Ok(s) => Ok(Stored {
                        message: s.message.clone(),
                        created: false,
                    }),
                    Err(e) => Err(e.clone()),
                },
                (None, None) => Err(error.clone().unwrap_or_else(|| {
                    StoreError::Unavailable(
                        "the store lost this message in its batch; retry".into(),
                    )
                })),
            };
            out.push(result);
        }
        out
    }
}

/// Messages a batch may have stored when its connection broke during the statement, whose
/// senders were answered with an error: none of them was published. Two ways out, whichever
/// comes first, so each is published exactly once:
/// - a retry with the same clientMsgId finds the original, which [`Unconfirmed::take`] then
///   reports as unseen, so the batch publishes it;
/// - [`sweep`], before the writer's next batch, looks them all up (the ones without a
///   clientMsgId too, which no retry can name) and hands those that were stored to the store
///   thread to publish. One not found once every statement of the broken connection has ended
///   (the statement timeout, twice) was never stored, and is forgotten.
#[derive(Default)]
pub(super) struct Unconfirmed(HashMap<Uuid, Instant>);

impl Unconfirmed {
    /// Most messages kept (a long outage of a busy node).
    const CAP: usize = 100_000;
    /// After this, a message not found was not stored: the broken connection's statement was
    /// ended by its statement timeout at the latest.
    const SETTLED: Duration = Duration::from_millis(2 * super::DB_TIMEOUT.as_millis() as u64);
    /// Most messages one sweep looks up.
    const SWEEP: usize = 4096;

    pub fn add(&mut self, ids: Vec<Uuid>) {
        let now = Instant::now();
        for id in ids.into_iter().take(Self::CAP.saturating_sub(self.0.len())) {
            self.0.insert(id, now);
        }
    }

    /// Whether `id` was stored unseen (and is now seen).
    pub fn take(&mut self, id: Uuid) -> bool {
        self.0.remove(&id).is_some()
    }

    /// Whether any message waits.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Looks up the [`Unconfirmed`] messages: those found were stored and nobody was told, and
/// are returned (oldest batch first, each room in sequence order) for the store to publish.
pub(super) fn sweep(
    conn: &mut Conn,
    unconfirmed: &mut Unconfirmed,
) -> Result<Vec<Message>, postgres::Error> {
    let ids: Vec<Uuid> = unconfirmed
        .0
        .keys()
        .take(Unconfirmed::SWEEP)
        .copied()
        .collect();
    let mut found: Vec<Message> = batch::lookup(conn, &ids)?
        .iter()
        .map(message_from_row)
        .filter(|m| unconfirmed.take(m.id.0))
        .collect();
    let checked: std::collections::HashSet<Uuid> = ids.into_iter().collect();
    unconfirmed
        .0
        .retain(|id, at| !checked.contains(id) || at.elapsed() < Unconfirmed::SETTLED);
    found.sort_by_key(|m| (m.created_at, m.sequence));
    Ok(found)
}

/// Stores the open messages of `pending` (see [`crate::store::Backend::send_batch`]): one
/// statement for them all. A statement that fails because of one row's data is retried in
/// halves until that row is alone and refused; one that hits a sequence or a clientMsgId
/// someone else stored is retried (the retry reserves past the sequence, or answers with the
/// message stored under the clientMsgId). Answers land in `pending`; an error that is no
/// row's fault (a lost connection, a timeout) is returned, and the messages not answered yet
/// stay open.
pub(super) fn send_batch(
    conn: &mut Conn,
    pending: &mut Pending<'_>,
    unconfirmed: &mut Unconfirmed,
) -> Result<(), postgres::Error> {
    let open = pending.open();
    if !open.is_empty() {
        store_rows(conn, pending, &open, unconfirmed)?;
    }
    Ok(())
}

/// After a lost connection: the open messages the broken statement did store (found by
/// id) are answered as new, since nobody was told of them yet.
pub(super) fn recover(conn: &mut Conn, pending: &mut Pending<'_>) -> Result<(), postgres::Error> {
    let open = pending.open();
    let ids: Vec<Uuid> = open.iter().map(|&i| pending.ids[i]).collect();
    if ids.is_empty() {
        return Ok(());
    }
    for row in batch::lookup(conn, &ids)? {
        let message = message_from_row(&row);
        if let Some(&i) = open.iter().find(|&&i| pending.ids[i] == message.id.0) {
            pending.results[i] = Some(Ok(Stored {
                message,
                created: true,
            }));
        }
    }
    Ok(())
}

fn store_rows(
    conn: &mut Conn,
    pending: &mut Pending<'_>,
    open: &[usize],
    unconfirmed: &mut Unconfirmed,
) -> Result<(), postgres::Error> {
    let rows: Vec<Outgoing<'_>> = open
        .iter()
        .map(|&i| Outgoing {
            id: pending.ids[i],
            message: &pending.batch[i],
        })
        .collect();
    let mut retries = 0;
    let mut heal = false;
    let answers = loop {
        match batch::send(conn, &rows, pending.now, heal) {
            Ok(answers) => break answers,
            Err(e) if batch::is_sequence_conflict(&e) && retries < RETRIES => {
                retries += 1;
                heal = true;
                tracing::warn!(error = %e, "a send batch met a sequence stored by another writer; retrying past it");
            }
            Err(e) if batch::is_client_msg_id_conflict(&e) && retries < RETRIES => {
                retries += 1;
                tracing::info!(error = %e, "a send batch met a clientMsgId another writer stored meanwhile; retrying to answer with that message");
            }
            Err(e) if batch::is_row_error(&e) && open.len() > 1 => {
                let (a, b) = open.split_at(open.len() / 2);
                store_rows(conn, pending, a, unconfirmed)?;
                return store_rows(conn, pending, b, unconfirmed);
            }
            Err(e) if batch::is_row_error(&e) => {
                pending.results[open[0]] = Some(Err(refused(&e)));
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    };
    for answer in answers {
        let Some(&i) = open.get(answer.index()) else {
            continue;
        };
        let m = &pending.batch[i];
        let result = if let Some(e) = verdict(m, &answer) {
            Err(e)
        } else if answer.has_original() {
            let message = message_from_row(&answer.row);
            let created = unconfirmed.take(message.id.0);
            Ok(Stored { message, created })
        } else if let Some(sequence) = answer.sequence() {
            Ok(Stored {
                message: new_message(m, pending.ids[i], answer.name(), sequence, pending.now),
                created: true,
            })
        } else {
            // Not reached: the statement inserts every row that passed, or fails whole. Left
            // open, the message is answered as lost (its sender retries).
            continue;
        };
        pending.results[i] = Some(result);
    }
    Ok(())
}

/// Why `m` may not be stored, from the statement's facts about it.
fn verdict(m: &NewMessage, answer: &Answer) -> Option<StoreError> {
    if answer.name().is_none() {
        return Some(StoreError::NotFound(format!(
            "user {} does not exist",
            m.author
        )));
    }
    let Some(home) = answer.home() else {
        return Some(StoreError::NotFound(format!(
            "{} does not exist",
            describe(m.target)
        )));
    };
    match m.workspace {
        Some(ws) if ws.0 != home => Some(StoreError::Forbidden(format!(
            "{} belongs to another workspace than {ws}; connect to workspace {home} to use it",
            describe(m.target)
        ))),
        _ if !answer.member() => Some(StoreError::Forbidden(format!(
            "user {} is not a member of {}",
            m.author,
            describe(m.target)
        ))),
        _ => None,
    }
}

/// The answer for the one message PostgreSQL would not store.
fn refused(e: &postgres::Error) -> StoreError {
    let cause = match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    };
    StoreError::Invalid(format!(
        "PostgreSQL cannot store this message ({cause}); change it and send it again"
    ))
}

fn new_message(
    m: &NewMessage,
    id: Uuid,
    name: Option<String>,
    sequence: i64,
    now: DateTime<Utc>,
) -> Message {
    Message {
        id: MessageId(id),
        content: m.content.clone(),
        author: User {
            id: m.author,
            name: name.unwrap_or_default(),
        },
        target: m.target,
        sequence,
        client_msg_id: m.client_msg_id.clone(),
        created_at: now,
        deleted_at: None,
    }
}

/// `t` rounded down to whole microseconds, the precision of `timestamptz`.
pub(super) fn truncate_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// Looks a message up for a delete: its author, target workspace and deletion state.
const DELETE_FACTS: &str = "\
SELECT m.author_id, COALESCE(c.workspace_id, v.workspace_id)
FROM messages m
LEFT JOIN channels c ON c.id = m.channel_id
LEFT JOIN conversations v ON v.id = m.conversation_id
WHERE m.id = $1";

/// Sets `deleted_at` the first time only; the row stays (soft delete).
const SOFT_DELETE: &str = "\
UPDATE messages SET deleted_at = $2, updated_at = $2 WHERE id = $1 AND deleted_at IS NULL";

const ONE_MESSAGE: &str = "\
SELECT m.id, m.content, m.author_id, u.name, m.channel_id, m.conversation_id, m.sequence,
       m.client_msg_id, m.created_at, m.deleted_at
FROM messages m JOIN users u ON u.id = m.author_id WHERE m.id = $1";

/// Soft-deletes `id` for its author (see [`crate::store::Backend::delete`]).
pub(super) fn delete(
    conn: &mut Conn,
    author: UserId,
    workspace: WorkspaceId,
    id: MessageId,
    now: DateTime<Utc>,
) -> Result<Result<Deletion, StoreError>, postgres::Error> {
    let facts = conn.prepare(DELETE_FACTS)?;
    let update = conn.prepare(SOFT_DELETE)?;
    let fetch = conn.prepare(ONE_MESSAGE)?;
    let Some(row) = conn.client.query_opt(&facts, &[&id.0])? else {
        return Ok(Err(StoreError::NotFound(format!(
            "message {id} does not exist"
        ))));
    };
    let owner: Uuid = row.get(0);
    let home: Option<Uuid> = row.get(1);
    if home != Some(workspace.0) {
        return Ok(Err(StoreError::Forbidden(format!(
            "message {id} belongs to another workspace than {workspace}"
        ))));
    }
    if owner != author.0 {
        return Ok(Err(StoreError::Forbidden(format!(
            "only the author may delete message {id}, and user {author} is not its author"
        ))));
    }
    let first = conn
        .client
        .execute(&update, &[&id.0, &truncate_micros(now)])?
        == 1;
    let Some(row) = conn.client.query_opt(&fetch, &[&id.0])? else {
        return Ok(Err(StoreError::NotFound(format!(
            "message {id} does not exist"
        ))));
    };
    Ok(Ok(Deletion {
        message: message_from_row(&row),
        first,
    }))
}
