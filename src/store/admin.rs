//! The admin API's answers (contract §6): each [`AdminRequest`] becomes backend calls, the
//! membership changes they cause are announced to the shards, and the result becomes an HTTP
//! status and a JSON body. Shared by every backend. `Publish` is not here: it joins the send
//! batch in the loop, like a socket's `message:send`.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::json;

use crate::api::AdminRequest;
use crate::mesh::{BrokerHandle, StoreReply};
use crate::model::timestamp;

use super::{Backend, StoreError};

/// Answers one admin request (anything but `Publish`, which the loop batches).
pub(super) fn handle<B: Backend>(
    backend: &mut B,
    broker: &BrokerHandle,
    request: AdminRequest,
    now: DateTime<Utc>,
) -> StoreReply {
    let result = match request {
        AdminRequest::CreateUser { name, email } => backend
            .create_user(&name, email.as_deref(), now)
            .map(|id| (201, json!({ "id": id }))),
        AdminRequest::CreateWorkspace { slug, name } => backend
            .create_workspace(&slug, &name, now)
            .map(|id| (201, json!({ "id": id }))),
        AdminRequest::AddWorkspaceMember {
            workspace,
            user,
            role,
        } => backend
            .add_workspace_member(workspace, user, role.as_deref())
            .map(|()| (201, json!({}))),
        AdminRequest::CreateChannel {
            workspace,
            slug,
            name,
            is_private,
        } => backend
            .create_channel(workspace, &slug, &name, is_private, now)
            .map(|id| (201, json!({ "id": id }))),
        AdminRequest::AddChannelMember { channel, user } => {
            backend.add_channel_member(channel, user).map(|change| {
                if let Some(change) = change {
                    broker.membership(change);
                }
                (201, json!({}))
            })
        }
        AdminRequest::RemoveWorkspaceMember { workspace, user } => backend
            .remove_workspace_member(workspace, user)
            .map(|change| {
                broker.membership(change);
                (200, json!({}))
            }),
        AdminRequest::RemoveChannelMember { channel, user } => {
            backend.remove_channel_member(channel, user).map(|change| {
                broker.membership(change);
                (200, json!({}))
            })
        }
        AdminRequest::CreateConversation {
            workspace,
            participants,
        } => backend
            .create_conversation(workspace, &participants, now)
            .map(|(id, changes)| {
                for change in changes {
                    broker.membership(change);
                }
                (201, json!({ "id": id }))
            }),
        AdminRequest::CreateSession { user, ttl_seconds } => {
            create_session(backend, user, ttl_seconds, now)
        }
        AdminRequest::History(query) => backend.history(None, &query).map(|messages| {
            let messages: Vec<_> = messages.iter().map(|m| m.to_json()).collect();
            (200, json!({ "messages": messages }))
        }),
        AdminRequest::Publish(_) => Err(StoreError::Unavailable(
            "the store answers publishes in its send batch, not here; retry".into(),
        )),
    };
    match result {
        Ok((status, body)) => json(status, &body),
        Err(e) => error(&e),
    }
}

fn create_session<B: Backend>(
    backend: &mut B,
    user: crate::ids::UserId,
    ttl_seconds: u64,
    now: DateTime<Utc>,
) -> Result<(u16, serde_json::Value), StoreError> {
    let expires_at = i64::try_from(ttl_seconds)
        .ok()
        .and_then(Duration::try_seconds)
        .and_then(|ttl| now.checked_add_signed(ttl))
        .ok_or_else(|| {
            StoreError::Invalid(format!(
                "ttlSeconds {ttl_seconds} is too large: use at most a few years in seconds"
            ))
        })?;
    let token = session_token();
    backend.create_session(user, &token, expires_at, now)?;
    Ok((
        201,
        json!({ "token": token, "expiresAt": timestamp(expires_at) }),
    ))
}

/// A fresh opaque session token: 48 bytes as 96 lowercase hex digits. The bytes are three
/// UUID v4s, whose 122 random bits each come from the operating system's CSPRNG (uuid's
/// `getrandom`), so the token carries 366 random bits without another dependency.
pub(super) fn session_token() -> String {
    let mut out = String::with_capacity(96);
    for _ in 0..3 {
        for byte in uuid::Uuid::new_v4().as_bytes() {
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// An admin reply with a JSON body.
pub(super) fn json(status: u16, body: &impl Serialize) -> StoreReply {
    StoreReply::Admin {
        status,
        // Our bodies are JSON values and records whose Serialize never fails.
        body: serde_json::to_string(body).unwrap_or_else(|_| "{}".into()),
    }
}

/// An admin error reply: `{"error": "…"}` with the status that fits.
pub(super) fn error(e: &StoreError) -> StoreReply {
    json(e.status(), &json!({ "error": e.message() }))
}

impl StoreError {
    /// The HTTP status that fits.
    pub fn status(&self) -> u16 {
        match self {
            StoreError::Invalid(_) => 400,
            StoreError::Forbidden(_) => 403,
            StoreError::NotFound(_) => 404,
            StoreError::Conflict(_) => 409,
            StoreError::Unavailable(_) => 503,
        }
    }
}
