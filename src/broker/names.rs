//! Who a node is, and what every Redis key and channel of a cluster is called.
//!
//! Everything starts with the cluster's prefix (`CHAT_REDIS_PREFIX`, default `ocomms`), so
//! two clusters, or two test runs, sharing one Redis never see each other's data. Names carry
//! a Redis Cluster hash tag (the part in braces): a room's channel hashes on the room, so rooms
//! spread over the cluster's shards and each room's traffic stays on one shard; every
//! presence key and channel hashes on `{PREFIX:presence}`, so one Lua script can read and
//! write them together and publish the change in the same step.

use std::fmt;

use crate::ids::{Room, UserId, WorkspaceId};

/// Redis Cluster's number of hash slots.
pub const SLOTS: u16 = 16384;

/// A node's identity: random at every start, so a node that crashed and came back is a new
/// node, and whatever the old one left behind (presence, detached sessions) is cleaned up as a
/// dead node's, never mistaken for the new one's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u64);

impl NodeId {
    /// A fresh random id.
    pub fn random() -> NodeId {
        NodeId(uuid::Uuid::new_v4().as_u64_pair().0)
    }

    /// Parses the 16 hex digits [`fmt::Display`] prints.
    pub fn parse(text: &str) -> Option<NodeId> {
        (text.len() == 16)
            .then(|| u64::from_str_radix(text, 16).ok())
            .flatten()
            .map(NodeId)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The names of one cluster's keys and channels.
#[derive(Clone, Debug)]
pub struct Names {
    prefix: String,
}

impl Names {
    /// Names under `prefix` (already checked by the configuration).
    pub fn new(prefix: &str) -> Names {
        Names {
            prefix: prefix.to_owned(),
        }
    }

    /// The hash tag every presence key and channel shares.
    fn presence(&self) -> String {
        format!("{{{}:presence}}", self.prefix)
    }

    /// The channel of a room. Workspace rooms carry only `presence:update`, which the presence
    /// script publishes itself, so their channel lives in the presence slot.
    pub fn room(&self, room: Room) -> String {
        match room {
            Room::Workspace(w) => self.workspace(w),
            _ => format!("{}:room:{{{room}}}", self.prefix),
        }
    }

    /// The presence channel of a workspace (its room's channel).
    pub fn workspace(&self, workspace: WorkspaceId) -> String {
        format!("{}:w:{workspace}", self.presence())
    }

    /// The channel a node listens on for requests addressed to it (cross-node recovery) and
    /// for its own liveness probes.
    pub fn node(&self, node: NodeId) -> String {
        format!("{}:node:{{{node}}}", self.prefix)
    }

    /// Sorted set of live nodes (member: node id, score: expiry in ms on Redis's clock).
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.presence())
    }

    /// A user's presence in a workspace: one field per node where the user has sockets.
    pub fn user(&self, workspace: WorkspaceId, user: UserId) -> String {
        format!("{}:u:{workspace}:{user}", self.presence())
    }

    /// The `workspace:user` members a node has fields for, so a dead node can be swept.
    pub fn node_users(&self, node: NodeId) -> String {
        format!("{}:n:{node}", self.presence())
    }

    /// What [`Names::node_users`] puts before the node id (for scripts that build it).
    pub fn node_users_prefix(&self) -> String {
        format!("{}:n:", self.presence())
    }

    /// The lock of whoever sweeps a dead node's presence.
    pub fn sweep_lock(&self, node: NodeId) -> String {
        format!("{}:sweep:{node}", self.presence())
    }
}

/// The part of a key or channel Redis Cluster hashes: the first non-empty `{…}`, else all.
pub fn hash_tag(name: &[u8]) -> &[u8] {
    let Some(open) = name.iter().position(|&b| b == b'{') else {
        return name;
    };
    match name[open + 1..].iter().position(|&b| b == b'}') {
        Some(len) if len > 0 => &name[open + 1..open + 1 + len],
        _ => name,
    }
}

/// The Redis Cluster slot of a key or channel (CRC16/XMODEM of its hash tag, mod 16384).
pub fn slot(name: &[u8]) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(hash_tag(name)) % SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ChannelId;

    #[test]
    fn slots_match_the_redis_cluster_specification() {
        // Examples from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(slot(b"123456789"), 0x31C3 % SLOTS);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(
            slot(b"foo{}{bar}"),
            slot(b"foo{}{bar}"),
            "empty tag: whole name"
        );
        assert_eq!(hash_tag(b"foo{}{bar}"), b"foo{}{bar}");
        assert_eq!(hash_tag(b"foo{{bar}}zap"), b"{bar");
        assert_eq!(hash_tag(b"foo{bar}{zap}"), b"bar");
    }

    #[test]
    fn presence_names_share_one_slot_and_rooms_spread() {
        let n = Names::new("t1");
        let w = WorkspaceId(uuid::Uuid::from_u128(1));
        let u = UserId(uuid::Uuid::from_u128(2));
        let node = NodeId(0xabc);
        let s = slot(n.nodes().as_bytes());
        for name in [
            n.user(w, u),
            n.node_users(node),
            n.workspace(w),
            n.sweep_lock(node),
        ] {
            assert_eq!(slot(name.as_bytes()), s, "{name}");
        }
        assert_eq!(n.room(Room::Workspace(w)), n.workspace(w));
        let slots: std::collections::HashSet<u16> = (0..64u128)
            .map(|i| {
                slot(
                    n.room(Room::Channel(ChannelId(uuid::Uuid::from_u128(i))))
                        .as_bytes(),
                )
            })
            .collect();
        assert!(slots.len() > 50, "64 rooms land on {} slots", slots.len());
    }

    #[test]
    fn prefixes_keep_clusters_apart() {
        let room = Room::Channel(ChannelId(uuid::Uuid::from_u128(7)));
        assert_ne!(Names::new("a").room(room), Names::new("b").room(room));
        assert!(Names::new("a").room(room).starts_with("a:room:{channel:"));
    }

    #[test]
    fn node_ids_print_and_parse() {
        let id = NodeId::random();
        assert_eq!(NodeId::parse(&id.to_string()), Some(id));
        assert_eq!(NodeId(1).to_string(), "0000000000000001");
        assert_eq!(NodeId::parse("xyz"), None);
    }
}
