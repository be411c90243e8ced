//! Durable messages per second and ack latency of the PostgreSQL store: one statement (and
//! commit) per batch against one per message (the seed's way), measured in the same run on
//! fresh databases. Drives the real store thread
//! through its inbox with `PERSIST_WINDOW` sends in flight, as many shards would.
//!
//! `cargo bench --bench persist` (needs PostgreSQL; `OCOMMS_TEST_PG` names another server;
//! `PERSIST_N` sets messages per method, `PERSIST_WINDOW` sends in flight).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use ocomms_rt::ids::{ConnectionId, ShardId, Target};
use ocomms_rt::mesh::{
    Asker, BrokerHandle, Mesh, ShardCommand, ShardHandle, StoreCommand, StoreHandle, StoreReply,
};
use ocomms_rt::metrics::Metrics;
use ocomms_rt::store::pg::testing::TestDb;
use ocomms_rt::store::pg::{migrate, InsertMethod, PgBackend};
use ocomms_rt::store::{spawn_with, Backend, NewMessage};

/// Sends in flight (`PERSIST_WINDOW`, default 256), as many sockets on many shards would keep.
fn window() -> usize {
    std::env::var("PERSIST_WINDOW")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

fn run(method: InsertMethod, n: usize) -> (f64, Duration, Duration) {
    let db = TestDb::create();
    migrate(&db.url()).unwrap();
    let metrics = Arc::new(Metrics::new(1));
    let mut backend = PgBackend::new(&db.url(), method, Arc::clone(&metrics));
    let now = Utc::now();
    let user = backend.create_user("Ann", None, now).unwrap();
    let ws = backend.create_workspace("acme", "Acme", now).unwrap();
    backend.add_workspace_member(ws, user, None).unwrap();
    let mut channels = Vec::new();
    for i in 0..4 {
        let c = backend
            .create_channel(ws, &format!("c{i}"), "C", false, now)
            .unwrap();
        backend.add_channel_member(c, user).unwrap();
        channels.push(c);
    }

    let poll = mio::Poll::new().unwrap();
    let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).unwrap());
    let (shard_tx, shard_rx) = crossbeam_channel::unbounded();
    let shards = vec![ShardHandle::new(ShardId(0), shard_tx, waker)];
    let (inbox, store_rx) = crossbeam_channel::unbounded();
    let mesh = Mesh {
        shards: shards.clone(),
        store: StoreHandle::new(inbox.clone()),
        broker: BrokerHandle::local(shards),
    };
    let thread = spawn_with(backend, store_rx, mesh, metrics).unwrap();
    let asker = Asker {
        from: ConnectionId {
            shard: ShardId(0),
            slot: ocomms_rt::ids::SocketRef::Conn(1),
            generation: 1,
        },
        user,
        workspace: ws,
    };

    let mut started: HashMap<u64, Instant> = HashMap::new();
    let mut latencies = Vec::with_capacity(n);
    let (mut sent, mut done) = (0usize, 0usize);
    let t0 = Instant::now();
    while done < n {
        while sent < n && started.len() < window() {
            let target = Target::Channel(channels[sent % channels.len()]);
            started.insert(sent as u64, Instant::now());
            inbox
                .send(StoreCommand::Send {
                    asker,
                    ack: Some(sent as u64),
                    message: NewMessage {
                        author: user,
                        workspace: Some(ws),
                        target,
                        content: format!("message {sent} with some ordinary chat text"),
                        client_msg_id: Some(format!("b-{sent}")),
                    },
                    received: Instant::now(),
                })
                .unwrap();
            sent += 1;
        }
        if let ShardCommand::Reply(_, StoreReply::Sent { ack, result }) = shard_rx.recv().unwrap() {
            result.expect("stored");
            let at = started.remove(&ack.unwrap()).unwrap();
            latencies.push(at.elapsed());
            done += 1;
        }
    }
    let elapsed = t0.elapsed();
    inbox.send(StoreCommand::Shutdown).unwrap();
    thread.join().unwrap();
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    (n as f64 / elapsed.as_secs_f64(), pct(0.50), pct(0.99))
}

fn main() {
    // `cargo test` runs benches once with `--bench` absent: keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("PERSIST_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 300 } else { 5000 });
    println!(
        "persist: {n} messages per method, {} in flight, 4 channels",
        window()
    );
    for (name, method, count) in [
        ("one statement per batch  ", InsertMethod::Unnest, n),
        ("one statement per message", InsertMethod::PerMessage, n / 2),
    ] {
        let (rate, p50, p99) = run(method, count.max(1));
        println!(
            "{name}: {rate:>8.0} msg/s  ack p50 {:>7.2} ms  p99 {:>7.2} ms",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
    }
}
