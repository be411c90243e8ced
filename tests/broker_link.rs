//! The broker's Redis link against real `redis-server`s that each test starts on its own free
//! port (never the shared 6379): publish and subscribe between two nodes, password and TLS,
//! a Redis restart, a stalled Redis, a full publish queue, and a Redis Cluster (sharded
//! pub/sub).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use ocomms_rt::broker::config::{RawCluster, RedisConfig};
use ocomms_rt::broker::link::{Event, Link};
use ocomms_rt::broker::metrics::BrokerMetrics;
use ocomms_rt::broker::names::NodeId;
use ocomms_rt::broker::testing::{Options, TestRedis};

fn config(url: &str, ca: Option<String>) -> RedisConfig {
    RedisConfig::parse(
        &RawCluster {
            url: url.into(),
            prefix: format!("t{}", std::process::id()),
            tls_ca: ca,
            heartbeat_ms: "1000".into(),
            heartbeat_ttl_ms: "3000".into(),
            gap_fill_ms: "100".into(),
            sweep_ms: "1000".into(),
        },
        true,
    )
    .expect("test configuration")
}

struct Node {
    link: Link,
    events: Receiver<Event>,
    metrics: Arc<BrokerMetrics>,
}

fn node(config: &RedisConfig) -> Node {
    let (tx, events) = crossbeam_channel::bounded(4096);
    let metrics = Arc::new(BrokerMetrics::default());
    let link = Link::start(config, NodeId::random(), tx, Arc::clone(&metrics)).expect("link");
    Node {
        link,
        events,
        metrics,
    }
}

/// Waits for the first event `pick` accepts (skipping others); panics naming `what`.
fn wait<T>(events: &Receiver<Event>, what: &str, mut pick: impl FnMut(Event) -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(e) => {
                if let Some(t) = pick(e) {
                    return t;
                }
            }
            Err(_) => panic!("no {what} within 15 s"),
        }
    }
}

fn subscribed(events: &Receiver<Event>, channel: &str) {
    subscribed_all(events, &[channel]);
}

/// Waits until every channel is confirmed, in whatever order Redis confirms them.
fn subscribed_all(events: &Receiver<Event>, channels: &[&str]) {
    let mut left: Vec<&str> = channels.to_vec();
    while !left.is_empty() {
        let c = wait(events, &format!("confirmation of {left:?}"), |e| match e {
            Event::Subscribed(c) => Some(c),
            _ => None,
        });
        left.retain(|l| *l != c);
    }
}

fn message(events: &Receiver<Event>, channel: &str) -> Vec<u8> {
    wait(events, &format!("message on {channel}"), |e| match e {
        Event::Message {
            channel: c,
            payload,
        } if c == channel => Some(payload.to_vec()),
        _ => None,
    })
}

fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within 15 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn one_node_publishes_and_another_receives_once_in_order() {
    let redis = TestRedis::start();
    let c = config(&redis.url(), None);
    let (a, b) = (node(&c), node(&c));
    b.link.subscribe(vec!["room-1".into()]);
    subscribed(&b.events, "room-1");
    for i in 0..200u32 {
        a.link
            .publish("room-1".into(), i.to_le_bytes().to_vec())
            .expect("queue has room");
    }
    for i in 0..200u32 {
        assert_eq!(message(&b.events, "room-1"), i.to_le_bytes().to_vec());
    }
    assert!(b.events.try_recv().is_err(), "nothing twice");
    until("publish counter", || {
        a.metrics.publishes.load(Relaxed) == 200
    });
    assert_eq!(b.metrics.receipts.load(Relaxed), 200);
    assert_eq!(
        b.metrics.subscriptions.load(Relaxed),
        2,
        "the room and the node channel"
    );
    // Unsubscribed: nothing more arrives (a later subscription shows the order holds).
    b.link.unsubscribe(vec!["room-1".into()]);
    b.link.subscribe(vec!["room-2".into()]);
    subscribed(&b.events, "room-2");
    a.link.publish("room-1".into(), b"late".to_vec()).unwrap();
    a.link.publish("room-2".into(), b"after".to_vec()).unwrap();
    let got = wait(&b.events, "the message after", |e| match e {
        Event::Message { channel, payload } => Some((channel, payload.to_vec())),
        _ => None,
    });
    assert_eq!(got, ("room-2".to_string(), b"after".to_vec()));
    let status = a.link.status().to_json();
    assert_eq!(status["status"], "up", "{status}");
    assert_eq!(status["mode"], "standalone", "{status}");
    a.link.shutdown();
    b.link.shutdown();
}

#[test]
fn a_password_is_used_and_never_reported() {
    let redis = TestRedis::start_with(Options {
        password: Some("pa55-w0rd-x".into()),
        ..Options::default()
    });
    let good = node(&config(&redis.url(), None));
    good.link.subscribe(vec!["r".into()]);
    subscribed(&good.events, "r");
    good.link.shutdown();

    let wrong = redis.url().replace("pa55-w0rd-x", "not-it-9");
    let bad = node(&config(&wrong, None));
    until("the refusal shows in the status", || {
        bad.link.status().to_json()["status"] == "down"
    });
    let text = bad.link.status().to_json().to_string();
    assert!(!text.contains("not-it-9"), "{text}");
    assert!(text.contains("lastError"), "{text}");
    bad.link.shutdown();
}

#[test]
fn rediss_with_a_private_ca() {
    let redis = TestRedis::start_with(Options {
        tls: true,
        ..Options::default()
    });
    let c = config(&redis.url(), Some(redis.ca_path().display().to_string()));
    assert!(c.tls());
    let (a, b) = (node(&c), node(&c));
    b.link.subscribe(vec!["secure".into()]);
    subscribed(&b.events, "secure");
    a.link
        .publish("secure".into(), b"over tls".to_vec())
        .unwrap();
    assert_eq!(message(&b.events, "secure"), b"over tls".to_vec());
    a.link.shutdown();
    b.link.shutdown();

    // Without the CA the system's store does not trust the test certificate.
    let untrusted = node(&config(&redis.url(), None));
    until("the TLS refusal shows", || {
        untrusted.link.status().to_json()["status"] == "down"
    });
    untrusted.link.shutdown();
}

#[test]
fn after_a_redis_restart_every_channel_is_subscribed_again_and_lost_publications_come_back() {
    let mut redis = TestRedis::start();
    let c = config(&redis.url(), None);
    let (a, b) = (node(&c), node(&c));
    b.link.subscribe(vec!["x".into(), "y".into()]);
    subscribed_all(&b.events, &["x", "y"]);
    until("publisher up", || a.link.status().is_up());

    redis.stop();
    wait(&b.events, "SubscriberDown", |e| {
        matches!(e, Event::SubscriberDown).then_some(())
    });
    // Publications while Redis is down are handed back, never queued without bound.
    let mut back = 0;
    let deadline = Instant::now() + Duration::from_secs(15);
    while back == 0 {
        assert!(
            Instant::now() < deadline,
            "no Unpublished while Redis was down"
        );
        let _ = a.link.publish("x".into(), b"during".to_vec());
        std::thread::sleep(Duration::from_millis(20));
        while let Ok(e) = a.events.try_recv() {
            if let Event::Unpublished(p) = e {
                back += p.len();
            }
        }
    }
    assert_eq!(a.link.status().to_json()["publish"], "down");

    redis.restart();
    subscribed_all(&b.events, &["x", "y"]);
    until("publisher back", || a.link.status().is_up());
    a.link.publish("y".into(), b"after".to_vec()).unwrap();
    assert_eq!(message(&b.events, "y"), b"after".to_vec());
    assert!(b.metrics.reconnects.load(Relaxed) >= 1);
    assert!(a.metrics.unpublished.load(Relaxed) >= back as u64);
    a.link.shutdown();
    b.link.shutdown();
}

#[test]
fn a_stalled_redis_is_noticed_and_memory_stays_bounded() {
    let redis = TestRedis::start();
    let c = config(&redis.url(), None);
    let (a, b) = (node(&c), node(&c));
    b.link.subscribe(vec!["s".into()]);
    subscribed(&b.events, "s");
    until("publisher up", || a.link.status().is_up());

    redis.pause(true);
    // The subscriber's socket stays open; the missing probe gives it away.
    wait(&b.events, "SubscriberDown from the probe", |e| {
        matches!(e, Event::SubscriberDown).then_some(())
    });
    // The publisher is stuck in a pipeline: its queue fills, and publish fails at once
    // instead of waiting or growing.
    let started = Instant::now();
    let refused = (0..70_000u32)
        .filter(|i| {
            a.link
                .publish("s".into(), i.to_le_bytes().to_vec())
                .is_err()
        })
        .count();
    assert!(refused > 0, "a full queue refuses");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "publish never waits"
    );

    redis.pause(false);
    subscribed(&b.events, "s");
    until("publisher back", || a.link.status().is_up());
    a.link.shutdown();
    b.link.shutdown();
}

#[test]
fn a_redis_cluster_is_detected_and_uses_sharded_pub_sub() {
    let redis = TestRedis::start_with(Options {
        cluster: true,
        ..Options::default()
    });
    let c = config(&redis.url(), None);
    let (a, b) = (node(&c), node(&c));
    let channel = "t:room:{channel:abc}".to_string();
    b.link.subscribe(vec![channel.clone()]);
    subscribed(&b.events, &channel);
    assert_eq!(b.link.status().to_json()["mode"], "cluster");
    let shard_channels = redis.command(&["PUBSUB", "SHARDCHANNELS"]);
    assert!(shard_channels.contains(&channel), "{shard_channels}");
    assert!(
        !redis.command(&["PUBSUB", "CHANNELS"]).contains(&channel),
        "not a classic subscription"
    );
    until("publisher up", || a.link.status().is_up());
    a.link
        .publish(channel.clone(), b"sharded".to_vec())
        .unwrap();
    assert_eq!(message(&b.events, &channel), b"sharded".to_vec());
    a.link.shutdown();
    b.link.shutdown();
}
