//! The mesh's handles: bounds and routing.

use super::*;
use std::time::Duration;

#[test]
fn a_full_store_inbox_refuses_client_requests_and_says_why() {
    let (tx, _rx) = crossbeam_channel::unbounded();
    let mesh = Mesh {
        shards: Vec::new(),
        store: StoreHandle::new(tx),
        broker: BrokerHandle::local(Vec::new()),
    };
    assert_eq!(mesh.congested(Instant::now()), None);
    for _ in 0..STORE_INBOX_LIMIT {
        mesh.store.send(StoreCommand::Shutdown);
    }
    let why = mesh
        .congested(Instant::now())
        .expect("the store is that far behind");
    assert!(why.contains("8192 requests wait for the store"), "{why}");
}

#[test]
fn requests_are_refused_once_the_oldest_send_waited_past_the_bound_with_a_queue_behind_it() {
    let (tx, _rx) = crossbeam_channel::unbounded();
    let metrics = crate::metrics::Metrics::new(1);
    let store = StoreHandle::new(tx)
        .with_max_wait(Duration::from_millis(100))
        .with_metrics(&metrics);
    let now = Instant::now();
    let gauge = || {
        metrics
            .render()
            .lines()
            .find_map(|l| {
                l.strip_prefix("ocomms_store_wait_seconds ")
                    .map(str::to_owned)
            })
            .expect("the wait gauge is always shown")
    };
    store.set_backlog(store::WAIT_BOUND_MIN_QUEUE);
    assert_eq!(store.busy(now), None, "nothing waits for its batch");
    assert_eq!(gauge(), "0");

    store.set_waiting_since(Some(now - Duration::from_millis(60)));
    assert_eq!(store.waited(now), Some(Duration::from_millis(60)));
    assert_eq!(store.busy(now), None, "within the bound");
    let shown: f64 = gauge().parse().unwrap();
    assert!(shown >= 0.06, "the gauge shows the live wait: {shown}");

    let later = now + Duration::from_millis(90);
    let why = store
        .busy(later)
        .expect("150 ms waited, over the 100 ms bound");
    assert!(
        why.contains("waited 150 ms") && why.contains("100 ms bound"),
        "{why}"
    );
    // A short queue is let through however long its head waits: a stall under light load.
    store.set_backlog(store::WAIT_BOUND_MIN_QUEUE - 1);
    assert_eq!(store.busy(later), None);
    // Without a bound only the count refuses.
    let unbounded = store.clone().with_max_wait(Duration::ZERO);
    unbounded.set_backlog(STORE_INBOX_LIMIT - 1);
    assert_eq!(unbounded.busy(later), None);
    store.set_waiting_since(None);
    assert_eq!(store.waited(later), None);
}

#[test]
fn a_shard_far_behind_drops_ephemeral_broadcasts_and_durable_ones_only_far_past_that() {
    let (tx, rx) = crossbeam_channel::unbounded();
    let poll = mio::Poll::new().unwrap();
    let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).unwrap());
    let metrics = Arc::new(crate::metrics::Metrics::new(1));
    let shard = ShardHandle::new(ShardId(0), tx, waker).with_metrics(Arc::clone(&metrics));
    let broadcast = |offset| {
        ShardCommand::Deliver(Arc::new(Broadcast {
            id: BroadcastId(1),
            room: Room::User(UserId(uuid::Uuid::nil())),
            except: Except::Nobody,
            offset,
            packet: Bytes::from_static(b"42[\"typing:update\",{}]"),
        }))
    };
    for _ in 0..SHARD_INBOX_LIMIT - 1 {
        shard.send(broadcast(None));
    }
    shard.send(broadcast(None));
    assert_eq!(
        rx.len(),
        SHARD_INBOX_LIMIT,
        "up to the limit, everything queues"
    );
    shard.send(broadcast(None));
    assert_eq!(
        rx.len(),
        SHARD_INBOX_LIMIT,
        "past it, an ephemeral broadcast is dropped"
    );
    assert_eq!(
        metrics.shards[0]
            .broadcasts_dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    shard.send(broadcast(Some(7)));
    assert_eq!(
        rx.len(),
        SHARD_INBOX_LIMIT + 1,
        "a durable one still queues"
    );
    for _ in rx.len()..SHARD_INBOX_HARD_LIMIT {
        shard.send(broadcast(Some(7)));
    }
    shard.send(broadcast(Some(8)));
    assert_eq!(
        rx.len(),
        SHARD_INBOX_HARD_LIMIT,
        "past the hard limit, none queues"
    );
    assert_eq!(
        metrics.shards[0]
            .broadcasts_dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}
