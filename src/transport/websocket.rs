//! The WebSocket codec (RFC 6455), both directions, on tungstenite's frame header codec.
//!
//! Client frames are decoded in place from whatever buffer holds the bytes, so an idle
//! connection owns no read buffer at all (tungstenite's own `WebSocket` keeps one per socket,
//! too much for hundreds of thousands of them). Server frames are encoded whole into shared
//! [`Bytes`], so a broadcast framed once is queued on every recipient without a copy. Server
//! frames are never masked (RFC 6455 §5.1: "A server MUST NOT mask any frames that it sends
//! to the client"): a frame is the header from `FrameHeader::format` and the payload as is.

use std::io::Cursor;
use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// Kind of a decoded frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opcode {
    /// UTF-8 data (first fragment or whole message).
    Text,
    /// Binary data.
    Binary,
    /// A later fragment of a fragmented message.
    Continuation,
    /// Close handshake.
    Close,
    /// Ping; answered with a pong carrying the same payload.
    Ping,
    /// Pong; ignored.
    Pong,
}

/// One decoded, unmasked frame: where its payload sits in the buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameRef {
    /// Frame kind.
    pub opcode: Opcode,
    /// Last fragment of its message.
    pub fin: bool,
    /// Payload bytes within the buffer passed to [`decode`].
    pub payload: Range<usize>,
}

/// A frame the client should not have sent; closes the connection with `code`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WsError {
    /// RFC 6455 close code: 1002 protocol error, 1009 too big.
    pub code: u16,
    /// Why, for the close frame and the log.
    pub reason: String,
}

fn protocol_error(reason: impl Into<String>) -> WsError {
    WsError {
        code: 1002,
        reason: reason.into(),
    }
}

/// Decodes the frame at the start of `buf`, unmasking its payload in place. `Ok(None)` means
/// the frame is not complete yet (nothing is consumed). On success returns the frame and the
/// number of bytes it took.
///
/// # Errors
/// A frame longer than `max_payload` (1009), an unmasked client frame ("a client MUST mask
/// all frames that it sends to the server", RFC 6455 §5.1), reserved bits or opcodes, and
/// fragmented or oversized control frames (1002).
pub fn decode(buf: &mut [u8], max_payload: usize) -> Result<Option<(FrameRef, usize)>, WsError> {
    let mut cursor = Cursor::new(&buf[..]);
    let (header, len) = match FrameHeader::parse(&mut cursor) {
        Ok(Some(h)) => h,
        // Not even a whole header yet.
        Ok(None) => return Ok(None),
        Err(e) => return Err(protocol_error(format!("bad frame header: {e}"))),
    };
    let start = cursor.position() as usize;
    if len > max_payload as u64 {
        return Err(WsError {
            code: 1009,
            reason: format!("frame of {len} bytes is over the {max_payload}-byte limit"),
        });
    }
    if header.rsv1 || header.rsv2 || header.rsv3 {
        return Err(protocol_error(
            "reserved bits set without a negotiated extension",
        ));
    }
    let opcode = match header.opcode {
        OpCode::Data(Data::Text) => Opcode::Text,
        OpCode::Data(Data::Binary) => Opcode::Binary,
        OpCode::Data(Data::Continue) => Opcode::Continuation,
        OpCode::Control(Control::Close) => Opcode::Close,
        OpCode::Control(Control::Ping) => Opcode::Ping,
        OpCode::Control(Control::Pong) => Opcode::Pong,
        OpCode::Data(Data::Reserved(op)) | OpCode::Control(Control::Reserved(op)) => {
            return Err(protocol_error(format!("reserved opcode {op:#x}")))
        }
    };
    let is_control = matches!(opcode, Opcode::Close | Opcode::Ping | Opcode::Pong);
    if is_control && (!header.is_final || len > 125) {
        // RFC 6455 §5.5: "All control frames MUST have a payload length of 125 bytes or less
        // and MUST NOT be fragmented."
        return Err(protocol_error(
            "control frame fragmented or longer than 125 bytes",
        ));
    }
    let Some(mask) = header.mask else {
        return Err(protocol_error("client frame is not masked"));
    };
    let end = start + len as usize;
    if buf.len() < end {
        // The payload has not all arrived.
        return Ok(None);
    }
    unmask(&mut buf[start..end], mask);
    Ok(Some((
        FrameRef {
            opcode,
            fin: header.is_final,
            payload: start..end,
        },
        end,
    )))
}

/// XORs `data` with the 4-byte masking key (RFC 6455 §5.3).
pub fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = data.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let v = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

/// Longest WebSocket header a server writes (no mask): 2 + 8 bytes.
const MAX_HEADER: usize = 10;

/// One final, unmasked frame of `opcode` carrying `payload`.
fn encode(opcode: OpCode, payload: &[u8]) -> Bytes {
    let header = FrameHeader {
        opcode,
        ..FrameHeader::default()
    };
    let mut out = BytesMut::with_capacity(MAX_HEADER + payload.len());
    let mut writer = (&mut out).writer();
    // Writing into a BytesMut cannot fail.
    header
        .format(payload.len() as u64, &mut writer)
        .expect("in-memory write");
    out.put_slice(payload);
    out.freeze()
}

/// Wraps `payload` (UTF-8 text: one Engine.IO packet) in one final, unmasked text frame.
pub fn text(payload: &[u8]) -> Bytes {
    encode(OpCode::Data(Data::Text), payload)
}

/// A pong answering a ping with `payload`.
pub fn pong(payload: &[u8]) -> Bytes {
    encode(OpCode::Control(Control::Pong), payload)
}

/// A close frame with a status code and a reason (cut to fit 125 bytes on a char boundary).
pub fn close(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode(OpCode::Control(Control::Close), &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut f = vec![first];
        if payload.len() < 126 {
            f.push(0x80 | payload.len() as u8);
        } else {
            f.push(0x80 | 126);
            f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    #[test]
    fn decodes_a_masked_text_frame_in_place() {
        // RFC 6455 §5.7: a single-frame masked text message "Hello".
        let mut buf = vec![
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let (frame, used) = decode(&mut buf, 100).unwrap().unwrap();
        assert_eq!(frame.opcode, Opcode::Text);
        assert!(frame.fin);
        assert_eq!(used, 11);
        assert_eq!(&buf[frame.payload], b"Hello");
    }

    #[test]
    fn partial_frames_consume_nothing() {
        let full = client_frame(0x81, b"42[\"a\"]", [1, 2, 3, 4]);
        for cut in 0..full.len() {
            let mut part = full[..cut].to_vec();
            assert_eq!(decode(&mut part, 100).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn refuses_what_a_client_must_not_send() {
        let mut unmasked = vec![0x81, 0x02, b'h', b'i'];
        assert_eq!(decode(&mut unmasked, 100).unwrap_err().code, 1002);
        let mut big = client_frame(0x81, &[b'x'; 300], [9, 9, 9, 9]);
        let err = decode(&mut big, 200).unwrap_err();
        assert_eq!(err.code, 1009);
        assert!(err.reason.contains("300"), "{}", err.reason);
        let mut rsv = client_frame(0xC1, b"x", [1, 1, 1, 1]);
        assert_eq!(decode(&mut rsv, 100).unwrap_err().code, 1002);
        let mut fragmented_ping = client_frame(0x09, b"x", [1, 1, 1, 1]);
        assert_eq!(decode(&mut fragmented_ping, 100).unwrap_err().code, 1002);
        let mut reserved = client_frame(0x83, b"x", [1, 1, 1, 1]);
        assert_eq!(decode(&mut reserved, 100).unwrap_err().code, 1002);
    }

    #[test]
    fn close_frame_carries_code_and_short_reason() {
        let f = close(1001, &"é".repeat(100));
        assert_eq!(f[0], 0x88);
        assert!(f[1] <= 125);
        assert_eq!(u16::from_be_bytes([f[2], f[3]]), 1001);
        assert!(std::str::from_utf8(&f[4..]).is_ok());
        assert_eq!(&pong(b"ab")[..], &[0x8A, 2, b'a', b'b']);
    }

    #[test]
    fn small_text_frame_has_a_two_byte_header() {
        let payload = br#"42["typing:update",{"isTyping":true}]"#;
        let f = text(payload);
        assert_eq!(f[0], 0x81, "FIN + text opcode");
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
    fn unmask_matches_the_bytewise_rule() {
        let mask = [0xde, 0xad, 0xbe, 0xef];
        let data: Vec<u8> = (0u8..=250).collect();
        let mut fast = data.clone();
        unmask(&mut fast, mask);
        let slow: Vec<u8> = data
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        assert_eq!(fast, slow);
    }
}
