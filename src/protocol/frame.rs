//! Encoding server-to-client packets into whole WebSocket frames, once, as shared
//! [`Bytes`]: a broadcast is built here and the same bytes are queued on every recipient.
//!
//! Server frames are never masked (RFC 6455 §5.1: "A server MUST NOT mask any frames that it
//! sends to the client"), so a frame is the header from tungstenite's `FrameHeader::format`
//! followed by the payload unchanged.

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// Longest WebSocket header a server writes (no mask): 2 + 8 bytes.
const MAX_HEADER: usize = 10;

/// Wraps `payload` (UTF-8 text) in one final, unmasked text frame.
pub fn text(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(MAX_HEADER + payload.len());
    text_header(payload.len(), &mut out);
    out.put_slice(payload);
    out.freeze()
}

/// Writes the header of a final, unmasked text frame of `len` bytes.
pub fn text_header(len: usize, out: &mut BytesMut) {
    let header = FrameHeader {
        opcode: OpCode::Data(Data::Text),
        ..FrameHeader::default()
    };
    let mut writer = out.writer();
    // Writing into a BytesMut cannot fail.
    header
        .format(len as u64, &mut writer)
        .expect("in-memory write");
}

/// The Engine.IO + Socket.IO text of an event on the main namespace:
/// `42["name",data]`, or `42["name",data,"offset"]` when connection state recovery tags it.
pub fn event_text(name: &str, data: &impl Serialize, offset: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b"42[");
    // Serialising a str or a Serialize value into a Vec cannot fail unless the value's own
    // Serialize impl fails, which ours never do.
    serde_json::to_writer(&mut out, name).expect("event name serialises");
    out.push(b',');
    serde_json::to_writer(&mut out, data).expect("event data serialises");
    if let Some(offset) = offset {
        out.push(b',');
        serde_json::to_writer(&mut out, offset).expect("offset serialises");
    }
    out.push(b']');
    out
}

/// A whole WebSocket frame carrying a Socket.IO event (see [`event_text`]).
pub fn event(name: &str, data: &impl Serialize, offset: Option<&str>) -> Bytes {
    text(&event_text(name, data, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_event_frame_has_a_two_byte_header() {
        let f = event(
            "typing:update",
            &serde_json::json!({"isTyping": true}),
            None,
        );
        assert_eq!(f[0], 0x81, "FIN + text opcode");
        let payload = br#"42["typing:update",{"isTyping":true}]"#;
        assert_eq!(f[1] as usize, payload.len(), "7-bit length, no mask bit");
        assert_eq!(&f[2..], payload);
    }

    #[test]
    fn long_frames_use_extended_lengths() {
        let f = text(&vec![b'a'; 300]);
        assert_eq!(f[1], 126);
        assert_eq!(u16::from_be_bytes([f[2], f[3]]), 300);
        assert_eq!(f.len(), 4 + 300);
        let f = text(&vec![b'a'; 70_000]);
        assert_eq!(f[1], 127);
        assert_eq!(u64::from_be_bytes(f[2..10].try_into().unwrap()), 70_000);
    }

    #[test]
    fn offset_is_the_last_argument() {
        let t = event_text("message:new", &1, Some("abc"));
        assert_eq!(t, br#"42["message:new",1,"abc"]"#);
    }
}
