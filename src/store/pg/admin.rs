//! The admin API's writes (contract §6). Errors carry the same words as the memory store's.
//! Membership changes made here are returned for the store thread to announce; the triggers'
//! NOTIFYs for them carry `origin = ocomms-rt` and the listener skips them.

use chrono::{DateTime, Utc};
use indexmap::IndexSet;
use postgres::error::SqlState;
use uuid::Uuid;

use crate::ids::{ChannelId, ConversationId, Room, Target, UserId, WorkspaceId};
use crate::model::MembershipChange;
use crate::store::StoreError;

use super::{describe, Conn};

type Answer<T> = Result<Result<T, StoreError>, postgres::Error>;

/// `Some(answer)` when `e` is a unique violation (a row inserted meanwhile by someone else).
fn conflict<T>(e: postgres::Error, what: impl FnOnce() -> String) -> Answer<T> {
    if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        Ok(Err(StoreError::Conflict(what())))
    } else {
        Err(e)
    }
}

fn user_exists(conn: &mut Conn, user: UserId) -> Result<Option<StoreError>, postgres::Error> {
    let stmt = conn.prepare("SELECT 1 FROM users WHERE id = $1")?;
    Ok(conn
        .client
        .query_opt(&stmt, &[&user.0])?
        .is_none()
        .then(|| StoreError::NotFound(format!("user {user} does not exist"))))
}

fn workspace_exists(
    conn: &mut Conn,
    workspace: WorkspaceId,
) -> Result<Option<StoreError>, postgres::Error> {
    let stmt = conn.prepare("SELECT 1 FROM workspaces WHERE id = $1")?;
    Ok(conn
        .client
        .query_opt(&stmt, &[&workspace.0])?
        .is_none()
        .then(|| StoreError::NotFound(format!("workspace {workspace} does not exist"))))
}

fn target_workspace(conn: &mut Conn, target: Target) -> Answer<WorkspaceId> {
    let sql = match target {
        Target::Channel(_) => "SELECT workspace_id FROM channels WHERE id = $1",
        Target::Dm(_) => "SELECT workspace_id FROM conversations WHERE id = $1",
    };
    let stmt = conn.prepare(sql)?;
    Ok(match conn.client.query_opt(&stmt, &[&target.uuid()])? {
        Some(row) => Ok(WorkspaceId(row.get(0))),
        None => Err(StoreError::NotFound(format!(
            "{} does not exist",
            describe(target)
        ))),
    })
}

/// The user exists and is a member of `workspace`, which `what` belongs to.
fn check_workspace_member(
    conn: &mut Conn,
    workspace: WorkspaceId,
    user: UserId,
    what: &str,
) -> Result<Option<StoreError>, postgres::Error> {
    if let Some(e) = user_exists(conn, user)? {
        return Ok(Some(e));
    }
    if let Some(e) = workspace_exists(conn, workspace)? {
        return Ok(Some(e));
    }
    let stmt =
        conn.prepare("SELECT 1 FROM workspace_members WHERE workspace_id = $1 AND user_id = $2")?;
    Ok(conn
        .client
        .query_opt(&stmt, &[&workspace.0, &user.0])?
        .is_none()
        .then(|| {
            StoreError::Conflict(format!(
                "user {user} is not a member of workspace {workspace}, which {what} belongs to; \
                 add them to the workspace first"
            ))
        }))
}

pub(super) fn create_user(
    conn: &mut Conn,
    name: &str,
    email: Option<&str>,
    now: DateTime<Utc>,
) -> Answer<UserId> {
    if let Some(email) = email {
        let stmt = conn.prepare("SELECT id FROM users WHERE email = $1")?;
        if let Some(row) = conn.client.query_opt(&stmt, &[&email])? {
            let owner = UserId(row.get(0));
            return Ok(Err(StoreError::Conflict(format!(
                "email {email:?} is already used by user {owner}"
            ))));
        }
    }
    let id = UserId::random();
    let stmt =
        conn.prepare("INSERT INTO users (id, name, email, created_at) VALUES ($1, $2, $3, $4)")?;
    match conn.client.execute(&stmt, &[&id.0, &name, &email, &now]) {
        Ok(_) => Ok(Ok(id)),
        Err(e) => conflict(e, || {
            format!("email {email:?} is already used by another user")
        }),
    }
}

pub(super) fn create_workspace(
    conn: &mut Conn,
    slug: &str,
    name: &str,
    now: DateTime<Utc>,
) -> Answer<WorkspaceId> {
    let stmt = conn.prepare("SELECT id FROM workspaces WHERE slug = $1")?;
    if let Some(row) = conn.client.query_opt(&stmt, &[&slug])? {
        let owner = WorkspaceId(row.get(0));
        return Ok(Err(StoreError::Conflict(format!(
            "workspace slug {slug:?} is already taken by workspace {owner}"
        ))));
    }
    let id = WorkspaceId::random();
    let stmt = conn
        .prepare("INSERT INTO workspaces (id, slug, name, created_at) VALUES ($1, $2, $3, $4)")?;
    match conn.client.execute(&stmt, &[&id.0, &slug, &name, &now]) {
        Ok(_) => Ok(Ok(id)),
        Err(e) => conflict(e, || format!("workspace slug {slug:?} is already taken")),
    }
}

pub(super) fn add_workspace_member(
    conn: &mut Conn,
    workspace: WorkspaceId,
    user: UserId,
    role: Option<&str>,
) -> Answer<()> {
    if let Some(e) = user_exists(conn, user)? {
        return Ok(Err(e));
    }
    if let Some(e) = workspace_exists(conn, workspace)? {
        return Ok(Err(e));
    }
    let stmt = conn.prepare(
        "INSERT INTO workspace_members (workspace_id, user_id, role) VALUES ($1, $2, $3) \
         ON CONFLICT (workspace_id, user_id) DO UPDATE SET role = EXCLUDED.role",
    )?;
    conn.client
        .execute(&stmt, &[&workspace.0, &user.0, &role])?;
    Ok(Ok(()))
}

pub(super) fn create_channel(
    conn: &mut Conn,
    workspace: WorkspaceId,
    slug: &str,
    name: &str,
    is_private: bool,
    now: DateTime<Utc>,
) -> Answer<ChannelId> {
    if let Some(e) = workspace_exists(conn, workspace)? {
        return Ok(Err(e));
    }
    let stmt = conn.prepare("SELECT id FROM channels WHERE workspace_id = $1 AND slug = $2")?;
    if let Some(row) = conn.client.query_opt(&stmt, &[&workspace.0, &slug])? {
        let owner = ChannelId(row.get(0));
        return Ok(Err(StoreError::Conflict(format!(
            "channel slug {slug:?} is already taken in workspace {workspace} by channel {owner}"
        ))));
    }
    let id = ChannelId::random();
    let stmt = conn.prepare(
        "INSERT INTO channels (id, workspace_id, slug, name, is_private, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )?;
    match conn.client.execute(
        &stmt,
        &[&id.0, &workspace.0, &slug, &name, &is_private, &now],
    ) {
        Ok(_) => Ok(Ok(id)),
        Err(e) => conflict(e, || {
            format!("channel slug {slug:?} is already taken in workspace {workspace}")
        }),
    }
}

pub(super) fn add_channel_member(
    conn: &mut Conn,
    channel: ChannelId,
    user: UserId,
) -> Answer<Option<MembershipChange>> {
    let workspace = match target_workspace(conn, Target::Channel(channel))? {
        Ok(w) => w,
        Err(e) => return Ok(Err(e)),
    };
    if let Some(e) = check_workspace_member(conn, workspace, user, &format!("channel {channel}"))? {
        return Ok(Err(e));
    }
    let stmt = conn.prepare(
        "INSERT INTO channel_members (channel_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )?;
    let added = conn.client.execute(&stmt, &[&channel.0, &user.0])? == 1;
    Ok(Ok(added.then_some(MembershipChange {
        user,
        workspace,
        room: Room::Channel(channel),
        joined: true,
    })))
}

pub(super) fn remove_workspace_member(
    conn: &mut Conn,
    workspace: WorkspaceId,
    user: UserId,
) -> Answer<MembershipChange> {
    let stmt =
        conn.prepare("DELETE FROM workspace_members WHERE workspace_id = $1 AND user_id = $2")?;
    if conn.client.execute(&stmt, &[&workspace.0, &user.0])? == 0 {
        return Ok(Err(StoreError::NotFound(format!(
            "user {user} is not a member of workspace {workspace}"
        ))));
    }
    Ok(Ok(MembershipChange {
        user,
        workspace,
        room: Room::Workspace(workspace),
        joined: false,
    }))
}

pub(super) fn remove_channel_member(
    conn: &mut Conn,
    channel: ChannelId,
    user: UserId,
) -> Answer<MembershipChange> {
    let workspace = match target_workspace(conn, Target::Channel(channel))? {
        Ok(w) => w,
        Err(e) => return Ok(Err(e)),
    };
    let stmt =
        conn.prepare("DELETE FROM channel_members WHERE channel_id = $1 AND user_id = $2")?;
    if conn.client.execute(&stmt, &[&channel.0, &user.0])? == 0 {
        return Ok(Err(StoreError::NotFound(format!(
            "user {user} is not a member of channel {channel}"
        ))));
    }
    Ok(Ok(MembershipChange {
        user,
        workspace,
        room: Room::Channel(channel),
        joined: false,
    }))
}

pub(super) fn create_conversation(
    conn: &mut Conn,
    workspace: WorkspaceId,
    participants: &[UserId],
    now: DateTime<Utc>,
) -> Answer<(ConversationId, Vec<MembershipChange>)> {
    if let Some(e) = workspace_exists(conn, workspace)? {
        return Ok(Err(e));
    }
    if participants.is_empty() {
        return Ok(Err(StoreError::Invalid(
            "participantIds is empty: a conversation needs at least one participant".into(),
        )));
    }
    for &user in participants {
        if let Some(e) = check_workspace_member(conn, workspace, user, "the conversation")? {
            return Ok(Err(e));
        }
    }
    let unique: IndexSet<UserId> = participants.iter().copied().collect();
    let id = ConversationId::random();
    let ids: Vec<Uuid> = unique.iter().map(|u| u.0).collect();
    let mut tx = conn.client.transaction()?;
    tx.execute(
        "INSERT INTO conversations (id, workspace_id, created_at) VALUES ($1, $2, $3)",
        &[&id.0, &workspace.0, &now],
    )?;
    // WITH ORDINALITY keeps the given order in `joined_at` (clock_timestamp per row).
    tx.execute(
        "INSERT INTO conversation_participants (conversation_id, user_id) \
         SELECT $1, u FROM unnest($2::uuid[]) WITH ORDINALITY AS x(u, i) ORDER BY i",
        &[&id.0, &ids],
    )?;
    tx.commit()?;
    let changes = unique
        .into_iter()
        .map(|user| MembershipChange {
            user,
            workspace,
            room: Room::Dm(id),
            joined: true,
        })
        .collect();
    Ok(Ok((id, changes)))
}

pub(super) fn create_session(
    conn: &mut Conn,
    user: UserId,
    token: &str,
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Answer<()> {
    if let Some(e) = user_exists(conn, user)? {
        return Ok(Err(e));
    }
    let stmt = conn.prepare(
        "INSERT INTO sessions (id, user_id, token, expires_at, created_at) VALUES ($1, $2, $3, $4, $5)",
    )?;
    conn.client.execute(
        &stmt,
        &[&Uuid::new_v4(), &user.0, &token, &expires_at, &now],
    )?;
    Ok(Ok(()))
}
