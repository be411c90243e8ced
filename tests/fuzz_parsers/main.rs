//! Property tests of the server's parsers (docs/fuzzing.md): the HTTP request head, the
//! WebSocket frame decoder, Engine.IO and Socket.IO packets, the long-polling payload
//! splitter and the event-argument rules. Each target replays every seed of
//! `tests/fuzz/corpus/<target>/`, then runs arbitrary bytes, mutated seeds and structured
//! inputs through the properties of `checks.rs`.
//!
//! `OCOMMS_FUZZ_CASES` sets the cases per property (default 64, a few seconds in release);
//! the long runs raise it.

mod checks;
mod checks_packets;
mod corpus;
mod structured;

use checks::WsEvent;
use proptest::prelude::*;
use proptest::test_runner::Config;

/// Cases per property: `OCOMMS_FUZZ_CASES`, or 64.
fn config() -> Config {
    let cases = match std::env::var("OCOMMS_FUZZ_CASES") {
        Ok(n) => n
            .parse()
            .unwrap_or_else(|_| panic!("OCOMMS_FUZZ_CASES={n:?} is not a number of cases")),
        Err(_) => 64,
    };
    Config {
        cases,
        // Findings are kept as seeds in tests/fuzz/corpus/, not in proptest's own files.
        failure_persistence: None,
        ..Config::default()
    }
}

/// Every seed of `target` through `check`, named when it fails.
fn replay(target: &str, check: impl Fn(&str, &[u8])) {
    for (name, bytes) in corpus::seeds(target) {
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&name, &bytes)));
        if let Err(panic) = outcome {
            eprintln!("seed {target}/{name} failed");
            std::panic::resume_unwind(panic);
        }
    }
}

#[test]
fn every_target_has_seeds() {
    for target in corpus::TARGETS {
        assert!(
            corpus::seeds(target).len() >= 5,
            "{target} has too few seeds"
        );
    }
}

// ---- HTTP request heads ----

#[test]
fn http_corpus_replays() {
    replay("http_head", |name, bytes| {
        for cut in 0..=bytes.len() {
            checks::http_all(bytes, cut);
        }
        let events = checks::http_stream([bytes], checks::MAX_HEADER_BYTES, checks::MAX_PAYLOAD);
        let refused = matches!(events.last(), Some(checks::HttpEvent::Refused(..)));
        let ws = events.iter().any(|e| match e {
            checks::HttpEvent::Request(head, _) => head.websocket_refusal().is_some(),
            checks::HttpEvent::Refused(..) => false,
        });
        // A seed says by its name whether it is refused, so the corpus stays what it claims.
        assert_eq!(refused || ws, name.starts_with("refused_"), "{events:?}");
        assert!(!events.is_empty());
    });
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn http_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..700), cut in any::<usize>()) {
        checks::http_all(&bytes, cut % (bytes.len() + 1));
    }

    #[test]
    fn http_mutated_seeds(bytes in corpus::mutated("http_head"), cut in any::<usize>()) {
        checks::http_all(&bytes, cut % (bytes.len() + 1));
    }

    #[test]
    fn http_structured_requests(
        requests in prop::collection::vec(structured::http_request(), 1..4),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let stream: Vec<u8> = requests.concat();
        checks::http_all(&stream, cuts.first().copied().unwrap_or(0) % (stream.len() + 1));
        let chunks = structured::chunks(&stream, &cuts);
        let whole = checks::http_stream([&stream[..]], checks::MAX_HEADER_BYTES, checks::MAX_PAYLOAD);
        let split = checks::http_stream(chunks.iter().copied(), checks::MAX_HEADER_BYTES, checks::MAX_PAYLOAD);
        prop_assert_eq!(whole, split);
    }
}

// ---- WebSocket frames ----

#[test]
fn ws_corpus_replays() {
    replay("ws_frame", |name, bytes| {
        for max in checks::WS_LIMITS {
            for cut in 0..=bytes.len().min(2000) {
                checks::ws_all(bytes, cut, max);
            }
        }
        checks::fuzz_ws(bytes);
        let events = checks::ws_stream([bytes], checks::MAX_PAYLOAD);
        let refused = matches!(events.last(), Some(WsEvent::Refused(_)));
        assert_eq!(refused, name.starts_with("refused_"), "{events:?}");
    });
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn ws_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..700), n in any::<usize>()) {
        let max = checks::WS_LIMITS[n % checks::WS_LIMITS.len()];
        checks::ws_all(&bytes, n % (bytes.len() + 1), max);
    }

    #[test]
    fn ws_mutated_seeds(bytes in corpus::mutated("ws_frame"), n in any::<usize>()) {
        let max = checks::WS_LIMITS[n % checks::WS_LIMITS.len()];
        checks::ws_all(&bytes, n % (bytes.len() + 1), max);
        checks::fuzz_ws(&bytes);
    }

    /// Frames with every header field drawn (lengths in all three forms, at their edges)
    /// decode to what RFC 6455 says, however the stream is cut into reads.
    #[test]
    fn ws_frames_match_the_rfc(
        frames in prop::collection::vec(structured::ws_frame(), 1..6),
        max in prop_oneof![Just(125usize), Just(126), Just(65_535), Just(65_536), 0usize..300],
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let stream: Vec<u8> = frames.iter().flat_map(|f| f.bytes()).collect();
        let expected = structured::ws_expected(&frames, max);
        let chunks = structured::chunks(&stream, &cuts);
        prop_assert_eq!(&checks::ws_stream(chunks.iter().copied(), max), &expected);
        prop_assert_eq!(&checks::ws_stream([&stream[..]], max), &expected);
    }

    #[test]
    fn ws_server_frames_round_trip(payload in prop::collection::vec(any::<u8>(), 0..70_000), key in any::<[u8; 4]>()) {
        checks::ws_round_trip(&payload, key);
    }
}

// ---- Engine.IO and Socket.IO packets ----

#[test]
fn packet_corpus_replays() {
    replay("packet", |_, bytes| {
        let text = std::str::from_utf8(bytes).expect("packet seeds are text");
        checks_packets::fuzz_packet(bytes);
        for cut in (0..=text.len()).filter(|&c| text.is_char_boundary(c)) {
            checks_packets::packet_text(&text[..cut], checks::MAX_PAYLOAD);
        }
    });
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn packet_arbitrary_text(text in "\\PC{0,40}|[0-6b][0-9/,\\[\\]{}\":a-z-]{0,40}") {
        checks_packets::packet_text(&text, checks::MAX_PAYLOAD);
        checks_packets::packet_text(&text, 16);
    }

    #[test]
    fn packet_mutated_seeds(bytes in corpus::mutated("packet")) {
        checks_packets::fuzz_packet(&bytes);
        checks_packets::fuzz_packet(String::from_utf8_lossy(&bytes).as_bytes());
    }

    /// decode(encode(p)) == p for every packet the server can decode, and the session takes
    /// each one as its `4` message.
    #[test]
    fn packet_round_trips(packet in structured::packet()) {
        let text = ocomms_rt::protocol::packet::encode(&packet);
        prop_assert_eq!(ocomms_rt::protocol::packet::decode(&text), Ok(packet));
        checks_packets::packet_text(&format!("4{text}"), checks::MAX_PAYLOAD);
    }

    #[test]
    fn packet_sequences_in_one_session(texts in prop::collection::vec(structured::engine_text(), 1..8), max in 16usize..400) {
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        checks_packets::session(&texts, max);
    }
}

// ---- Long-polling payloads ----

#[test]
fn polling_corpus_replays() {
    replay("polling", |_, bytes| {
        for n in 0..8 {
            checks_packets::polling_body(bytes, n, checks::MAX_PAYLOAD);
        }
        checks_packets::fuzz_polling(bytes);
    });
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn polling_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..400), n in any::<usize>()) {
        checks_packets::polling_body(&bytes, n, checks::MAX_PAYLOAD);
        checks_packets::polling_body(&bytes, n, 64);
    }

    #[test]
    fn polling_mutated_seeds(bytes in corpus::mutated("polling")) {
        checks_packets::fuzz_polling(&bytes);
    }

    /// split(join(packets)) == packets for packets without the separator.
    #[test]
    fn polling_join_then_split(texts in prop::collection::vec(structured::engine_text(), 0..8), n in any::<usize>()) {
        let texts: Vec<String> = texts.into_iter().filter(|t| !t.is_empty() && !t.contains('\u{1e}')).collect();
        let packets: Vec<bytes::Bytes> = texts.iter().map(|t| bytes::Bytes::from(t.clone())).collect();
        let body = ocomms_rt::protocol::polling::join_payload(&packets);
        let text = String::from_utf8(body.clone()).unwrap();
        let split: Vec<&str> = ocomms_rt::protocol::polling::split_payload(&text).collect();
        prop_assert_eq!(split, texts.iter().map(String::as_str).collect::<Vec<_>>());
        checks_packets::polling_body(&body, n, checks::MAX_PAYLOAD);
    }
}

// ---- Event arguments ----

#[test]
fn event_corpus_replays() {
    replay("event_args", |_, bytes| {
        for pick in 0..checks_packets::EVENTS.len() * 3 {
            checks_packets::event_json(bytes, pick);
        }
    });
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn event_mutated_seeds(bytes in corpus::mutated("event_args"), pick in any::<usize>()) {
        checks_packets::event_json(&bytes, pick);
    }

    #[test]
    fn event_structured_args(
        name in prop::sample::select(&checks_packets::EVENTS[..]),
        args in prop::collection::vec(structured::event_arg(), 0..3),
        ack in prop::option::of(any::<u64>()),
    ) {
        checks_packets::event_args(name, args, ack);
    }

    #[test]
    fn content_rules_hold(text in structured::chat_text(), max in prop_oneof![Just(checks::MAX_MESSAGE_CHARS), 1usize..12]) {
        checks_packets::content(&text, max);
    }
}
