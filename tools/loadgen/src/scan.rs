//! Cheap classification of the Engine.IO / Socket.IO text packets a client receives. The
//! measuring client must not become the bottleneck, so nothing here parses JSON: packets are
//! told apart by their type digits (Engine.IO v4: `0` open, `1` close, `2` ping, `3` pong,
//! `4` message; Socket.IO v5 inside `4`: `0` CONNECT, `1` DISCONNECT, `2` EVENT, `3` ACK,
//! `4` CONNECT_ERROR) and the few numbers we need are found by byte search.

use memchr::memmem;

/// What one received text packet means to the load generator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// Engine.IO open packet `0{...}`.
    Open,
    /// Engine.IO close packet `1`.
    Close,
    /// Engine.IO ping `2` (answered with `3`, Engine.IO v4 server-initiated heartbeat).
    Ping,
    /// Socket.IO CONNECT reply `40{"sid":...}`.
    Connected,
    /// Socket.IO CONNECT_ERROR `44{...}`, with its data.
    ConnectError(&'a [u8]),
    /// Socket.IO DISCONNECT `41`.
    Disconnect,
    /// Socket.IO ACK `43<id>[...]`.
    Ack {
        /// The ack id the client sent.
        id: u64,
        /// `"success":true` appears in the data.
        success: bool,
        /// `"sequence":N` from the data, if present.
        sequence: Option<u64>,
    },
    /// A `message:new` event.
    MessageNew {
        /// The message's `"sequence"`.
        sequence: Option<u64>,
        /// Nanoseconds since loadgen start embedded by a loadgen publisher as `t=<nanos>;`.
        sent_nanos: Option<u64>,
        /// The `channelId` string, when not null.
        channel_id: Option<&'a [u8]>,
    },
    /// A `typing:update` event.
    TypingUpdate {
        /// The typing user's plan index, from a loadgen user name `lg<index>`.
        publisher: Option<u64>,
        /// `"isTyping":true` appears in the data.
        is_typing: bool,
    },
    /// Any other event, with its name when it could be found.
    OtherEvent(&'a [u8]),
    /// Anything else (pong, noop, binary placeholders, other namespaces).
    Other,
}

/// Classifies one text payload.
pub fn classify(p: &[u8]) -> Inbound<'_> {
    match p.first() {
        Some(b'0') => Inbound::Open,
        Some(b'1') => Inbound::Close,
        Some(b'2') => Inbound::Ping,
        Some(b'4') => classify_socketio(&p[1..]),
        _ => Inbound::Other,
    }
}

fn classify_socketio(p: &[u8]) -> Inbound<'_> {
    match p.first() {
        Some(b'0') => Inbound::Connected,
        Some(b'1') => Inbound::Disconnect,
        Some(b'4') => Inbound::ConnectError(&p[1..]),
        Some(b'3') => {
            let (id, used) = parse_u64(&p[1..]);
            let Some(id) = id else { return Inbound::Other };
            let data = &p[1 + used..];
            Inbound::Ack {
                id,
                success: memmem::find(data, b"\"success\":true").is_some(),
                sequence: number_after(data, b"\"sequence\":"),
            }
        }
        Some(b'2') => {
            // An event may carry an ack id before the array: `42<id>["name",...]`.
            let (_, used) = parse_u64(&p[1..]);
            let body = &p[1 + used..];
            if body.starts_with(b"[\"message:new\",") {
                let data = &body[15..];
                Inbound::MessageNew {
                    sequence: number_after(data, b"\"sequence\":"),
                    sent_nanos: number_after(data, b"\"content\":\"t="),
                    channel_id: string_after(data, b"\"channelId\":\""),
                }
            } else if body.starts_with(b"[\"typing:update\",") {
                let data = &body[17..];
                Inbound::TypingUpdate {
                    publisher: number_after(data, b"\"userName\":\"lg"),
                    is_typing: memmem::find(data, b"\"isTyping\":true").is_some(),
                }
            } else if body.starts_with(b"[\"") {
                let name = &body[2..];
                let end = memchr::memchr(b'"', name).unwrap_or(name.len());
                Inbound::OtherEvent(&name[..end])
            } else {
                Inbound::Other
            }
        }
        _ => Inbound::Other,
    }
}

/// Parses leading ASCII digits; returns the value (None if there are none or it overflows)
/// and how many bytes were digits.
pub fn parse_u64(b: &[u8]) -> (Option<u64>, usize) {
    let mut v: u64 = 0;
    let mut n = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            break;
        }
        match v
            .checked_mul(10)
            .and_then(|v| v.checked_add((c - b'0') as u64))
        {
            Some(x) => v = x,
            None => return (None, n),
        }
        n += 1;
    }
    (if n == 0 { None } else { Some(v) }, n)
}

/// The number right after the first occurrence of `key` in `hay`.
pub fn number_after(hay: &[u8], key: &[u8]) -> Option<u64> {
    let at = memmem::find(hay, key)? + key.len();
    parse_u64(&hay[at..]).0
}

/// The string body (up to the next `"`) right after the first occurrence of `key`, which
/// should end with the opening quote. Ids are uuids, so no escapes need handling.
pub fn string_after<'a>(hay: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let at = memmem::find(hay, key)? + key.len();
    let rest = &hay[at..];
    let end = memchr::memchr(b'"', rest)?;
    Some(&rest[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = br#"42["message:new",{"id":"0190a1b2-0000-7000-8000-000000000001","content":"t=123456789;p=3;xxxxxxxx","authorId":"a","channelId":"c0ffee00-0000-4000-8000-000000000000","conversationId":null,"sequence":42,"createdAt":"2024-01-01T00:00:00Z","deletedAt":null,"author":{"id":"a","name":"u1"}}]"#;

    #[test]
    fn message_new_yields_sequence_timestamp_and_channel() {
        match classify(MSG) {
            Inbound::MessageNew {
                sequence,
                sent_nanos,
                channel_id,
            } => {
                assert_eq!(sequence, Some(42));
                assert_eq!(sent_nanos, Some(123_456_789));
                assert_eq!(
                    channel_id,
                    Some(&b"c0ffee00-0000-4000-8000-000000000000"[..])
                );
            }
            other => panic!("not a message:new: {other:?}"),
        }
    }

    #[test]
    fn message_new_with_recovery_offset_still_parses() {
        let mut m = MSG[..MSG.len() - 1].to_vec();
        m.extend_from_slice(br#","offset-1"]"#);
        assert!(matches!(
            classify(&m),
            Inbound::MessageNew {
                sequence: Some(42),
                ..
            }
        ));
    }

    #[test]
    fn message_from_someone_else_has_no_timestamp() {
        let m = br#"42["message:new",{"content":"hello","channelId":null,"conversationId":"d","sequence":7}]"#;
        assert_eq!(
            classify(m),
            Inbound::MessageNew {
                sequence: Some(7),
                sent_nanos: None,
                channel_id: None
            }
        );
    }

    #[test]
    fn acks_yield_id_success_and_sequence() {
        let a = br#"4317[{"success":true,"messageId":"m","sequence":9001,"createdAt":"x"}]"#;
        assert_eq!(
            classify(a),
            Inbound::Ack {
                id: 17,
                success: true,
                sequence: Some(9001)
            }
        );
        let f = br#"433[{"success":false,"error":"not a member"}]"#;
        assert_eq!(
            classify(f),
            Inbound::Ack {
                id: 3,
                success: false,
                sequence: None
            }
        );
        assert_eq!(
            classify(b"43[]"),
            Inbound::Other,
            "an ack without id is not ours"
        );
    }

    #[test]
    fn engine_and_socket_control_packets() {
        assert_eq!(
            classify(br#"0{"sid":"x","pingInterval":25000}"#),
            Inbound::Open
        );
        assert_eq!(classify(b"2"), Inbound::Ping);
        assert_eq!(classify(b"1"), Inbound::Close);
        assert_eq!(classify(b"3"), Inbound::Other);
        assert_eq!(classify(br#"40{"sid":"abc"}"#), Inbound::Connected);
        assert_eq!(classify(b"41"), Inbound::Disconnect);
        assert_eq!(
            classify(br#"44{"message":"bad token"}"#),
            Inbound::ConnectError(br#"{"message":"bad token"}"#)
        );
        assert_eq!(
            classify(br#"42["presence:update",{}]"#),
            Inbound::OtherEvent(b"presence:update")
        );
    }

    #[test]
    fn typing_update_yields_publisher_and_state() {
        let t = br#"42["typing:update",{"userId":"u","userName":"lg17","targetId":"c","isTyping":true}]"#;
        assert_eq!(
            classify(t),
            Inbound::TypingUpdate {
                publisher: Some(17),
                is_typing: true
            }
        );
        let f = br#"42["typing:update",{"isTyping":false,"userName":"someone"}]"#;
        assert_eq!(
            classify(f),
            Inbound::TypingUpdate {
                publisher: None,
                is_typing: false
            }
        );
    }

    #[test]
    fn numbers_parse_and_overflow_is_refused() {
        assert_eq!(parse_u64(b"123abc"), (Some(123), 3));
        assert_eq!(parse_u64(b"x"), (None, 0));
        assert_eq!(parse_u64(b"99999999999999999999999").0, None);
        assert_eq!(number_after(b"{\"sequence\":5}", b"\"sequence\":"), Some(5));
        assert_eq!(number_after(b"{}", b"\"sequence\":"), None);
    }
}
