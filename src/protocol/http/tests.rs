//! Tests of the request head parser and the response builders.

use super::*;

const MAX_HEAD: usize = 8192;
const MAX_BODY: usize = 1_000_000;

fn parse(raw: &str) -> Result<Option<(RequestHead, usize)>, HttpError> {
    parse_head(raw.as_bytes(), MAX_HEAD, MAX_BODY)
}

fn head(raw: &str) -> RequestHead {
    parse(raw).expect("valid head").expect("complete head").0
}

const UPGRADE: &str = "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n\
    Host: localhost:3000\r\n\
    Upgrade: websocket\r\n\
    Connection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n\r\n";

#[test]
fn partial_heads_ask_for_more_bytes() {
    for cut in [0, 1, 10, UPGRADE.len() / 2, UPGRADE.len() - 1] {
        assert_eq!(parse(&UPGRADE[..cut]), Ok(None), "cut at {cut}");
    }
    let (head, len) = parse(UPGRADE).unwrap().unwrap();
    assert_eq!(len, UPGRADE.len());
    assert_eq!(head.method, "GET");
    assert_eq!(head.path, "/socket.io/");
    assert_eq!(head.query, "EIO=4&transport=websocket");
}

#[test]
fn head_len_excludes_the_body_that_follows() {
    let raw = "POST /api/v1/users HTTP/1.1\r\nContent-Length: 13\r\n\r\n{\"name\":\"a\"}x";
    let (head, len) = parse(raw).unwrap().unwrap();
    assert_eq!(head.content_length, 13);
    assert_eq!(&raw[len..], "{\"name\":\"a\"}x");
}

#[test]
fn a_partial_head_over_the_limit_is_431() {
    let raw = format!("GET / HTTP/1.1\r\nX-Big: {}", "a".repeat(200));
    let err = parse_head(raw.as_bytes(), 100, MAX_BODY).unwrap_err();
    assert_eq!(err.status, 431);
    assert!(err.reason.contains("100 bytes"), "{}", err.reason);
    // Under the limit it is merely incomplete.
    assert_eq!(parse_head(raw.as_bytes(), 1000, MAX_BODY), Ok(None));
}

#[test]
fn a_complete_head_over_the_limit_is_431() {
    let raw = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(200));
    assert_eq!(
        parse_head(raw.as_bytes(), 100, MAX_BODY)
            .unwrap_err()
            .status,
        431
    );
    // Exactly at the limit is fine.
    assert!(parse_head(raw.as_bytes(), raw.len(), MAX_BODY)
        .unwrap()
        .is_some());
}

#[test]
fn a_head_over_the_limit_is_431_however_its_bytes_arrive() {
    // Found by tests/fuzz_parsers: a malformed field past the limit was a 400 when it came
    // in the same read as the start of the head, and a 431 when it came in a later one.
    let raw = format!(
        "GET / HTTP/1.1\r\nX-Big: {}\r\nBad Name: x\r\n\r\n",
        "a".repeat(200)
    );
    assert_eq!(
        parse_head(raw.as_bytes(), 100, MAX_BODY)
            .unwrap_err()
            .status,
        431
    );
    assert_eq!(
        parse_head(&raw.as_bytes()[..101], 100, MAX_BODY)
            .unwrap_err()
            .status,
        431
    );
    // Within the limit the malformed field is what is reported.
    assert_eq!(
        parse_head(raw.as_bytes(), 1000, MAX_BODY)
            .unwrap_err()
            .status,
        400
    );
}

#[test]
fn too_many_header_fields_is_431() {
    let mut raw = String::from("GET / HTTP/1.1\r\n");
    for i in 0..65 {
        raw.push_str(&format!("X-{i}: v\r\n"));
    }
    raw.push_str("\r\n");
    let err = parse(&raw).unwrap_err();
    assert_eq!(err.status, 431);
    assert!(err.reason.contains("64"), "{}", err.reason);
}

#[test]
fn malformed_request_lines_are_400_naming_the_line() {
    for raw in [
        "GET / HTTX/1.1\r\n\r\n",
        "G(T / HTTP/1.1\r\n\r\n",
        "GET /a b HTTP/1.1\r\n\r\n",
        "\u{1}\r\n\r\n",
    ] {
        let err = parse(raw).unwrap_err();
        assert_eq!(err.status, 400, "{raw:?}");
        assert!(err.reason.contains("first line was"), "{}", err.reason);
    }
    let err = parse("GET / HTTX/1.1\r\n\r\n").unwrap_err();
    assert!(err.reason.contains("request line"), "{}", err.reason);
    assert!(err.reason.contains("GET / HTTX/1.1"), "{}", err.reason);
}

#[test]
fn malformed_header_fields_are_400() {
    let err = parse("GET / HTTP/1.1\r\nBad Name: x\r\n\r\n").unwrap_err();
    assert_eq!(err.status, 400);
    assert!(err.reason.contains("header"), "{}", err.reason);
}

#[test]
fn content_length_rules() {
    let err = parse("POST / HTTP/1.1\r\nContent-Length: ten\r\n\r\n").unwrap_err();
    assert_eq!(err.status, 400);
    assert!(err.reason.contains("\"ten\""), "{}", err.reason);

    let err =
        parse("POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n").unwrap_err();
    assert_eq!(err.status, 400);
    // Identical repeated values are allowed (RFC 9112 §6.3).
    assert_eq!(
        head("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n").content_length,
        5
    );

    let err = parse_head(
        b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n",
        MAX_HEAD,
        10,
    )
    .unwrap_err();
    assert_eq!(err.status, 413);
    assert!(err.reason.contains("11 bytes"), "{}", err.reason);

    let huge = "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n";
    assert_eq!(parse(huge).unwrap_err().status, 413);
}

#[test]
fn transfer_encoding_is_501() {
    let err = parse("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap_err();
    assert_eq!(err.status, 501);
    assert!(err.reason.contains("Content-Length"), "{}", err.reason);
}

#[test]
fn keep_alive_rules() {
    assert!(head("GET / HTTP/1.1\r\n\r\n").keep_alive);
    assert!(!head("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
    assert!(!head("GET / HTTP/1.1\r\nConnection: Keep-Alive, CLOSE\r\n\r\n").keep_alive);
    assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive);
    assert!(head("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
    assert!(!head("GET / HTTP/1.0\r\nConnection: close\r\n\r\n").keep_alive);
}

#[test]
fn a_valid_upgrade_carries_the_key() {
    let head = head(UPGRADE);
    assert_eq!(
        head.websocket_key.as_deref(),
        Some("dGhlIHNhbXBsZSBub25jZQ==")
    );
    assert_eq!(head.websocket_refusal(), None);
}

#[test]
fn upgrade_tokens_are_case_insensitive_and_listed() {
    let raw = "GET /socket.io/ HTTP/1.1\r\nUpgrade: WebSocket\r\n\
               Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: abc\r\n\
               Sec-WebSocket-Version: 13\r\n\r\n";
    assert_eq!(head(raw).websocket_key.as_deref(), Some("abc"));
}

#[test]
fn invalid_upgrades_have_no_key_and_say_why() {
    let cases = [
        (UPGRADE.replace("GET", "POST"), 400, "GET"),
        (
            UPGRADE.replace("Connection: Upgrade", "Connection: keep-alive"),
            400,
            "Connection",
        ),
        (UPGRADE.replace("Version: 13", "Version: 8"), 426, "\"8\""),
        (
            UPGRADE.replace("Sec-WebSocket-Version: 13\r\n", ""),
            426,
            "13",
        ),
        (
            UPGRADE.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
            400,
            "Key",
        ),
        (UPGRADE.replace("HTTP/1.1", "HTTP/1.0"), 400, "HTTP/1.1"),
    ];
    for (raw, status, needle) in cases {
        let head = head(&raw);
        assert_eq!(head.websocket_key, None, "{raw}");
        let refusal = head.websocket_refusal().expect("refused");
        assert_eq!(refusal.status, status, "{raw}");
        assert!(refusal.reason.contains(needle), "{}", refusal.reason);
    }
    // A request that never asked to upgrade is not refused.
    assert_eq!(head("GET / HTTP/1.1\r\n\r\n").websocket_refusal(), None);
}

#[test]
fn the_426_response_names_the_supported_version() {
    let refusal = head(&UPGRADE.replace("Version: 13", "Version: 8"))
        .websocket_refusal()
        .unwrap();
    let text = String::from_utf8(refusal.to_response()).unwrap();
    assert!(
        text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
        "{text}"
    );
    assert!(text.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{text}");
    assert!(text.contains("Connection: close"), "{text}");
}

#[test]
fn headers_are_lowercased_trimmed_and_found_in_any_case() {
    let head = head("GET / HTTP/1.1\r\nX-Thing:   spaced  \r\nHOST: h\r\n\r\n");
    assert_eq!(head.headers[0], ("x-thing".to_owned(), "spaced".to_owned()));
    assert_eq!(head.header("Host"), Some("h"));
    assert_eq!(head.header("x-THING"), Some("spaced"));
    assert_eq!(head.header("missing"), None);
}

#[test]
fn absolute_form_targets_keep_only_the_path() {
    let head = head("GET http://example.com:3000/healthz?x=1 HTTP/1.1\r\n\r\n");
    assert_eq!(head.path, "/healthz");
    assert_eq!(head.query, "x=1");
    assert_eq!(
        self::head("GET http://example.com HTTP/1.1\r\n\r\n").path,
        "/"
    );
}

#[test]
fn query_params_are_percent_decoded() {
    let head = head("GET /x?a=1&name=J%C3%BCrgen+M%20x&empty&bad=%zz%4&%6Cimit=5 HTTP/1.1\r\n\r\n");
    assert_eq!(head.query_param("a").as_deref(), Some("1"));
    assert_eq!(head.query_param("name").as_deref(), Some("Jürgen M x"));
    assert_eq!(head.query_param("empty").as_deref(), Some(""));
    assert_eq!(head.query_param("bad").as_deref(), Some("%zz%4"));
    assert_eq!(head.query_param("limit").as_deref(), Some("5"));
    assert_eq!(head.query_param("missing"), None);
    assert_eq!(percent_decode("a+b%2Bc%2"), "a+b+c%2");
    assert_eq!(percent_decode("%FF"), "\u{FFFD}");
}

#[test]
fn bearer_tokens() {
    let h = |v: &str| head(&format!("GET / HTTP/1.1\r\nAuthorization: {v}\r\n\r\n"));
    assert_eq!(h("Bearer abc.def.ghi").bearer_token(), Some("abc.def.ghi"));
    assert_eq!(h("bearer  abc").bearer_token(), Some("abc"));
    assert_eq!(h("Basic abc").bearer_token(), None);
    assert_eq!(h("Bearer").bearer_token(), None);
    assert_eq!(head("GET / HTTP/1.1\r\n\r\n").bearer_token(), None);
}

#[test]
fn cookies_several_spaced_quoted_and_signed() {
    let head = head(
        "GET / HTTP/1.1\r\nCookie: theme=dark;  better-auth.session_token=tok123.c2ln%3D ;x=\"q v\"\r\n\
         Cookie: later=1\r\n\r\n",
    );
    assert_eq!(head.cookie("theme"), Some("dark"));
    assert_eq!(
        head.cookie("better-auth.session_token"),
        Some("tok123.c2ln%3D")
    );
    assert_eq!(head.cookie("x"), Some("q v"));
    assert_eq!(head.cookie("later"), Some("1"));
    assert_eq!(head.cookie("session_token"), None);
    assert_eq!(head.cookie("missing"), None);
}

#[test]
fn responses_carry_length_connection_and_reason() {
    let text = String::from_utf8(response(200, "text/plain", b"hello", true)).unwrap();
    assert_eq!(
        text,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\
         Connection: keep-alive\r\n\r\nhello"
    );
    let text = String::from_utf8(json_error(404, "no \"route\"", false)).unwrap();
    assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
    assert!(text.contains("Connection: close\r\n"), "{text}");
    let body = text.split("\r\n\r\n").nth(1).unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(body).unwrap(),
        serde_json::json!({"error": "no \"route\""})
    );
    assert!(text.contains(&format!("Content-Length: {}\r\n", body.len())));
}

#[test]
fn websocket_accept_uses_the_rfc_6455_example() {
    // RFC 6455 §1.3: key "dGhlIHNhbXBsZSBub25jZQ==" -> "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".
    let text = String::from_utf8(websocket_accept("dGhlIHNhbXBsZSBub25jZQ==")).unwrap();
    assert_eq!(
        text,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    );
}

#[test]
fn debug_output_hides_credentials() {
    let head = head(
        "GET /?a=1 HTTP/1.1\r\nAuthorization: Bearer s3cr3t\r\nCookie: sid=s3cr3t\r\nX-Ok: shown\r\n\r\n",
    );
    let text = format!("{head:?}");
    assert!(!text.contains("s3cr3t"), "{text}");
    assert!(text.contains("shown"), "{text}");
}

#[test]
fn malformed_line_errors_do_not_echo_the_query() {
    let err = parse("GET /socket.io/?token=s3cr3t HTTX/1.1\r\n\r\n").unwrap_err();
    assert!(!err.reason.contains("s3cr3t"), "{}", err.reason);
    assert!(err.reason.contains("/socket.io/?…"), "{}", err.reason);
}
