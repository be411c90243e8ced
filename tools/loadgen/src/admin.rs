//! Provisioning through the server's admin API (contract §6) and minting the JWTs clients
//! connect with (contract §2: HS256, `sub` = user id, `exp` required). The HTTP client is a
//! minimal keep-alive HTTP/1.1 over a blocking `TcpStream`: provisioning is sequential and
//! a few thousand requests at most, so nothing fancier is needed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// A keep-alive connection to the admin API.
pub struct Admin {
    addr: SocketAddr,
    host: String,
    token: String,
    conn: Option<TcpStream>,
    buf: Vec<u8>,
    /// Requests made so far.
    pub requests: u64,
}

impl Admin {
    /// A client for the server at `addr`; `host` goes into the `Host` header.
    pub fn new(addr: SocketAddr, host: String, token: String) -> Self {
        Admin {
            addr,
            host,
            token,
            conn: None,
            buf: Vec::with_capacity(4096),
            requests: 0,
        }
    }

    /// POSTs `body` to `path` and returns the JSON response; a non-2xx status is an error that
    /// names the request and quotes the server's answer.
    pub fn post(&mut self, path: &str, body: &Value) -> Result<Value, String> {
        let body = body.to_string();
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: keep-alive\r\n\r\n{body}",
            self.host,
            self.token,
            body.len()
        );
        // One retry on a fresh connection: the server may have closed an idle keep-alive one.
        let (status, resp) = match self.round_trip(req.as_bytes()) {
            Ok(r) => r,
            Err(_) => {
                self.conn = None;
                self.round_trip(req.as_bytes())
                    .map_err(|e| format!("POST {path}: {e}"))?
            }
        };
        self.requests += 1;
        if !(200..300).contains(&status) {
            let hint = if status == 401 {
                " (check --admin-token / CHAT_ADMIN_TOKEN)"
            } else {
                ""
            };
            return Err(format!(
                "POST {path} -> HTTP {status}{hint}: {}",
                String::from_utf8_lossy(&resp)
            ));
        }
        serde_json::from_slice(&resp)
            .map_err(|e| format!("POST {path}: response is not JSON ({e})"))
    }

    fn round_trip(&mut self, req: &[u8]) -> Result<(u16, Vec<u8>), String> {
        if self.conn.is_none() {
            let s =
                TcpStream::connect_timeout(&self.addr, Duration::from_secs(5)).map_err(|e| {
                    format!(
                        "cannot connect to {} ({e}); is the server running?",
                        self.addr
                    )
                })?;
            s.set_read_timeout(Some(Duration::from_secs(30)))
                .map_err(|e| e.to_string())?;
            s.set_nodelay(true).map_err(|e| e.to_string())?;
            self.conn = Some(s);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err("no connection".into());
        };
        conn.write_all(req).map_err(|e| format!("write: {e}"))?;
        self.buf.clear();
        let mut chunk = [0u8; 8192];
        let head_end = loop {
            if let Some(i) = memchr::memmem::find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            let n = conn.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("server closed the connection before answering".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line: {}", head.lines().next().unwrap_or("")))?;
        let mut content_length = None;
        let mut close = false;
        for line in head.lines().skip(1) {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let v = v.trim();
            if k.eq_ignore_ascii_case("content-length") {
                content_length = v.parse::<usize>().ok();
            } else if k.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close") {
                close = true;
            } else if k.eq_ignore_ascii_case("transfer-encoding")
                && v.eq_ignore_ascii_case("chunked")
            {
                return Err(
                    "chunked responses are not supported by the loadgen's admin client".into(),
                );
            }
        }
        let body = match content_length {
            Some(len) => {
                while self.buf.len() < head_end + len {
                    let n = conn.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
                    if n == 0 {
                        return Err("server closed the connection mid-body".into());
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                self.buf[head_end..head_end + len].to_vec()
            }
            None => {
                // No length: the body runs to the end of the connection.
                loop {
                    let n = conn.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
                    if n == 0 {
                        break;
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                close = true;
                self.buf[head_end..].to_vec()
            }
        };
        if close {
            self.conn = None;
        }
        Ok((status, body))
    }
}

/// Ids created for one run.
#[derive(Debug, Clone)]
pub struct Provisioned {
    /// The workspace every user joined.
    pub workspace_id: String,
    /// The channel every user joined (the first of `channels`).
    pub channel_id: String,
    /// All channels of the run; user `i` is a member of `channels[i % channels.len()]`.
    pub channels: Vec<String>,
    /// `(user id, user name)` per user.
    pub users: Vec<(String, String)>,
}

fn id_of(v: &Value, what: &str) -> Result<String, String> {
    v.get("id")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| format!("creating {what}: response has no string \"id\": {v}"))
}

/// Creates a workspace and a channel with unique slugs, and `users` users who are members of
/// both. Prints progress every 1,000 users.
pub fn provision(admin: &mut Admin, run_tag: &str, users: usize) -> Result<Provisioned, String> {
    provision_rooms(admin, run_tag, users, 1)
}

/// Creates a workspace, `channels` channels in it, and `users` users, all members of the
/// workspace and user `i` a member of channel `i % channels` only.
pub fn provision_rooms(
    admin: &mut Admin,
    run_tag: &str,
    users: usize,
    channels: usize,
) -> Result<Provisioned, String> {
    let ws = admin.post(
        "/api/v1/workspaces",
        &json!({"slug": format!("lg-{run_tag}"), "name": "loadgen"}),
    )?;
    let workspace_id = id_of(&ws, "workspace")?;
    let mut chans = Vec::with_capacity(channels.max(1));
    for c in 0..channels.max(1) {
        let slug = if c == 0 {
            "load".to_string()
        } else {
            format!("load-{c}")
        };
        let ch = admin.post(
            "/api/v1/channels",
            &json!({"workspaceId": workspace_id, "slug": slug, "name": slug}),
        )?;
        chans.push(id_of(&ch, "channel")?);
    }
    let channel_id = chans[0].clone();
    let mut out = Vec::with_capacity(users);
    for i in 0..users {
        let name = format!("lg{i}");
        let u = admin.post("/api/v1/users", &json!({"name": name}))?;
        let uid = id_of(&u, "user")?;
        admin.post(
            &format!("/api/v1/workspaces/{workspace_id}/members"),
            &json!({"userId": uid}),
        )?;
        admin.post(
            &format!("/api/v1/channels/{}/members", chans[i % chans.len()]),
            &json!({"userId": uid}),
        )?;
        out.push((uid, name));
        if (i + 1) % 1000 == 0 {
            eprintln!("  provisioned {} / {users} users", i + 1);
        }
    }
    Ok(Provisioned {
        workspace_id,
        channel_id,
        channels: chans,
        users: out,
    })
}

/// An HS256 JWT for `user_id` valid for `ttl`.
pub fn mint_jwt(secret: &str, user_id: &str, name: &str, ttl: Duration) -> Result<String, String> {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        name: &'a str,
        exp: u64,
        iat: u64,
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let claims = Claims {
        sub: user_id,
        name,
        exp: now + ttl.as_secs(),
        iat: now,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| format!("cannot sign a JWT: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;

    #[test]
    fn jwt_verifies_with_the_same_secret_only() {
        let t = mint_jwt(
            "s3cret-s3cret-s3cret-s3cret-s3cret",
            "u-1",
            "lg1",
            Duration::from_secs(60),
        )
        .unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.set_required_spec_claims(&["exp", "sub"]);
        let key = jsonwebtoken::DecodingKey::from_secret(b"s3cret-s3cret-s3cret-s3cret-s3cret");
        let d = jsonwebtoken::decode::<Value>(&t, &key, &v).unwrap();
        assert_eq!(d.claims["sub"], "u-1");
        assert_eq!(d.claims["name"], "lg1");
        let wrong = jsonwebtoken::DecodingKey::from_secret(b"other");
        assert!(jsonwebtoken::decode::<Value>(&t, &wrong, &v).is_err());
    }

    #[test]
    fn posts_json_over_keep_alive_and_reports_errors() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut r = std::io::BufReader::new(s.try_clone().unwrap());
            let mut w = s;
            for (i, reply) in [
                ("200 OK", r#"{"id":"abc"}"#),
                ("401 Unauthorized", r#"{"error":"no"}"#),
            ]
            .iter()
            .enumerate()
            {
                let mut len = 0;
                let mut auth = String::new();
                loop {
                    let mut line = String::new();
                    r.read_line(&mut line).unwrap();
                    if line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.strip_prefix("Content-Length: ") {
                        len = v.trim().parse().unwrap();
                    }
                    if line.starts_with("Authorization:") {
                        auth = line.clone();
                    }
                }
                assert_eq!(auth, "Authorization: Bearer tok\r\n", "request {i}");
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                let _: Value = serde_json::from_slice(&body).unwrap();
                write!(
                    w,
                    "HTTP/1.1 {}\r\nContent-Length: {}\r\n\r\n{}",
                    reply.0,
                    reply.1.len(),
                    reply.1
                )
                .unwrap();
            }
        });
        let mut a = Admin::new(addr, addr.to_string(), "tok".into());
        let v = a.post("/api/v1/users", &json!({"name": "x"})).unwrap();
        assert_eq!(v["id"], "abc");
        let e = a.post("/api/v1/users", &json!({"name": "y"})).unwrap_err();
        assert!(e.contains("HTTP 401") && e.contains("--admin-token"), "{e}");
        server.join().unwrap();
    }
}
