//! Structured inputs: requests, frames, packets and event arguments built field by field,
//! with the values at the edges each rule draws, and what RFC 6455 says a frame stream is.

use std::borrow::Cow;

use ocomms_rt::protocol::packet::Packet;
use ocomms_rt::transport::websocket::Opcode;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

use crate::checks::WsEvent;

/// `stream` cut at `cuts` (taken modulo its length), in order.
pub fn chunks<'a>(stream: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    at.sort_unstable();
    let mut out = Vec::new();
    let mut start = 0;
    for cut in at.into_iter().chain([stream.len()]) {
        out.push(&stream[start..cut]);
        start = cut;
    }
    out
}

// ---- HTTP ----

fn header() -> impl Strategy<Value = String> {
    let value = "[ -~]{0,30}";
    prop_oneof![
        Just("Host: 127.0.0.1:3000".to_owned()),
        Just("Upgrade: websocket".to_owned()),
        Just("Connection: Upgrade".to_owned()),
        Just("Connection: close".to_owned()),
        Just("Connection: keep-alive, Upgrade".to_owned()),
        Just("Sec-WebSocket-Version: 13".to_owned()),
        Just("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==".to_owned()),
        Just("Transfer-Encoding: chunked".to_owned()),
        Just("Origin: http://localhost:5173".to_owned()),
        value.prop_map(|v| format!("Cookie: {v}")),
        value.prop_map(|v| format!("Authorization: {v}")),
        value.prop_map(|v| format!("Content-Length: {v}")),
        ("[A-Za-z-]{1,12}", value).prop_map(|(n, v)| format!("{n}: {v}")),
    ]
}

/// One request: a head of drawn fields, and a body whose length may or may not be the one
/// `Content-Length` names.
pub fn http_request() -> impl Strategy<Value = Vec<u8>> {
    let method = prop::sample::select(&["GET", "POST", "OPTIONS", "PUT", "get"][..]);
    let path = prop::sample::select(
        &[
            "/socket.io/",
            "/socket.io",
            "/api/v1/messages",
            "http://h/x",
            "*",
            "/",
        ][..],
    );
    let query = "([a-zA-Z]{1,6}=[a-zA-Z0-9%+=&]{0,12}){0,3}";
    let version = prop::sample::select(&["HTTP/1.1", "HTTP/1.0", "HTTP/2.0"][..]);
    let body = "[ -~\u{1e}]{0,40}";
    let length = prop_oneof![
        Just(None),
        Just(Some(0i64)),
        Just(Some(-1)),
        (0i64..60).prop_map(Some)
    ];
    (
        method,
        path,
        query,
        version,
        prop::collection::vec(header(), 0..8),
        body,
        length,
    )
        .prop_map(|(method, path, query, version, headers, body, length)| {
            let mut head = format!("{method} {path}?{query} {version}\r\n");
            for h in headers {
                head.push_str(&h);
                head.push_str("\r\n");
            }
            match length {
                Some(0) => head.push_str(&format!("Content-Length: {}\r\n", body.len())),
                Some(n) => head.push_str(&format!("Content-Length: {n}\r\n")),
                None => {}
            }
            head.push_str("\r\n");
            head.push_str(&body);
            head.into_bytes()
        })
}

// ---- WebSocket ----

/// A client frame, every header field drawn.
#[derive(Clone, Debug)]
pub struct Frame {
    fin: bool,
    rsv: u8,
    opcode: u8,
    /// 7, 16 or 64: the length form, minimal or not.
    form: u8,
    mask: Option<[u8; 4]>,
    payload: Vec<u8>,
}

impl Frame {
    /// The frame on the wire.
    pub fn bytes(&self) -> Vec<u8> {
        let n = self.payload.len();
        let form = match n {
            0..=125 => self.form,
            126..=65_535 => self.form.max(16),
            _ => 64,
        };
        let mut out = vec![u8::from(self.fin) << 7 | self.rsv << 4 | self.opcode];
        let bit = if self.mask.is_some() { 0x80 } else { 0 };
        match form {
            7 => out.push(bit | n as u8),
            16 => {
                out.push(bit | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            _ => {
                out.push(bit | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        match self.mask {
            Some(key) => {
                out.extend_from_slice(&key);
                out.extend(self.payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
            }
            None => out.extend_from_slice(&self.payload),
        }
        out
    }
}

/// A frame: mostly well-formed, each field sometimes wrong, lengths around 125/126 and
/// 65 535/65 536.
pub fn ws_frame() -> impl Strategy<Value = Frame> {
    let opcode = prop_oneof![
        6 => prop::sample::select(&[0u8, 1, 2, 8, 9, 10][..]),
        1 => 0u8..16,
    ];
    let len = prop_oneof![
        4 => 0usize..20,
        1 => 120usize..131,
        1 => Just(65_535usize),
        1 => Just(65_536usize),
    ];
    (
        prop::bool::weighted(0.8),
        prop_oneof![9 => Just(0u8), 1 => 0u8..8],
        opcode,
        prop::sample::select(&[7u8, 7, 7, 16, 64][..]),
        prop_oneof![9 => any::<[u8; 4]>().prop_map(Some), 1 => Just(None)],
        len,
        any::<u8>(),
    )
        .prop_map(|(fin, rsv, opcode, form, mask, len, fill)| Frame {
            fin,
            rsv,
            opcode,
            form,
            mask,
            payload: (0..len).map(|i| fill.wrapping_add(i as u8)).collect(),
        })
}

/// What RFC 6455 §5 makes of `frames` from a client, with frames over `max` refused as too
/// big (1009) and every other fault as a protocol error (1002): each frame, up to the first
/// one refused.
pub fn ws_expected(frames: &[Frame], max: usize) -> Vec<WsEvent> {
    let mut out = Vec::new();
    for f in frames {
        let opcode = match f.opcode {
            0 => Some(Opcode::Continuation),
            1 => Some(Opcode::Text),
            2 => Some(Opcode::Binary),
            8 => Some(Opcode::Close),
            9 => Some(Opcode::Ping),
            10 => Some(Opcode::Pong),
            _ => None,
        };
        let control = f.opcode >= 8;
        // A reserved opcode is refused with the header, before its length is looked at.
        let refused = if opcode.is_none() {
            Some(1002)
        } else if f.payload.len() > max {
            Some(1009)
        } else if f.rsv != 0 || (control && (!f.fin || f.payload.len() > 125)) || f.mask.is_none() {
            Some(1002)
        } else {
            None
        };
        match (refused, opcode) {
            (Some(code), _) => {
                out.push(WsEvent::Refused(code));
                return out;
            }
            (None, Some(op)) => out.push(WsEvent::Frame(op, f.fin, f.payload.clone())),
            (None, None) => unreachable!(),
        }
    }
    out
}

// ---- Packets ----

/// JSON values of every kind, nested, with numbers at their edges.
pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop::num::f64::NORMAL.prop_map(Value::from),
        "\\PC{0,12}|[\u{0}-\u{1f}\"\\\\\u{7f}-\u{9f}]{0,4}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("\\PC{0,6}", inner), 0..4)
                .prop_map(|fields| Value::Object(fields.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn namespace() -> impl Strategy<Value = Cow<'static, str>> {
    prop_oneof![
        3 => Just(Cow::Borrowed("/")),
        1 => "/[^,]{0,10}".prop_map(|n| if n == "/" { Cow::Borrowed("/") } else { Cow::Owned(n) }),
    ]
}

fn object() -> impl Strategy<Value = Value> {
    prop::collection::vec(("\\PC{0,6}", json_value()), 0..4)
        .prop_map(|fields| Value::Object(fields.into_iter().collect()))
}

/// Any packet `packet::decode` can give.
pub fn packet() -> impl Strategy<Value = Packet> {
    let id = || prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()];
    let args = || prop::collection::vec(json_value(), 0..4);
    prop_oneof![
        (namespace(), prop::option::of(object()))
            .prop_map(|(nsp, data)| Packet::Connect { nsp, data }),
        namespace().prop_map(|nsp| Packet::Disconnect { nsp }),
        (namespace(), "\\PC{0,12}", args(), prop::option::of(id())).prop_map(
            |(nsp, name, mut data, id)| {
                data.insert(0, Value::from(name));
                Packet::Event { nsp, data, id }
            }
        ),
        (namespace(), args(), id()).prop_map(|(nsp, data, id)| Packet::Ack { nsp, data, id }),
        (
            namespace(),
            prop_oneof![object(), "\\PC{0,12}".prop_map(Value::from)]
        )
            .prop_map(|(nsp, data)| Packet::ConnectError { nsp, data }),
    ]
}

/// The text of one Engine.IO packet: every type, with Socket.IO messages among them.
pub fn engine_text() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => packet().prop_map(|p| format!("4{}", ocomms_rt::protocol::packet::encode(&p))),
        1 => prop::sample::select(&["2", "2probe", "3", "3probe", "5", "6", "1", "40", "41"][..])
            .prop_map(str::to_owned),
        1 => "[0-6b]\\PC{0,20}",
    ]
}

// ---- Event arguments ----

/// Chat text: printable, blank, control characters of every kind, long.
pub fn chat_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,20}",
        "[ \t\r\n\u{3000}\u{a0}]{0,4}",
        "[a\u{0}-\u{1f}\u{7f}-\u{9f}\u{200d}😀]{0,12}",
        (1usize..4, prop::sample::select(&['a', '😀', 'é'][..]))
            .prop_map(|(n, c)| c.to_string().repeat(3998 + n)),
    ]
}

fn uuid_text() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => Just(json!("0190a3b4-5c6d-7e8f-9a0b-1c2d3e4f5a6b")),
        1 => Just(json!("0190A3B4-5C6D-7E8F-9A0B-1C2D3E4F5A6B")),
        1 => Just(json!("not-a-uuid")),
        1 => Just(json!(5)),
        1 => Just(Value::Null),
    ]
}

fn number_edge() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(&[-1i64, 0, 1, 50, 100, 101, i64::MAX, i64::MIN][..])
            .prop_map(Value::from),
        Just(json!(1.5)),
        Just(json!(u64::MAX)),
        Just(json!("5")),
        Just(Value::Null),
    ]
}

/// The data of an event: an object with the fields of every event, each right or wrong,
/// or another JSON value.
pub fn event_arg() -> impl Strategy<Value = Value> {
    let text = prop_oneof![3 => chat_text().prop_map(Value::from), 1 => json_value()];
    let kind = prop::sample::select(&["channel", "dm", "thread", ""][..]).prop_map(Value::from);
    let fields = (
        uuid_text(),
        kind.clone(),
        text,
        prop::option::of("[ -~\u{7}\u{85}]{0,130}"),
        number_edge(),
        number_edge(),
        prop::collection::vec(uuid_text(), 0..3),
        (uuid_text(), kind),
    );
    prop_oneof![
        4 => fields.prop_map(|(id, kind, content, msg_id, limit, before, users, (room, room_kind))| {
            json!({
                "targetId": id, "targetType": kind, "content": content, "clientMsgId": msg_id,
                "limit": limit, "beforeSequence": before, "afterSequence": limit,
                "messageId": room, "roomId": room, "roomType": room_kind, "userIds": users,
            })
        }),
        1 => json_value(),
    ]
}
