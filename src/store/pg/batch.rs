//! The one statement a send batch costs: membership facts, the clientMsgId lookup, the
//! sequence reservation and the insert, folded into one round trip. Run outside an explicit
//! transaction, the statement is its own transaction: it commits whole or not at all.
//!
//! Extending it (per-room event positions, docs/cluster.md): the reservation `r` and the
//! insert `ins` are the places; `r` returns the counter row, and `ins` takes each row's
//! number as `r.last - r.step + ok.k` (its 1-based rank `k` in its room).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use postgres::Row;
use uuid::Uuid;

use crate::ids::Target;
use crate::store::NewMessage;

use super::Conn;

/// Two kinds of answer rows. One per message: the original already stored under its
/// `(author, clientMsgId)` in `message_from_row`'s layout (0..=9, all NULL when there is
/// none), its 1-based position `i` in the statement (10), the author's name (11, NULL: no
/// such user), the target's workspace (12, NULL: no such target), whether the author is a
/// member (13) and its id (14). Then one per inserted row: NULL in 0..=13, its id (14) and
/// sequence (15).
///
/// Every lookup is a correlated subquery with `LIMIT 1`, which the planner can neither
/// flatten into a join nor turn into a hashed scan of the whole table: a probe of a primary
/// key or unique index per message, whatever the statistics say (the store's connections
/// also run with `enable_seqscan = off`, see [`super::connect`]). The CTEs are joined by
/// array position, not by a join the planner would cost from guessed row counts.
///
/// The reservation adds to each target's counter. A message the web app inserted itself at a
/// sequence the counter hands out fails the statement on the unique index
/// ([`is_sequence_conflict`]); the retry runs with `$9` (heal) true, which first moves each
/// counter to at least `max(sequence)` of its target (two probes of the `(target, sequence)`
/// unique indexes, in a new snapshot), so the channel goes on past the foreign row. The
/// probes only run then: on every batch they cost 15-22% of the statement (their index-only
/// scans visit the heap, as the newest pages are never all-visible), for a conflict that
/// almost never happens.
pub(super) const SEND: &str = "\
WITH b AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::uuid[],
                         $6::text[], $7::uuid[])
        WITH ORDINALITY AS b(id, content, author, ch, cv, cmid, ws, i)
), f AS (
    SELECT b.*, COALESCE(b.ch, b.cv) AS t,
           (SELECT u.name FROM users u WHERE u.id = b.author LIMIT 1) AS name,
           CASE WHEN b.ch IS NOT NULL
                THEN (SELECT c.workspace_id FROM channels c WHERE c.id = b.ch LIMIT 1)
                ELSE (SELECT v.workspace_id FROM conversations v WHERE v.id = b.cv LIMIT 1)
           END AS home,
           CASE WHEN b.ch IS NOT NULL
                THEN (SELECT true FROM channel_members m
                      WHERE m.channel_id = b.ch AND m.user_id = b.author LIMIT 1)
                ELSE (SELECT true FROM conversation_participants p
                      WHERE p.conversation_id = b.cv AND p.user_id = b.author LIMIT 1)
           END AS member,
           (SELECT m.id FROM messages m
            WHERE m.author_id = b.author AND m.client_msg_id = b.cmid LIMIT 1) AS original
    FROM b
), ok AS (
    SELECT f.*, row_number() OVER (PARTITION BY f.t ORDER BY f.i) AS k,
           dense_rank() OVER (ORDER BY f.t) AS d
    FROM f
    WHERE f.name IS NOT NULL AND f.home IS NOT NULL AND (f.ws IS NULL OR f.ws = f.home)
      AND f.member AND f.original IS NULL
), n AS (
    SELECT t, count(*) AS n FROM ok GROUP BY t
), r AS (
    INSERT INTO message_sequences AS s (target_id, last, step)
    SELECT n.t, n.n + CASE WHEN $9 THEN GREATEST(
               COALESCE((SELECT max(sequence) FROM messages WHERE channel_id = n.t), 0),
               COALESCE((SELECT max(sequence) FROM messages WHERE conversation_id = n.t), 0))
               ELSE 0 END,
           n.n
    FROM n ORDER BY n.t
    ON CONFLICT (target_id) DO UPDATE
        SET last = GREATEST(s.last + EXCLUDED.step, EXCLUDED.last), step = EXCLUDED.step
    RETURNING target_id, last - step AS base
), bases AS MATERIALIZED (
    SELECT array_agg(base ORDER BY target_id) AS base FROM r
), ins AS (
    INSERT INTO messages (id, content, author_id, channel_id, conversation_id, sequence,
                          client_msg_id, created_at, updated_at)
    SELECT ok.id, ok.content, ok.author, ok.ch, ok.cv, bases.base[ok.d] + ok.k, ok.cmid, $8, $8
    FROM ok, bases
    RETURNING id, sequence
)
SELECT m.id, m.content, m.author_id, f.name, m.channel_id, m.conversation_id, m.sequence,
       m.client_msg_id, m.created_at, m.deleted_at,
       f.i, f.name, f.home, COALESCE(f.member, false), f.id, NULL::int8
FROM f
LEFT JOIN LATERAL (SELECT * FROM messages m WHERE m.id = f.original LIMIT 1) m ON true
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       NULL, NULL, NULL, NULL, ins.id, ins.sequence
FROM ins";

/// Messages stored under some ids (after an ambiguous COMMIT).
pub(super) const BY_ID: &str = "\
SELECT m.id, m.content, m.author_id, u.name, m.channel_id, m.conversation_id, m.sequence,
       m.client_msg_id, m.created_at, m.deleted_at
FROM messages m JOIN users u ON u.id = m.author_id
WHERE m.id = ANY($1::uuid[])";

/// One message as the statement sends it.
pub(super) struct Outgoing<'a> {
    pub id: Uuid,
    pub message: &'a NewMessage,
}

/// What the statement says of one message.
pub(super) struct Answer {
    /// The message's row of the answer.
    pub row: Row,
    /// The sequence it was inserted with (`None`: not inserted).
    sequence: Option<i64>,
}

impl Answer {
    /// The original under the same `(author, clientMsgId)`, when there was one.
    pub fn has_original(&self) -> bool {
        self.row.get::<_, Option<Uuid>>(0).is_some()
    }

    /// The row's 0-based position in the statement.
    pub fn index(&self) -> usize {
        usize::try_from(self.row.get::<_, i64>(10) - 1).unwrap_or(usize::MAX)
    }

    /// The author's name (`None`: no such user).
    pub fn name(&self) -> Option<String> {
        self.row.get(11)
    }

    /// The target's workspace (`None`: no such target).
    pub fn home(&self) -> Option<Uuid> {
        self.row.get(12)
    }

    /// Whether the author is a member of the target.
    pub fn member(&self) -> bool {
        self.row.get(13)
    }

    /// The sequence the row was inserted with (`None`: not inserted).
    pub fn sequence(&self) -> Option<i64> {
        self.sequence
    }
}

/// `(channel, conversation)` of a target, for the two nullable columns.
pub(super) fn split(target: Target) -> (Option<Uuid>, Option<Uuid>) {
    match target {
        Target::Channel(c) => (Some(c.0), None),
        Target::Dm(d) => (None, Some(d.0)),
    }
}

/// Runs [`SEND`] over `rows` (one round trip, one transaction); `heal`: after a sequence
/// conflict, move the counters past the stored sequences first.
pub(super) fn send(
    conn: &mut Conn,
    rows: &[Outgoing<'_>],
    now: DateTime<Utc>,
    heal: bool,
) -> Result<Vec<Answer>, postgres::Error> {
    if !conn.is_prepared(SEND) {
        // The statement's plan is the same for every batch (probes, see [`SEND`]): planning
        // it again for each batch's arrays costs a tenth of the batch for nothing.
        conn.client
            .batch_execute("SET plan_cache_mode = force_generic_plan")?;
    }
    let statement = conn.prepare(SEND)?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let contents: Vec<&str> = rows.iter().map(|r| r.message.content.as_str()).collect();
    let authors: Vec<Uuid> = rows.iter().map(|r| r.message.author.0).collect();
    let (chans, convs): (Vec<Option<Uuid>>, Vec<Option<Uuid>>) =
        rows.iter().map(|r| split(r.message.target)).unzip();
    let cmids: Vec<Option<&str>> = rows
        .iter()
        .map(|r| r.message.client_msg_id.as_deref())
        .collect();
    let workspaces: Vec<Option<Uuid>> = rows
        .iter()
        .map(|r| r.message.workspace.map(|w| w.0))
        .collect();
    let answers = conn.client.query(
        &statement,
        &[
            &ids,
            &contents,
            &authors,
            &chans,
            &convs,
            &cmids,
            &workspaces,
            &now,
            &heal,
        ],
    )?;
    let (inserted, facts): (Vec<Row>, Vec<Row>) = answers
        .into_iter()
        .partition(|row| row.get::<_, Option<i64>>(10).is_none());
    let sequences: HashMap<Uuid, i64> = inserted
        .iter()
        .map(|row| (row.get(14), row.get(15)))
        .collect();
    Ok(facts
        .into_iter()
        .map(|row| Answer {
            sequence: sequences.get(&row.get::<_, Uuid>(14)).copied(),
            row,
        })
        .collect())
}

/// The stored messages of `ids`.
pub(super) fn lookup(conn: &mut Conn, ids: &[Uuid]) -> Result<Vec<Row>, postgres::Error> {
    let statement = conn.prepare(BY_ID)?;
    conn.client.query(&statement, &[&ids])
}

/// A unique violation on `(channel_id, sequence)` or `(conversation_id, sequence)`: someone
/// else (the web app) inserted at a sequence the statement reserved. Nothing was stored; a
/// retry reserves past it.
pub(super) fn is_sequence_conflict(e: &postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| {
        db.code().code() == "23505"
            && matches!(
                db.constraint(),
                Some("messages_channel_sequence" | "messages_conversation_sequence")
            )
    })
}

/// A unique violation on `(author_id, client_msg_id)`: another writer (a lane with another
/// room, another node) committed a message under a key of this statement after its snapshot
/// was taken. Nothing was stored; the retry (a new snapshot) finds that message as the
/// original. (The insert has no `ON CONFLICT DO NOTHING` for this: the speculative insertion
/// costs every row 5-8% for a race of one sender with itself.)
pub(super) fn is_client_msg_id_conflict(e: &postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| {
        db.code().code() == "23505" && db.constraint() == Some("messages_author_client_msg_id")
    })
}

/// An error one of the rows caused (bad data, a constraint, a value too large): retried in
/// halves, it ends up with that row alone.
pub(super) fn is_row_error(e: &postgres::Error) -> bool {
    e.code()
        .is_some_and(|c| matches!(&c.code()[..2], "22" | "23" | "54"))
}
