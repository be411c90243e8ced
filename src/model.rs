//! Plain domain records shared by the store, the chat handlers and the wire encoders.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::ids::{ChannelId, ConversationId, MessageId, Room, Target, UserId, WorkspaceId};

/// A user as the chat layer needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// `users.id`
    pub id: UserId,
    /// `users.name`
    pub name: String,
}

/// A stored message. Serialises to the contract's `Message` shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// `messages.id`
    pub id: MessageId,
    /// Text; `""` once deleted (a tombstone).
    pub content: String,
    /// Who wrote it.
    pub author: User,
    /// Channel or DM it belongs to.
    pub target: Target,
    /// Per-target sequence, from 1, strictly increasing.
    pub sequence: i64,
    /// The sender's idempotency key, if it gave one.
    pub client_msg_id: Option<String>,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
    /// When it was deleted, if it was.
    pub deleted_at: Option<DateTime<Utc>>,
}

/// The contract's `Message` JSON: `{id, content, authorId, channelId, conversationId, sequence,
/// createdAt, deletedAt, author: {id, name}}`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageJson<'a> {
    id: MessageId,
    content: &'a str,
    author_id: UserId,
    channel_id: Option<ChannelId>,
    conversation_id: Option<ConversationId>,
    sequence: i64,
    created_at: String,
    deleted_at: Option<String>,
    author: AuthorJson<'a>,
}

#[derive(Serialize)]
struct AuthorJson<'a> {
    id: UserId,
    name: &'a str,
}

/// Timestamps on the wire: RFC 3339 in UTC with milliseconds, as `Date.toISOString()` prints.
pub fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl Message {
    /// The room whose members receive this message.
    pub fn room(&self) -> Room {
        self.target.room()
    }

    /// The wire shape of this message.
    pub fn to_json(&self) -> MessageJson<'_> {
        let (channel_id, conversation_id) = match self.target {
            Target::Channel(c) => (Some(c), None),
            Target::Dm(d) => (None, Some(d)),
        };
        MessageJson {
            id: self.id,
            content: if self.deleted_at.is_some() {
                ""
            } else {
                &self.content
            },
            author_id: self.author.id,
            channel_id,
            conversation_id,
            sequence: self.sequence,
            created_at: timestamp(self.created_at),
            deleted_at: self.deleted_at.map(timestamp),
            author: AuthorJson {
                id: self.author.id,
                name: &self.author.name,
            },
        }
    }

    /// The `message:deleted` event's data: `{messageId, deletedAt, channelId,
    /// conversationId, sequence}` (contract §4).
    pub fn deleted_json(&self) -> serde_json::Value {
        let (channel, conversation) = match self.target {
            Target::Channel(c) => (Some(c), None),
            Target::Dm(d) => (None, Some(d)),
        };
        serde_json::json!({
            "messageId": self.id,
            "deletedAt": self.deleted_at.map(timestamp),
            "channelId": channel,
            "conversationId": conversation,
            "sequence": self.sequence,
        })
    }
}

/// A user's presence in a workspace (contract §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PresenceStatus {
    /// At least one socket is active.
    Active,
    /// Every socket is away.
    Away,
    /// No socket.
    Offline,
}

impl PresenceStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            PresenceStatus::Active => "active",
            PresenceStatus::Away => "away",
            PresenceStatus::Offline => "offline",
        }
    }
}

/// A membership added or removed (admin API, or the web app writing the tables).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MembershipChange {
    /// Whose membership.
    pub user: UserId,
    /// The workspace the room belongs to; only sockets scoped to it are affected.
    pub workspace: WorkspaceId,
    /// The channel or DM room.
    pub room: Room,
    /// `true`: join, `false`: leave at once.
    pub joined: bool,
}

/// What an authenticated socket was granted on CONNECT: who it is, the workspace it is scoped
/// to, and the rooms it joins (contract §2).
#[derive(Clone, Debug)]
pub struct Grant {
    /// The authenticated user.
    pub user: User,
    /// The workspace the socket is scoped to.
    pub workspace: WorkspaceId,
    /// `user:`, `workspace:`, and every `channel:` / `dm:` room of that workspace the user is in.
    pub rooms: Vec<Room>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn message_json_has_the_contract_shape_and_tombstones_hide_content() {
        let mut m = Message {
            id: MessageId(uuid::Uuid::nil()),
            content: "hi".into(),
            author: User {
                id: UserId(uuid::Uuid::nil()),
                name: "Ann".into(),
            },
            target: Target::Channel(ChannelId(uuid::Uuid::nil())),
            sequence: 7,
            client_msg_id: None,
            created_at: Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap(),
            deleted_at: None,
        };
        let v = serde_json::to_value(m.to_json()).unwrap();
        assert_eq!(v["content"], "hi");
        assert_eq!(v["sequence"], 7);
        assert_eq!(v["createdAt"], "2026-01-02T03:04:05.000Z");
        assert!(v["conversationId"].is_null());
        assert!(v["deletedAt"].is_null());
        assert_eq!(v["author"]["name"], "Ann");
        m.deleted_at = Some(m.created_at);
        let v = serde_json::to_value(m.to_json()).unwrap();
        assert_eq!(v["content"], "");
        assert_eq!(v["deletedAt"], "2026-01-02T03:04:05.000Z");
    }
}
