//! Reads: CONNECT (sessions, workspace membership, rooms), membership checks and history
//! pages. No caches: every check reads the membership tables, so a member the web app
//! removed cannot read a room a moment later.

use chrono::{DateTime, Utc};
use postgres::Row;
use uuid::Uuid;

use crate::chat::auth::Credential;
use crate::ids::{ChannelId, ConversationId, MessageId, Room, Target, UserId, WorkspaceId};
use crate::model::{Grant, Message, User};

use super::{describe, Conn};
use crate::store::{HistoryQuery, Reader, StoreError, MAX_HISTORY_LIMIT};

/// A message from a row of `(id, content, author_id, author name, channel_id,
/// conversation_id, sequence, client_msg_id, created_at, deleted_at)`. A tombstone's text
/// is not returned, as in the memory store.
pub(crate) fn message_from_row(row: &Row) -> Message {
    let channel: Option<Uuid> = row.get(4);
    let conversation: Option<Uuid> = row.get(5);
    // The CHECK constraint guarantees exactly one of them is set.
    let target = match (channel, conversation) {
        (Some(c), _) => Target::Channel(ChannelId(c)),
        (None, Some(d)) => Target::Dm(ConversationId(d)),
        (None, None) => Target::Channel(ChannelId(Uuid::nil())),
    };
    let deleted_at: Option<DateTime<Utc>> = row.get(9);
    Message {
        id: MessageId(row.get(0)),
        content: if deleted_at.is_some() {
            String::new()
        } else {
            row.get(1)
        },
        author: User {
            id: UserId(row.get(2)),
            name: row.get(3),
        },
        target,
        sequence: row.get(6),
        client_msg_id: row.get(7),
        created_at: row.get(8),
        deleted_at,
    }
}

const SESSION: &str = "SELECT user_id FROM sessions WHERE token = $1 AND expires_at > $2";

const USER_IN_WORKSPACE: &str = "\
SELECT u.name,
       EXISTS (SELECT 1 FROM workspaces w WHERE w.id = $2),
       EXISTS (SELECT 1 FROM workspace_members m WHERE m.workspace_id = $2 AND m.user_id = u.id)
FROM users u WHERE u.id = $1";

/// The user's channels and DMs in one workspace, in the order joined.
const ROOMS: &str = "\
SELECT true, m.channel_id, m.joined_at FROM channel_members m
  JOIN channels c ON c.id = m.channel_id
  WHERE m.user_id = $1 AND c.workspace_id = $2
UNION ALL
SELECT false, p.conversation_id, p.joined_at FROM conversation_participants p
  JOIN conversations v ON v.id = p.conversation_id
  WHERE p.user_id = $1 AND v.workspace_id = $2
ORDER BY 3, 2";

/// CONNECT (see [`crate::store::Backend::authenticate`]).
pub(super) fn authenticate(
    conn: &mut Conn,
    credential: &Credential,
    workspace: WorkspaceId,
    now: DateTime<Utc>,
) -> Result<Result<Grant, StoreError>, postgres::Error> {
    let user = match credential {
        Credential::Jwt { user, .. } => *user,
        Credential::Session(token) => {
            let session = conn.prepare(SESSION)?;
            match conn.client.query_opt(&session, &[token, &now])? {
                Some(row) => UserId(row.get(0)),
                // Never echo the token: it is a secret.
                None => {
                    return Ok(Err(StoreError::Forbidden(
                        "session token is unknown or expired: sign in again".into(),
                    )))
                }
            }
        }
    };
    let check = conn.prepare(USER_IN_WORKSPACE)?;
    let Some(row) = conn.client.query_opt(&check, &[&user.0, &workspace.0])? else {
        return Ok(Err(StoreError::NotFound(format!(
            "user {user} does not exist"
        ))));
    };
    let name: String = row.get(0);
    if !row.get::<_, bool>(1) {
        return Ok(Err(StoreError::NotFound(format!(
            "workspace {workspace} does not exist"
        ))));
    }
    if !row.get::<_, bool>(2) {
        return Ok(Err(StoreError::Forbidden(format!(
            "user {user} is not a member of workspace {workspace}"
        ))));
    }
    let rooms_stmt = conn.prepare(ROOMS)?;
    let mut rooms = vec![Room::User(user), Room::Workspace(workspace)];
    for row in conn.client.query(&rooms_stmt, &[&user.0, &workspace.0])? {
        let id: Uuid = row.get(1);
        rooms.push(if row.get::<_, bool>(0) {
            Room::Channel(ChannelId(id))
        } else {
            Room::Dm(ConversationId(id))
        });
    }
    Ok(Ok(Grant {
        user: User { id: user, name },
        workspace,
        rooms,
    }))
}

/// The target's workspace (NULL row: no such target) and whether `$2` is a member.
const ACCESS_CHANNEL: &str = "\
SELECT c.workspace_id,
       EXISTS (SELECT 1 FROM channel_members m WHERE m.channel_id = c.id AND m.user_id = $2)
FROM channels c WHERE c.id = $1";

const ACCESS_DM: &str = "\
SELECT v.workspace_id,
       EXISTS (SELECT 1 FROM conversation_participants p WHERE p.conversation_id = v.id AND p.user_id = $2)
FROM conversations v WHERE v.id = $1";

/// The target exists, lies in `workspace` (when scoped), and has `user` as a member.
pub(super) fn check_access(
    conn: &mut Conn,
    user: UserId,
    workspace: Option<WorkspaceId>,
    target: Target,
) -> Result<Result<(), StoreError>, postgres::Error> {
    let sql = match target {
        Target::Channel(_) => ACCESS_CHANNEL,
        Target::Dm(_) => ACCESS_DM,
    };
    let stmt = conn.prepare(sql)?;
    let Some(row) = conn.client.query_opt(&stmt, &[&target.uuid(), &user.0])? else {
        return Ok(Err(StoreError::NotFound(format!(
            "{} does not exist",
            describe(target)
        ))));
    };
    let home = WorkspaceId(row.get(0));
    if let Some(workspace) = workspace {
        if home != workspace {
            return Ok(Err(StoreError::Forbidden(format!(
                "{} belongs to another workspace than {workspace}; connect to workspace {home} to use it",
                describe(target)
            ))));
        }
    }
    if !row.get::<_, bool>(1) {
        return Ok(Err(StoreError::Forbidden(format!(
            "user {user} is not a member of {}",
            describe(target)
        ))));
    }
    Ok(Ok(()))
}

const EXISTS_CHANNEL: &str = "SELECT 1 FROM channels WHERE id = $1";
const EXISTS_DM: &str = "SELECT 1 FROM conversations WHERE id = $1";

/// A page query on one target column: `$1` the target, sequences strictly between `$2` and
/// `$3`, at most `$4` rows, read in `$order` from the unique `(target, sequence)` index.
macro_rules! page {
    ($column:literal, $order:literal) => {
        concat!(
            "SELECT m.id, m.content, m.author_id, u.name, m.channel_id, m.conversation_id, ",
            "m.sequence, m.client_msg_id, m.created_at, m.deleted_at ",
            "FROM messages m JOIN users u ON u.id = m.author_id WHERE m.",
            $column,
            " = $1 AND m.sequence > $2 AND m.sequence < $3 ORDER BY m.sequence ",
            $order,
            " LIMIT $4"
        )
    };
}

/// A history page (see [`crate::store::Backend::history`]).
pub(super) fn history(
    conn: &mut Conn,
    reader: Option<Reader>,
    query: &HistoryQuery,
) -> Result<Result<Vec<Message>, StoreError>, postgres::Error> {
    match reader {
        Some(r) => {
            if let Err(e) = check_access(conn, r.user, Some(r.workspace), query.target)? {
                return Ok(Err(e));
            }
        }
        None => {
            let sql = match query.target {
                Target::Channel(_) => EXISTS_CHANNEL,
                Target::Dm(_) => EXISTS_DM,
            };
            let stmt = conn.prepare(sql)?;
            if conn
                .client
                .query_opt(&stmt, &[&query.target.uuid()])?
                .is_none()
            {
                return Ok(Err(StoreError::NotFound(format!(
                    "{} does not exist",
                    describe(query.target)
                ))));
            }
        }
    }
    // One more than a page: a socket asks for it to tell whether there is more.
    let limit = i64::from(query.limit.clamp(1, MAX_HISTORY_LIMIT + 1));
    let after = query.after.unwrap_or(0);
    let before = query.before.unwrap_or(i64::MAX);
    let ascending = query.after.is_some();
    // With `after`: the oldest `limit` above it; otherwise the newest below `before`, read
    // descending and reversed.
    let sql = match (query.target, ascending) {
        (Target::Channel(_), true) => page!("channel_id", "ASC"),
        (Target::Channel(_), false) => page!("channel_id", "DESC"),
        (Target::Dm(_), true) => page!("conversation_id", "ASC"),
        (Target::Dm(_), false) => page!("conversation_id", "DESC"),
    };
    let stmt = conn.prepare(sql)?;
    let rows = conn
        .client
        .query(&stmt, &[&query.target.uuid(), &after, &before, &limit])?;
    let mut page: Vec<Message> = rows.iter().map(message_from_row).collect();
    if !ascending {
        page.reverse();
    }
    Ok(Ok(page))
}

const TOPS: &str = "SELECT target_id, last FROM message_sequences WHERE target_id = ANY($1)";

/// Rooms per statement of [`tops`].
const TOPS_CHUNK: usize = 1000;

/// Each channel and DM room's top sequence (0 without a message; other rooms are left out):
/// the floors of [`crate::store::Backend::floors`], and the `broker` thread's sweeps.
pub(crate) fn tops(
    client: &mut impl postgres::GenericClient,
    rooms: &[Room],
) -> Result<Vec<(Room, u64)>, postgres::Error> {
    let rooms: Vec<(Room, Uuid)> = rooms
        .iter()
        .filter_map(|r| r.target().map(|t| (*r, t.uuid())))
        .collect();
    let mut out = Vec::with_capacity(rooms.len());
    for chunk in rooms.chunks(TOPS_CHUNK) {
        let ids: Vec<Uuid> = chunk.iter().map(|(_, id)| *id).collect();
        let found: std::collections::HashMap<Uuid, i64> = client
            .query(TOPS, &[&ids])?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        out.extend(chunk.iter().map(|(room, id)| {
            let top = found.get(id).copied().unwrap_or(0);
            (*room, u64::try_from(top).unwrap_or(0))
        }));
    }
    Ok(out)
}
