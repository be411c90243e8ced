//! The mesh's handles: bounds and routing.

use super::*;

#[test]
fn a_full_store_inbox_refuses_client_requests_and_says_why() {
    let (tx, _rx) = crossbeam_channel::unbounded();
    let mesh = Mesh {
        shards: Vec::new(),
        store: StoreHandle::new(tx),
        broker: BrokerHandle::local(Vec::new()),
    };
    assert_eq!(mesh.congested(), None);
    for _ in 0..STORE_INBOX_LIMIT {
        mesh.store.send(StoreCommand::Shutdown);
    }
    let why = mesh.congested().expect("the store is that far behind");
    assert!(why.contains("8192 requests wait for the store"), "{why}");
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
