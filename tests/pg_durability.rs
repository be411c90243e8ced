//! Durability of the PostgreSQL store, end to end through the real binary: a SIGKILL while
//! clients send at full speed loses no acked message, and a PostgreSQL outage during sends
//! neither crashes the server nor loses acked messages. Needs PostgreSQL (see
//! `ocomms_rt::store::pg::testing`); the outage test stops and restarts a cluster of its own
//! ([`PrivateCluster`]), never the shared one.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{provision, wait_until, Server, Socket};
use ocomms_rt::store::pg::testing::{PrivateCluster, TestDb};
use serde_json::{json, Value};
use tungstenite::Message;
use uuid::Uuid;

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
    let cluster = PrivateCluster::start();
    let db = TestDb::create_on(&cluster.url());
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
    assert!(cluster.stop(), "pg_ctl stop works");
    wait_until("refused sends", Duration::from_secs(30), || {
        refused.load(SeqCst) > 0
    });
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server is still up"
    );
    assert!(cluster.restart(), "pg_ctl start works");
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
