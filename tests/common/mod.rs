//! What the end-to-end tests on PostgreSQL share: the real binary on an ephemeral port,
//! rows written straight into the tables, and a raw Socket.IO client over tungstenite.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ocomms_rt::store::pg::testing::TestDb;
use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};
use uuid::Uuid;

pub const SECRET: &str = "0123456789abcdef0123456789abcdef";

pub struct Server {
    pub child: Child,
    pub addr: String,
    /// Every line the server logged after its address.
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    pub fn start(url: &str) -> Server {
        Server::start_with(url, &[])
    }

    /// [`Server::start`] with more settings in its environment.
    pub fn start_with(url: &str, settings: &[(&str, &str)]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ocomms-rt"))
            .env("CHAT_LISTEN", "127.0.0.1:0")
            .env("DATABASE_URL", url)
            .env("CHAT_JWT_SECRET", SECRET)
            .env("CHAT_SHARDS", "2")
            // These tests drive sends as fast as acks (and refusals, in an outage) come back:
            // durability is under test here, not the per-socket send budget.
            .env("CHAT_LIMIT_SENDS", "1000000/1s")
            .env("RUST_LOG", "info")
            .env_remove("REDIS_URL")
            .envs(settings.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the ocomms-rt binary starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("the server logs its address before exiting")
                .unwrap();
            if let Some(rest) = line.split("listen=").nth(1) {
                break rest.split_whitespace().next().unwrap().to_owned();
            }
        };
        // Keep draining the log so the server never blocks on a full pipe.
        let log = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&log);
        thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                kept.lock().unwrap().push(line);
            }
        });
        Server { child, addr, log }
    }

    /// Whether a line the server logged so far contains `text`.
    pub fn logged(&self, text: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(text))
    }

    /// The sum of every sample of `name` in `GET /metrics` (over its label sets).
    pub fn metric(&self, name: &str) -> Option<f64> {
        let mut stream = TcpStream::connect(&self.addr).expect("the server accepts");
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        let values: Vec<f64> = text
            .lines()
            .filter_map(|l| l.strip_prefix(name))
            .filter(|rest| rest.starts_with([' ', '{']))
            .filter_map(|rest| rest.rsplit(' ').next()?.parse().ok())
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One user in one workspace with `channels` channels, written straight into the tables.
pub fn provision(db: &TestDb, channels: usize) -> (Uuid, Uuid, Vec<Uuid>) {
    ocomms_rt::store::pg::migrate(&db.url()).unwrap();
    let mut c = db.client();
    let (user, ws) = (Uuid::new_v4(), Uuid::new_v4());
    c.execute("INSERT INTO users (id, name) VALUES ($1, 'Ann')", &[&user])
        .unwrap();
    c.execute(
        "INSERT INTO workspaces (id, slug, name) VALUES ($1, 'acme', 'Acme')",
        &[&ws],
    )
    .unwrap();
    c.execute(
        "INSERT INTO workspace_members (workspace_id, user_id) VALUES ($1, $2)",
        &[&ws, &user],
    )
    .unwrap();
    let mut ids = Vec::new();
    for i in 0..channels {
        let ch = Uuid::new_v4();
        c.execute(
            "INSERT INTO channels (id, workspace_id, slug, name) VALUES ($1, $2, $3, $3)",
            &[&ch, &ws, &format!("c{i}")],
        )
        .unwrap();
        c.execute(
            "INSERT INTO channel_members (channel_id, user_id) VALUES ($1, $2)",
            &[&ch, &user],
        )
        .unwrap();
        ids.push(ch);
    }
    (user, ws, ids)
}

pub fn jwt(user: Uuid) -> String {
    let exp = chrono::Utc::now().timestamp() + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": user, "name": "Ann", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

pub struct Socket {
    pub ws: WebSocket<MaybeTlsStream<TcpStream>>,
}

impl Socket {
    pub fn connect(addr: &str, user: Uuid, workspace: Uuid) -> Socket {
        let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
        let (ws, _) = tungstenite::connect(url).expect("WebSocket upgrade");
        let mut s = Socket { ws };
        assert!(s.recv().unwrap().starts_with('0'), "Engine.IO open first");
        s.send(&format!(
            "40{}",
            json!({"token": jwt(user), "workspaceId": workspace})
        ));
        loop {
            let text = s.recv().expect("CONNECT answered");
            assert!(!text.starts_with("44"), "CONNECT refused: {text}");
            if text.starts_with("40") {
                return s;
            }
        }
    }

    pub fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text)).unwrap();
    }

    /// The next text packet, answering pings; `None` once the connection is gone.
    pub fn recv(&mut self) -> Option<String> {
        loop {
            match self.ws.read().ok()? {
                Message::Text(t) if t.as_str() == "2" => {
                    self.ws.send(Message::text("3")).ok()?;
                }
                Message::Text(t) => return Some(t.as_str().to_owned()),
                Message::Close(_) => return None,
                _ => {}
            }
        }
    }
}

pub fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `message:send` with ack id `ack` and returns the ack's body, answering pings and
/// passing every other packet read meanwhile to `seen`.
pub fn send_and_ack(s: &mut Socket, ack: u64, data: &Value, mut seen: impl FnMut(&str)) -> Value {
    s.send(&format!("42{ack}[\"message:send\",{data}]"));
    let prefix = format!("43{ack}");
    loop {
        let text = s.recv().expect("the connection stays open until the ack");
        if let Some(rest) = text.strip_prefix(&prefix).filter(|r| r.starts_with('[')) {
            let body: Value = serde_json::from_str(rest).unwrap();
            return body[0].clone();
        }
        seen(&text);
    }
}
