//! Tests of token extraction and JWT verification.

use std::time::Duration;

use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

use super::*;

const SECRET: &str = "test-secret-of-some-length";
const USER: &str = "6f1c1d2e-0000-4000-8000-000000000001";
const WORKSPACE: &str = "6f1c1d2e-0000-4000-8000-0000000000aa";
/// 2023-11-14T22:13:20Z, the clock of every test.
const NOW: u64 = 1_700_000_000;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW)
}

fn sign(alg: Algorithm, secret: &str, claims: &Value) -> String {
    encode(
        &Header::new(alg),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn b64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let mut n = 0u32;
        for (i, &b) in chunk.iter().enumerate() {
            n |= u32::from(b) << (16 - 8 * i);
        }
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A token with a hand-made header and a junk signature.
fn forged(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

fn verifier() -> JwtVerifier {
    JwtVerifier::new(Some(SECRET))
}

fn valid_claims() -> Value {
    json!({"sub": USER, "exp": NOW + 60, "name": "Ada"})
}

#[test]
fn a_valid_hs256_jwt_gives_the_user_and_name() {
    let token = sign(Algorithm::HS256, SECRET, &valid_claims());
    match verifier().credential_at(&token, now()) {
        Ok(Credential::Jwt { user, name }) => {
            assert_eq!(user.to_string(), USER);
            assert_eq!(name.as_deref(), Some("Ada"));
        }
        other => panic!("{other:?}"),
    }
    let token = sign(
        Algorithm::HS256,
        SECRET,
        &json!({"sub": USER, "exp": NOW + 1}),
    );
    assert!(matches!(
        verifier().credential_at(&token, now()),
        Ok(Credential::Jwt { name: None, .. })
    ));
}

#[test]
fn an_expired_jwt_is_refused() {
    for exp in [NOW, NOW - 1, 0] {
        let token = sign(Algorithm::HS256, SECRET, &json!({"sub": USER, "exp": exp}));
        assert_eq!(
            verifier().credential_at(&token, now()).unwrap_err(),
            "token expired"
        );
    }
}

#[test]
fn a_jwt_without_exp_is_refused() {
    let token = sign(Algorithm::HS256, SECRET, &json!({"sub": USER}));
    let err = verifier().credential_at(&token, now()).unwrap_err();
    assert!(err.contains("no exp"), "{err}");
    let token = sign(
        Algorithm::HS256,
        SECRET,
        &json!({"sub": USER, "exp": "soon"}),
    );
    let err = verifier().credential_at(&token, now()).unwrap_err();
    assert!(err.contains("exp must be a number"), "{err}");
}

#[test]
fn a_jwt_not_valid_yet_is_refused() {
    let claims = json!({"sub": USER, "exp": NOW + 600, "nbf": NOW + 300});
    let token = sign(Algorithm::HS256, SECRET, &claims);
    let err = verifier().credential_at(&token, now()).unwrap_err();
    assert!(err.contains("nbf"), "{err}");
    // Within the clock-skew leeway it passes.
    let claims = json!({"sub": USER, "exp": NOW + 600, "nbf": NOW + 30});
    let token = sign(Algorithm::HS256, SECRET, &claims);
    assert!(verifier().credential_at(&token, now()).is_ok());
}

#[test]
fn alg_none_is_refused() {
    for alg in ["none", "None"] {
        let token = forged(&json!({"alg": alg, "typ": "JWT"}), &valid_claims(), "");
        let err = verifier().credential_at(&token, now()).unwrap_err();
        assert_eq!(
            err,
            format!("JWT algorithm {alg} is not accepted: sign with HS256")
        );
    }
}

#[test]
fn other_algorithms_are_refused_by_name() {
    let token = sign(Algorithm::HS512, SECRET, &valid_claims());
    assert_eq!(
        verifier().credential_at(&token, now()).unwrap_err(),
        "JWT algorithm HS512 is not accepted: sign with HS256"
    );
    let token = forged(&json!({"alg": "RS256"}), &valid_claims(), "c2ln");
    assert_eq!(
        verifier().credential_at(&token, now()).unwrap_err(),
        "JWT algorithm RS256 is not accepted: sign with HS256"
    );
    let token = forged(&json!({"typ": "JWT"}), &valid_claims(), "c2ln");
    let err = verifier().credential_at(&token, now()).unwrap_err();
    assert!(err.contains("no alg"), "{err}");
}

#[test]
fn a_wrong_secret_is_refused() {
    let token = sign(Algorithm::HS256, "another-secret", &valid_claims());
    let err = verifier().credential_at(&token, now()).unwrap_err();
    assert!(err.contains("signature does not match"), "{err}");
}

#[test]
fn a_tampered_payload_is_refused() {
    let token = sign(Algorithm::HS256, SECRET, &valid_claims());
    let parts: Vec<&str> = token.split('.').collect();
    let other = json!({"sub": "6f1c1d2e-0000-4000-8000-000000000002", "exp": NOW + 60});
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(other.to_string().as_bytes()),
        parts[2]
    );
    let err = verifier().credential_at(&tampered, now()).unwrap_err();
    assert!(err.contains("signature"), "{err}");
}

#[test]
fn a_bad_sub_is_refused() {
    for (sub, needle) in [
        (json!("user-42"), "\"user-42\" is not a uuid"),
        (json!(42), "uuid string"),
        (Value::Null, "no sub"),
    ] {
        let token = sign(
            Algorithm::HS256,
            SECRET,
            &json!({"sub": sub, "exp": NOW + 60}),
        );
        let err = verifier().credential_at(&token, now()).unwrap_err();
        assert!(err.contains(needle), "{err}");
    }
}

#[test]
fn without_a_secret_jwts_are_refused_but_sessions_pass() {
    for secret in [None, Some("")] {
        let verifier = JwtVerifier::new(secret);
        let token = sign(Algorithm::HS256, SECRET, &valid_claims());
        let err = verifier.credential_at(&token, now()).unwrap_err();
        assert!(err.contains("CHAT_JWT_SECRET is unset"), "{err}");
        assert!(matches!(
            verifier.credential_at("opaque-session-token", now()),
            Ok(Credential::Session(t)) if t == "opaque-session-token"
        ));
    }
    assert!(!format!("{:?}", verifier()).contains(SECRET));
}

#[test]
fn tokens_without_three_parts_are_session_tokens() {
    for token in ["abc", "a.b", "a.b.c.d"] {
        assert!(matches!(
            verifier().credential_at(token, now()),
            Ok(Credential::Session(t)) if t == token
        ));
    }
    assert_eq!(verifier().credential_at("", now()).unwrap_err(), NO_TOKEN);
}

#[test]
fn malformed_jwts_say_so_without_echoing_the_token() {
    let token = "not!base64.still-not.x";
    let err = verifier().credential_at(token, now()).unwrap_err();
    assert!(err.contains("header"), "{err}");
    let token = forged(&json!({"alg": "HS256"}), &json!([1, 2]), "c2ln");
    let err = verifier().credential_at(&token, now()).unwrap_err();
    assert!(!err.contains(&token), "{err}");
    // Every error text is free of the token.
    let real = sign(Algorithm::HS256, "another-secret", &valid_claims());
    assert!(!verifier()
        .credential_at(&real, now())
        .unwrap_err()
        .contains(&real));
}

#[test]
fn extraction_prefers_payload_then_bearer_then_cookie() {
    let auth = json!({"token": "from-payload", "workspaceId": WORKSPACE});
    let got = extract(Some(&auth), Some("from-bearer"), Some("from-cookie.sig"));
    assert_eq!(got.token.as_deref(), Some("from-payload"));
    assert_eq!(got.workspace.unwrap().to_string(), WORKSPACE);

    let auth = json!({"workspaceId": WORKSPACE});
    let got = extract(Some(&auth), Some("from-bearer"), Some("from-cookie.sig"));
    assert_eq!(got.token.as_deref(), Some("from-bearer"));

    let got = extract(Some(&auth), None, Some("from-cookie.sig"));
    assert_eq!(got.token.as_deref(), Some("from-cookie"));

    // Blank values do not count as tokens.
    let auth = json!({"token": " ", "workspaceId": WORKSPACE});
    let got = extract(Some(&auth), Some(""), Some("from-cookie"));
    assert_eq!(got.token.as_deref(), Some("from-cookie"));

    let got = extract(Some(&auth), Some("s3cr3t"), None);
    assert!(!format!("{got:?}").contains("s3cr3t"));

    let got = extract(Some(&auth), None, None);
    assert_eq!(got.token, None);
    assert_eq!(got.require_token().unwrap_err(), NO_TOKEN);
}

#[test]
fn only_the_cookie_is_cut_at_the_first_dot() {
    let jwt = sign(Algorithm::HS256, SECRET, &valid_claims());
    let auth = json!({"token": jwt, "workspaceId": WORKSPACE});
    assert_eq!(
        extract(Some(&auth), None, None).token.as_deref(),
        Some(jwt.as_str())
    );
    assert_eq!(
        extract(None, Some(&jwt), None).token.as_deref(),
        Some(jwt.as_str())
    );
    // Signed better-auth cookies are URL-encoded: TOKEN.BASE64SIG%3D
    let got = extract(None, None, Some("abcDEF123.c2lnbmF0dXJl%2Bx%3D"));
    assert_eq!(got.token.as_deref(), Some("abcDEF123"));
    assert_eq!(extract(None, None, Some(".sig")).token, None);
}

#[test]
fn workspace_errors_say_what_to_send() {
    let err = |auth: Option<Value>| {
        extract(auth.as_ref(), Some("t"), None)
            .workspace
            .unwrap_err()
    };
    assert!(err(None).starts_with("workspaceId missing from auth payload"));
    assert_eq!(
        err(Some(json!({"token": "t"}))),
        "workspaceId missing from auth payload"
    );
    assert_eq!(
        err(Some(json!({"workspaceId": "x"}))),
        "workspaceId \"x\" is not a uuid"
    );
    assert!(err(Some(json!({"workspaceId": 7}))).contains("uuid string"));
    assert!(err(Some(json!("token"))).contains("JSON object"));
    let long = "y".repeat(500);
    assert!(err(Some(json!({"workspaceId": long}))).len() < 120);
}

#[test]
fn session_cookie_accepts_the_secure_prefix() {
    let parse = |raw: &str| {
        crate::protocol::http::parse_head(raw.as_bytes(), 8192, 0)
            .unwrap()
            .unwrap()
            .0
    };
    let head = parse("GET / HTTP/1.1\r\nCookie: a=1; better-auth.session_token=t1.s\r\n\r\n");
    assert_eq!(session_cookie(&head), Some("t1.s"));
    let head = parse("GET / HTTP/1.1\r\nCookie: __Secure-better-auth.session_token=t2.s\r\n\r\n");
    assert_eq!(session_cookie(&head), Some("t2.s"));
    assert_eq!(session_cookie(&parse("GET / HTTP/1.1\r\n\r\n")), None);
}

#[test]
fn base64url_round_trips() {
    for input in [
        &b""[..],
        b"a",
        b"ab",
        b"abc",
        b"abcd",
        &[0xff, 0xfe, 0xfd, 0x00],
    ] {
        assert_eq!(base64url_decode(&b64(input)).as_deref(), Some(input));
    }
    assert_eq!(base64url_decode("a"), None);
    assert_eq!(base64url_decode("ab+/"), None);
}
