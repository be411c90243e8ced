//! Identifiers: small `Copy` newtypes, so a user id can never be passed where a channel id
//! is expected, and [`Room`], the Socket.IO group a socket joins.

use std::fmt;

use uuid::Uuid;

/// Index of a shard thread, `0..CHAT_SHARDS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub u16);

/// Where a socket lives on its shard: in the slab of connections (a TCP connection, speaking
/// HTTP and then perhaps WebSocket) or in the slab of long-polling sessions (a session
/// outlives the HTTP requests that carry it). The room index, the timers and store replies
/// name both kinds with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SocketRef {
    /// A connection's key.
    Conn(u32),
    /// A long-polling session's key.
    Poll(u32),
}

/// A connection or polling session on a shard, as other threads name it. Slab keys are
/// reused, so the generation makes a command aimed at a closed one miss instead of hitting
/// its successor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnectionId {
    /// Shard that owns it.
    pub shard: ShardId,
    /// Which slab, and the key in it.
    pub slot: SocketRef,
    /// Generation of the slot when it was made.
    pub generation: u32,
}

/// Random hex digits after the shard prefix of a session id.
const SESSION_ID_RANDOM_DIGITS: usize = 20;

/// A new session id made on `shard`: the shard's number in hex, then 20 random hex digits.
/// Engine.IO sids, Socket.IO socket ids and recovery pids all take this form, so whichever
/// shard a request lands on can tell the one that made the id ([`session_shard`]).
pub fn new_session_id(shard: ShardId) -> String {
    let random = Uuid::new_v4().simple().to_string();
    format!("{:x}{}", shard.0, &random[..SESSION_ID_RANDOM_DIGITS])
}

/// The shard that made session id `id` on a node of `shards` shards. `None` when the id
/// cannot be one of ours (wrong length, not hex, or a shard this node does not have): a
/// request then gets "Session ID unknown", a recovery a new session.
pub fn session_shard(id: &str, shards: usize) -> Option<ShardId> {
    if id.len() <= SESSION_ID_RANDOM_DIGITS || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let prefix = &id[..id.len() - SESSION_ID_RANDOM_DIGITS];
    let shard = u16::from_str_radix(prefix, 16).ok()?;
    (usize::from(shard) < shards).then_some(ShardId(shard))
}

/// Hex digits of the node id that starts a pid made in a cluster.
const PID_NODE_DIGITS: usize = 16;

/// A new recovery pid made on `shard`: a session id, led in a cluster by the 16 hex digits of
/// the node that made it (`node`), so a reconnect on another node knows whom to ask.
pub fn new_pid(shard: ShardId, node: Option<&str>) -> String {
    match node {
        Some(node) => format!("{node}{}", new_session_id(shard)),
        None => new_session_id(shard),
    }
}

/// The node a pid names (its 16 leading hex digits), if it was made in a cluster.
pub fn pid_node(pid: &str) -> Option<&str> {
    (pid.len() > PID_NODE_DIGITS + SESSION_ID_RANDOM_DIGITS && pid.is_ascii())
        .then(|| &pid[..PID_NODE_DIGITS])
}

/// The shard of this node that keeps a detached session under `pid`: the shard number after
/// the node (if any), as [`session_shard`] reads it.
pub fn pid_shard(pid: &str, shards: usize) -> Option<ShardId> {
    match pid_node(pid) {
        Some(_) => session_shard(&pid[PID_NODE_DIGITS..], shards),
        None => session_shard(pid, shards),
    }
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
    fn session_ids_name_the_shard_that_made_them() {
        for shard in [0u16, 1, 9, 10, 255, 1023] {
            let sid = new_session_id(ShardId(shard));
            assert_eq!(session_shard(&sid, 1024), Some(ShardId(shard)), "{sid}");
        }
        assert_eq!(session_shard(&new_session_id(ShardId(3)), 2), None);
        assert_eq!(session_shard("0aaaaabbbbbcccccddddd", 2), Some(ShardId(0)));
        assert_eq!(session_shard("1aaaaabbbbbcccccddddd", 2), Some(ShardId(1)));
        assert_eq!(
            session_shard("1faaaaabbbbbcccccddddd", 32),
            Some(ShardId(31))
        );
        assert_eq!(
            session_shard("1faaaaabbbbbcccccddddd", 31),
            None,
            "no such shard"
        );
        assert_eq!(session_shard("aaaaabbbbbcccccddddd", 2), None, "no prefix");
        assert_eq!(session_shard("0aaaaabbbbbcccccdddd-", 2), None, "not hex");
        assert_eq!(session_shard("zz0123456789abcdef0123", 2), None, "not hex");
        assert_eq!(session_shard("short", 2), None);
        assert_eq!(session_shard("", 2), None);
    }

    #[test]
    fn pids_made_in_a_cluster_name_their_node_and_shard() {
        let node = "00112233aabbccdd";
        let pid = new_pid(ShardId(3), Some(node));
        assert_eq!(pid_node(&pid), Some(node));
        assert_eq!(pid_shard(&pid, 4), Some(ShardId(3)));
        assert_eq!(pid_shard(&pid, 3), None, "no such shard");
        let plain = new_pid(ShardId(1), None);
        assert_eq!(pid_node(&plain), None);
        assert_eq!(pid_shard(&plain, 2), Some(ShardId(1)));
        assert_eq!(
            pid_shard(&new_pid(ShardId(0xffff), Some(node)), 0x1_0000),
            Some(ShardId(0xffff))
        );
        assert_eq!(pid_node("ééééééééééééééééééééééééééééé"), None, "not ascii");
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
