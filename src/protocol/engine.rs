//! Engine.IO v4 packets as they travel in WebSocket text frames: one packet per frame, a
//! type digit followed by the payload ("Each Engine.IO packet is sent in its own WebSocket
//! frame. Format: `<packet type>[<data>]`"). Decoding borrows the payload from the frame.

use std::fmt::Write as _;

use crate::config::EngineLimits;

use super::error::ProtocolError;

/// One Engine.IO v4 packet, borrowing its payload from the received text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnginePacket<'a> {
    /// `0`: handshake; only servers send it.
    Open,
    /// `1`: the sender is closing the transport.
    Close,
    /// `2`: heartbeat request; `2probe` during the upgrade from polling.
    Ping(&'a str),
    /// `3`: heartbeat answer, echoing the ping's payload.
    Pong(&'a str),
    /// `4`: a Socket.IO packet (see [`super::packet`]).
    Message(&'a str),
    /// `5`: the client completes the upgrade to WebSocket.
    Upgrade(&'a str),
    /// `6`: no operation, used to end a pending poll during the upgrade.
    Noop,
}

/// Decodes one Engine.IO packet from the text of one WebSocket frame.
///
/// Payloads of `open`, `close` and `noop` are ignored, as the reference parser does.
///
/// # Errors
/// [`ProtocolError::Malformed`] for an empty text or an unknown type digit;
/// [`ProtocolError::BinaryUnsupported`] for a base64 binary packet (`b…`).
pub fn decode(text: &str) -> Result<EnginePacket<'_>, ProtocolError> {
    let Some(&kind) = text.as_bytes().first() else {
        return Err(ProtocolError::Malformed(
            "empty Engine.IO packet; a packet starts with a type digit 0-6".into(),
        ));
    };
    // The first byte is an ASCII digit in every accepted case, so slicing at 1 is on a
    // character boundary; other first bytes are refused before slicing.
    let payload = || &text[1..];
    match kind {
        b'0' => Ok(EnginePacket::Open),
        b'1' => Ok(EnginePacket::Close),
        b'2' => Ok(EnginePacket::Ping(payload())),
        b'3' => Ok(EnginePacket::Pong(payload())),
        b'4' => Ok(EnginePacket::Message(payload())),
        b'5' => Ok(EnginePacket::Upgrade(payload())),
        b'6' => Ok(EnginePacket::Noop),
        // "Binary payloads MUST be base64-encoded and prefixed with a `b` character".
        b'b' => Err(ProtocolError::BinaryUnsupported),
        _ => Err(ProtocolError::Malformed(format!(
            "unknown Engine.IO packet type {:?}; expected a digit 0-6",
            text.chars().next().unwrap_or_default()
        ))),
    }
}

/// The open packet the server sends first on a new session:
/// `0{"sid":"…","upgrades":[…],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}`.
pub fn open_packet(sid: &str, limits: &EngineLimits, upgrades: &[&str]) -> String {
    let mut out = String::with_capacity(112 + sid.len());
    out.push_str("0{\"sid\":");
    push_json_str(&mut out, sid);
    out.push_str(",\"upgrades\":[");
    for (i, upgrade) in upgrades.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_str(&mut out, upgrade);
    }
    // Writing into a String cannot fail.
    let _ = write!(
        out,
        "],\"pingInterval\":{},\"pingTimeout\":{},\"maxPayload\":{}}}",
        limits.ping_interval.as_millis(),
        limits.ping_timeout.as_millis(),
        limits.max_payload
    );
    out
}

/// Appends `s` as a JSON string literal (quoted and escaped).
fn push_json_str(out: &mut String, s: &str) {
    // A str always serialises; serde_json escapes quotes, backslashes and controls.
    match serde_json::to_string(s) {
        Ok(quoted) => out.push_str(&quoted),
        Err(_) => out.push_str("\"\""),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn decodes_every_packet_type_from_the_spec() {
        assert_eq!(decode("0").unwrap(), EnginePacket::Open);
        assert_eq!(decode("1").unwrap(), EnginePacket::Close);
        assert_eq!(decode("2").unwrap(), EnginePacket::Ping(""));
        assert_eq!(decode("2probe").unwrap(), EnginePacket::Ping("probe"));
        assert_eq!(decode("3probe").unwrap(), EnginePacket::Pong("probe"));
        assert_eq!(decode("4hello").unwrap(), EnginePacket::Message("hello"));
        assert_eq!(
            decode("42[\"foo\"]").unwrap(),
            EnginePacket::Message("2[\"foo\"]")
        );
        assert_eq!(decode("5").unwrap(), EnginePacket::Upgrade(""));
        assert_eq!(decode("6").unwrap(), EnginePacket::Noop);
        assert_eq!(decode("4€").unwrap(), EnginePacket::Message("€"));
    }

    #[test]
    fn refuses_empty_unknown_and_binary() {
        assert!(matches!(decode(""), Err(ProtocolError::Malformed(_))));
        let e = decode("7").unwrap_err();
        assert!(e.to_string().contains("'7'"), "{e}");
        assert!(matches!(decode("abc"), Err(ProtocolError::Malformed(_))));
        assert!(matches!(decode("€"), Err(ProtocolError::Malformed(_))));
        assert_eq!(decode("bAQIDBA=="), Err(ProtocolError::BinaryUnsupported));
    }

    #[test]
    fn open_packet_matches_the_handshake_example() {
        let limits = EngineLimits::default();
        assert_eq!(
            open_packet("lv_VI97HAXpY6yYWAAAC", &limits, &[]),
            r#"0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#
        );
        let limits = EngineLimits {
            ping_interval: Duration::from_millis(300),
            ping_timeout: Duration::from_millis(200),
            max_payload: 1000,
            ..EngineLimits::default()
        };
        let open = open_packet("a\"b", &limits, &["websocket"]);
        assert_eq!(
            open,
            r#"0{"sid":"a\"b","upgrades":["websocket"],"pingInterval":300,"pingTimeout":200,"maxPayload":1000}"#
        );
        let json: serde_json::Value = serde_json::from_str(&open[1..]).unwrap();
        assert_eq!(json["sid"], "a\"b");
    }
}
