//! Engine.IO v4 HTTP long-polling, the sans-IO parts: how packets are joined into and split
//! out of a payload, and the answers of the protocol (with CORS headers for browser apps).
//!
//! "With the HTTP long-polling transport, the client sends multiple packets in a single
//! payload, separated by the record separator (`\x1e`)" — both directions use that form.

use std::fmt::Write as _;

use bytes::Bytes;

use super::http::{reason_phrase, RequestHead};

/// The record separator between packets of one payload.
pub const SEPARATOR: u8 = 0x1e;

/// Content type of every polling payload and of the `ok` answer to a POST.
pub const TEXT_PLAIN: &str = "text/plain; charset=UTF-8";

/// The packets of a POST body, in order. Empty packets (a trailing separator) are skipped.
pub fn split_payload(body: &str) -> impl Iterator<Item = &str> {
    body.split(char::from(SEPARATOR)).filter(|p| !p.is_empty())
}

/// Joins packets into one GET payload: `p1 \x1e p2 \x1e … pn`.
pub fn join_payload<'a>(packets: impl IntoIterator<Item = &'a Bytes>) -> Vec<u8> {
    let mut body = Vec::new();
    for packet in packets {
        if !body.is_empty() {
            body.push(SEPARATOR);
        }
        body.extend_from_slice(packet);
    }
    body
}

/// The origin to echo in `Access-Control-Allow-Origin`, when the request's `Origin` is one
/// of `allowed` (exact match, as browsers send it: `scheme://host[:port]`).
pub fn allowed_origin(head: &RequestHead, allowed: &[String]) -> Option<Box<str>> {
    let origin = head.header("origin")?;
    allowed
        .iter()
        .any(|a| a == origin)
        .then(|| Box::from(origin))
}

/// A complete response with the CORS headers for `origin` when it is allowed. Credentials
/// are allowed, as the session cookie of the web app rides on these requests; so the origin
/// is echoed, never `*` (which browsers refuse with credentials).
pub fn response(
    status: u16,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
    origin: Option<&str>,
) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason_phrase(status));
    // Writing into a String cannot fail.
    if let Some(origin) = origin {
        let _ = write!(
            head,
            "Access-Control-Allow-Origin: {origin}\r\nAccess-Control-Allow-Credentials: true\r\nVary: Origin\r\n"
        );
    }
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let _ = write!(
        head,
        "Content-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: {connection}\r\n\r\n",
        body.len()
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// The answer to a CORS preflight (`OPTIONS`): 204 with the methods and headers a polling
/// client uses, for an allowed origin; without CORS headers otherwise (the browser then
/// refuses the real request).
pub fn preflight(head: &RequestHead, origin: Option<&str>, keep_alive: bool) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 204 {}\r\n", reason_phrase(204));
    if let Some(origin) = origin {
        let headers = head
            .header("access-control-request-headers")
            .unwrap_or("content-type");
        let _ = write!(
            out,
            "Access-Control-Allow-Origin: {origin}\r\nAccess-Control-Allow-Credentials: true\r\n\
             Access-Control-Allow-Methods: GET, POST, OPTIONS\r\nAccess-Control-Allow-Headers: {headers}\r\n\
             Access-Control-Max-Age: 86400\r\nVary: Origin\r\n"
        );
    }
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let _ = write!(out, "Content-Length: 0\r\nConnection: {connection}\r\n\r\n");
    out.into_bytes()
}

/// An Engine.IO error answer on `/socket.io/`, whichever the transport: 400 with
/// `{"code":…,"message":…}` as the reference server sends (codes: 0 transport unknown, 1
/// session id unknown, 2 bad handshake method, 3 bad request, 5 unsupported protocol version).
pub fn engine_error(code: u8, message: &str, origin: Option<&str>) -> Vec<u8> {
    let body = serde_json::json!({"code": code, "message": message}).to_string();
    response(400, "application/json", body.as_bytes(), false, origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_join_use_the_record_separator() {
        let packets: Vec<&str> = split_payload("40{\"token\":\"x\"}\x1e42[\"a\"]\x1e3").collect();
        assert_eq!(packets, vec!["40{\"token\":\"x\"}", "42[\"a\"]", "3"]);
        assert_eq!(split_payload("2\x1e").collect::<Vec<_>>(), vec!["2"]);
        let q = [Bytes::from_static(b"2"), Bytes::from_static(b"42[\"b\"]")];
        assert_eq!(join_payload(&q), b"2\x1e42[\"b\"]");
        assert_eq!(join_payload(&q[..1]), b"2");
        assert!(join_payload(&[]).is_empty());
    }

    #[test]
    fn responses_carry_cors_only_for_an_allowed_origin() {
        let r =
            String::from_utf8(response(200, TEXT_PLAIN, b"ok", true, Some("http://a"))).unwrap();
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(r.contains("Access-Control-Allow-Origin: http://a\r\n"));
        assert!(r.contains("Access-Control-Allow-Credentials: true\r\n"));
        assert!(r.contains("Content-Type: text/plain; charset=UTF-8\r\n"));
        assert!(r.ends_with("\r\n\r\nok"));
        let r = String::from_utf8(response(200, TEXT_PLAIN, b"ok", true, None)).unwrap();
        assert!(!r.contains("Access-Control"));
        let e = String::from_utf8(engine_error(1, "Session ID unknown", None)).unwrap();
        assert!(e.starts_with("HTTP/1.1 400 "));
        assert!(e.ends_with(r#"{"code":1,"message":"Session ID unknown"}"#));
    }
}
