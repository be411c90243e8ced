//! Presence across nodes, the Redis side (contract §5: per (workspace, user), over every
//! connection on every node).
//!
//! Each node counts its own sockets (the node's [`crate::presence::PresenceBook`]) and tells
//! Redis only when its *own* status for a user changes (first socket, last socket, all away).
//! Redis holds, per (workspace, user), a hash with one field per node (`a` active, `w` away),
//! and a Lua script applies a node's change, computes the cluster-wide status before and
//! after, and publishes `presence:update` on the workspace's channel when they differ. Scripts
//! run one at a time, so two nodes changing the same user at once are serialised and exactly
//! one of them sees each real change; and since the script publishes it, every node receives a
//! user's updates in the order they happened.
//!
//! Nodes beat into a sorted set of live nodes (expiry on Redis's clock, so node clocks never
//! matter). Every node looks for expired nodes every second ([`Registry::expired`]; a beat
//! reports them too); a node that sees one takes a sweep lock and removes the dead node's
//! fields user by user through the same script in its sweep form, which publishes `offline`
//! for users it was the last node of (and nothing for users still online elsewhere).
//! Every key and channel shares one hash tag, so in a Redis Cluster the scripts may touch them
//! all and publish with `SPUBLISH`.

use std::time::Duration;

pub mod thread;

use redis::{Connection, Script, Value};

use super::codec::{self, Header, Kind};
use super::link::topology::Mode;
use super::names::{Names, NodeId};
use crate::ids::{Room, UserId, WorkspaceId};
use crate::model::PresenceStatus;

/// How long a sweep lock holds when its holder dies mid-sweep.
const SWEEP_LOCK: Duration = Duration::from_secs(30);

/// Members swept per round trip.
const SWEEP_CHUNK: usize = 256;

/// A node's status for a user changed this cluster-wide status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    /// Before the change (as clients were last told).
    pub before: PresenceStatus,
    /// After it.
    pub after: PresenceStatus,
}

impl Transition {
    /// Whether an update was published.
    pub fn changed(self) -> bool {
        self.before != self.after
    }
}

/// What a heartbeat found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Beat {
    /// This node was not listed as alive: first beat, or it was swept as dead meanwhile (it
    /// must then assert every local user again, see [`Registry::reconcile`]).
    pub rejoined: bool,
    /// Nodes whose heartbeat expired: to sweep.
    pub dead: Vec<NodeId>,
}

/// The Redis side of presence for one node.
#[derive(Debug)]
pub struct Registry {
    names: Names,
    node: NodeId,
    ttl: Duration,
    set: Script,
    beat: Script,
    expired: Script,
    /// Publication ids of this node's presence updates.
    next_id: u64,
}

/// What a call of `set.lua` does.
#[derive(Clone, Copy)]
enum Call {
    /// A node's own share is now this.
    Set(PresenceStatus),
    /// A dead node's share goes.
    Sweep,
}

fn status_word(s: &str) -> PresenceStatus {
    match s {
        "active" => PresenceStatus::Active,
        "away" => PresenceStatus::Away,
        _ => PresenceStatus::Offline,
    }
}

fn code(status: PresenceStatus) -> &'static str {
    match status {
        PresenceStatus::Active => "a",
        PresenceStatus::Away => "w",
        PresenceStatus::Offline => "",
    }
}

fn member(workspace: WorkspaceId, user: UserId) -> String {
    format!("{workspace}:{user}")
}

fn parse_member(m: &str) -> Option<(WorkspaceId, UserId)> {
    let (w, u) = m.split_once(':')?;
    Some((w.parse().ok()?, u.parse().ok()?))
}

fn transition(reply: Vec<String>) -> Option<Transition> {
    match reply.as_slice() {
        [before, after] => Some(Transition {
            before: status_word(before),
            after: status_word(after),
        }),
        _ => None,
    }
}

/// A user's status from the fields of live nodes (`alive` says which are).
pub fn status_of<'a>(
    fields: impl IntoIterator<Item = (&'a str, &'a str)>,
    alive: impl Fn(&str) -> bool,
) -> PresenceStatus {
    let mut status = PresenceStatus::Offline;
    for (node, code) in fields {
        if !alive(node) {
            continue;
        }
        match code {
            "a" => return PresenceStatus::Active,
            "w" => status = PresenceStatus::Away,
            _ => {}
        }
    }
    status
}

fn now_ms(con: &mut Connection) -> redis::RedisResult<u64> {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query(con)?;
    Ok(secs * 1000 + micros / 1000)
}

impl Registry {
    /// The registry of `node`, alive for `ttl` after each beat.
    pub fn new(names: Names, node: NodeId, ttl: Duration) -> Registry {
        Registry {
            names,
            node,
            ttl,
            set: Script::new(include_str!("presence/set.lua")),
            beat: Script::new(include_str!("presence/beat.lua")),
            expired: Script::new(include_str!("presence/expired.lua")),
            next_id: 1,
        }
    }

    /// The publication a script completes: header, then the packet around the status word.
    /// The keys and arguments of `set.lua` for `node`'s share of (`workspace`, `user`):
    /// set to `code` (`Set`), or a dead node's share removed (`Sweep`).
    fn script_call(
        &mut self,
        mode: Mode,
        workspace: WorkspaceId,
        user: UserId,
        node: NodeId,
        call: Call,
    ) -> ([String; 3], Vec<Vec<u8>>) {
        let (header, prefix) = self.update(workspace, user);
        let (code, form) = match call {
            Call::Set(status) => (code(status), "set"),
            Call::Sweep => ("", "sweep"),
        };
        let keys = [
            self.names.user(workspace, user),
            self.names.nodes(),
            self.names.node_users(node),
        ];
        let args = vec![
            node.to_string().into_bytes(),
            code.into(),
            member(workspace, user).into_bytes(),
            self.names.workspace(workspace).into_bytes(),
            mode.publish().into(),
            header,
            prefix.into_bytes(),
            br#""}]"#.to_vec(),
            self.names.node_users_prefix().into_bytes(),
            form.into(),
        ];
        (keys, args)
    }

    fn update(&mut self, workspace: WorkspaceId, user: UserId) -> (Vec<u8>, String) {
        let header = Header {
            kind: Kind::Presence,
            origin: self.node,
            id: self.next_id,
            sent_at_micros: crate::broker::now_micros(),
            room: Some(Room::Workspace(workspace)),
            place: None,
            except: None,
        };
        self.next_id += 1;
        let mut bytes = Vec::with_capacity(codec::MAX_HEADER);
        codec::write_header(&header, &mut bytes);
        let prefix = format!(r#"42["presence:update",{{"userId":"{user}","status":""#);
        (bytes, prefix)
    }

    /// The key every presence call is routed by (the presence slot's).
    pub fn nodes_key(&self) -> String {
        self.names.nodes()
    }

    /// This node's status for `user` in `workspace` is now `status` (`Offline`: it has no
    /// socket of the user left). Returns the cluster-wide transition; when it is a change,
    /// the update has been published on the workspace's channel.
    pub fn set(
        &mut self,
        con: &mut Connection,
        mode: Mode,
        workspace: WorkspaceId,
        user: UserId,
        status: PresenceStatus,
    ) -> redis::RedisResult<Transition> {
        let (keys, args) = self.script_call(mode, workspace, user, self.node, Call::Set(status));
        let reply: Vec<String> = self.set.key(&keys[..]).arg(args).invoke(con)?;
        transition(reply).ok_or_else(|| bad_reply("the presence script"))
    }

    /// Beats: this node is alive for the TTL from now.
    pub fn beat(&self, con: &mut Connection) -> redis::RedisResult<Beat> {
        let reply: Vec<Value> = self
            .beat
            .key(self.names.nodes())
            .arg(self.node.to_string())
            .arg(u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX))
            .invoke(con)?;
        let mut it = reply.into_iter();
        let rejoined = matches!(it.next(), Some(Value::Int(1)));
        let dead = it
            .filter_map(|v| redis::from_redis_value::<String>(v).ok())
            .filter_map(|s| NodeId::parse(&s))
            .filter(|n| *n != self.node)
            .collect();
        Ok(Beat { rejoined, dead })
    }

    /// The other nodes whose heartbeat expired (checked every second, between beats).
    pub fn expired(&self, con: &mut Connection) -> redis::RedisResult<Vec<NodeId>> {
        let ids: Vec<String> = self.expired.key(self.names.nodes()).invoke(con)?;
        Ok(ids
            .iter()
            .filter_map(|s| NodeId::parse(s))
            .filter(|n| *n != self.node)
            .collect())
    }

    /// Removes a dead node's presence, publishing the transitions that follow. Returns how
    /// many users were swept, or `None` when another node holds the sweep lock (or the node
    /// came back meanwhile, which stops the sweep).
    pub fn sweep(
        &mut self,
        con: &mut Connection,
        mode: Mode,
        dead: NodeId,
    ) -> redis::RedisResult<Option<usize>> {
        let lock = self.names.sweep_lock(dead);
        let taken: Option<String> = redis::cmd("SET")
            .arg(&lock)
            .arg(self.node.to_string())
            .arg("NX")
            .arg("PX")
            .arg(u64::try_from(SWEEP_LOCK.as_millis()).unwrap_or(u64::MAX))
            .query(con)?;
        if taken.is_none() {
            return Ok(None);
        }
        let index = self.names.node_users(dead);
        let sha = self.set.load(con)?;
        let mut swept = 0;
        loop {
            let members: Vec<String> = redis::cmd("SRANDMEMBER")
                .arg(&index)
                .arg(SWEEP_CHUNK)
                .query(con)?;
            if members.is_empty() {
                break;
            }
            let mut pipe = redis::pipe();
            for m in &members {
                let Some((workspace, user)) = parse_member(m) else {
                    pipe.cmd("SREM").arg(&index).arg(m);
                    continue;
                };
                let (keys, args) = self.script_call(mode, workspace, user, dead, Call::Sweep);
                pipe.cmd("EVALSHA")
                    .arg(&sha)
                    .arg(keys.len())
                    .arg(&keys[..])
                    .arg(args);
            }
            let replies: Vec<Value> = pipe.query(con)?;
            let came_back = replies
                .iter()
                .any(|r| matches!(r, Value::Array(a) if a.len() == 1));
            swept += replies.len();
            if came_back {
                let _: () = redis::cmd("DEL").arg(&lock).query(con)?;
                return Ok(None);
            }
        }
        let _: () = redis::pipe()
            .cmd("ZREM")
            .arg(self.names.nodes())
            .arg(dead.to_string())
            .ignore()
            .cmd("DEL")
            .arg(&lock)
            .ignore()
            .query(con)?;
        Ok(Some(swept))
    }

    /// `presence:query` for the whole cluster: each user's status over the live nodes.
    pub fn query(
        &self,
        con: &mut Connection,
        workspace: WorkspaceId,
        users: &[UserId],
    ) -> redis::RedisResult<Vec<PresenceStatus>> {
        let now = now_ms(con)?;
        let mut pipe = redis::pipe();
        pipe.cmd("ZRANGE")
            .arg(self.names.nodes())
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES");
        for u in users {
            pipe.cmd("HGETALL").arg(self.names.user(workspace, *u));
        }
        let mut replies: Vec<Value> = pipe.query(con)?;
        if replies.is_empty() {
            return Err(bad_reply("presence query"));
        }
        let nodes: Vec<(String, f64)> = redis::from_redis_value(replies.remove(0))?;
        let alive = |n: &str| {
            nodes
                .iter()
                .any(|(id, expiry)| id == n && *expiry >= now as f64)
        };
        replies
            .into_iter()
            .map(|r| {
                let fields: Vec<(String, String)> = redis::from_redis_value(r)?;
                Ok(status_of(
                    fields.iter().map(|(n, c)| (n.as_str(), c.as_str())),
                    alive,
                ))
            })
            .collect()
    }

    /// Asserts this node's whole local state again (after it was swept as dead, or after Redis
    /// lost its data): sets every local user's status and clears fields it still has for users
    /// no longer local. Transitions are published as usual. Returns how many were changes.
    pub fn reconcile(
        &mut self,
        con: &mut Connection,
        mode: Mode,
        local: &[(WorkspaceId, UserId, PresenceStatus)],
    ) -> redis::RedisResult<usize> {
        let listed: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.names.node_users(self.node))
            .query(con)?;
        let here: rustc_hash::FxHashSet<String> =
            local.iter().map(|(w, u, _)| member(*w, *u)).collect();
        let mut changes = 0;
        for (workspace, user) in listed
            .iter()
            .filter(|m| !here.contains(*m))
            .filter_map(|m| parse_member(m))
        {
            changes += usize::from(
                self.set(con, mode, workspace, user, PresenceStatus::Offline)?
                    .changed(),
            );
        }
        for (workspace, user, status) in local {
            changes += usize::from(self.set(con, mode, *workspace, *user, *status)?.changed());
        }
        Ok(changes)
    }

    /// A clean shutdown: every local user leaves (publishing `offline` where this node was
    /// the last), and the node is no longer listed.
    pub fn leave(&mut self, con: &mut Connection, mode: Mode) -> redis::RedisResult<()> {
        self.reconcile(con, mode, &[])?;
        redis::cmd("ZREM")
            .arg(self.names.nodes())
            .arg(self.node.to_string())
            .query(con)
    }
}

fn bad_reply(what: &str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Parse, "unexpected reply", what.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_counts_only_live_nodes() {
        let fields = [("n1", "w"), ("n2", "a")];
        assert_eq!(status_of(fields, |_| true), PresenceStatus::Active);
        assert_eq!(status_of(fields, |n| n == "n1"), PresenceStatus::Away);
        assert_eq!(status_of(fields, |_| false), PresenceStatus::Offline);
        assert_eq!(status_of([], |_| true), PresenceStatus::Offline);
    }

    #[test]
    fn members_round_trip() {
        let w = WorkspaceId(uuid::Uuid::from_u128(1));
        let u = UserId(uuid::Uuid::from_u128(2));
        assert_eq!(parse_member(&member(w, u)), Some((w, u)));
        assert_eq!(parse_member("x"), None);
    }
}
