//! Costs of one broadcast on a shard, without IO: WebSocket frame encoding of payloads of
//! typical sizes, building a `message:new` frame from a stored [`Message`] (the JSON shape plus
//! the frame, once per message), and walking one shard's room index to queue that shared frame
//! on 10,000 recipients. The shard's own `Outbound` queue is private to `shard::connection`,
//! so the queueing is measured on its equivalent: a `VecDeque<Bytes>` per recipient with a
//! byte count, which is what `Outbound::push` does. Run with `cargo bench --bench fanout`.

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use chrono::{TimeZone, Utc};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use ocomms_rt::hub::Hub;
use ocomms_rt::ids::{ChannelId, MessageId, Room, Target, UserId};
use ocomms_rt::model::{Message, User};
use ocomms_rt::protocol::packet;
use ocomms_rt::transport::websocket;

fn message() -> Message {
    Message {
        id: MessageId::random(),
        content: "Shipping the release notes after lunch, any objections?".into(),
        author: User {
            id: UserId::random(),
            name: "Ada Lovelace".into(),
        },
        target: Target::Channel(ChannelId::random()),
        sequence: 1234,
        client_msg_id: Some("c0ffee00-1234-4abc-9def-0123456789ab".into()),
        created_at: Utc.with_ymd_and_hms(2025, 1, 1, 12, 0, 0).unwrap(),
        deleted_at: None,
    }
}

fn ws_frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("ws frame encode (websocket::text)");
    for size in [40usize, 300, 4_000, 70_000] {
        let payload = vec![b'a'; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &payload, |b, p| {
            b.iter(|| websocket::text(black_box(p)))
        });
    }
    g.finish();
}

fn message_json(c: &mut Criterion) {
    let m = message();
    c.bench_function(
        "message:new frame (Message::to_json + packet::event + websocket::text)",
        |b| {
            b.iter(|| {
                websocket::text(&packet::event(
                    "message:new",
                    &black_box(&m).to_json(),
                    None,
                ))
            })
        },
    );
    c.bench_function("message:new frame with recovery offset", |b| {
        b.iter(|| {
            websocket::text(&packet::event(
                "message:new",
                &black_box(&m).to_json(),
                Some("0190a1b2-0001"),
            ))
        })
    });
}

/// What `Outbound::push` does per recipient: queue the shared frame and count its bytes.
struct Queue {
    frames: VecDeque<Bytes>,
    bytes: usize,
}

fn broadcast(c: &mut Criterion) {
    const N: u32 = 10_000;
    let mut hub = Hub::default();
    let room = Room::Channel(ChannelId::random());
    // Other rooms the same sockets are in, as in a workspace: the index is not a toy.
    let workspace = Room::Channel(ChannelId::random());
    for slot in 0..N {
        hub.join(room, slot);
        hub.join(workspace, slot);
        hub.join(Room::User(UserId::random()), slot);
    }
    let mut queues: Vec<Queue> = (0..N)
        .map(|_| Queue {
            frames: VecDeque::new(),
            bytes: 0,
        })
        .collect();
    let m = message();
    let mut g = c.benchmark_group("broadcast to 10k recipients on one shard");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("hub members + push shared Bytes", |b| {
        let frame = websocket::text(&packet::event("message:new", &m.to_json(), None));
        b.iter(|| {
            for slot in hub.members(black_box(&room)) {
                let q = &mut queues[slot as usize];
                q.bytes += frame.len();
                q.frames.push_back(frame.clone());
            }
            // The flush that follows in the shard empties the queues and drops each
            // reference; that is part of a delivery's cost, so it stays in the measurement.
            for q in queues.iter_mut() {
                q.frames.clear();
                q.bytes = 0;
            }
        })
    });
    g.bench_function("encode once + hub members + push", |b| {
        b.iter(|| {
            let frame = websocket::text(&packet::event(
                "message:new",
                &black_box(&m).to_json(),
                None,
            ));
            for slot in hub.members(&room) {
                let q = &mut queues[slot as usize];
                q.bytes += frame.len();
                q.frames.push_back(frame.clone());
            }
            for q in queues.iter_mut() {
                q.frames.clear();
                q.bytes = 0;
            }
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = ws_frames, message_json, broadcast
}
criterion_main!(benches);
