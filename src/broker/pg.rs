//! `broker-pg`: the `broker` thread's one PostgreSQL connection. It answers gap fills (a
//! room's messages after a sequence, and the room's committed top read in the same snapshot)
//! and top sweeps (every room's committed top), so the `broker` thread itself never waits on
//! the database.
//!
//! A room's `message:new` events are ordered by the message's `sequence`, which PostgreSQL
//! hands out under the room's `message_sequences` row lock: commits of one room happen in
//! sequence order on every node, so when sequence `s` is committed every sequence below it is
//! committed too, or is a hole (a sequence reserved by a batch whose row was skipped).

use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use crossbeam_channel::{Receiver, Sender};
use postgres::{Client, IsolationLevel};

use super::deletions::Cursor;
use super::node::Input;
use crate::ids::{Room, Target};
use crate::protocol::packet;
use crate::store::pg::connect;
use crate::store::pg::read::{message_from_row, tops};

/// Rows per fill page.
pub const PAGE: i64 = 256;

/// What the `broker` thread asks.
#[derive(Debug)]
pub enum Ask {
    /// The room's messages after sequence `after`, and its top.
    Fill {
        /// The room.
        room: Room,
        /// Everything up to it was released.
        after: u64,
    },
    /// The committed top of each room.
    Tops(Vec<Room>),
    /// The deletions in `rooms` after `since` (an outage's, see [`super::deletions`]).
    Deletions {
        /// The rooms.
        rooms: Vec<Room>,
        /// Where the read starts.
        since: Cursor,
        /// When it was asked (the wall clock), handed back with the answer.
        at: SystemTime,
    },
    /// A recovered session's replay: each room's messages in `(after, upto]`, rooms in turn.
    Replay {
        /// The broker's request number.
        req: u64,
        /// `(room, after, upto)`.
        ranges: Vec<(Room, u64, u64)>,
    },
}

/// Most messages one recovery replays (past it the client gets a new session and reads
/// history: a replay that large would not fit its socket's queue anyway).
pub const MAX_REPLAY: usize = 2_000;

/// Deletions read: `(room, sequence of the deleted message, message:deleted packet)`.
pub type Found = Vec<(Room, u64, Bytes)>;

/// Its answers (sent to the `broker` thread's inbox as [`Input::Pg`]).
#[derive(Debug)]
pub enum Answer {
    /// A fill: `rows` are `(sequence, message:new packet)` in order; `complete` says they reach
    /// `top`.
    Filled {
        /// The room.
        room: Room,
        /// The rows.
        rows: Vec<(u64, Bytes)>,
        /// The room's committed top in the same snapshot.
        top: u64,
        /// The rows reach `top` (else they are one page).
        complete: bool,
    },
    /// A fill could not be read.
    FillFailed(Room),
    /// Rooms' committed tops.
    Tops(Vec<(Room, u64)>),
    /// Deletions read: `(room, sequence of the message, message:deleted packet)`, oldest
    /// first.
    Deletions {
        /// The deletions.
        found: Found,
        /// When the read was asked.
        at: SystemTime,
        /// `None`: they are every deletion from the read's start on; else the read stopped
        /// at its page limit after this row.
        cut: Option<Cursor>,
    },
    /// A replay: `message:new` packets (without offsets) in order, or `None` when it could
    /// not be read whole.
    Replayed {
        /// The broker's request number.
        req: u64,
        /// The packets.
        packets: Option<Vec<Bytes>>,
    },
}

const TOP: &str = "SELECT last FROM message_sequences WHERE target_id = $1";

/// A room's messages in `($2, $3]` by sequence, at most `$4`: fills (up to any sequence) and
/// replays (up to the holder's position).
macro_rules! range {
    ($column:literal) => {
        concat!(
            "SELECT m.id, m.content, m.author_id, u.name, m.channel_id, m.conversation_id, ",
            "m.sequence, m.client_msg_id, m.created_at, m.deleted_at ",
            "FROM messages m JOIN users u ON u.id = m.author_id WHERE m.",
            $column,
            " = $1 AND m.sequence > $2 AND m.sequence <= $3 ORDER BY m.sequence LIMIT $4"
        )
    };
}

/// [`range!`] for `target`'s column.
fn range_sql(target: Target) -> &'static str {
    match target {
        Target::Channel(_) => range!("channel_id"),
        Target::Dm(_) => range!("conversation_id"),
    }
}

/// Rows per page of [`DELETIONS`], and pages per read.
const DELETIONS_PAGE: i64 = 5_000;
const DELETIONS_PAGES: usize = 10;

/// Deletions in some rooms from a moment on (after the page's last `(deleted_at, id)`), in
/// [`range!`]'s columns. The partial index `messages_deleted_at_idx` holds deleted rows only,
/// so the read costs what was deleted, not the rooms' sizes.
const DELETIONS: &str = "\
SELECT m.id, m.content, m.author_id, u.name, m.channel_id, m.conversation_id, m.sequence,
       m.client_msg_id, m.created_at, m.deleted_at
FROM messages m JOIN users u ON u.id = m.author_id
WHERE m.deleted_at IS NOT NULL AND (m.deleted_at, m.id) > ($1, $2)
  AND COALESCE(m.channel_id, m.conversation_id) = ANY($3)
ORDER BY m.deleted_at, m.id LIMIT $4";

/// `message:new` of a row of [`range!`] (a deleted message as its tombstone).
fn event_of(row: &postgres::Row) -> (u64, Bytes) {
    let m = message_from_row(row);
    let seq = u64::try_from(m.sequence).unwrap_or(0);
    (
        seq,
        Bytes::from(packet::event("message:new", &m.to_json(), None)),
    )
}

/// Starts `broker-pg`. It exits when `asks` closes.
pub fn spawn(
    url: String,
    asks: Receiver<Ask>,
    answers: Sender<Input>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("broker-pg".into())
        .spawn(move || {
            let mut client: Option<Client> = None;
            for ask in asks.iter() {
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    client = connect(&url).ok();
                }
                let answer = match client.as_mut() {
                    Some(c) => answer(c, ask),
                    None => failed(ask),
                };
                if let Some(answer) = answer {
                    if answers.send(Input::Pg(answer)).is_err() {
                        return;
                    }
                }
                if client.as_ref().is_none() {
                    // PostgreSQL is down: do not spin through the queue.
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        })
}

fn failed(ask: Ask) -> Option<Answer> {
    match ask {
        Ask::Fill { room, .. } => Some(Answer::FillFailed(room)),
        Ask::Tops(_) | Ask::Deletions { .. } => None,
        Ask::Replay { req, .. } => Some(Answer::Replayed { req, packets: None }),
    }
}

fn answer(client: &mut Client, ask: Ask) -> Option<Answer> {
    match ask {
        Ask::Fill { room, after } => Some(match fill(client, room, after) {
            Ok(answer) => answer,
            Err(e) => {
                tracing::warn!(error = %e, %room, "gap fill failed; retrying");
                Answer::FillFailed(room)
            }
        }),
        Ask::Replay { req, ranges } => Some(Answer::Replayed {
            req,
            packets: replay(client, &ranges)
                .map_err(|e| tracing::warn!(error = %e, "recovery replay failed"))
                .ok()
                .flatten(),
        }),
        Ask::Deletions { rooms, since, at } => match deletions(client, &rooms, since) {
            Ok((found, cut)) => Some(Answer::Deletions { found, at, cut }),
            Err(e) => {
                tracing::warn!(error = %e, "reading an outage's deletions failed; retrying");
                None
            }
        },
        Ask::Tops(rooms) => match tops(client, &rooms) {
            Ok(tops) => Some(Answer::Tops(tops)),
            Err(e) => {
                tracing::warn!(error = %e, "top sweep failed");
                None
            }
        },
    }
}

fn fill(client: &mut Client, room: Room, after: u64) -> Result<Answer, postgres::Error> {
    let Some(target) = room.target() else {
        return Ok(Answer::Filled {
            room,
            rows: Vec::new(),
            top: after,
            complete: true,
        });
    };
    let sql = range_sql(target);
    // One snapshot for the top and the rows: a row committed after the top was read would
    // otherwise make the rows look complete up to a top they exceed.
    let mut tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()?;
    let id = target.uuid();
    let top: i64 = tx.query_opt(TOP, &[&id])?.map_or(0, |r| r.get(0));
    let after_i = i64::try_from(after).unwrap_or(i64::MAX);
    let found = tx.query(sql, &[&id, &after_i, &i64::MAX, &PAGE])?;
    tx.commit()?;
    let complete = (found.len() as i64) < PAGE;
    let rows = found.iter().map(event_of).collect();
    Ok(Answer::Filled {
        room,
        rows,
        top: u64::try_from(top).unwrap_or(0),
        complete,
    })
}

/// The deletions in `rooms` after `since`, at most [`DELETIONS_PAGES`] pages, and the last
/// row read when that is not all of them.
fn deletions(
    client: &mut Client,
    rooms: &[Room],
    since: Cursor,
) -> Result<(Found, Option<Cursor>), postgres::Error> {
    deletions_in_pages(client, rooms, since, DELETIONS_PAGE, DELETIONS_PAGES)
}

/// [`deletions`] in at most `pages` pages of `page` rows.
fn deletions_in_pages(
    client: &mut Client,
    rooms: &[Room],
    since: Cursor,
    page: i64,
    pages: usize,
) -> Result<(Found, Option<Cursor>), postgres::Error> {
    let ids: Vec<uuid::Uuid> = rooms
        .iter()
        .filter_map(|r| r.target().map(|t| t.uuid()))
        .collect();
    let mut after = since;
    let mut found = Vec::new();
    for _ in 0..pages {
        let at = DateTime::<Utc>::from(after.at);
        let rows = client.query(DELETIONS, &[&at, &after.id, &ids, &page])?;
        for row in &rows {
            let m = message_from_row(row);
            let seq = u64::try_from(m.sequence).unwrap_or(0);
            let packet = packet::event("message:deleted", &m.deleted_json(), None);
            found.push((m.room(), seq, Bytes::from(packet)));
            if let Some(at) = m.deleted_at {
                after = Cursor {
                    at: at.into(),
                    id: m.id.0,
                };
            }
        }
        if (rows.len() as i64) < page {
            return Ok((found, None));
        }
    }
    Ok((found, Some(after)))
}

/// The messages of each range, in order (a deleted one as its tombstone); `None` past
/// [`MAX_REPLAY`].
fn replay(
    client: &mut Client,
    ranges: &[(Room, u64, u64)],
) -> Result<Option<Vec<Bytes>>, postgres::Error> {
    let mut packets = Vec::new();
    for &(room, after, upto) in ranges {
        let Some(target) = room.target() else {
            continue;
        };
        let sql = range_sql(target);
        let left = MAX_REPLAY - packets.len();
        let limit = i64::try_from(left + 1).unwrap_or(i64::MAX);
        let (after, upto) = (
            i64::try_from(after).unwrap_or(i64::MAX),
            i64::try_from(upto).unwrap_or(i64::MAX),
        );
        let rows = client.query(sql, &[&target.uuid(), &after, &upto, &limit])?;
        if rows.len() > left {
            return Ok(None);
        }
        packets.extend(rows.iter().map(|row| event_of(row).1));
    }
    Ok(Some(packets))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ChannelId;
    use crate::store::pg::testing::TestDb;
    use crate::store::pg::{migrate, InsertMethod, PgBackend};
    use crate::store::Backend;

    #[test]
    fn deletions_past_a_read_s_page_limit_are_read_through_from_its_last_row() {
        let db = TestDb::create();
        migrate(&db.url()).unwrap();
        let now = Utc::now();
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::new(1));
        let mut b = PgBackend::new(&db.url(), InsertMethod::Unnest, metrics);
        let ann = b.create_user("Ann", None, now).unwrap();
        let ws = b.create_workspace("acme", "Acme", now).unwrap();
        let general = b
            .create_channel(ws, "general", "General", false, now)
            .unwrap();
        let other = b.create_channel(ws, "other", "Other", false, now).unwrap();
        // 25 deletions in `general`, three to a deleted_at (the id orders those), and one in a
        // room the read does not ask for.
        let mut client = db.client();
        client
            .execute(
                "INSERT INTO messages (id, content, author_id, channel_id, sequence, created_at,
                                       updated_at, deleted_at)
                 SELECT gen_random_uuid(), '', $1, $2, g, $3::timestamptz, $3::timestamptz,
                        $3::timestamptz + make_interval(secs => g / 3)
                 FROM generate_series(1, 25) g",
                &[&ann.0, &general.0, &now],
            )
            .unwrap();
        client
            .execute(
                "INSERT INTO messages (id, content, author_id, channel_id, sequence, created_at,
                                       updated_at, deleted_at)
                 VALUES (gen_random_uuid(), '', $1, $2, 1, $3, $3, $3)",
                &[&ann.0, &other.0, &now],
            )
            .unwrap();
        let rooms = [Room::Channel(ChannelId(general.0))];
        let mut since = Cursor::from((now - chrono::Duration::seconds(1)).into());
        let mut seen = Vec::new();
        let mut reads = 0;
        loop {
            // Two pages of four: eight rows a read.
            let (found, cut) = deletions_in_pages(&mut client, &rooms, since, 4, 2).unwrap();
            reads += 1;
            assert!(found.iter().all(|(room, _, _)| *room == rooms[0]));
            seen.extend(found.iter().map(|(_, seq, _)| *seq));
            match cut {
                Some(last) => {
                    assert_eq!(found.len(), 8, "a cut read is full");
                    assert!(last > since, "each cut read moves the cursor on");
                    since = last;
                }
                None => break,
            }
            assert!(reads < 10, "the reads never came to an end: {seen:?}");
        }
        assert_eq!(reads, 4, "8 + 8 + 8 + 1");
        let mut sorted = seen.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (1..=25).collect::<Vec<u64>>(), "each deletion once");
    }
}
