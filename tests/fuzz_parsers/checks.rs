//! The properties every parser input must meet, one entry point per fuzz target. Shared by
//! the property tests (`tests/fuzz_parsers/`) and the coverage-guided targets (`fuzz/`), so a
//! finding of either is a failing check of both. Each check panics, naming the input's
//! outcome, when a property does not hold; returning means the input passed.

#![allow(dead_code)]

use ocomms_rt::protocol::http::{self, HttpError, RequestHead};
use ocomms_rt::transport::websocket::{self, Opcode};
use serde_json::Value;

/// `CHAT_MAX_HEADER_BYTES` by default.
pub const MAX_HEADER_BYTES: usize = 8192;
/// `CHAT_MAX_PAYLOAD` by default: the largest packet, WebSocket frame and polling body.
pub const MAX_PAYLOAD: usize = 1_000_000;
/// `CHAT_MAX_MESSAGE_CHARS` by default.
pub const MAX_MESSAGE_CHARS: usize = 4000;
/// The longest WebSocket frame header: 2 bytes, an 8-byte length, a 4-byte mask.
pub const MAX_WS_HEADER: usize = 14;

// ---- HTTP request heads ----

/// Parses `buf` as the shard does, checking what every answer promises.
pub fn parse_head(
    buf: &[u8],
    max_header: usize,
    max_body: usize,
) -> Result<Option<(RequestHead, usize)>, HttpError> {
    let result = http::parse_head(buf, max_header, max_body);
    match &result {
        Ok(None) => assert!(
            buf.len() <= max_header,
            "{} bytes wait for more, over the {max_header}-byte head limit",
            buf.len()
        ),
        Ok(Some((head, len))) => {
            assert!(
                *len <= buf.len() && *len <= max_header,
                "head of {len} bytes"
            );
            assert!(head.content_length <= max_body, "{head:?}");
            assert!(!head.method.is_empty(), "{head:?}");
            match (&head.websocket_key, head.websocket_refusal()) {
                (Some(key), None) => assert!(!http::websocket_accept(key).is_empty()),
                (None, Some(refusal)) => http_error(&refusal),
                (None, None) => {}
                (Some(_), Some(refusal)) => panic!("accepted and refused: {refusal:?}"),
            }
            // The accessors the shard and chat call on every request.
            for name in ["sid", "EIO", "transport", "token", "workspaceId"] {
                let _ = head.query_param(name);
            }
            let _ = (head.bearer_token(), head.cookie("ocomms_session"));
            let _ = format!("{head:?}");
        }
        Err(e) => http_error(e),
    }
    result
}

/// A refusal: a status the server sends, a reason, a response that says it, and never a
/// query string echoed (it may carry `?token=…`).
pub fn http_error(e: &HttpError) {
    assert!(
        matches!(e.status, 400 | 413 | 426 | 431 | 501),
        "status {e:?}"
    );
    assert!(!e.reason.trim().is_empty(), "{e:?}");
    if e.reason.starts_with("malformed HTTP request") {
        let mut rest = e.reason.as_str();
        while let Some(at) = rest.find('?') {
            rest = &rest[at + 1..];
            assert!(rest.starts_with('…'), "query echoed: {:?}", e.reason);
        }
    }
    let response = e.to_response();
    let head = format!("HTTP/1.1 {} ", e.status);
    assert!(response.starts_with(head.as_bytes()), "{e:?}");
    let body = response
        .split(|&b| b == b'\n')
        .next_back()
        .unwrap_or_default();
    let json: Value = serde_json::from_slice(body).expect("error body is JSON");
    assert_eq!(json["error"], Value::from(e.reason.as_str()));
}

/// What a connection reads from a stream of requests: heads with their bodies, then the
/// refusal that ends it, if any.
#[derive(Debug, PartialEq)]
pub enum HttpEvent {
    /// A request and its body.
    Request(Box<RequestHead>, Vec<u8>),
    /// The refusal, after which the shard closes the connection.
    Refused(u16, String),
}

/// Feeds `chunks` as reads into one buffer and takes requests off its front as the shard
/// does: a head, then `Content-Length` bytes of body.
pub fn http_stream<'a>(
    chunks: impl IntoIterator<Item = &'a [u8]>,
    max_header: usize,
    max_body: usize,
) -> Vec<HttpEvent> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match parse_head(&buf, max_header, max_body) {
                Ok(None) => break,
                Ok(Some((head, len))) => {
                    let total = len + head.content_length;
                    if buf.len() < total {
                        assert!(buf.len() <= max_header + max_body, "buffered {}", buf.len());
                        break;
                    }
                    let body = buf[len..total].to_vec();
                    buf.drain(..total);
                    out.push(HttpEvent::Request(Box::new(head), body));
                }
                Err(e) => {
                    // The line a malformed head quotes is as much of it as has arrived.
                    let reason = match e.reason.find("; first line was") {
                        Some(at) => e.reason[..at].to_owned(),
                        None => e.reason,
                    };
                    out.push(HttpEvent::Refused(e.status, reason));
                    return out;
                }
            }
        }
    }
    out
}

/// A prefix of a head parses to "need more", to the head the whole parses to, or to a
/// refusal when the whole is refused too.
pub fn http_prefix(buf: &[u8], cut: usize, max_header: usize, max_body: usize) {
    let cut = cut.min(buf.len());
    let whole = parse_head(buf, max_header, max_body);
    let part = parse_head(&buf[..cut], max_header, max_body);
    match (&part, &whole) {
        (Ok(None), _) | (Err(_), Err(_)) => {}
        (Ok(Some(p)), Ok(Some(w))) => assert_eq!(p, w, "prefix of {cut} bytes"),
        _ => panic!("prefix of {cut} bytes: {part:?}; whole: {whole:?}"),
    }
    if let Ok(Some((_, len))) = whole {
        if cut < len {
            assert!(part.is_ok_and(|p| p.is_none()), "prefix of {cut} bytes");
        }
    }
}

/// All HTTP properties for one input: whole, split in two at `cut`, and byte by byte
/// when short, against the real limits and small ones.
pub fn http_all(buf: &[u8], cut: usize) {
    for (max_header, max_body) in [(MAX_HEADER_BYTES, MAX_PAYLOAD), (512, 64)] {
        http_prefix(buf, cut, max_header, max_body);
        let whole = http_stream([buf], max_header, max_body);
        let cut = cut.min(buf.len());
        let split = http_stream([&buf[..cut], &buf[cut..]], max_header, max_body);
        assert_eq!(whole, split, "split at {cut}");
        if buf.len() <= 600 {
            let bytes = http_stream(buf.chunks(1), max_header, max_body);
            assert_eq!(whole, bytes, "fed byte by byte");
        }
    }
}

// ---- WebSocket frames ----

/// What a connection reads from a stream of client frames.
#[derive(Debug, PartialEq, Eq)]
pub enum WsEvent {
    /// A frame and its unmasked payload.
    Frame(Opcode, bool, Vec<u8>),
    /// The close code that ends the connection.
    Refused(u16),
}

/// Decodes the frame at the start of `buf`, checking what the decoder promises.
pub fn ws_decode(buf: &mut [u8], max: usize) -> Option<Result<(WsEvent, usize), u16>> {
    let before = (buf.len() <= 4096).then(|| buf.to_vec());
    match websocket::decode(buf, max) {
        Ok(None) => {
            assert!(buf.len() < MAX_WS_HEADER + max, "{} bytes wait", buf.len());
            if let Some(before) = before {
                assert_eq!(before, buf, "an incomplete frame changed the buffer");
            }
            None
        }
        Ok(Some((frame, used))) => {
            assert_eq!(frame.payload.end, used);
            assert!(used <= buf.len() && frame.payload.len() <= max, "{frame:?}");
            assert!(used - frame.payload.len() <= MAX_WS_HEADER, "{frame:?}");
            let control = matches!(frame.opcode, Opcode::Close | Opcode::Ping | Opcode::Pong);
            assert!(
                !control || (frame.fin && frame.payload.len() <= 125),
                "{frame:?}"
            );
            let payload = buf[frame.payload.clone()].to_vec();
            Some(Ok((WsEvent::Frame(frame.opcode, frame.fin, payload), used)))
        }
        Err(e) => {
            assert!(matches!(e.code, 1002 | 1009), "{e:?}");
            assert!(!e.reason.is_empty(), "{e:?}");
            assert!(!websocket::close(e.code, &e.reason).is_empty());
            Some(Err(e.code))
        }
    }
}

/// Feeds `chunks` as reads and takes frames off the buffer's front as the shard does.
pub fn ws_stream<'a>(chunks: impl IntoIterator<Item = &'a [u8]>, max: usize) -> Vec<WsEvent> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        while let Some(found) = ws_decode(&mut buf, max) {
            match found {
                Ok((event, used)) => {
                    buf.drain(..used);
                    out.push(event);
                }
                Err(code) => {
                    out.push(WsEvent::Refused(code));
                    return out;
                }
            }
        }
    }
    out
}

/// The frame limits fuzzed: the edges of the 7- and 16-bit lengths, and the default.
pub const WS_LIMITS: [usize; 5] = [64, 125, 126, 65_536, MAX_PAYLOAD];

/// All WebSocket properties for one input: the decoded stream is the same whole, split at
/// `cut` and (when short) byte by byte.
pub fn ws_all(bytes: &[u8], cut: usize, max: usize) {
    let whole = ws_stream([bytes], max);
    let cut = cut.min(bytes.len());
    assert_eq!(
        whole,
        ws_stream([&bytes[..cut], &bytes[cut..]], max),
        "cut {cut}"
    );
    if bytes.len() <= 600 {
        assert_eq!(whole, ws_stream(bytes.chunks(1), max), "byte by byte");
    }
}

/// A server frame from `websocket::text` / `pong` / `close` as a client sends it: the mask
/// bit set, `key` after the length, the payload masked.
pub fn mask_frame(frame: &[u8], key: [u8; 4]) -> Vec<u8> {
    let extra = match frame[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let header = 2 + extra;
    let mut out = frame[..header].to_vec();
    out[1] |= 0x80;
    out.extend_from_slice(&key);
    out.extend(
        frame[header..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4]),
    );
    out
}

/// decode(mask(encode(payload))) gives the payload back, for each server encoder.
pub fn ws_round_trip(payload: &[u8], key: [u8; 4]) {
    let max = payload.len().max(125);
    let mut text = mask_frame(&websocket::text(payload), key);
    let event = WsEvent::Frame(Opcode::Text, true, payload.to_vec());
    assert_eq!(ws_decode(&mut text, max), Some(Ok((event, text.len()))));
    let short = &payload[..payload.len().min(125)];
    let mut pong = mask_frame(&websocket::pong(short), key);
    let event = WsEvent::Frame(Opcode::Pong, true, short.to_vec());
    assert_eq!(ws_decode(&mut pong, max), Some(Ok((event, pong.len()))));
    let reason = String::from_utf8_lossy(payload);
    let mut close = mask_frame(&websocket::close(1000, &reason), key);
    match ws_decode(&mut close, max) {
        Some(Ok((WsEvent::Frame(Opcode::Close, true, body), _))) => {
            assert_eq!(body[..2], 1000u16.to_be_bytes());
            assert!(reason.as_bytes().starts_with(&body[2..]), "reason cut off");
            assert!(
                std::str::from_utf8(&body[2..]).is_ok(),
                "reason cut in a char"
            );
        }
        other => panic!("close frame decoded as {other:?}"),
    }
}

// ---- Driving the checks from raw bytes (the coverage-guided targets) ----

/// A number drawn from the input itself, so a seed file is a target's input as it is.
pub fn pick(data: &[u8]) -> usize {
    data.iter().map(|&b| usize::from(b)).sum()
}

/// Every HTTP property for `data`.
pub fn fuzz_http(data: &[u8]) {
    http_all(data, pick(data) % (data.len() + 1));
}

/// Every WebSocket property for `data` as a stream of client frames.
pub fn fuzz_ws(data: &[u8]) {
    let n = pick(data);
    ws_all(data, n % (data.len() + 1), WS_LIMITS[n % WS_LIMITS.len()]);
    if let Some(key) = data.get(..4) {
        ws_round_trip(&data[4..], key.try_into().unwrap_or_default());
    }
}
