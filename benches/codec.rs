//! Codec costs on the hot path: decoding a client's `message:send` event with an ack id (every
//! chat message parses one) and encoding a `message:new` broadcast frame (once per message).
//! Run with `cargo bench --bench codec`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;

use ocomms_rt::config::EngineLimits;
use ocomms_rt::protocol::{engine, packet, Session};
use ocomms_rt::transport::websocket;

/// What socket.io-client sends for `socket.emit("message:send", {...}, ack)`.
const SEND: &str = r#"4217["message:send",{"targetId":"0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b","targetType":"channel","content":"Shipping the release notes after lunch, any objections?","clientMsgId":"c0ffee00-1234-4abc-9def-0123456789ab"}]"#;

fn decode(c: &mut Criterion) {
    c.bench_function("decode message:send (engine + packet)", |b| {
        b.iter(|| {
            let engine::EnginePacket::Message(text) = engine::decode(black_box(SEND)).unwrap()
            else {
                unreachable!("SEND is a message packet")
            };
            packet::decode(text).unwrap()
        })
    });

    let start = Instant::now();
    let mut session = Session::new(start, "bench".into(), EngineLimits::default());
    session.handle_text(start, "40").unwrap();
    session.accept("s", None);
    while session.poll_transmit().is_some() {}
    while session.poll_event().is_some() {}
    c.bench_function("session handle_text message:send + ack", |b| {
        b.iter(|| {
            session.handle_text(start, black_box(SEND)).unwrap();
            let event = session.poll_event().unwrap();
            session.ack(
                17,
                &json!({"success": true, "messageId": "m", "sequence": 42}),
            );
            black_box(session.poll_transmit());
            event
        })
    });
}

fn encode(c: &mut Criterion) {
    let message = json!({
        "id": "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5c",
        "content": "Shipping the release notes after lunch, any objections?",
        "authorId": "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5d",
        "channelId": "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
        "conversationId": null,
        "sequence": 1234,
        "createdAt": "2025-01-01T12:00:00.000Z",
        "deletedAt": null,
        "author": {"id": "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5d", "name": "Ada Lovelace"}
    });
    c.bench_function("packet::event + websocket::text message:new", |b| {
        b.iter(|| websocket::text(&packet::event("message:new", black_box(&message), None)))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = decode, encode
}
criterion_main!(benches);
