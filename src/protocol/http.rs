//! HTTP/1.1 request heads and the few responses this server writes, free of IO.
//!
//! The shard feeds the bytes it has read so far to [`parse_head`]; "not enough bytes yet" is
//! `Ok(None)`, never an error. A complete head becomes a [`RequestHead`] with lowercased
//! header names, the keep-alive decision and, for a valid RFC 6455 opening handshake, the
//! `Sec-WebSocket-Key` to answer with [`websocket_accept`]. Everything the peer got wrong is
//! an [`HttpError`] carrying the status to answer and a reason a person can act on.

use std::fmt;

/// Header fields read from one request; more is answered with 431.
const MAX_HEADERS: usize = 64;

/// A parsed request head. The body (if any) follows it in the buffer.
///
/// Its `Debug` output hides the values of `Authorization` and `Cookie`, so logging a head
/// never logs a credential.
#[derive(Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// `GET`, `POST`, … as sent (methods are case-sensitive, RFC 9110 §9.1).
    pub method: String,
    /// The path, without the query (and without scheme and authority for absolute-form targets).
    pub path: String,
    /// What follows the first `?`, still percent-encoded; empty when there is none.
    pub query: String,
    /// Header fields in order, names lowercased, values trimmed.
    pub headers: Vec<(String, String)>,
    /// `Content-Length`, 0 when absent.
    pub content_length: usize,
    /// Whether the connection stays open after the response: HTTP/1.1 unless
    /// `Connection: close`, HTTP/1.0 only with `Connection: keep-alive`.
    pub keep_alive: bool,
    /// `Sec-WebSocket-Key` when the request is a valid WebSocket opening handshake.
    pub websocket_key: Option<String>,
}

/// A request the server refuses: the status to answer and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpError {
    /// 400, 413, 426, 431 or 501.
    pub status: u16,
    /// What was wrong and how to fix it.
    pub reason: String,
}

impl HttpError {
    fn new(status: u16, reason: impl Into<String>) -> Self {
        HttpError {
            status,
            reason: reason.into(),
        }
    }

    /// The whole response for this error: JSON `{"error": reason}`, and for 426 the
    /// `Sec-WebSocket-Version: 13` header RFC 6455 §4.4 asks for. The connection is closed
    /// after it, since the rest of the buffer cannot be trusted.
    pub fn to_response(&self) -> Vec<u8> {
        let body = error_body(&self.reason);
        if self.status == 426 {
            // RFC 6455 §4.4: "the server MUST respond with an appropriate HTTP error code
            // (such as 426 Upgrade Required) and a |Sec-WebSocket-Version| header field
            // indicating the version(s) the server is capable of understanding."
            write_response(
                self.status,
                &[("Sec-WebSocket-Version", "13")],
                "application/json",
                body.as_bytes(),
                false,
            )
        } else {
            response(self.status, "application/json", body.as_bytes(), false)
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.reason)
    }
}

impl std::error::Error for HttpError {}

impl fmt::Debug for RequestHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(n, v)| match n.as_str() {
                "authorization" | "cookie" | "proxy-authorization" => (n.as_str(), "<hidden>"),
                _ => (n.as_str(), v.as_str()),
            })
            .collect();
        f.debug_struct("RequestHead")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("query", &self.query)
            .field("headers", &headers)
            .field("content_length", &self.content_length)
            .field("keep_alive", &self.keep_alive)
            .field("websocket_key", &self.websocket_key)
            .finish()
    }
}

impl RequestHead {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first query parameter called `name`, percent-decoded (`+` is a space, as in
    /// `application/x-www-form-urlencoded`). A parameter without `=` has the value `""`.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .find_map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (form_decode(key) == name).then(|| form_decode(value))
            })
    }

    /// The credentials of `Authorization: Bearer <token>` (the scheme is case-insensitive,
    /// RFC 9110 §11.1); `None` when absent, another scheme, or empty.
    pub fn bearer_token(&self) -> Option<&str> {
        let value = self.header("authorization")?;
        let (scheme, token) = value.split_once(' ')?;
        let token = token.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
    }

    /// The value of cookie `name` from the `Cookie` header(s), without surrounding double
    /// quotes (RFC 6265 §4.2.1 `cookie-value`), still percent-encoded.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == "cookie")
            .flat_map(|(_, v)| v.split(';'))
            .find_map(|pair| {
                let (key, value) = pair.split_once('=')?;
                (key.trim() == name).then(|| {
                    let value = value.trim();
                    value
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .unwrap_or(value)
                })
            })
    }

    /// Why an attempted WebSocket upgrade cannot be accepted: `Some` when the request asks
    /// for `Upgrade: websocket` but is not a valid opening handshake (so
    /// [`websocket_key`](Self::websocket_key) is `None`). Answer it with
    /// [`HttpError::to_response`].
    pub fn websocket_refusal(&self) -> Option<HttpError> {
        if self.websocket_key.is_some() || !self.header_has_token("upgrade", "websocket") {
            return None;
        }
        Some(match websocket_problem(self) {
            Some(problem) => problem,
            // Every header is right, so only the HTTP version can have failed.
            None => HttpError::new(400, "WebSocket upgrade needs HTTP/1.1"),
        })
    }

    /// Whether header `name` (any of its fields) lists `token` in its comma-separated value
    /// (case-insensitive), as `Connection` and `Upgrade` do.
    fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// Parses the request head at the start of `buf`.
///
/// `Ok(None)`: the head is not complete yet; read more. `Ok(Some((head, head_len)))`: the
/// head takes `head_len` bytes and `head.content_length` bytes of body follow.
///
/// # Errors
/// 431 when the head is longer than `max_header_bytes` or has more than 64 fields, 400 when
/// it is malformed (the reason says where), 413 when `Content-Length` exceeds
/// `max_body_bytes`, 501 for `Transfer-Encoding` (chunked bodies are not supported).
pub fn parse_head(
    buf: &[u8],
    max_header_bytes: usize,
    max_body_bytes: usize,
) -> Result<Option<(RequestHead, usize)>, HttpError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut fields);
    // Only the first `max_header_bytes` are read: a head that has not ended within them is
    // 431 whatever follows, so the answer does not depend on how the bytes were split into
    // reads (a malformed byte past the limit would otherwise make it a 400 when it came in
    // the same read, and a 431 when it came later).
    let window = &buf[..buf.len().min(max_header_bytes)];
    let head_len = match request.parse(window) {
        Ok(httparse::Status::Complete(len)) => len,
        // Not an error: the rest of the head has not arrived yet.
        Ok(httparse::Status::Partial) if buf.len() <= max_header_bytes => return Ok(None),
        Ok(httparse::Status::Partial) => return Err(head_too_large(max_header_bytes)),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HttpError::new(
                431,
                format!("request has more than {MAX_HEADERS} header fields"),
            ))
        }
        Err(e) => return Err(malformed(e, buf)),
    };
    // Complete means httparse filled these; the fallbacks are never taken.
    let method = request.method.unwrap_or_default().to_owned();
    let target = request.path.unwrap_or_default();
    let http_11 = request.version.unwrap_or(1) >= 1;

    let headers: Vec<(String, String)> = request
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).trim().to_owned(),
            )
        })
        .collect();

    if headers.iter().any(|(n, _)| n == "transfer-encoding") {
        return Err(HttpError::new(
            501,
            "Transfer-Encoding is not supported: send the body with Content-Length",
        ));
    }
    let content_length = content_length(&headers, max_body_bytes)?;

    let (path, query) = split_target(target);
    let mut head = RequestHead {
        method,
        path: path.to_owned(),
        query: query.to_owned(),
        headers,
        content_length,
        keep_alive: false,
        websocket_key: None,
    };
    // RFC 9112 §9.3: HTTP/1.1 persists unless "close"; HTTP/1.0 only with "keep-alive".
    head.keep_alive = if head.header_has_token("connection", "close") {
        false
    } else {
        http_11 || head.header_has_token("connection", "keep-alive")
    };
    if http_11 && websocket_problem(&head).is_none() {
        head.websocket_key = head.header("sec-websocket-key").map(str::to_owned);
    }
    Ok(Some((head, head_len)))
}

/// A complete response with `Content-Type`, `Content-Length` and `Connection`.
pub fn response(status: u16, content_type: &str, body: &[u8], keep_alive: bool) -> Vec<u8> {
    write_response(status, &[], content_type, body, keep_alive)
}

/// A JSON error response, body `{"error": message}`.
pub fn json_error(status: u16, message: &str, keep_alive: bool) -> Vec<u8> {
    response(
        status,
        "application/json",
        error_body(message).as_bytes(),
        keep_alive,
    )
}

/// The `101 Switching Protocols` answer to a WebSocket opening handshake with key `key`.
pub fn websocket_accept(key: &str) -> Vec<u8> {
    // RFC 6455 §4.2.2: Sec-WebSocket-Accept is base64(SHA-1(key + GUID)).
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes()
}

/// Decodes `%XX` escapes; a `%` not followed by two hex digits is kept as is, and bytes that
/// do not form UTF-8 become U+FFFD.
pub fn percent_decode(s: &str) -> String {
    decode(s, false)
}

/// The reason phrase of the statuses this server sends (RFC 9110 §15).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// A complete response with `extra_headers` before the content headers.
pub fn write_response(
    status: u16,
    extra_headers: &[(&str, &str)],
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
) -> Vec<u8> {
    use std::fmt::Write;

    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason_phrase(status));
    for (name, value) in extra_headers {
        // Writing to a String cannot fail.
        let _ = write!(head, "{name}: {value}\r\n");
    }
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let _ = write!(
        head,
        "Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n",
        body.len()
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

fn error_body(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}

fn head_too_large(max_header_bytes: usize) -> HttpError {
    HttpError::new(
        431,
        format!("request head is longer than {max_header_bytes} bytes (CHAT_MAX_HEADER_BYTES)"),
    )
}

fn malformed(error: httparse::Error, buf: &[u8]) -> HttpError {
    let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    let where_ = match error {
        httparse::Error::Token | httparse::Error::Version => "request line",
        httparse::Error::HeaderName | httparse::Error::HeaderValue => "a header field",
        _ => "the request head",
    };
    let mut shown = String::from_utf8_lossy(line).trim_end().to_owned();
    // A query may carry a credential (`?token=…`): never echo it.
    if let Some(q) = shown.find('?') {
        shown.truncate(q);
        shown.push_str("?…");
    }
    if shown.len() > 80 {
        let cut = (0..=80)
            .rev()
            .find(|&i| shown.is_char_boundary(i))
            .unwrap_or(0);
        shown.truncate(cut);
        shown.push('…');
    }
    HttpError::new(
        400,
        format!("malformed HTTP request ({error} in {where_}); first line was {shown:?}"),
    )
}

fn content_length(headers: &[(String, String)], max_body_bytes: usize) -> Result<usize, HttpError> {
    let mut found: Option<usize> = None;
    for (_, value) in headers.iter().filter(|(n, _)| n == "content-length") {
        // RFC 9112 §6.3: a list of identical values may be accepted; differing ones are an error.
        for item in value.split(',').map(str::trim) {
            let n = if !item.is_empty() && item.bytes().all(|b| b.is_ascii_digit()) {
                item.parse::<usize>().unwrap_or(usize::MAX)
            } else {
                return Err(HttpError::new(
                    400,
                    format!("Content-Length {item:?} is not a number of bytes"),
                ));
            };
            if found.is_some_and(|f| f != n) {
                return Err(HttpError::new(
                    400,
                    "request has differing Content-Length values",
                ));
            }
            found = Some(n);
        }
    }
    let n = found.unwrap_or(0);
    if n > max_body_bytes {
        return Err(HttpError::new(
            413,
            format!("request body of {n} bytes is over the limit of {max_body_bytes} bytes"),
        ));
    }
    Ok(n)
}

/// Splits a request target into path and query. Absolute-form targets
/// (`http://host/path`, RFC 9112 §3.2.2) lose their scheme and authority.
fn split_target(target: &str) -> (&str, &str) {
    let (mut path, query) = target.split_once('?').unwrap_or((target, ""));
    for scheme in ["http://", "https://"] {
        if let Some(rest) = path.strip_prefix(scheme) {
            path = rest.find('/').map_or("/", |i| &rest[i..]);
        }
    }
    (path, query)
}

/// Why `head` is not a valid RFC 6455 §4.2.1 opening handshake, or `None` when it is.
fn websocket_problem(head: &RequestHead) -> Option<HttpError> {
    if !head.header_has_token("upgrade", "websocket") {
        return Some(HttpError::new(400, "missing Upgrade: websocket"));
    }
    if head.method != "GET" {
        return Some(HttpError::new(
            400,
            format!("WebSocket upgrade needs method GET, not {}", head.method),
        ));
    }
    if !head.header_has_token("connection", "upgrade") {
        return Some(HttpError::new(
            400,
            "WebSocket upgrade needs the Connection header to include \"Upgrade\"",
        ));
    }
    match head.header("sec-websocket-version") {
        Some("13") => {}
        Some(other) => {
            return Some(HttpError::new(
                426,
                format!("Sec-WebSocket-Version {other:?} is not supported: use 13"),
            ))
        }
        None => {
            return Some(HttpError::new(
                426,
                "WebSocket upgrade needs Sec-WebSocket-Version: 13",
            ))
        }
    }
    match head.header("sec-websocket-key") {
        Some(key) if !key.is_empty() => None,
        _ => Some(HttpError::new(
            400,
            "WebSocket upgrade needs a Sec-WebSocket-Key header",
        )),
    }
}

fn form_decode(s: &str) -> String {
    decode(s, true)
}

fn decode(s: &str, plus_is_space: bool) -> String {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let bytes = s.as_bytes();
    if !bytes
        .iter()
        .any(|&b| b == b'%' || (plus_is_space && b == b'+'))
    {
        return s.to_owned();
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests;
