//! Durability of the PostgreSQL store, end to end through the real binary: a SIGKILL while
//! clients send at full speed loses no acked message, and a PostgreSQL outage during sends
//! neither crashes the server nor loses acked messages. Needs PostgreSQL (see
//! `ocomms_rt::store::pg::testing`); the outage test stops and restarts the local cluster with
//! `pg_ctlcluster`, so the tests of this file run one at a time.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ocomms_rt::store::pg::testing::TestDb;
use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};
use uuid::Uuid;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

/// The tests of this file share the PostgreSQL cluster, which one of them stops.
static SERIAL: Mutex<()> = Mutex::new(());

struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(url: &str) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ocomms-rt"))
            .env("CHAT_LISTEN", "127.0.0.1:0")
            .env("DATABASE_URL", url)
            .env("CHAT_JWT_SECRET", SECRET)
            .env("CHAT_SHARDS", "2")
            .env("RUST_LOG", "info")
            .env_remove("REDIS_URL")
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
        thread::spawn(move || for _ in lines {});
        Server { child, addr }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the local PostgreSQL cluster again when dropped, even when a test failed.
struct PgGuard;

fn pg_ctl(action: &str) -> bool {
    let version = std::fs::read_dir("/etc/postgresql")
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .unwrap_or_else(|| "15".into());
    let mut cmd = Command::new("pg_ctlcluster");
    cmd.args(["--skip-systemctl-redirect", &version, "main", action]);
    if action == "stop" {
        cmd.args(["-m", "fast"]);
    }
    cmd.status().is_ok_and(|s| s.success())
}

impl Drop for PgGuard {
    fn drop(&mut self) {
        pg_ctl("start");
    }
}

/// One user in one workspace with `channels` channels, written straight into the tables.
fn provision(db: &TestDb, channels: usize) -> (Uuid, Uuid, Vec<Uuid>) {
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

fn jwt(user: Uuid) -> String {
    let exp = chrono::Utc::now().timestamp() + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": user, "name": "Ann", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

struct Socket {
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
}

impl Socket {
    fn connect(addr: &str, user: Uuid, workspace: Uuid) -> Socket {
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

    fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text)).unwrap();
    }

    /// The next text packet, answering pings; `None` once the connection is gone.
    fn recv(&mut self) -> Option<String> {
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

/// What a driver saw: acked `clientMsgId -> sequence` in ack order, and refusals.
#[derive(Default)]
struct Outcome {
    acked: Vec<(String, i64)>,
    refused: usize,
}

/// Sends to `channel` as fast as acks come back, `window` in flight, until `stop` is set
/// or the connection breaks.
fn drive(
    mut s: Socket,
    channel: Uuid,
    tag: &str,
    window: u64,
    stop: &AtomicBool,
    acked: &AtomicUsize,
    refused: &AtomicUsize,
) -> Outcome {
    let mut out = Outcome::default();
    let mut in_flight: HashMap<u64, String> = HashMap::new();
    let mut next = 0u64;
    'outer: loop {
        while !stop.load(SeqCst) && (in_flight.len() as u64) < window {
            let cmid = format!("{tag}-{next}");
            let data = json!({"targetId": channel, "targetType": "channel",
                              "content": format!("m {cmid}"), "clientMsgId": cmid});
            if s.ws
                .send(Message::text(format!("42{next}[\"message:send\",{data}]")))
                .is_err()
            {
                break 'outer;
            }
            in_flight.insert(next, cmid);
            next += 1;
        }
        if in_flight.is_empty() {
            break;
        }
        let Some(text) = s.recv() else { break };
        let Some(rest) = text.strip_prefix("43") else {
            continue;
        };
        let split = rest.find('[').unwrap();
        let id: u64 = rest[..split].parse().unwrap();
        let body: Value = serde_json::from_str(&rest[split..]).unwrap();
        let cmid = in_flight.remove(&id).unwrap();
        if body[0]["success"] == true {
            out.acked
                .push((cmid, body[0]["sequence"].as_i64().unwrap()));
            acked.fetch_add(1, SeqCst);
        } else {
            out.refused += 1;
            refused.fetch_add(1, SeqCst);
        }
    }
    out
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Every acked message is in the table exactly once with its acked sequence; per channel the
/// acks of one connection are in increasing sequence order.
fn check_acked(db: &TestDb, outcomes: &[(Uuid, Outcome)]) {
    let mut c = db.client();
    for (channel, outcome) in outcomes {
        let mut last = 0;
        for (cmid, seq) in &outcome.acked {
            assert!(*seq > last, "sequences of one connection increase");
            last = *seq;
            let rows = c
                .query(
                    "SELECT sequence, channel_id FROM messages WHERE client_msg_id = $1",
                    &[cmid],
                )
                .unwrap();
            assert_eq!(rows.len(), 1, "acked {cmid} is stored exactly once");
            assert_eq!(rows[0].get::<_, i64>(0), *seq);
            assert_eq!(rows[0].get::<_, Uuid>(1), *channel);
        }
    }
}

#[test]
fn sigkill_during_full_speed_sends_loses_no_acked_message() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _pg = PgGuard;
    let db = TestDb::create();
    let (user, ws, channels) = provision(&db, 2);
    let mut server = Server::start(&db.url());
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let mut drivers = Vec::new();
    for i in 0..4 {
        let channel = channels[i % 2];
        let s = Socket::connect(&server.addr, user, ws);
        let (stop, acked, refused) = (stop.clone(), acked.clone(), refused.clone());
        drivers.push(thread::spawn(move || {
            let out = drive(s, channel, &format!("k{i}"), 32, &stop, &acked, &refused);
            (channel, out)
        }));
    }
    wait_until("400 acks", Duration::from_secs(60), || {
        acked.load(SeqCst) >= 400
    });
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    let outcomes: Vec<_> = drivers.into_iter().map(|d| d.join().unwrap()).collect();
    assert_eq!(
        refused.load(SeqCst),
        0,
        "no send was refused before the kill"
    );
    check_acked(&db, &outcomes);

    // Per channel: sequences 1..=n, each once (nothing half-written, no gaps).
    let mut c = db.client();
    for ch in &channels {
        let row = c
            .query_one(
                "SELECT count(*), count(DISTINCT sequence), max(sequence) FROM messages WHERE channel_id = $1",
                &[ch],
            )
            .unwrap();
        let (n, distinct, max): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(
            (n, distinct),
            (max, max),
            "channel {ch} holds 1..={max} once each"
        );
    }

    // After a restart, sends continue the sequence.
    let server = Server::start(&db.url());
    let before: i64 = c
        .query_one(
            "SELECT max(sequence) FROM messages WHERE channel_id = $1",
            &[&channels[0]],
        )
        .unwrap()
        .get(0);
    let s = Socket::connect(&server.addr, user, ws);
    let mut one = Outcome::default();
    {
        let mut s = s;
        s.send(&format!(
            "421[\"message:send\",{}]",
            json!({"targetId": channels[0], "targetType": "channel", "content": "after"})
        ));
        while let Some(text) = s.recv() {
            if let Some(rest) = text.strip_prefix("431") {
                let body: Value = serde_json::from_str(rest).unwrap();
                assert_eq!(body[0]["success"], true, "{body}");
                one.acked
                    .push(("after".into(), body[0]["sequence"].as_i64().unwrap()));
                break;
            }
        }
    }
    assert_eq!(
        one.acked[0].1,
        before + 1,
        "the sequence continues after a restart"
    );
}

#[test]
fn postgres_outage_during_sends_loses_nothing_and_the_server_recovers() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _pg = PgGuard;
    let db = TestDb::create();
    let (user, ws, channels) = provision(&db, 1);
    let mut server = Server::start(&db.url());
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let mut drivers = Vec::new();
    for i in 0..2 {
        let s = Socket::connect(&server.addr, user, ws);
        let (stop, acked, refused) = (stop.clone(), acked.clone(), refused.clone());
        let channel = channels[0];
        drivers.push(thread::spawn(move || {
            (
                channel,
                drive(s, channel, &format!("o{i}"), 8, &stop, &acked, &refused),
            )
        }));
    }
    wait_until("100 acks", Duration::from_secs(60), || {
        acked.load(SeqCst) >= 100
    });
    assert!(pg_ctl("stop"), "pg_ctlcluster stop works");
    wait_until("refused sends", Duration::from_secs(30), || {
        refused.load(SeqCst) > 0
    });
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server is still up"
    );
    assert!(pg_ctl("start"), "pg_ctlcluster start works");
    let resumed = acked.load(SeqCst);
    wait_until("acks after the restart", Duration::from_secs(60), || {
        acked.load(SeqCst) >= resumed + 100
    });
    stop.store(true, SeqCst);
    let outcomes: Vec<_> = drivers.into_iter().map(|d| d.join().unwrap()).collect();
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server never crashed"
    );
    check_acked(&db, &outcomes);
}

#[test]
fn a_membership_the_web_app_writes_reaches_a_live_socket() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let db = TestDb::create();
    let (user, ws, _) = provision(&db, 0);
    let server = Server::start(&db.url());
    let mut s = Socket::connect(&server.addr, user, ws);
    // The web app adds a channel and the user to it, straight in the tables.
    let channel = Uuid::new_v4();
    let mut c = db.client();
    c.execute(
        "INSERT INTO channels (id, workspace_id, slug, name) VALUES ($1, $2, 'new', 'New')",
        &[&channel, &ws],
    )
    .unwrap();
    c.execute(
        "INSERT INTO channel_members (channel_id, user_id) VALUES ($1, $2)",
        &[&channel, &user],
    )
    .unwrap();
    // The socket is in the room within 2 s: its own send comes back as message:new.
    let end = Instant::now() + Duration::from_secs(2);
    let mut id = 0;
    loop {
        assert!(Instant::now() < end, "the socket never joined the room");
        id += 1;
        let data = json!({"targetId": channel, "targetType": "channel", "content": "hi"});
        s.send(&format!("42{id}[\"message:send\",{data}]"));
        let mut delivered = false;
        loop {
            let text = s.recv().expect("connection stays open");
            if text.starts_with("42[\"message:new\"") {
                delivered = true;
            }
            if text.starts_with(&format!("43{id}[")) {
                break;
            }
        }
        // message:new is published before the ack, so it is seen first if at all.
        if delivered {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
}
