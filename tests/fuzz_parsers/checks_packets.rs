//! The properties of Engine.IO and Socket.IO packets, long-polling bodies and event
//! arguments, one entry point per fuzz target (see `checks.rs`).

#![allow(dead_code)]

use std::time::Instant;

use bytes::Bytes;
use ocomms_rt::chat::{self, validate, ChatState, Context, Effect};
use ocomms_rt::config::EngineLimits;
use ocomms_rt::ids::{ConnectionId, Room, ShardId, SocketRef, WorkspaceId};
use ocomms_rt::limits::EventBudgets;
use ocomms_rt::mesh::{PresenceCommand, StoreCommand};
use ocomms_rt::model::User;
use ocomms_rt::protocol::{engine, packet, polling, ProtocolError, Session, SessionEvent};
use serde_json::Value;

use crate::checks::{
    http_stream, pick, HttpEvent, MAX_HEADER_BYTES, MAX_MESSAGE_CHARS, MAX_PAYLOAD,
};

// ---- Engine.IO and Socket.IO packets ----

/// One Engine.IO text: decoded alone, its Socket.IO part decoded and re-encoded, and fed
/// to a connected session with the `max_payload` limit.
pub fn packet_text(text: &str, max_payload: usize) {
    engine_text(text);
    if let Some(message) = text.strip_prefix('4') {
        socket_io(message);
    }
    session(&[text], max_payload);
}

/// `engine::decode`: a packet is its type digit and the payload it borrowed.
pub fn engine_text(text: &str) {
    use engine::EnginePacket as E;
    let rest = text.get(1..).unwrap_or_default();
    match engine::decode(text) {
        Ok(E::Open) => assert!(text.starts_with('0')),
        Ok(E::Close) => assert!(text.starts_with('1')),
        Ok(E::Ping(p)) => assert!(text.starts_with('2') && p == rest),
        Ok(E::Pong(p)) => assert!(text.starts_with('3') && p == rest),
        Ok(E::Message(p)) => assert!(text.starts_with('4') && p == rest),
        Ok(E::Upgrade(p)) => assert!(text.starts_with('5') && p == rest),
        Ok(E::Noop) => assert!(text.starts_with('6')),
        Err(ProtocolError::BinaryUnsupported) => assert!(text.starts_with('b')),
        Err(ProtocolError::Malformed(why)) => assert!(!why.is_empty()),
        Err(other) => panic!("engine::decode({text:?}) gave {other:?}"),
    }
}

/// `packet::decode`: what it accepts has the shape of its type and survives
/// decode(encode(p)) == p; what it refuses says why.
pub fn socket_io(text: &str) {
    use packet::Packet as P;
    let decoded = match packet::decode(text) {
        Ok(p) => p,
        Err(ProtocolError::BinaryUnsupported) => {
            assert!(text.starts_with(['5', '6']), "{text:?}");
            return;
        }
        Err(ProtocolError::Malformed(why)) => {
            assert!(!why.is_empty());
            return;
        }
        Err(other) => panic!("packet::decode({text:?}) gave {other:?}"),
    };
    let nsp = match &decoded {
        P::Connect { nsp, data } => {
            assert!(matches!(data, None | Some(Value::Object(_))), "{decoded:?}");
            nsp
        }
        P::Disconnect { nsp } | P::Ack { nsp, .. } => nsp,
        P::Event { nsp, data, .. } => {
            assert!(
                matches!(data.first(), Some(Value::String(_))),
                "{decoded:?}"
            );
            nsp
        }
        P::ConnectError { nsp, data } => {
            assert!(matches!(data, Value::Object(_) | Value::String(_)));
            nsp
        }
        P::BinaryEvent { .. } | P::BinaryAck { .. } => panic!("{text:?} decoded as binary"),
    };
    assert!(
        nsp.starts_with('/') && !nsp.contains(','),
        "namespace {nsp:?}"
    );
    let encoded = packet::encode(&decoded);
    assert_eq!(packet::decode(&encoded).as_ref(), Ok(&decoded), "{encoded}");
}

/// A session past its CONNECT, fed `texts` in order: each packet is taken or refused with
/// a typed error; after a refusal the session ignores everything.
pub fn session(texts: &[&str], max_payload: usize) {
    let now = Instant::now();
    let limits = EngineLimits {
        max_payload,
        ..EngineLimits::default()
    };
    let mut s = Session::with_upgrades(now, "sid".into(), limits, &["websocket"]);
    s.handle_text(now, "40").expect("CONNECT");
    assert!(matches!(s.poll_event(), Some(SessionEvent::Connect { .. })));
    s.accept("socket", None);
    while s.poll_transmit().is_some() {}
    let mut closed = false;
    for text in texts {
        let result = s.handle_text(now, text);
        if closed {
            assert_eq!(result, Ok(()), "input after the end is ignored");
            assert_eq!(s.poll_event(), None);
            continue;
        }
        match &result {
            Ok(()) => assert!(text.len() <= max_payload, "{} bytes taken", text.len()),
            Err(ProtocolError::PayloadTooLarge { len, max }) => {
                assert_eq!((*len, *max), (text.len(), max_payload));
                assert!(len > max);
            }
            Err(e) => {
                assert!(matches!(e.close_code(), 1002 | 1003), "{e:?}");
                assert!(!e.to_string().is_empty());
            }
        }
        closed |= result.is_err();
        while let Some(event) = s.poll_event() {
            match event {
                SessionEvent::Event { .. } => assert!(!closed, "an event after the end"),
                SessionEvent::Closed { .. } => closed = true,
                SessionEvent::Connect { .. } => panic!("second CONNECT reached the application"),
            }
        }
        while let Some(out) = s.poll_transmit() {
            assert!(!out.is_empty());
        }
    }
}

// ---- Long-polling payloads ----

/// A POST body as the shard takes it: UTF-8 or refused, split at the separators, each
/// packet to the session in order.
pub fn polling_body(body: &[u8], cut: usize, max_payload: usize) {
    let Ok(text) = std::str::from_utf8(body) else {
        return;
    };
    let packets: Vec<&str> = polling::split_payload(text).collect();
    let separator = char::from(polling::SEPARATOR);
    for p in &packets {
        assert!(!p.is_empty() && !p.contains(separator), "{p:?}");
    }
    // join(split(body)) is the body without its empty packets.
    let owned: Vec<Bytes> = packets
        .iter()
        .map(|p| Bytes::copy_from_slice(p.as_bytes()))
        .collect();
    let kept: Vec<&str> = text.split(separator).filter(|p| !p.is_empty()).collect();
    assert_eq!(
        polling::join_payload(&owned),
        kept.join("\x1e").into_bytes()
    );
    assert_eq!(packets, kept);
    // A body split at a separator is the packets of both halves.
    if let Some((at, _)) = text.match_indices(separator).nth(cut % 8) {
        let (a, b) = (&text[..at], &text[at + 1..]);
        let halves: Vec<&str> = polling::split_payload(a)
            .chain(polling::split_payload(b))
            .collect();
        assert_eq!(halves, packets);
    }
    session(&packets, max_payload);
    // The same body as the POST that carries it.
    let mut post = format!(
        "POST /socket.io/?EIO=4&transport=polling&sid=abc HTTP/1.1\r\nHost: x\r\n\
         Content-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    post.extend_from_slice(body);
    match &http_stream([&post[..]], MAX_HEADER_BYTES, max_payload)[..] {
        [HttpEvent::Request(_, taken)] => assert_eq!(taken, body),
        [HttpEvent::Refused(413, _)] => assert!(body.len() > max_payload),
        other => panic!("POST of {} bytes gave {other:?}", body.len()),
    }
}

// ---- Event arguments ----

/// The events a client may emit, and one that is not handled.
pub const EVENTS: [&str; 11] = [
    "message:send",
    "message:history",
    "typing:start",
    "typing:stop",
    "message:delete",
    "room:join",
    "room:leave",
    "presence:query",
    "presence:setAway",
    "presence:setActive",
    "no:such:event",
];

/// Whether `validate_content` must take `content`: the rules of contract §3, written out.
pub fn content_is_valid(content: &str, max_chars: usize) -> bool {
    !content.trim().is_empty()
        && content.chars().count() <= max_chars
        && !content
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
}

/// One event with `args` from a fresh socket: answered once (now, or by the store later)
/// when it asked for an ack, refused with a sentence, and only valid data reaches the store.
pub fn event_args(name: &str, args: Vec<Value>, ack: Option<u64>) {
    let user = User {
        id: ocomms_rt::ids::UserId(uuid::Uuid::from_u128(1)),
        name: "Ann".into(),
    };
    let budgets = EventBudgets::default();
    let now = Instant::now();
    let in_room = |_: Room| true;
    let ctx = Context {
        conn: ConnectionId {
            shard: ShardId(0),
            slot: SocketRef::Conn(1),
            generation: 1,
        },
        user: &user,
        workspace: WorkspaceId(uuid::Uuid::from_u128(9)),
        max_message_chars: MAX_MESSAGE_CHARS,
        budgets: &budgets,
        now,
        in_room: &in_room,
    };
    let mut state = ChatState::new(now);
    let mut out = Vec::new();
    chat::handle_event(&ctx, &mut state, name, args, ack, &mut out);
    let mut answers = 0;
    for effect in &out {
        let answered = match effect {
            Effect::Ack(id, value) => {
                assert_eq!(Some(*id), ack);
                if value["success"] == Value::Bool(false) {
                    refusal(&value["error"]);
                }
                true
            }
            Effect::Emit(event, value) => {
                assert_eq!(*event, "error");
                refusal(&value["message"]);
                false
            }
            Effect::Store(command) => store_command(command, ack),
            Effect::Presence(PresenceCommand::Query { ack: a, users, .. }) => {
                assert!(users.len() <= chat::MAX_PRESENCE_QUERY);
                assert_eq!(*a, ack);
                true
            }
            Effect::Presence(_) | Effect::Publish(_) | Effect::Leave(_) => false,
            other => panic!("{name} gave {other:?}"),
        };
        answers += usize::from(answered);
    }
    assert!(answers <= 1, "{name}: {out:?}");
    if ack.is_some() {
        assert_eq!(answers, 1, "{name} is answered once: {out:?}");
    }
}

fn refusal(error: &Value) {
    match error {
        Value::String(s) => assert!(!s.trim().is_empty()),
        other => panic!("refusal without a sentence: {other:?}"),
    }
}

/// A store command's data passed every rule; returns whether it carries the ack.
fn store_command(command: &StoreCommand, ack: Option<u64>) -> bool {
    match command {
        StoreCommand::Send {
            ack: a, message, ..
        } => {
            assert!(
                content_is_valid(&message.content, MAX_MESSAGE_CHARS),
                "{message:?}"
            );
            if let Some(id) = &message.client_msg_id {
                assert!((1..=validate::MAX_CLIENT_MSG_ID_BYTES).contains(&id.len()));
                assert!(!id.chars().any(char::is_control), "{id:?}");
            }
            assert_eq!(*a, ack);
            true
        }
        StoreCommand::History { ack: a, query, .. } => {
            assert!((2..=validate::MAX_HISTORY_LIMIT + 1).contains(&query.limit));
            assert_eq!(*a, ack);
            true
        }
        StoreCommand::Delete { ack: a, .. } | StoreCommand::CheckMember { ack: a, .. } => {
            assert_eq!(*a, ack);
            true
        }
        other => panic!("unexpected store command {other:?}"),
    }
}

/// `validate_content` takes exactly what the written-out rules take.
pub fn content(text: &str, max_chars: usize) {
    let result = validate::validate_content(text, max_chars);
    assert_eq!(
        result.is_ok(),
        content_is_valid(text, max_chars),
        "{text:?} (max {max_chars}): {result:?}"
    );
    match result {
        Ok(taken) => assert_eq!(taken, text),
        Err(why) => assert!(!why.is_empty()),
    }
}

/// An event as the client's array `[name, args…]` in JSON (what follows `42` on the wire):
/// handled as that event with an ack id (a name that is not a string or an array that is
/// not one picks an event by `pick`), and each `content` string checked on its own.
pub fn event_json(bytes: &[u8], pick: usize) {
    let Ok(value) = serde_json::from_slice::<Value>(bytes) else {
        return;
    };
    let mut args = match value {
        Value::Array(items) => items,
        other => vec![other],
    };
    let name = match args.first() {
        Some(Value::String(_)) => args.remove(0).as_str().unwrap_or_default().to_owned(),
        _ => EVENTS[pick % EVENTS.len()].to_owned(),
    };
    for arg in &args {
        if let Some(Value::String(text)) = arg.get("content") {
            content(text, MAX_MESSAGE_CHARS);
            content(text, 1 + pick % 8);
        }
    }
    let ack = (!pick.is_multiple_of(3)).then_some(pick as u64);
    event_args(&name, args, ack);
}

// ---- Driving the checks from raw bytes ----

/// Every packet property for `data` as the text of one WebSocket message.
pub fn fuzz_packet(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        packet_text(text, MAX_PAYLOAD);
        packet_text(text, 64);
    }
}

/// Every polling property for `data` as a POST body.
pub fn fuzz_polling(data: &[u8]) {
    let n = pick(data);
    polling_body(data, n, MAX_PAYLOAD);
    polling_body(data, n, 64);
}

/// Every event-argument property for `data` as an event array.
pub fn fuzz_event(data: &[u8]) {
    event_json(data, pick(data));
}
