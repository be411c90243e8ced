//! Writes: a send batch as one transaction (checks, idempotency, sequence allocation,
//! insert, COMMIT), and soft deletes.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::Type;
use uuid::Uuid;

use crate::ids::{MessageId, Target, UserId, WorkspaceId};
use crate::model::{Message, User};

use super::read::message_from_row;
use super::{describe, Conn, InsertMethod};
use crate::store::{Deletion, NewMessage, StoreError, Stored};

/// Why a batch failed, and whether COMMIT had been sent (then it may have happened).
pub(super) struct BatchError {
    pub error: postgres::Error,
    pub committing: bool,
}

impl From<postgres::Error> for BatchError {
    fn from(error: postgres::Error) -> Self {
        BatchError {
            error,
            committing: false,
        }
    }
}

/// For each message of the batch (1-based `i`): the author's name (NULL: no such user), the
/// target's workspace (NULL: no such target) and whether the author is a member.
const FACTS: &str = "\
SELECT b.i, u.name, COALESCE(c.workspace_id, v.workspace_id),
       CASE WHEN b.ch IS NOT NULL
            THEN EXISTS (SELECT 1 FROM channel_members m WHERE m.channel_id = b.ch AND m.user_id = b.author)
            ELSE EXISTS (SELECT 1 FROM conversation_participants p WHERE p.conversation_id = b.cv AND p.user_id = b.author)
       END
FROM unnest($1::uuid[], $2::uuid[], $3::uuid[]) WITH ORDINALITY AS b(author, ch, cv, i)
LEFT JOIN users u ON u.id = b.author
LEFT JOIN channels c ON c.id = b.ch
LEFT JOIN conversations v ON v.id = b.cv";

/// Messages already stored under some `(author_id, client_msg_id)` pairs. The LATERAL makes
/// one probe of the unique index per pair: written as `IN (SELECT … unnest …)` the planner
/// chose a scan of the whole table, so every batch got slower as `messages` grew.
const BY_CLIENT_ID: &str = "\
SELECT m.id, m.content, m.author_id, u.name, m.channel_id, m.conversation_id, m.sequence,
       m.client_msg_id, m.created_at, m.deleted_at
FROM unnest($1::uuid[], $2::text[]) AS k(author, cmid)
CROSS JOIN LATERAL (
    SELECT * FROM messages m WHERE m.author_id = k.author AND m.client_msg_id = k.cmid
) m
JOIN users u ON u.id = m.author_id";

/// Reserves `n` sequences for each target; returns the last one reserved. A target without a
/// counter row starts above the largest sequence already in `messages`. Targets come sorted,
/// so two nodes lock counter rows in the same order and cannot deadlock on them.
const RESERVE: &str = "\
INSERT INTO message_sequences AS s (target_id, last, step)
SELECT x.t, x.n + GREATEST(
           COALESCE((SELECT max(sequence) FROM messages WHERE channel_id = x.t), 0),
           COALESCE((SELECT max(sequence) FROM messages WHERE conversation_id = x.t), 0)),
       x.n
FROM unnest($1::uuid[], $2::int8[]) AS x(t, n)
ORDER BY x.t
ON CONFLICT (target_id) DO UPDATE SET last = s.last + EXCLUDED.step, step = EXCLUDED.step
RETURNING target_id, last";

/// The multi-row insert. A row whose `(author, clientMsgId)` another node committed meanwhile
/// is skipped (not returned) and answered with that original.
const INSERT: &str = "\
INSERT INTO messages (id, content, author_id, channel_id, conversation_id, sequence,
                      client_msg_id, created_at, updated_at)
SELECT x.id, x.content, x.author, x.ch, x.cv, x.seq, x.cmid, $8, $8
FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::uuid[], $6::int8[], $7::text[])
     AS x(id, content, author, ch, cv, seq, cmid)
ON CONFLICT ON CONSTRAINT messages_author_client_msg_id DO NOTHING
RETURNING id";

const COPY: &str = "\
COPY messages (id, content, author_id, channel_id, conversation_id, sequence, client_msg_id,
               created_at, updated_at) FROM STDIN (FORMAT binary)";

/// What becomes of one message of the batch.
enum Plan {
    Refused(StoreError),
    /// Already stored (earlier batch, or another node).
    Existing(Message),
    /// Same `(author, clientMsgId)` as message `usize` earlier in this batch.
    SameAs(usize),
    /// A new row.
    New(Message),
}

fn split(target: Target) -> (Option<Uuid>, Option<Uuid>) {
    match target {
        Target::Channel(c) => (Some(c.0), None),
        Target::Dm(d) => (None, Some(d.0)),
    }
}

/// Stores `batch` in one transaction (see [`crate::store::Backend::send_batch`]).
pub(super) fn send_batch(
    conn: &mut Conn,
    batch: &[NewMessage],
    now: DateTime<Utc>,
    method: InsertMethod,
) -> Result<Vec<Result<Stored, StoreError>>, BatchError> {
    let facts = conn.prepare(FACTS)?;
    let by_client_id = conn.prepare(BY_CLIENT_ID)?;
    let reserve = conn.prepare(RESERVE)?;
    let insert = conn.prepare(INSERT)?;
    let mut tx = conn.client.transaction()?;

    // 1. Who may send where, for the whole batch in one round trip.
    let authors: Vec<Uuid> = batch.iter().map(|m| m.author.0).collect();
    let (chans, convs): (Vec<Option<Uuid>>, Vec<Option<Uuid>>) =
        batch.iter().map(|m| split(m.target)).unzip();
    let mut plans: Vec<Plan> = Vec::with_capacity(batch.len());
    let mut names: Vec<Option<String>> = vec![None; batch.len()];
    let mut verdicts: Vec<Option<StoreError>> = vec![None; batch.len()];
    for row in tx.query(&facts, &[&authors, &chans, &convs])? {
        let i = usize::try_from(row.get::<_, i64>(0) - 1).unwrap_or(usize::MAX);
        let Some(m) = batch.get(i) else { continue };
        let name: Option<String> = row.get(1);
        let home: Option<Uuid> = row.get(2);
        let member: bool = row.get(3);
        verdicts[i] = match (&name, home) {
            (None, _) => Some(StoreError::NotFound(format!(
                "user {} does not exist",
                m.author
            ))),
            (_, None) => Some(StoreError::NotFound(format!(
                "{} does not exist",
                describe(m.target)
            ))),
            (_, Some(home)) => match m.workspace {
                Some(ws) if ws.0 != home => Some(StoreError::Forbidden(format!(
                    "{} belongs to another workspace than {ws}; connect to workspace {home} to use it",
                    describe(m.target)
                ))),
                _ if !member => Some(StoreError::Forbidden(format!(
                    "user {} is not a member of {}",
                    m.author,
                    describe(m.target)
                ))),
                _ => None,
            },
        };
        names[i] = name;
    }

    // 2. Idempotency: originals already stored under the batch's client ids.
    let keyed: Vec<(Uuid, String)> = batch
        .iter()
        .zip(&verdicts)
        .filter(|(_, v)| v.is_none())
        .filter_map(|(m, _)| m.client_msg_id.clone().map(|k| (m.author.0, k)))
        .collect();
    let mut originals: HashMap<(Uuid, String), Message> = HashMap::new();
    if !keyed.is_empty() {
        let (a, k): (Vec<Uuid>, Vec<String>) = keyed.into_iter().unzip();
        for row in tx.query(&by_client_id, &[&a, &k])? {
            let m = message_from_row(&row);
            let key = (m.author.id.0, m.client_msg_id.clone().unwrap_or_default());
            originals.insert(key, m);
        }
    }

    // 3. Plan each message; count the new ones per target.
    let mut first_of_key: HashMap<(Uuid, String), usize> = HashMap::new();
    let mut counts: HashMap<Uuid, i64> = HashMap::new();
    for (i, (m, verdict)) in batch.iter().zip(verdicts).enumerate() {
        let plan = if let Some(e) = verdict {
            Plan::Refused(e)
        } else if let Some(key) = m.client_msg_id.clone().map(|k| (m.author.0, k)) {
            if let Some(original) = originals.get(&key) {
                Plan::Existing(original.clone())
            } else if let Some(&j) = first_of_key.get(&key) {
                Plan::SameAs(j)
            } else {
                first_of_key.insert(key, i);
                Plan::New(new_message(m, names[i].take(), now))
            }
        } else {
            Plan::New(new_message(m, names[i].take(), now))
        };
        if let Plan::New(msg) = &plan {
            *counts.entry(msg.target.uuid()).or_default() += 1;
        }
        plans.push(plan);
    }

    // 4. Sequences, then the rows.
    if !counts.is_empty() {
        let mut targets: Vec<(Uuid, i64)> = counts.into_iter().collect();
        targets.sort_unstable();
        let (t, n): (Vec<Uuid>, Vec<i64>) = targets.iter().copied().unzip();
        let mut next: HashMap<Uuid, i64> = HashMap::with_capacity(t.len());
        for row in tx.query(&reserve, &[&t, &n])? {
            let target: Uuid = row.get(0);
            let last: i64 = row.get(1);
            let n = targets
                .binary_search_by_key(&target, |(t, _)| *t)
                .map_or(0, |i| targets[i].1);
            next.insert(target, last - n + 1);
        }
        let mut rows = Vec::new();
        for plan in &mut plans {
            if let Plan::New(msg) = plan {
                let seq = next.entry(msg.target.uuid()).or_insert(1);
                msg.sequence = *seq;
                *seq += 1;
                rows.push(&*msg);
            }
        }
        let skipped = match method {
            InsertMethod::Copy => {
                copy_rows(&mut tx, &rows, now)?;
                Vec::new()
            }
            _ => insert_rows(&mut tx, &insert, &rows, now)?,
        };
        // Rows another node stored first under the same client id: answer with its original.
        if !skipped.is_empty() {
            let a: Vec<Uuid> = skipped.iter().map(|m| m.0).collect();
            let k: Vec<String> = skipped.iter().map(|m| m.1.clone()).collect();
            for row in tx.query(&by_client_id, &[&a, &k])? {
                let m = message_from_row(&row);
                let key = (m.author.id.0, m.client_msg_id.clone().unwrap_or_default());
                for plan in plans.iter_mut() {
                    let same = matches!(plan, Plan::New(n)
                        if n.author.id.0 == key.0 && n.client_msg_id.as_deref() == Some(&key.1));
                    if same {
                        *plan = Plan::Existing(m.clone());
                    }
                }
            }
        }
    }

    tx.commit().map_err(|error| BatchError {
        error,
        committing: true,
    })?;
    let created = plans.iter().filter(|p| matches!(p, Plan::New(_))).count();
    conn.inserted(created as u64);

    // 5. Answers, in batch order.
    let mut out: Vec<Result<Stored, StoreError>> = Vec::with_capacity(plans.len());
    for plan in plans {
        let result = match plan {
            Plan::Refused(e) => Err(e),
            Plan::Existing(message) => Ok(Stored {
                message,
                created: false,
            }),
            Plan::SameAs(j) => match &out[j] {
                Ok(s) => Ok(Stored {
                    message: s.message.clone(),
                    created: false,
                }),
                Err(e) => Err(e.clone()),
            },
            Plan::New(message) => Ok(Stored {
                message,
                created: true,
            }),
        };
        out.push(result);
    }
    Ok(out)
}

fn new_message(m: &NewMessage, name: Option<String>, now: DateTime<Utc>) -> Message {
    Message {
        // v7: time-ordered, so the primary key index grows at its right edge.
        id: MessageId(Uuid::now_v7()),
        content: m.content.clone(),
        author: User {
            id: m.author,
            name: name.unwrap_or_default(),
        },
        target: m.target,
        sequence: 0,
        client_msg_id: m.client_msg_id.clone(),
        // PostgreSQL keeps microseconds; store what the database will give back.
        created_at: truncate_micros(now),
        deleted_at: None,
    }
}

/// `t` rounded down to whole microseconds, the precision of `timestamptz`.
pub(super) fn truncate_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// Multi-row insert; returns the `(author, clientMsgId)` of rows skipped as duplicates.
fn insert_rows(
    tx: &mut postgres::Transaction<'_>,
    insert: &postgres::Statement,
    rows: &[&Message],
    now: DateTime<Utc>,
) -> Result<Vec<(Uuid, String)>, postgres::Error> {
    let ids: Vec<Uuid> = rows.iter().map(|m| m.id.0).collect();
    let contents: Vec<&str> = rows.iter().map(|m| m.content.as_str()).collect();
    let authors: Vec<Uuid> = rows.iter().map(|m| m.author.id.0).collect();
    let (chans, convs): (Vec<Option<Uuid>>, Vec<Option<Uuid>>) =
        rows.iter().map(|m| split(m.target)).unzip();
    let seqs: Vec<i64> = rows.iter().map(|m| m.sequence).collect();
    let cmids: Vec<Option<&str>> = rows.iter().map(|m| m.client_msg_id.as_deref()).collect();
    let now = truncate_micros(now);
    let inserted = tx.query(
        insert,
        &[
            &ids, &contents, &authors, &chans, &convs, &seqs, &cmids, &now,
        ],
    )?;
    if inserted.len() == rows.len() {
        return Ok(Vec::new());
    }
    let done: std::collections::HashSet<Uuid> = inserted.iter().map(|r| r.get(0)).collect();
    Ok(rows
        .iter()
        .filter(|m| !done.contains(&m.id.0))
        .filter_map(|m| m.client_msg_id.clone().map(|k| (m.author.id.0, k)))
        .collect())
}

/// Binary COPY of the rows. COPY has no ON CONFLICT: a duplicate client id committed by
/// another node meanwhile fails the batch, which the senders then retry.
fn copy_rows(
    tx: &mut postgres::Transaction<'_>,
    rows: &[&Message],
    now: DateTime<Utc>,
) -> Result<(), postgres::Error> {
    let now = truncate_micros(now);
    let sink = tx.copy_in(COPY)?;
    let types = [
        Type::UUID,
        Type::TEXT,
        Type::UUID,
        Type::UUID,
        Type::UUID,
        Type::INT8,
        Type::TEXT,
        Type::TIMESTAMPTZ,
        Type::TIMESTAMPTZ,
    ];
    let mut writer = BinaryCopyInWriter::new(sink, &types);
    for m in rows {
        let (ch, cv) = split(m.target);
        writer.write(&[
            &m.id.0,
            &m.content,
            &m.author.id.0,
            &ch,
            &cv,
            &m.sequence,
            &m.client_msg_id,
            &now,
            &now,
        ])?;
    }
    writer.finish()?;
    Ok(())
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
