//! Identifiers: small `Copy` newtypes, so a user id can never be passed where a channel id
//! is expected, and [`Room`], the Socket.IO group a socket joins.

use std::fmt;

use uuid::Uuid;

/// Index of a shard thread, `0..CHAT_SHARDS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub u16);

/// A connection on a shard. The slot indexes the shard's slab; slab keys are reused, so the
/// generation makes a command aimed at a closed connection miss instead of hitting its successor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnectionId {
    /// Shard that owns the socket.
    pub shard: ShardId,
    /// Key in that shard's slab.
    pub slot: u32,
    /// Generation of the slot when the connection was accepted.
    pub generation: u32,
}

macro_rules! uuid_id {
    ($(#[$doc:meta] $name:ident),* $(,)?) => {$(
        #[$doc]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh random id (UUID v4).
            pub fn random() -> Self {
                Self(Uuid::new_v4())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    )*};
}

uuid_id!(
    /// `users.id`
    UserId,
    /// `workspaces.id`
    WorkspaceId,
    /// `channels.id`
    ChannelId,
    /// `conversations.id` (a DM)
    ConversationId,
    /// `messages.id`
    MessageId,
);

/// Where a message goes: a channel or a DM conversation (the contract's `targetType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// `targetType: "channel"`
    Channel(ChannelId),
    /// `targetType: "dm"`
    Dm(ConversationId),
}

impl Target {
    /// Parses the contract's `{targetId, targetType}` pair.
    pub fn parse(target_type: &str, target_id: &str) -> Result<Target, String> {
        let id = Uuid::parse_str(target_id)
            .map_err(|_| format!("targetId {target_id:?} is not a uuid"))?;
        match target_type {
            "channel" => Ok(Target::Channel(ChannelId(id))),
            "dm" => Ok(Target::Dm(ConversationId(id))),
            other => Err(format!(
                "targetType {other:?} is not known: use \"channel\" or \"dm\""
            )),
        }
    }

    /// The room whose members receive this target's events.
    pub fn room(self) -> Room {
        match self {
            Target::Channel(c) => Room::Channel(c),
            Target::Dm(d) => Room::Dm(d),
        }
    }

    /// The raw uuid, whichever kind.
    pub fn uuid(self) -> Uuid {
        match self {
            Target::Channel(c) => c.0,
            Target::Dm(d) => d.0,
        }
    }

    /// `"channel"` or `"dm"`.
    pub fn kind(self) -> &'static str {
        match self {
            Target::Channel(_) => "channel",
            Target::Dm(_) => "dm",
        }
    }
}

/// A Socket.IO room. Printed as the seed named them: `user:{id}`, `workspace:{id}`,
/// `channel:{id}`, `dm:{id}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Room {
    /// Every socket of one user.
    User(UserId),
    /// Every socket connected to one workspace.
    Workspace(WorkspaceId),
    /// Members of a channel.
    Channel(ChannelId),
    /// Participants of a DM conversation.
    Dm(ConversationId),
}

impl Room {
    /// The target this room carries messages for, if it is a channel or DM room.
    pub fn target(self) -> Option<Target> {
        match self {
            Room::Channel(c) => Some(Target::Channel(c)),
            Room::Dm(d) => Some(Target::Dm(d)),
            _ => None,
        }
    }
}

impl fmt::Display for Room {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Room::User(id) => write!(f, "user:{id}"),
            Room::Workspace(id) => write!(f, "workspace:{id}"),
            Room::Channel(id) => write!(f, "channel:{id}"),
            Room::Dm(id) => write!(f, "dm:{id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_print_with_the_seed_prefixes() {
        let id = Uuid::parse_str("6f1c1d2e-0000-4000-8000-000000000001").unwrap();
        assert_eq!(
            Room::Channel(ChannelId(id)).to_string(),
            "channel:6f1c1d2e-0000-4000-8000-000000000001"
        );
        assert_eq!(Room::Dm(ConversationId(id)).to_string(), format!("dm:{id}"));
        assert_eq!(Room::User(UserId(id)).to_string(), format!("user:{id}"));
        assert_eq!(
            Room::Workspace(WorkspaceId(id)).to_string(),
            format!("workspace:{id}")
        );
    }

    #[test]
    fn target_parse_names_the_bad_value() {
        let err = Target::parse("group", "6f1c1d2e-0000-4000-8000-000000000001").unwrap_err();
        assert!(err.contains("\"group\""), "{err}");
        let err = Target::parse("channel", "nope").unwrap_err();
        assert!(err.contains("\"nope\""), "{err}");
        assert!(matches!(
            Target::parse("dm", "6f1c1d2e-0000-4000-8000-000000000001"),
            Ok(Target::Dm(_))
        ));
    }
}
