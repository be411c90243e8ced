//! Client-side WebSocket framing (RFC 6455 §5), written by hand so the receive path stays a
//! header parse and a slice: no allocation per frame, no unmasking of server frames (servers
//! never mask), and masking only on the few small frames the client sends ("The client MUST
//! mask all frames that it sends to the server", §5.1).

/// Continuation frame opcode (§5.2).
pub const OP_CONT: u8 = 0x0;
/// Text frame opcode.
pub const OP_TEXT: u8 = 0x1;
/// Binary frame opcode.
pub const OP_BINARY: u8 = 0x2;
/// Close frame opcode.
pub const OP_CLOSE: u8 = 0x8;
/// Ping frame opcode.
pub const OP_PING: u8 = 0x9;
/// Pong frame opcode.
pub const OP_PONG: u8 = 0xA;

/// The parsed header of one frame at the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    /// FIN bit: the last fragment of a message.
    pub fin: bool,
    /// Opcode (low 4 bits of the first byte).
    pub opcode: u8,
    /// Bytes of header, including extended length and masking key.
    pub header_len: usize,
    /// Bytes of payload following the header.
    pub payload_len: usize,
    /// Masking key, when the MASK bit is set (servers must not set it, but we tolerate it).
    pub mask: Option<[u8; 4]>,
}

impl FrameHead {
    /// Header plus payload: how far the buffer advances past this frame.
    pub fn total_len(&self) -> usize {
        self.header_len + self.payload_len
    }
}

/// A frame header that breaks RFC 6455 or our limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// RSV bits set without a negotiated extension (§5.2: "MUST be 0 unless an extension is negotiated").
    ReservedBits(u8),
    /// A payload longer than the caller's limit.
    TooLong(u64),
    /// A control frame that is fragmented or longer than 125 bytes (§5.5).
    BadControl,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::ReservedBits(b) => {
                write!(f, "frame has reserved bits set (first byte {b:#04x})")
            }
            FrameError::TooLong(n) => {
                write!(f, "frame payload of {n} bytes exceeds the receive limit")
            }
            FrameError::BadControl => write!(f, "control frame fragmented or over 125 bytes"),
        }
    }
}

/// Parses the header at the front of `buf`. `Ok(None)` means more bytes are needed (the
/// header itself or the payload it announces); a returned head always fits in `buf`.
pub fn parse_frame(buf: &[u8], max_payload: usize) -> Result<Option<FrameHead>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    if b0 & 0x70 != 0 {
        return Err(FrameError::ReservedBits(b0));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    let masked = b1 & 0x80 != 0;
    let len7 = (b1 & 0x7F) as u64;
    let (len, mut pos) = match len7 {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        n => (n, 2),
    };
    if opcode & 0x8 != 0 && (!fin || len > 125) {
        return Err(FrameError::BadControl);
    }
    if len > max_payload as u64 {
        return Err(FrameError::TooLong(len));
    }
    let mask = if masked {
        if buf.len() < pos + 4 {
            return Ok(None);
        }
        let k = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
        pos += 4;
        Some(k)
    } else {
        None
    };
    let head = FrameHead {
        fin,
        opcode,
        header_len: pos,
        payload_len: len as usize,
        mask,
    };
    if buf.len() < head.total_len() {
        return Ok(None);
    }
    Ok(Some(head))
}

/// XORs `data` with the 4-byte masking key (§5.3: octet i is XOR'd with key octet i MOD 4).
/// The same call masks and unmasks.
pub fn apply_mask(data: &mut [u8], key: [u8; 4]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

/// Appends one final, masked client frame with `opcode` and `payload` to `out`.
pub fn encode_client(opcode: u8, payload: &[u8], key: [u8; 4], out: &mut Vec<u8>) {
    out.push(0x80 | (opcode & 0x0F));
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&key);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], key);
}

/// A small, fast, non-cryptographic generator for masking keys and handshake nonces. RFC 6455
/// asks for unpredictable keys to protect intermediaries; a load generator on loopback only
/// needs them to be well formed.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// Seeds the generator; a zero seed is replaced because xorshift would stay at zero.
    pub fn new(seed: u64) -> Self {
        XorShift(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next 64 pseudo-random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A fresh masking key.
    pub fn mask_key(&mut self) -> [u8; 4] {
        (self.next_u64() as u32).to_ne_bytes()
    }
}

/// The HTTP/1.1 upgrade request for Engine.IO's WebSocket transport; `key` is 16 random bytes
/// that go base64-encoded into `Sec-WebSocket-Key` (§4.1).
pub fn upgrade_request(host: &str, key: [u8; 16]) -> Vec<u8> {
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD.encode(key);
    format!(
        "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// Looks for the end of the HTTP response head in `buf`. Returns `Ok(Some(len))` with the
/// head's length when it is a `101` response, `Ok(None)` if incomplete, and `Err(status line)`
/// for any other response.
pub fn parse_upgrade_response(buf: &[u8]) -> Result<Option<usize>, String> {
    let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let line_end = memchr::memmem::find(buf, b"\r\n").unwrap_or(end);
    let line = &buf[..line_end];
    if line.starts_with(b"HTTP/1.1 101") || line.starts_with(b"HTTP/1.0 101") {
        Ok(Some(end + 4))
    } else {
        Err(String::from_utf8_lossy(line).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking_twice_restores_the_payload() {
        let mut d = b"hello, world".to_vec();
        let key = [1, 2, 3, 0xFF];
        apply_mask(&mut d, key);
        assert_ne!(&d, b"hello, world");
        assert_eq!(d[0], b'h' ^ 1);
        assert_eq!(d[4], b'o' ^ 1, "octet i uses key octet i mod 4");
        apply_mask(&mut d, key);
        assert_eq!(&d, b"hello, world");
    }

    #[test]
    fn client_frame_round_trips_through_the_parser() {
        let key = [0xA, 0xB, 0xC, 0xD];
        for len in [0usize, 5, 125, 126, 300, 65_535, 65_536] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut out = Vec::new();
            encode_client(OP_TEXT, &payload, key, &mut out);
            assert_eq!(out[0], 0x81);
            assert!(out[1] & 0x80 != 0, "client frames carry the MASK bit");
            let head = parse_frame(&out, 1 << 20).unwrap().unwrap();
            assert_eq!(head.payload_len, len);
            assert_eq!(head.mask, Some(key));
            assert_eq!(head.total_len(), out.len());
            let mut body = out[head.header_len..].to_vec();
            apply_mask(&mut body, key);
            assert_eq!(body, payload, "len {len}");
        }
    }

    #[test]
    fn server_frames_parse_without_mask_and_report_incomplete() {
        let mut f = vec![0x81, 3, b'4', b'0', b'{'];
        f.extend_from_slice(&[0x89, 0]);
        let h = parse_frame(&f, 100).unwrap().unwrap();
        assert_eq!(
            (h.fin, h.opcode, h.header_len, h.payload_len, h.mask),
            (true, OP_TEXT, 2, 3, None)
        );
        let h2 = parse_frame(&f[h.total_len()..], 100).unwrap().unwrap();
        assert_eq!(h2.opcode, OP_PING);
        assert_eq!(
            parse_frame(&f[..4], 100),
            Ok(None),
            "payload not all here yet"
        );
        assert_eq!(
            parse_frame(&[0x81, 126, 1], 100),
            Ok(None),
            "extended length not all here"
        );
        let mut long = vec![0x81, 126, 0x01, 0x2C];
        long.extend_from_slice(&[b'x'; 300]);
        assert_eq!(parse_frame(&long, 1000).unwrap().unwrap().payload_len, 300);
    }

    #[test]
    fn bad_frames_are_refused() {
        assert_eq!(
            parse_frame(&[0xC1, 0], 10),
            Err(FrameError::ReservedBits(0xC1))
        );
        assert_eq!(parse_frame(&[0x81, 11], 10), Err(FrameError::TooLong(11)));
        assert_eq!(
            parse_frame(&[0x09, 0], 10),
            Err(FrameError::BadControl),
            "fragmented ping"
        );
        assert_eq!(
            parse_frame(&[0x89, 126, 0, 200], 1000),
            Err(FrameError::BadControl)
        );
    }

    #[test]
    fn upgrade_response_is_recognised() {
        let ok = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x01x";
        assert_eq!(parse_upgrade_response(ok), Ok(Some(ok.len() - 3)));
        assert_eq!(parse_upgrade_response(b"HTTP/1.1 101 Switching"), Ok(None));
        let err = parse_upgrade_response(b"HTTP/1.1 400 Bad Request\r\n\r\n").unwrap_err();
        assert_eq!(err, "HTTP/1.1 400 Bad Request");
    }

    #[test]
    fn upgrade_request_carries_a_16_byte_key() {
        let r = String::from_utf8(upgrade_request("127.0.0.1:3000", [0; 16])).unwrap();
        assert!(r.starts_with("GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"));
        assert!(r.contains("Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n"));
        assert!(r.ends_with("\r\n\r\n"));
    }
}
