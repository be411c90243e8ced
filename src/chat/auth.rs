//! Who is connecting (contract §2): where the token comes from, and what the shard can check
//! about it on its own.
//!
//! [`extract`] picks the token (CONNECT auth payload, then `Authorization: Bearer`, then the
//! better-auth session cookie) and the `workspaceId`. [`JwtVerifier::credential`] turns the
//! token into a [`Credential`]: a JWT is verified here (HS256 signature, `exp`, `sub`), an
//! opaque token is passed on for the store to look up in `sessions`. Error texts name what to
//! fix and never contain the token.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use crate::ids::{UserId, WorkspaceId};
use crate::protocol::http::{percent_decode, RequestHead};

/// The session cookie better-auth sets.
pub const SESSION_COOKIE: &str = "better-auth.session_token";

/// The same cookie as better-auth names it when served over HTTPS (`useSecureCookies`).
pub const SECURE_SESSION_COOKIE: &str = "__Secure-better-auth.session_token";

/// Why a connection without any token is refused.
pub const NO_TOKEN: &str =
    "no token: send auth {token} or Authorization: Bearer or the better-auth.session_token cookie";

/// How far a JWT's `nbf` may lie ahead of our clock, for clock skew between the token issuer
/// and this server. `exp` gets no leeway: the contract says "in the future".
const NBF_LEEWAY_SECS: f64 = 60.0;

/// How the socket proved who it is, as far as the shard could check on its own.
/// `Debug` never prints a session token.
#[derive(Clone)]
pub enum Credential {
    /// A JWT whose signature and expiry the shard verified; the user still has to exist.
    Jwt {
        /// `sub`
        user: UserId,
        /// `name`, if the token carried one.
        name: Option<String>,
    },
    /// An opaque session token, looked up in `sessions`.
    Session(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Jwt { user, name } => f
                .debug_struct("Jwt")
                .field("user", user)
                .field("name", name)
                .finish(),
            Credential::Session(_) => f.write_str("Session(<hidden>)"),
        }
    }
}

/// What a CONNECT offers to prove: the token (if any) and the workspace asked for.
/// `Debug` hides the token.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthRequest {
    /// The token from the first place that had one.
    pub token: Option<String>,
    /// `workspaceId` of the auth payload, or why it is missing or unusable.
    pub workspace: Result<WorkspaceId, String>,
}

impl fmt::Debug for AuthRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthRequest")
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .field("workspace", &self.workspace)
            .finish()
    }
}

impl AuthRequest {
    /// The token, or [`NO_TOKEN`] as the reason to refuse.
    pub fn require_token(&self) -> Result<&str, String> {
        self.token.as_deref().ok_or_else(|| NO_TOKEN.to_owned())
    }
}

/// Picks the token and workspace of a CONNECT (contract §2).
///
/// The token comes from the CONNECT auth payload `{"token", "workspaceId"}`, else from the
/// upgrade request's `Authorization: Bearer …` (`bearer`, as [`RequestHead::bearer_token`]
/// gives it), else from the better-auth session cookie value `cookie` (as
/// [`session_cookie`] gives it), whose value is `TOKEN` or `TOKEN.SIGNATURE`: the part
/// before the first `.` is the token. Only the cookie is split; a JWT has dots of its own.
pub fn extract(auth: Option<&Value>, bearer: Option<&str>, cookie: Option<&str>) -> AuthRequest {
    let payload_token = auth
        .and_then(|a| a.get("token"))
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let bearer = bearer.map(str::trim).filter(|t| !t.is_empty());
    let token = match (payload_token, bearer) {
        (Some(t), _) | (None, Some(t)) => Some(t.to_owned()),
        (None, None) => cookie.and_then(cookie_token),
    };
    AuthRequest {
        token,
        workspace: workspace(auth),
    }
}

/// The better-auth session cookie of an upgrade request, under either of its names.
pub fn session_cookie(head: &RequestHead) -> Option<&str> {
    head.cookie(SESSION_COOKIE)
        .or_else(|| head.cookie(SECURE_SESSION_COOKIE))
}

/// Checks JWTs against `CHAT_JWT_SECRET`; built once at start.
pub struct JwtVerifier {
    /// `None` when `CHAT_JWT_SECRET` is unset: every JWT is refused.
    key: Option<DecodingKey>,
    validation: Validation,
}

impl JwtVerifier {
    /// A verifier for HS256 tokens signed with `secret`. `None` (or an empty secret, which
    /// anyone could sign with) refuses every JWT; session tokens still work.
    pub fn new(secret: Option<&str>) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // The time and subject claims are checked below against the caller's clock, with
        // messages of our own; the library only checks the algorithm and signature.
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        JwtVerifier {
            key: secret
                .filter(|s| !s.is_empty())
                .map(|s| DecodingKey::from_secret(s.as_bytes())),
            validation,
        }
    }

    /// [`credential_at`](Self::credential_at) with the system clock.
    pub fn credential(&self, token: &str) -> Result<Credential, String> {
        self.credential_at(token, SystemTime::now())
    }

    /// What `token` proves at wall-clock time `now`.
    ///
    /// A token of three dot-separated parts is treated as a JWT: HS256 only (`alg: none` and
    /// every other algorithm are refused), `exp` required and after `now`, `nbf` (if any) not
    /// ahead of `now`, `sub` a uuid, `name` optional: [`Credential::Jwt`]. Anything else is
    /// an opaque session token for the store: [`Credential::Session`].
    ///
    /// # Errors
    /// Why the JWT is refused, or [`NO_TOKEN`] for an empty token.
    pub fn credential_at(&self, token: &str, now: SystemTime) -> Result<Credential, String> {
        if token.is_empty() {
            return Err(NO_TOKEN.to_owned());
        }
        if token.split('.').count() != 3 {
            return Ok(Credential::Session(token.to_owned()));
        }
        let Some(key) = &self.key else {
            return Err("JWT refused: CHAT_JWT_SECRET is unset on this server; \
                        connect with a session token or set CHAT_JWT_SECRET"
                .to_owned());
        };
        check_algorithm(token)?;
        let claims = jsonwebtoken::decode::<Claims>(token, key, &self.validation)
            .map_err(|e| jwt_error(e.kind()))?
            .claims;
        // Seconds since 1970; a clock before 1970 counts as 0.
        let now = now
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        match claims.exp {
            None | Some(Value::Null) => {
                return Err("JWT has no exp claim: tokens must expire".to_owned())
            }
            Some(exp) => match exp.as_f64() {
                Some(exp) if exp > now => {}
                Some(_) => return Err("token expired".to_owned()),
                None => return Err("JWT exp must be a number of seconds since 1970".to_owned()),
            },
        }
        if let Some(nbf) = claims.nbf.as_ref().and_then(Value::as_f64) {
            if nbf > now + NBF_LEEWAY_SECS {
                return Err("token not valid yet: its nbf is in the future".to_owned());
            }
        }
        let user = match &claims.sub {
            Some(Value::String(sub)) => sub.parse::<UserId>().map_err(|_| {
                format!(
                    "JWT sub {} is not a uuid: set sub to the users.id",
                    shown(sub)
                )
            })?,
            Some(Value::Null) | None => {
                return Err("JWT has no sub claim: set sub to the users.id".to_owned())
            }
            Some(_) => return Err("JWT sub must be a uuid string (the users.id)".to_owned()),
        };
        let name = match claims.name {
            Some(Value::String(name)) if !name.trim().is_empty() => Some(name),
            _ => None,
        };
        Ok(Credential::Jwt { user, name })
    }
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        f.debug_struct("JwtVerifier")
            .field("configured", &self.key.is_some())
            .finish()
    }
}

/// The claims read from a verified JWT; each is checked by hand for a precise message.
#[derive(Deserialize)]
struct Claims {
    sub: Option<Value>,
    exp: Option<Value>,
    nbf: Option<Value>,
    name: Option<Value>,
}

fn workspace(auth: Option<&Value>) -> Result<WorkspaceId, String> {
    let payload = match auth {
        None | Some(Value::Null) => {
            return Err("workspaceId missing from auth payload: \
                        connect with auth {token, workspaceId}"
                .to_owned())
        }
        Some(Value::Object(payload)) => payload,
        Some(_) => return Err("auth payload must be a JSON object {token, workspaceId}".to_owned()),
    };
    match payload.get("workspaceId") {
        None | Some(Value::Null) => Err("workspaceId missing from auth payload".to_owned()),
        Some(Value::String(id)) => id
            .parse::<WorkspaceId>()
            .map_err(|_| format!("workspaceId {} is not a uuid", shown(id))),
        Some(other) => Err(format!("workspaceId must be a uuid string, not {other}")),
    }
}

/// The token in a better-auth cookie value: the part before the first `.`, percent-decoded.
fn cookie_token(value: &str) -> Option<String> {
    let token = value.split('.').next().unwrap_or_default();
    let token = percent_decode(token.trim());
    (!token.is_empty()).then_some(token)
}

/// Refuses every algorithm but HS256 by name, before the library sees the token (it cannot
/// even parse `alg: none`, so its error would not say what to change).
fn check_algorithm(token: &str) -> Result<(), String> {
    let malformed = || "JWT header is not base64url-encoded JSON".to_owned();
    let header = token.split('.').next().unwrap_or_default();
    let header = base64url_decode(header).ok_or_else(malformed)?;
    let header: Value = serde_json::from_slice(&header).map_err(|_| malformed())?;
    match header.get("alg") {
        Some(Value::String(alg)) if alg == "HS256" => Ok(()),
        Some(Value::String(alg)) => Err(format!(
            "JWT algorithm {} is not accepted: sign with HS256",
            shown_alg(alg)
        )),
        _ => Err("JWT header has no alg: sign with HS256".to_owned()),
    }
}

fn jwt_error(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::InvalidSignature => {
            "JWT signature does not match: sign it with this server's CHAT_JWT_SECRET".to_owned()
        }
        ErrorKind::InvalidAlgorithm => "JWT algorithm is not accepted: sign with HS256".to_owned(),
        ErrorKind::Json(_) => "JWT claims are not a JSON object".to_owned(),
        ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Utf8(_) => {
            "JWT is malformed: its three parts must be base64url".to_owned()
        }
        other => format!("JWT refused: {other:?}"),
    }
}

/// `alg` as sent when it looks like an algorithm name, else quoted and cut short.
fn shown_alg(alg: &str) -> String {
    if !alg.is_empty() && alg.len() <= 16 && alg.bytes().all(|b| b.is_ascii_alphanumeric()) {
        alg.to_owned()
    } else {
        shown(alg)
    }
}

/// A client-sent value quoted for an error message, cut to 64 characters.
fn shown(value: &str) -> String {
    let cut: String = value.chars().take(64).collect();
    if cut.len() < value.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

/// Decodes unpadded (or padded) base64url, RFC 4648 §5; `None` on any other byte.
fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    fn sextet(b: u8) -> Option<u32> {
        Some(match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        } as u32)
    }
    let text = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.chunks(4) {
        if chunk.len() == 1 {
            return None;
        }
        let mut bits = 0u32;
        for (i, &b) in chunk.iter().enumerate() {
            bits |= sextet(b)? << (18 - 6 * i);
        }
        let bytes = bits.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests;
