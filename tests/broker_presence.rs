//! Presence over several nodes, the Redis side, against a real `redis-server` each test starts
//! on its own port: one update per real change cluster-wide, in order, even when two nodes
//! change the same user at once; a dead node's users corrected after its heartbeat expires
//! (offline, or still online through another node); query over every live node; a Redis
//! Cluster publishing with SPUBLISH from the script.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::Receiver;
use ocomms_rt::broker::codec::{self, Kind};
use ocomms_rt::broker::config::{RawCluster, RedisConfig};
use ocomms_rt::broker::link::topology::Mode;
use ocomms_rt::broker::link::{Event, Link};
use ocomms_rt::broker::metrics::BrokerMetrics;
use ocomms_rt::broker::names::{Names, NodeId};
use ocomms_rt::broker::presence::Registry;
use ocomms_rt::broker::testing::{Options, TestRedis};
use ocomms_rt::ids::{Room, UserId, WorkspaceId};
use ocomms_rt::model::PresenceStatus::{Active, Away, Offline};

static PREFIX: AtomicU64 = AtomicU64::new(0);

struct World {
    names: Names,
    workspace: WorkspaceId,
    watcher: Link,
    updates: Receiver<Event>,
}

fn world(redis: &TestRedis) -> World {
    let prefix = format!("p{}x{}", std::process::id(), PREFIX.fetch_add(1, Relaxed));
    let config = RedisConfig::parse(
        &RawCluster {
            url: redis.url(),
            prefix: prefix.clone(),
            heartbeat_ms: "100".into(),
            heartbeat_ttl_ms: "600".into(),
            gap_fill_ms: "100".into(),
            sweep_ms: "1000".into(),
            ..RawCluster::default()
        },
        true,
    )
    .expect("config");
    let names = Names::new(&prefix);
    let workspace = WorkspaceId::random();
    let (tx, updates) = crossbeam_channel::bounded(4096);
    let watcher = Link::start(
        &config,
        NodeId::random(),
        tx,
        Arc::new(BrokerMetrics::default()),
    )
    .expect("link");
    watcher.subscribe(vec![names.workspace(workspace)]);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match updates.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Event::Subscribed(_)) => break,
            Ok(_) => {}
            Err(_) => panic!("the watcher never subscribed"),
        }
    }
    World {
        names,
        workspace,
        watcher,
        updates,
    }
}

fn connection(redis: &TestRedis) -> redis::Connection {
    redis::Client::open(redis.url())
        .and_then(|c| c.get_connection())
        .expect("connection to the test redis")
}

impl World {
    fn registry(&self, node: NodeId) -> Registry {
        Registry::new(self.names.clone(), node, Duration::from_millis(600))
    }

    /// Every update published for the workspace, up to a marker: a change of a fresh user made
    /// after everything else, so whatever was published before it has arrived (Redis delivers
    /// a channel in order). Returns `(origin, user, status)`.
    fn updates_until_marker(
        &self,
        con: &mut redis::Connection,
        mode: Mode,
    ) -> Vec<(NodeId, UserId, String)> {
        let marker = UserId::random();
        let mut reg = self.registry(NodeId::random());
        reg.set(con, mode, self.workspace, marker, Active)
            .expect("marker");
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(event) = self.updates.recv_timeout(left) else {
                panic!("the marker never arrived; got {got:?}");
            };
            let Event::Message { payload, .. } = event else {
                continue;
            };
            let p = codec::decode(payload).expect("a publication");
            assert_eq!(p.header.kind, Kind::Presence);
            assert_eq!(p.header.room, Some(Room::Workspace(self.workspace)));
            let v: serde_json::Value = parse_packet(&p.packet);
            let user: UserId = v["userId"]
                .as_str()
                .and_then(|u| u.parse().ok())
                .expect("userId");
            if user == marker {
                return got;
            }
            got.push((
                p.header.origin,
                user,
                v["status"].as_str().unwrap_or("").to_owned(),
            ));
        }
    }
}

/// `42["presence:update",{…}]` -> the data object.
fn parse_packet(packet: &Bytes) -> serde_json::Value {
    let text = std::str::from_utf8(packet).expect("utf-8");
    let body = text.strip_prefix("42").expect("an event packet");
    let v: serde_json::Value = serde_json::from_str(body).expect("JSON");
    assert_eq!(v[0], "presence:update");
    v[1].clone()
}

fn statuses(list: &[(NodeId, UserId, String)], user: UserId) -> Vec<String> {
    list.iter()
        .filter(|(_, u, _)| *u == user)
        .map(|(_, _, s)| s.clone())
        .collect()
}

#[test]
fn two_nodes_one_user_one_update_per_real_change() {
    let redis = TestRedis::start();
    let w = world(&redis);
    let mut con = connection(&redis);
    let (na, nb) = (NodeId::random(), NodeId::random());
    let (mut a, mut b) = (w.registry(na), w.registry(nb));
    a.beat(&mut con).unwrap();
    b.beat(&mut con).unwrap();
    let u = UserId::random();
    let ws = w.workspace;
    let m = Mode::Standalone;
    assert!(a.set(&mut con, m, ws, u, Active).unwrap().changed());
    assert!(
        !b.set(&mut con, m, ws, u, Active).unwrap().changed(),
        "second node: still active"
    );
    assert!(
        !a.set(&mut con, m, ws, u, Offline).unwrap().changed(),
        "online through B"
    );
    assert_eq!(a.query(&mut con, ws, &[u]).unwrap(), vec![Active]);
    assert!(b.set(&mut con, m, ws, u, Away).unwrap().changed());
    assert!(
        a.set(&mut con, m, ws, u, Active).unwrap().changed(),
        "any active node wins"
    );
    assert!(a.set(&mut con, m, ws, u, Offline).unwrap().changed());
    assert_eq!(
        b.query(&mut con, ws, &[u, UserId::random()]).unwrap(),
        vec![Away, Offline]
    );
    assert!(b.set(&mut con, m, ws, u, Offline).unwrap().changed());
    let got = w.updates_until_marker(&mut con, m);
    assert_eq!(
        statuses(&got, u),
        ["active", "away", "active", "away", "offline"]
    );
    let origins: Vec<NodeId> = got.iter().map(|(o, _, _)| *o).collect();
    assert_eq!(
        origins,
        [na, nb, na, na, nb],
        "the node whose change it was publishes it"
    );
    w.watcher.shutdown();
}

#[test]
fn two_nodes_changing_one_user_at_once_publish_each_real_change_once() {
    let redis = TestRedis::start();
    let w = world(&redis);
    let u = UserId::random();
    let ws = w.workspace;
    let changes: Vec<usize> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|i| {
                let mut reg = w.registry(NodeId::random());
                let redis = &redis;
                s.spawn(move || {
                    let mut con = connection(redis);
                    reg.beat(&mut con).unwrap();
                    let mut changed = 0;
                    for n in 0..300 {
                        let status = match (n + i) % 3 {
                            0 => Active,
                            1 => Away,
                            _ => Offline,
                        };
                        changed += usize::from(
                            reg.set(&mut con, Mode::Standalone, ws, u, status)
                                .unwrap()
                                .changed(),
                        );
                    }
                    changed += usize::from(
                        reg.set(&mut con, Mode::Standalone, ws, u, Offline)
                            .unwrap()
                            .changed(),
                    );
                    changed
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|t| t.join().expect("worker"))
            .collect()
    });
    let mut con = connection(&redis);
    let got = statuses(&w.updates_until_marker(&mut con, Mode::Standalone), u);
    assert_eq!(
        got.len(),
        changes.iter().sum::<usize>(),
        "each change published exactly once"
    );
    assert!(
        got.len() > 10,
        "the two nodes did interleave ({} changes)",
        got.len()
    );
    for pair in got.windows(2) {
        assert_ne!(pair[0], pair[1], "an update that is not a change: {got:?}");
    }
    assert_eq!(got.last().map(String::as_str), Some("offline"));
    let probe = w.registry(NodeId::random());
    assert_eq!(probe.query(&mut con, ws, &[u]).unwrap(), vec![Offline]);
    w.watcher.shutdown();
}

#[test]
fn a_dead_nodes_users_are_corrected_after_its_heartbeat_expires() {
    let redis = TestRedis::start();
    let w = world(&redis);
    let mut con = connection(&redis);
    let (na, nb) = (NodeId::random(), NodeId::random());
    let (mut a, mut b) = (w.registry(na), w.registry(nb));
    let ws = w.workspace;
    let m = Mode::Standalone;
    assert!(a.beat(&mut con).unwrap().rejoined, "first beat");
    b.beat(&mut con).unwrap();
    let (only_a, both, away_later) = (UserId::random(), UserId::random(), UserId::random());
    for u in [only_a, both, away_later] {
        a.set(&mut con, m, ws, u, Active).unwrap();
    }
    b.set(&mut con, m, ws, both, Active).unwrap();
    b.set(&mut con, m, ws, away_later, Active).unwrap();
    let before_death = w.updates_until_marker(&mut con, m);
    assert_eq!(before_death.len(), 3, "{before_death:?}");

    // A stops beating (SIGKILL). B beats on and finds it dead once the TTL has passed.
    let died = Instant::now();
    let dead = loop {
        std::thread::sleep(Duration::from_millis(100));
        let beat = b.beat(&mut con).unwrap();
        assert!(!beat.rejoined);
        if !beat.dead.is_empty() {
            break beat.dead;
        }
        assert!(
            died.elapsed() < Duration::from_secs(5),
            "A never counted as dead"
        );
    };
    assert_eq!(dead, vec![na]);
    assert_eq!(
        b.expired(&mut con).unwrap(),
        vec![na],
        "the check between beats agrees"
    );
    assert!(
        died.elapsed() >= Duration::from_millis(500),
        "not before the TTL"
    );
    assert_eq!(
        b.query(&mut con, ws, &[only_a, both]).unwrap(),
        vec![Offline, Active],
        "query ignores a dead node at once"
    );
    // A change of a user before the sweep drops the dead node's share in the same step.
    assert!(b.set(&mut con, m, ws, away_later, Away).unwrap().changed());
    // Someone else sweeping: B backs off.
    redis.command(&["SET", &w.names.sweep_lock(na), "other", "PX", "5000"]);
    assert_eq!(b.sweep(&mut con, m, na).unwrap(), None);
    redis.command(&["DEL", &w.names.sweep_lock(na)]);
    assert_eq!(
        b.sweep(&mut con, m, na).unwrap(),
        Some(2),
        "only_a and both were left"
    );
    let after = w.updates_until_marker(&mut con, m);
    let mut seen: Vec<(UserId, String)> = after.iter().map(|(_, u, s)| (*u, s.clone())).collect();
    seen.sort();
    let mut want = vec![
        (away_later, "away".to_string()),
        (only_a, "offline".to_string()),
    ];
    want.sort();
    assert_eq!(seen, want, "nothing for the user still online through B");
    assert!(
        b.beat(&mut con).unwrap().dead.is_empty(),
        "the dead node is unlisted"
    );

    // A comes back (it was only cut off): it learns it was swept and asserts its users again.
    assert!(a.beat(&mut con).unwrap().rejoined);
    assert_eq!(
        a.reconcile(&mut con, m, &[(ws, only_a, Active)]).unwrap(),
        1
    );
    let back = w.updates_until_marker(&mut con, m);
    assert_eq!(statuses(&back, only_a), ["active"]);
    a.leave(&mut con, m).unwrap();
    assert_eq!(b.query(&mut con, ws, &[only_a]).unwrap(), vec![Offline]);
    w.watcher.shutdown();
}

#[test]
fn in_a_redis_cluster_the_script_publishes_sharded() {
    let redis = TestRedis::start_with(Options {
        cluster: true,
        ..Options::default()
    });
    let w = world(&redis);
    assert_eq!(w.watcher.status().mode(), Some(Mode::Cluster));
    let mut con = connection(&redis);
    let mut a = w.registry(NodeId::random());
    a.beat(&mut con).unwrap();
    let u = UserId::random();
    assert!(a
        .set(&mut con, Mode::Cluster, w.workspace, u, Active)
        .unwrap()
        .changed());
    let got = w.updates_until_marker(&mut con, Mode::Cluster);
    assert_eq!(statuses(&got, u), ["active"]);
    w.watcher.shutdown();
}
