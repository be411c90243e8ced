//! Sends on PostgreSQL end to end through the real binary: a NUL character is refused while
//! an honest sender at the same moment is acked, and a COMMIT whose answer was lost (the
//! connection cut while it was in flight) is broadcast exactly once: when the sender retries
//! with its clientMsgId, or, without one, once the database is back. A database too slow for
//! the queue in front of it gets sends refused as busy once the oldest has waited past the
//! bound, and loses none it took.
//! Needs PostgreSQL (see `ocomms_rt::store::pg::testing`).

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{provision, send_and_ack, Server, Socket};
use ocomms_rt::mesh::WAIT_BOUND_MIN_QUEUE;
use ocomms_rt::store::pg::testing::{server_url, TestDb};
use serde_json::{json, Value};

#[test]
fn a_nul_is_refused_while_an_honest_sender_at_the_same_moment_is_acked() {
    let db = TestDb::create();
    let (user, ws, channels) = provision(&db, 1);
    let server = Server::start(&db.url());
    let mut bad = Socket::connect(&server.addr, user, ws);
    let mut honest = Socket::connect(&server.addr, user, ws);
    let channel = channels[0];
    let nul = json!({"targetId": channel, "targetType": "channel", "content": "a\u{0}b", "clientMsgId": "bad"});
    let nul_id = json!({"targetId": channel, "targetType": "channel", "content": "hi", "clientMsgId": "k\u{0}"});
    let fine = json!({"targetId": channel, "targetType": "channel", "content": "hello", "clientMsgId": "good"});
    bad.send(&format!("421[\"message:send\",{nul}]"));
    bad.send(&format!("422[\"message:send\",{nul_id}]"));
    let ack = send_and_ack(&mut honest, 1, &fine, |_| {});
    assert_eq!(ack["success"], true, "the honest send is acked: {ack}");
    for (id, field) in [(1, "content"), (2, "clientMsgId")] {
        let ack = loop {
            let text = bad.recv().expect("the connection stays open");
            if let Some(rest) = text.strip_prefix(&format!("43{id}[")) {
                break serde_json::from_str::<Value>(&format!("[{rest}")).unwrap()[0].clone();
            }
        };
        assert_eq!(ack["success"], false, "{ack}");
        let error = ack["error"].as_str().unwrap_or_default();
        assert!(
            error.starts_with(&format!("{field} contains a NUL character")),
            "{error}"
        );
    }
    let stored: Vec<String> = db
        .client()
        .query("SELECT content FROM messages", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(stored, ["hello"]);
}

#[test]
fn sends_past_the_wait_bound_are_refused_at_once_every_queued_send_is_stored_and_the_stall_logged()
{
    let db = TestDb::create();
    let (user, ws, channels) = provision(&db, 1);
    let channel = channels[0];
    let server = Server::start_with(
        &db.url(),
        &[
            ("CHAT_MAX_STORE_WAIT_MS", "300"),
            ("CHAT_MAX_IN_FLIGHT", "4096"),
        ],
    );
    let mut s = Socket::connect(&server.addr, user, ws);
    let data = |i: u64| json!({"targetId": channel, "targetType": "channel", "content": format!("q{i}"), "clientMsgId": format!("q{i}")});
    // After a first send the channel has its counter row; a transaction holding that row
    // stalls the writer's next batch of the channel on its lock.
    assert_eq!(send_and_ack(&mut s, 1, &data(1), |_| {})["success"], true);
    let mut blocker = db.client();
    let mut hold = blocker.transaction().unwrap();
    hold.execute(
        "SELECT 1 FROM message_sequences WHERE target_id = $1 FOR UPDATE",
        &[&channel],
    )
    .unwrap();
    let queued = 2..2 + WAIT_BOUND_MIN_QUEUE as u64 + 100;
    for i in queued.clone() {
        s.send(&format!("42{i}[\"message:send\",{}]", data(i)));
    }
    let started = Instant::now();
    common::wait_until(
        "the oldest send to wait past 300 ms",
        Duration::from_secs(4),
        || server.metric("ocomms_store_wait_seconds").unwrap_or(0.0) > 0.3,
    );
    let late = queued.end;
    s.send(&format!("42{late}[\"message:send\",{}]", data(late)));
    let mut acks: Vec<(u64, Value)> = Vec::new();
    let refusal = loop {
        let text = s.recv().expect("the connection stays open");
        if let Some((id, body)) = ack_of(&text) {
            if id == late {
                break body;
            }
            acks.push((id, body));
        }
    };
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "refused while the lock still held (its 5 s timeout not reached)"
    );
    assert_eq!(refusal["success"], false, "{refusal}");
    let why = refusal["error"].as_str().unwrap_or_default();
    assert!(
        why.contains("the server is busy (sends have waited") && why.contains("300 ms bound"),
        "{why}"
    );
    assert!(
        acks.is_empty(),
        "nothing was stored while the lock held: {acks:?}"
    );
    assert_eq!(
        server.metric("ocomms_requests_refused_busy_total"),
        Some(1.0)
    );
    // The stalled batch started before every queued send: once they waited 600 ms, it has
    // taken longer than the 500 ms past which slow batches are logged.
    common::wait_until(
        "the queued sends to wait past 600 ms",
        Duration::from_secs(3),
        || server.metric("ocomms_store_wait_seconds").unwrap_or(0.0) > 0.6,
    );
    hold.rollback().unwrap();
    // Every send queued before the bound was passed is stored, in order.
    while acks.len() < queued.clone().count() {
        let text = s.recv().expect("the connection stays open");
        acks.extend(ack_of(&text));
    }
    let sequences: Vec<i64> = acks
        .iter()
        .map(|(id, body)| {
            assert_eq!(body["success"], true, "send {id}: {body}");
            body["sequence"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(
        sequences,
        (2..2 + sequences.len() as i64).collect::<Vec<_>>()
    );
    // The queue has drained: a new send is taken again.
    let next = late + 1;
    assert_eq!(
        send_and_ack(&mut s, next, &data(next), |_| {})["success"],
        true
    );
    // The first send, the queued ones and the last are stored; the refused one is not.
    let counts = db
        .client()
        .query_one(
            "SELECT count(*) FILTER (WHERE client_msg_id <> $1),
                    count(*) FILTER (WHERE client_msg_id = $1)
             FROM messages",
            &[&format!("q{late}")],
        )
        .unwrap();
    let (stored, refused): (i64, i64) = (counts.get(0), counts.get(1));
    assert_eq!((stored, refused), (sequences.len() as i64 + 2, 0));
    // The stall is in the log, to be found by its time next to PostgreSQL's.
    common::wait_until(
        "the slow batch to be logged",
        Duration::from_secs(5),
        || server.logged("send batches took over 500 ms to store"),
    );
}

/// The ack id and body of a Socket.IO ACK packet (`43<id>[body]`).
fn ack_of(text: &str) -> Option<(u64, Value)> {
    let rest = text.strip_prefix("43")?;
    let at = rest.find('[')?;
    let id = rest[..at].parse().ok()?;
    let body = serde_json::from_str::<Value>(&rest[at..]).ok()?;
    Some((id, body[0].clone()))
}

/// A TCP proxy in front of PostgreSQL. Armed with a marker, it forwards the first client
/// packet holding it and the rest of that statement (up to its Sync), lets the server answer in full (up to ReadyForQuery: the implicit
/// transaction is committed) but drops that answer and closes the client's connection, and
/// then refuses new connections until [`Proxy::heal`].
struct Proxy {
    port: u16,
    /// One `()` each time the server has answered a cut statement to its end.
    answered: mpsc::Receiver<()>,
    marker: Arc<Mutex<Option<Vec<u8>>>>,
    refusing: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let marker = Arc::new(Mutex::new(None::<Vec<u8>>));
        let refusing = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, r, s) = (marker.clone(), refusing.clone(), stop.clone());
        let (done, answered) = mpsc::channel();
        thread::spawn(move || {
            for client in listener.incoming() {
                if s.load(SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                if r.load(SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                pump(client, server, m.clone(), r.clone(), done.clone());
            }
        });
        Proxy {
            port,
            answered,
            marker,
            refusing,
            stop,
        }
    }

    fn arm(&self, marker: &[u8]) {
        *self.marker.lock().unwrap() = Some(marker.to_vec());
    }

    fn heal(&self) {
        self.refusing.store(false, SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Copies both ways between `client` and `server`, cutting as [`Proxy`] describes.
fn pump(
    mut client: TcpStream,
    mut server: TcpStream,
    marker: Arc<Mutex<Option<Vec<u8>>>>,
    refusing: Arc<AtomicBool>,
    answered: mpsc::Sender<()>,
) {
    let cut = Arc::new(AtomicBool::new(false));
    let (mut client_w, mut server_r) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let cut_r = cut.clone();
    thread::spawn(move || {
        let mut buf = [0u8; 65536];
        let mut answer: Vec<u8> = Vec::new();
        while let Ok(n) = server_r.read(&mut buf) {
            if n == 0 {
                break;
            }
            if !cut_r.load(SeqCst) {
                if client_w.write_all(&buf[..n]).is_err() {
                    break;
                }
                continue;
            }
            // After the cut: read the answer to its end (ReadyForQuery), then hang up.
            answer.extend_from_slice(&buf[..n]);
            if ready_for_query(&answer) {
                let _ = answered.send(());
                break;
            }
        }
        let _ = server_r.shutdown(Shutdown::Both);
        let _ = client_w.shutdown(Shutdown::Both);
    });
    thread::spawn(move || {
        let mut buf = [0u8; 65536];
        // Since the marker: forwarded until the statement's Sync (which commits it).
        let mut since: Option<Vec<u8>> = None;
        while let Ok(n) = client.read(&mut buf) {
            if n == 0 {
                break;
            }
            let chunk = &buf[..n];
            let hit = since.is_none() && {
                let mut armed = marker.lock().unwrap();
                let hit = armed
                    .as_ref()
                    .is_some_and(|m| chunk.windows(m.len()).any(|w| w == &m[..]));
                if hit {
                    *armed = None;
                    refusing.store(true, SeqCst);
                    cut.store(true, SeqCst);
                }
                hit
            };
            if server.write_all(chunk).is_err() {
                break;
            }
            if hit {
                since = Some(Vec::new());
            }
            if let Some(since) = since.as_mut() {
                since.extend_from_slice(chunk);
                if since.windows(5).any(|w| w == b"S\0\0\0\x04") {
                    let _ = client.shutdown(Shutdown::Both);
                    return;
                }
            }
        }
        let _ = server.shutdown(Shutdown::Both);
    });
}

/// Whether the backend messages in `bytes` include ReadyForQuery (`Z`).
fn ready_for_query(bytes: &[u8]) -> bool {
    let mut at = 0;
    while at + 5 <= bytes.len() {
        if bytes[at] == b'Z' {
            return true;
        }
        let len = u32::from_be_bytes(bytes[at + 1..at + 5].try_into().unwrap()) as usize;
        at += 1 + len;
    }
    false
}

/// A server whose PostgreSQL connections go through a [`Proxy`], and a socket in a channel.
struct CutSetup {
    db: TestDb,
    proxy: Proxy,
    _server: Server,
    socket: Socket,
    channel: Value,
}

fn cut_setup() -> CutSetup {
    let db = TestDb::create();
    let (user, ws, channels) = provision(&db, 1);
    let upstream = server_url()
        .trim_start_matches("postgres://")
        .rsplit('@')
        .next()
        .unwrap()
        .to_owned();
    let proxy = Proxy::start(upstream);
    let url = format!("postgres://postgres@127.0.0.1:{}/{}", proxy.port, {
        db.url().rsplit('/').next().unwrap().to_owned()
    });
    let server = Server::start(&url);
    let socket = Socket::connect(&server.addr, user, ws);
    CutSetup {
        db,
        proxy,
        _server: server,
        socket,
        channel: json!(channels[0]),
    }
}

/// Collects the `message:new` payloads among other frames.
fn news_of(news: &mut Vec<Value>) -> impl FnMut(&str) + '_ {
    |text: &str| {
        if text.starts_with("42[\"message:new\",") {
            let packet: Value = serde_json::from_str(&text[2..]).unwrap();
            news.push(packet[1].clone());
        }
    }
}

/// Sends `data` until it is acked with success (the server may still be reconnecting).
fn send_until_acked(s: &mut Socket, first_ack: u64, data: &Value, news: &mut Vec<Value>) -> Value {
    let end = Instant::now() + Duration::from_secs(60);
    let mut ack_id = first_ack;
    loop {
        let ack = send_and_ack(s, ack_id, data, news_of(news));
        if ack["success"] == true {
            return ack;
        }
        assert!(Instant::now() < end, "the send never succeeded: {ack}");
        ack_id += 1;
        thread::sleep(Duration::from_millis(100));
    }
}

/// Cuts the statement of a send holding `content` at COMMIT: the sender is told it failed,
/// but the row is stored. Returns its id and sequence.
fn cut_send(c: &mut CutSetup, data: &Value, news: &mut Vec<Value>) -> (String, i64) {
    let content = data["content"].as_str().unwrap().to_owned();
    c.proxy.arm(content.as_bytes());
    let ack = send_and_ack(&mut c.socket, 1, data, news_of(news));
    assert_eq!(
        ack["success"], false,
        "the sender learns nothing stored: {ack}"
    );
    c.proxy
        .answered
        .recv_timeout(Duration::from_secs(60))
        .expect("PostgreSQL answered the cut statement");
    let rows =
        c.db.client()
            .query(
                "SELECT id::text, sequence FROM messages WHERE content = $1",
                &[&content],
            )
            .unwrap();
    assert_eq!(rows.len(), 1, "the statement did commit");
    (rows[0].get(0), rows[0].get(1))
}

fn contents(news: &[Value]) -> Vec<&str> {
    news.iter()
        .map(|m| m["content"].as_str().unwrap_or_default())
        .collect()
}

#[test]
fn a_commit_whose_answer_was_lost_is_broadcast_exactly_once_when_the_sender_retries() {
    let mut c = cut_setup();
    let mut news: Vec<Value> = Vec::new();
    let data = json!({"targetId": c.channel, "targetType": "channel",
                      "content": "cut-at-commit", "clientMsgId": "amb-1"});
    let (id, sequence) = cut_send(&mut c, &data, &mut news);

    // The retry (repeated while the server is still reconnecting) returns the original.
    c.proxy.heal();
    let ack = send_until_acked(&mut c.socket, 2, &data, &mut news);
    assert_eq!(ack["messageId"], id.as_str(), "{ack}");
    assert_eq!(ack["sequence"], sequence);

    // Everything published before this ack has reached the socket by now.
    let next = json!({"targetId": c.channel, "targetType": "channel", "content": "after"});
    let ack = send_and_ack(&mut c.socket, 1000, &next, news_of(&mut news));
    assert_eq!(ack["success"], true, "{ack}");
    assert_eq!(contents(&news), ["cut-at-commit", "after"], "{news:?}");
}

#[test]
fn a_commit_without_client_msg_id_whose_answer_was_lost_is_broadcast_once_the_database_is_back() {
    let mut c = cut_setup();
    let mut news: Vec<Value> = Vec::new();
    // No clientMsgId: no retry can name it, so the server must find it by itself.
    let data = json!({"targetId": c.channel, "targetType": "channel", "content": "cut-unkeyed"});
    let (id, sequence) = cut_send(&mut c, &data, &mut news);
    assert!(
        news.is_empty(),
        "published before the database was back: {news:?}"
    );

    c.proxy.heal();
    let next = json!({"targetId": c.channel, "targetType": "channel", "content": "after"});
    let ack = send_until_acked(&mut c.socket, 2, &next, &mut news);
    assert_eq!(ack["sequence"], sequence + 1, "{ack}");
    assert_eq!(contents(&news), ["cut-unkeyed", "after"], "{news:?}");
    assert_eq!(news[0]["id"], id.as_str());
    assert_eq!(news[0]["sequence"], sequence);
}
