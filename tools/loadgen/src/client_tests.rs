//! End-to-end test of the worker against a fake server on loopback that speaks just enough
//! Engine.IO / Socket.IO: upgrade, open, CONNECT (refusing tokens containing "bad"), one
//! ping, acks with a global sequence, and `message:new` broadcast to every socket.

use super::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Mutex;

use crate::scan::{number_after, string_after};
use crate::stats::judge;

#[derive(Default)]
struct Hub {
    writers: Vec<TcpStream>,
    seq: u64,
}

fn server_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x81];
    if payload.len() < 126 {
        f.push(payload.len() as u8);
    } else {
        f.push(126);
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    f.extend_from_slice(payload);
    f
}

fn serve(mut s: TcpStream, hub: Arc<Mutex<Hub>>, pongs: Arc<AtomicU64>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while memchr::memmem::find(&buf, b"\r\n\r\n").is_none() {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "client hung up before finishing the upgrade request");
        buf.extend_from_slice(&chunk[..n]);
    }
    assert!(buf.starts_with(b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"));
    buf.clear();
    s.write_all(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    )
    .unwrap();
    s.write_all(&server_frame(
        br#"0{"sid":"e","upgrades":[],"pingInterval":25000,"pingTimeout":20000}"#,
    ))
    .unwrap();
    loop {
        let n = match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(h) = ws::parse_frame(&buf, 1 << 20).unwrap() {
            let key = h.mask.expect("client frames must be masked");
            let mut p = buf[h.header_len..h.total_len()].to_vec();
            ws::apply_mask(&mut p, key);
            buf.drain(..h.total_len());
            if p.starts_with(b"40{") {
                if memchr::memmem::find(&p, b"bad").is_some() {
                    s.write_all(&server_frame(br#"44{"message":"invalid token"}"#))
                        .unwrap();
                } else {
                    hub.lock().unwrap().writers.push(s.try_clone().unwrap());
                    s.write_all(&server_frame(br#"40{"sid":"x"}"#)).unwrap();
                    s.write_all(&server_frame(b"2")).unwrap();
                }
            } else if p == b"3" {
                pongs.fetch_add(1, SeqCst);
            } else if p.starts_with(b"42") {
                let id = number_after(&p, b"42").unwrap();
                let content =
                    String::from_utf8(string_after(&p, b"\"content\":\"").unwrap().to_vec())
                        .unwrap();
                let mut hub = hub.lock().unwrap();
                hub.seq += 1;
                let seq = hub.seq;
                let ack = format!(
                    r#"43{id}[{{"success":true,"messageId":"m{seq}","sequence":{seq},"createdAt":"x"}}]"#
                );
                s.write_all(&server_frame(ack.as_bytes())).unwrap();
                let ev = format!(
                    r#"42["message:new",{{"id":"m{seq}","content":"{content}","channelId":"ch","conversationId":null,"sequence":{seq}}}]"#
                );
                for w in hub.writers.iter_mut() {
                    w.write_all(&server_frame(ev.as_bytes())).unwrap();
                }
            }
        }
    }
}

fn fake_server() -> (SocketAddr, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let hub = Arc::new(Mutex::new(Hub::default()));
    let pongs = Arc::new(AtomicU64::new(0));
    let p = pongs.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let (hub, p) = (hub.clone(), p.clone());
            std::thread::spawn(move || serve(s.unwrap(), hub, p));
        }
    });
    (addr, pongs)
}

/// Polls `cond` until it holds or 10 s pass (the worker runs on its own thread and offers no
/// event to wait on).
fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn connects_publishes_and_checks_delivery_against_a_fake_server() {
    let (server, pongs) = fake_server();
    let plan = |i: usize, token: &str, publisher| ConnPlan {
        index: i,
        connect_packet: format!(r#"40{{"token":"{token}","workspaceId":"w"}}"#).into(),
        publisher,
        group: 0,
    };
    let plans = vec![
        plan(0, "good", true),
        plan(1, "good", false),
        plan(2, "good", true),
        plan(3, "bad", false),
    ];
    let cfg = WorkerConfig {
        id: 0,
        server,
        host: server.to_string(),
        nodes: Arc::default(),
        spread_publishers: false,
        channels: Arc::new(vec!["ch".into()]),
        mode: Mode::Messages,
        random_senders: false,

        sources: 2,
        ramp_per_sec: 0.0,
        max_inflight: 10,
        publish_rate: 500.0,
        content_pad: 200,
        track_members: true,
        soak: None,
    };
    let shared = Arc::new(Shared::new());
    let sh = shared.clone();
    let worker = std::thread::spawn(move || run(cfg, plans, sh));

    wait_until("3 connected and 1 refused", || {
        shared.established.load(SeqCst) == 3 && shared.failed.load(SeqCst) == 1
    });
    wait_until("pongs to the server's pings", || pongs.load(SeqCst) == 3);
    shared.phase.store(PH_PUBLISH, SeqCst);
    wait_until("40 sends", || shared.sent.load(SeqCst) >= 40);
    shared.phase.store(PH_DRAIN, SeqCst);
    // A send that saw the publish phase just before the drain may still be counted after it:
    // what was sent is read again each time.
    wait_until("all acks and deliveries", || {
        let sent = shared.sent.load(SeqCst);
        shared.acks.load(SeqCst) == sent && shared.deliveries.load(SeqCst) == 3 * sent
    });
    shared.phase.store(PH_STOP, SeqCst);
    let r = worker.join().unwrap().unwrap();
    let sent = r.sent;

    assert_eq!((r.established, r.failed, r.dropped), (3, 1, 0));
    assert_eq!(
        r.reasons
            .get(r#"CONNECT refused: {"message":"invalid token"}"#),
        Some(&1)
    );
    assert_eq!(r.pings, 3);
    assert!(sent >= 40, "{sent} sent");
    assert_eq!((r.acked_ok, r.acked_err), (sent, 0));
    assert_eq!(r.acked[0].len(), sent);
    assert_eq!(r.ack_hist.len(), sent);
    assert_eq!(r.deliveries, 3 * sent);
    assert_eq!(
        r.delivery_hist.len(),
        3 * sent,
        "every receipt carried its send stamp"
    );
    assert_eq!(r.members.len(), 3, "only members that connected are judged");
    let c = judge(&r.members[..], &r.acked);
    assert_eq!(
        (
            c.missing,
            c.missing_own,
            c.duplicates,
            c.out_of_order,
            c.foreign
        ),
        (0, 0, 0, 0, 0)
    );
    assert!(r.first_send_nanos.is_some() && r.last_delivery_nanos > 0);
}

#[test]
fn cycle_mode_closes_and_reopens_after_every_connect() {
    let (server, _) = fake_server();
    let plans = (0..2)
        .map(|i| ConnPlan {
            index: i,
            connect_packet: r#"40{"token":"good","workspaceId":"w"}"#.into(),
            publisher: false,
            group: 0,
        })
        .collect();
    let cfg = WorkerConfig {
        id: 0,
        server,
        host: server.to_string(),
        nodes: Arc::default(),
        spread_publishers: false,
        channels: Arc::new(vec!["ch".into()]),
        mode: Mode::Cycle,
        random_senders: false,
        sources: 2,
        ramp_per_sec: 0.0,
        max_inflight: 10,
        publish_rate: 0.0,
        content_pad: 0,
        track_members: false,
        soak: None,
    };
    let shared = Arc::new(Shared::new());
    shared.phase.store(PH_PUBLISH, SeqCst);
    let sh = shared.clone();
    let worker = std::thread::spawn(move || run(cfg, plans, sh));
    wait_until("20 cycles", || shared.cycles.load(SeqCst) >= 20);
    // Draining stops the reopening; the last connection of each user then completes.
    shared.phase.store(PH_DRAIN, SeqCst);
    wait_until("the last connections", || {
        shared.established.load(SeqCst) as u64 == shared.cycles.load(SeqCst) + 2
    });
    shared.phase.store(PH_STOP, SeqCst);
    let r = worker.join().unwrap().unwrap();
    assert!(r.cycles >= 20, "cycles {}", r.cycles);
    assert_eq!(r.cycle_hist.len(), r.cycles, "one latency sample per cycle");
    assert_eq!((r.failed, r.dropped), (0, 0), "{:?}", r.reasons);
    assert_eq!(r.established, r.cycles + 2);
}
