//! Which Redis servers to talk to, and which one owns a channel.
//!
//! At every (re)connect the link asks the server of `REDIS_URL` `INFO cluster`. A server with
//! `cluster_enabled:1` is part of a Redis (or Valkey) Cluster: the link then reads `CLUSTER
//! SLOTS`, keeps one publish and one subscribe connection per primary, sends each channel's
//! publications and subscriptions to the primary that owns its slot, and uses sharded pub/sub
//! (`SPUBLISH`, `SSUBSCRIBE`), so a publication travels only inside its shard instead of over
//! the whole cluster bus. Any other server is standalone: one connection each way, `PUBLISH` and
//! `SUBSCRIBE`.

use std::time::Duration;

use redis::{ConnectionAddr, ProtocolVersion, Value};

use crate::broker::config::RedisConfig;
use crate::broker::names::slot;

/// How long opening a connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Standalone server or Redis Cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One server (or a primary with replicas behind one address).
    Standalone,
    /// A Redis or Valkey Cluster: sharded pub/sub, routed by slot.
    Cluster,
}

impl Mode {
    /// `"standalone"` or `"cluster"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Standalone => "standalone",
            Mode::Cluster => "cluster",
        }
    }

    /// The publish command of this mode.
    pub fn publish(self) -> &'static str {
        match self {
            Mode::Standalone => "PUBLISH",
            Mode::Cluster => "SPUBLISH",
        }
    }

    /// The subscribe command of this mode.
    pub fn subscribe(self) -> &'static str {
        match self {
            Mode::Standalone => "SUBSCRIBE",
            Mode::Cluster => "SSUBSCRIBE",
        }
    }

    /// The unsubscribe command of this mode.
    pub fn unsubscribe(self) -> &'static str {
        match self {
            Mode::Standalone => "UNSUBSCRIBE",
            Mode::Cluster => "SUNSUBSCRIBE",
        }
    }
}

/// The servers and who owns which slots.
#[derive(Clone, Debug)]
pub struct Topology {
    /// Standalone or cluster.
    pub mode: Mode,
    /// The primaries (one when standalone).
    pub primaries: Vec<ConnectionAddr>,
    /// `(first slot, last slot, index into primaries)`, sorted.
    ranges: Vec<(u16, u16, usize)>,
}

/// `INFO cluster` says whether the server is part of a cluster.
pub fn mode_of_info(info: &str) -> Mode {
    let enabled = info.lines().any(|l| l.trim() == "cluster_enabled:1");
    if enabled {
        Mode::Cluster
    } else {
        Mode::Standalone
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        other => text(other)?.parse().ok(),
    }
}

/// Reads `CLUSTER SLOTS` into `(first, last, host, port)` ranges. An empty host (or `?`) means
/// "the server you asked", whose host is `seed_host`.
pub fn parse_slots(reply: &Value, seed_host: &str) -> Option<Vec<(u16, u16, String, u16)>> {
    let Value::Array(ranges) = reply else {
        return None;
    };
    let mut out = Vec::with_capacity(ranges.len());
    for range in ranges {
        let Value::Array(parts) = range else {
            return None;
        };
        let first = u16::try_from(int(parts.first()?)?).ok()?;
        let last = u16::try_from(int(parts.get(1)?)?).ok()?;
        let Value::Array(primary) = parts.get(2)? else {
            return None;
        };
        let host = text(primary.first()?)?;
        let host = if host.is_empty() || host == "?" {
            seed_host.to_owned()
        } else {
            host
        };
        let port = u16::try_from(int(primary.get(1)?)?).ok()?;
        out.push((first, last, host, port));
    }
    Some(out)
}

impl Topology {
    /// One standalone server.
    pub fn standalone(addr: ConnectionAddr) -> Topology {
        Topology {
            mode: Mode::Standalone,
            primaries: vec![addr],
            ranges: Vec::new(),
        }
    }

    /// Asks the server of `REDIS_URL` what it is.
    pub fn discover(config: &RedisConfig) -> redis::RedisResult<Topology> {
        let client = config.client(ProtocolVersion::RESP2)?;
        let mut con = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
        con.set_read_timeout(Some(CONNECT_TIMEOUT))?;
        con.set_write_timeout(Some(CONNECT_TIMEOUT))?;
        let info: String = redis::cmd("INFO").arg("cluster").query(&mut con)?;
        let seed = client.get_connection_info().addr().clone();
        if mode_of_info(&info) == Mode::Standalone {
            return Ok(Topology::standalone(seed));
        }
        let reply: Value = redis::cmd("CLUSTER").arg("SLOTS").query(&mut con)?;
        let seed_host = match &seed {
            ConnectionAddr::Tcp(host, _) | ConnectionAddr::TcpTls { host, .. } => host.clone(),
            _ => "127.0.0.1".into(),
        };
        let ranges = parse_slots(&reply, &seed_host).ok_or_else(|| {
            redis::RedisError::from((
                redis::ErrorKind::Parse,
                "CLUSTER SLOTS answered something this node cannot read",
            ))
        })?;
        Ok(Topology::from_ranges(config, ranges))
    }

    /// A cluster topology from `CLUSTER SLOTS` ranges.
    pub fn from_ranges(config: &RedisConfig, ranges: Vec<(u16, u16, String, u16)>) -> Topology {
        let mut hosts: Vec<(String, u16)> = Vec::new();
        let mut out = Vec::with_capacity(ranges.len());
        for (first, last, host, port) in ranges {
            let index = match hosts.iter().position(|h| h.0 == host && h.1 == port) {
                Some(i) => i,
                None => {
                    hosts.push((host, port));
                    hosts.len() - 1
                }
            };
            out.push((first, last, index));
        }
        out.sort_unstable();
        Topology {
            mode: Mode::Cluster,
            primaries: hosts.iter().map(|(h, p)| config.addr(h, *p)).collect(),
            ranges: out,
        }
    }

    /// The primary that owns `name`'s slot (the first when standalone, or when no range
    /// covers the slot: that server then answers with an error and the link reconnects).
    pub fn primary_of(&self, name: &[u8]) -> usize {
        if self.mode == Mode::Standalone {
            return 0;
        }
        let s = slot(name);
        let at = self.ranges.partition_point(|&(first, _, _)| first <= s);
        match at.checked_sub(1).map(|i| self.ranges[i]) {
            Some((_, last, index)) if s <= last => index,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::config::RawCluster;

    fn config() -> RedisConfig {
        RedisConfig::parse(
            &RawCluster {
                url: "redis://:pw@10.0.0.1:7000".into(),
                heartbeat_ms: "30000".into(),
                heartbeat_ttl_ms: "90000".into(),
                gap_fill_ms: "200".into(),
                sweep_ms: "30000".into(),
                ..RawCluster::default()
            },
            true,
        )
        .unwrap()
    }

    #[test]
    fn info_tells_a_cluster_from_a_standalone_server() {
        assert_eq!(
            mode_of_info("# Cluster\r\ncluster_enabled:1\r\n"),
            Mode::Cluster
        );
        assert_eq!(
            mode_of_info("# Cluster\r\ncluster_enabled:0\r\n"),
            Mode::Standalone
        );
        assert_eq!(mode_of_info(""), Mode::Standalone);
    }

    #[test]
    fn slots_route_to_their_primary() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let range = |a: i64, b: i64, host: &str, port: i64| {
            Value::Array(vec![
                Value::Int(a),
                Value::Int(b),
                Value::Array(vec![bulk(host), Value::Int(port), bulk("id")]),
            ])
        };
        let reply = Value::Array(vec![
            range(5461, 10922, "10.0.0.2", 7001),
            range(0, 5460, "", 7000),
            range(10923, 16383, "10.0.0.3", 7002),
        ]);
        let ranges = parse_slots(&reply, "10.0.0.1").unwrap();
        assert_eq!(
            ranges[1],
            (0, 5460, "10.0.0.1".into(), 7000),
            "empty host: the seed"
        );
        let t = Topology::from_ranges(&config(), ranges);
        assert_eq!(t.primaries.len(), 3);
        let addr_of = |name: &str| t.primaries[t.primary_of(name.as_bytes())].to_string();
        // CLUSTER KEYSLOT foo = 12182, bar = 5061, hello = 866.
        assert_eq!(addr_of("foo"), "10.0.0.3:7002");
        assert_eq!(addr_of("bar"), "10.0.0.1:7000");
        assert_eq!(addr_of("{foo}.x"), "10.0.0.3:7002", "hash tags decide");
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(parse_slots(&Value::Nil, "h"), None);
    }

    #[test]
    fn standalone_has_one_primary_for_everything() {
        let t = Topology::standalone(ConnectionAddr::Tcp("h".into(), 1));
        assert_eq!(t.primary_of(b"foo"), 0);
        assert_eq!(t.mode.publish(), "PUBLISH");
        assert_eq!(Mode::Cluster.subscribe(), "SSUBSCRIBE");
    }
}
