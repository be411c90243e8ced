//! The hostile clients of `soak`, each on its own thread and its own loopback address, each
//! made the way the Node attack tests make it (tests/node/test/attacks-*.test.js,
//! abuse-*.test.js). An attacker attacks until the server ends its connection or its hold time
//! passes, then connects again, never faster than one connection per `reconnect_gap`, until
//! the attack phase ends. What happened to its connections is counted in [`Counters`].

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::attack_io::{
    connect, read_head, send_text, socketio_connect, wait_hangup, write_fully, ws_upgrade, Frame,
    Outcome,
};
use crate::scan::{classify, string_after, Inbound};
use crate::ws::{self, XorShift};

/// The attacks, in the order the issue lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One WebSocket streaming Engine.IO `3` frames as fast as it can.
    TinyFrames,
    /// Pipelined `GET /metrics` from a client that never reads.
    MetricsUnread,
    /// WebSocket pings (125-byte payloads) from a client that never reads.
    PingsUnread,
    /// Bytes streamed on a connection holding a long-poll GET.
    PollJunk,
    /// `message:send` with a NUL character, in a loop.
    NulSend,
    /// `message:history` (limit 100) of a channel of 50 messages of 4,000 characters.
    LongHistory,
    /// `presence:setAway` / `setActive` in a loop.
    PresenceFlip,
    /// `message:send` of 16 KB messages in a loop.
    BigSends,
    /// A WebSocket upgrade from `Origin: https://evil.example` with a session cookie.
    EvilOrigin,
    /// A 1-3 MB POST to the admin API.
    BigPost,
}

/// Every attack.
pub const ALL: [Kind; 10] = [
    Kind::TinyFrames,
    Kind::MetricsUnread,
    Kind::PingsUnread,
    Kind::PollJunk,
    Kind::NulSend,
    Kind::LongHistory,
    Kind::PresenceFlip,
    Kind::BigSends,
    Kind::EvilOrigin,
    Kind::BigPost,
];

impl Kind {
    /// The attack's name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::TinyFrames => "tiny-frames",
            Kind::MetricsUnread => "metrics-unread",
            Kind::PingsUnread => "pings-unread",
            Kind::PollJunk => "poll-junk",
            Kind::NulSend => "nul-send",
            Kind::LongHistory => "long-history",
            Kind::PresenceFlip => "presence-flip",
            Kind::BigSends => "big-sends",
            Kind::EvilOrigin => "evil-origin",
            Kind::BigPost => "big-post",
        }
    }

    /// Parses a comma-separated list of names (`all` for every attack, `none` for none).
    pub fn parse_list(s: &str) -> Result<Vec<Kind>, String> {
        match s {
            "all" => return Ok(ALL.to_vec()),
            "none" | "" => return Ok(Vec::new()),
            _ => {}
        }
        s.split(',')
            .map(|n| {
                ALL.iter()
                    .copied()
                    .find(|k| k.name() == n.trim())
                    .ok_or_else(|| {
                        let names: Vec<&str> = ALL.iter().map(|k| k.name()).collect();
                        format!(
                            "--attacks: unknown attack {n:?}; use all, none, or some of {}",
                            names.join(",")
                        )
                    })
            })
            .collect()
    }
}

/// What the attackers need to know: where the server is and what was provisioned for them.
#[derive(Debug, Clone)]
pub struct AttackPlan {
    /// Server address.
    pub server: SocketAddr,
    /// `Host` header.
    pub host: String,
    /// The channel the senders (NUL, 16 KB) write to.
    pub channel: String,
    /// The channel of 50 long messages.
    pub history_channel: String,
    /// CONNECT packets of the socket attackers: tiny frames, NUL, history, presence, 16 KB.
    pub connect_packets: HashMap<&'static str, String>,
    /// A real session token, sent as a cookie from the wrong origin.
    pub session_token: String,
    /// The admin API token (the big POST is authorized: its size is what is refused).
    pub admin_token: String,
    /// Least time between two connections of one attacker.
    pub reconnect_gap: Duration,
}

/// What happened to one attacker's connections.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections started.
    pub connections: AtomicU64,
    /// Refused by the server (HTTP error, CONNECT_ERROR, 413, TCP refusal).
    pub refused: AtomicU64,
    /// Ended by the server after it let them in.
    pub cut: AtomicU64,
    /// Ended by the attacker (hold time over, or the attack phase ended).
    pub held: AtomicU64,
    /// Outcomes the attack did not expect.
    pub errors: AtomicU64,
    /// Bytes written.
    pub bytes_out: AtomicU64,
    /// Acks with `success: true`.
    pub acks_ok: AtomicU64,
    /// Acks with `success: false`.
    pub acks_refused: AtomicU64,
    /// Outcome reasons (first 100 characters) and how often.
    pub reasons: Mutex<HashMap<String, u64>>,
}

impl Counters {
    fn record(&self, o: &Outcome) {
        let (counter, why) = match o {
            Outcome::Refused(w) => (&self.refused, format!("refused: {w}")),
            Outcome::Cut(w) => (&self.cut, format!("cut: {w}")),
            Outcome::Held => (&self.held, "held to its limit or to the end".to_string()),
            Outcome::Error(w) => (&self.errors, format!("error: {w}")),
        };
        counter.fetch_add(1, Relaxed);
        let why: String = why.chars().take(100).collect();
        if let Ok(mut r) = self.reasons.lock() {
            *r.entry(why).or_default() += 1;
        }
    }
}

/// The loopback address attacker `i` connects from (127.0.3.1, ...): apart from the honest
/// clients (127.0.0.x) so the per-address limits meet each attacker alone.
pub fn source(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 3, (i % 250) as u8 + 1)
}

/// Runs attacker `i` of kind `kind` until `stop` is set.
pub fn run(i: usize, kind: Kind, plan: Arc<AttackPlan>, c: Arc<Counters>, stop: Arc<AtomicBool>) {
    let mut rng = XorShift::new(0x00A7_7AC4 ^ ((i as u64 + 1) << 24));
    let mut next = Instant::now();
    let mut round = 0u64;
    while !stop.load(Relaxed) {
        let now = Instant::now();
        if now < next {
            std::thread::sleep((next - now).min(Duration::from_millis(200)));
            continue;
        }
        next = now + plan.reconnect_gap;
        c.connections.fetch_add(1, Relaxed);
        let a = Attack {
            plan: &plan,
            c: &c,
            stop: &stop,
            src: source(i),
        };
        let o = match a.once(kind, &mut rng, round) {
            Ok(o) | Err(o) => o,
        };
        round += 1;
        c.record(&o);
    }
}

struct Attack<'a> {
    plan: &'a AttackPlan,
    c: &'a Counters,
    stop: &'a AtomicBool,
    src: Ipv4Addr,
}

/// Stops writing when the server has taken nothing for this long: it stopped reading.
const STALL: Duration = Duration::from_secs(2);
/// "😀" x 3,990: some 16 KB of UTF-8 in 3,990 characters.
fn long_content() -> String {
    "\u{1F600}".repeat(3990)
}

impl Attack<'_> {
    fn tcp(&self) -> Result<TcpStream, Outcome> {
        connect(self.plan.server, self.src).map_err(|e| Outcome::Refused(format!("connect: {e}")))
    }

    fn write(&self, s: &mut TcpStream, buf: &[u8]) -> Result<bool, Outcome> {
        let mut n = 0;
        let r = write_fully(s, buf, self.stop, STALL, &mut n);
        self.c.bytes_out.fetch_add(n, Relaxed);
        r.map_err(|e| Outcome::Cut(format!("write: {}", e.kind())))
    }

    /// Writes `chunk` until the server stops reading (or `max` bytes), then holds the
    /// connection without reading until the server hangs up or `hold` passes.
    fn stall_and_hold(
        &self,
        s: &mut TcpStream,
        chunk: &[u8],
        max: u64,
        hold: Duration,
    ) -> Result<Outcome, Outcome> {
        let mut written = 0u64;
        while written < max && !self.stop.load(Relaxed) && self.write(s, chunk)? {
            written += chunk.len() as u64;
        }
        Ok(if wait_hangup(s, hold, self.stop) {
            Outcome::Cut("the server hung up on a client that does not read".into())
        } else {
            Outcome::Held
        })
    }

    fn once(&self, kind: Kind, rng: &mut XorShift, round: u64) -> Result<Outcome, Outcome> {
        let p = self.plan;
        match kind {
            Kind::MetricsUnread => {
                let mut s = self.tcp()?;
                let req = "GET /metrics HTTP/1.1\r\nHost: attacker\r\n\r\n".repeat(1000);
                self.stall_and_hold(&mut s, req.as_bytes(), 256 << 20, Duration::from_secs(20))
            }
            Kind::PingsUnread => {
                let mut s = self.tcp()?;
                ws_upgrade(&mut s, &p.host, rng, "")?;
                let mut burst = Vec::new();
                for _ in 0..4096 {
                    ws::encode_client(ws::OP_PING, &[0x61; 125], rng.mask_key(), &mut burst);
                }
                // Not answering Engine.IO pings either, it is dropped within the heartbeat.
                self.stall_and_hold(&mut s, &burst, 256 << 20, Duration::from_secs(60))
            }
            Kind::PollJunk => {
                let sid = self.polling_sid()?;
                let mut s = self.tcp()?;
                let get = format!(
                    "GET /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: attacker\r\n\r\n"
                );
                self.write(&mut s, get.as_bytes())?;
                self.stall_and_hold(
                    &mut s,
                    &[0x41; 256 * 1024],
                    64 << 20,
                    Duration::from_secs(30),
                )
            }
            Kind::EvilOrigin => {
                let mut s = self.tcp()?;
                let extra = format!(
                    "Origin: https://evil.example\r\nCookie: better-auth.session_token={}\r\n",
                    p.session_token
                );
                let mut r = ws_upgrade(&mut s, &p.host, rng, &extra)?;
                match socketio_connect(&mut s, &mut r, rng, "40") {
                    Ok(()) => Err(Outcome::Error(
                        "a session cookie sent from https://evil.example was accepted".into(),
                    )),
                    Err(o) => Err(o),
                }
            }
            Kind::BigPost => self.big_post(round),
            _ => self.socket_flood(kind, rng),
        }
    }

    /// Opens a polling session (`GET ...transport=polling`) and returns its sid.
    fn polling_sid(&self) -> Result<String, Outcome> {
        let mut s = self.tcp()?;
        let req = "GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: attacker\r\nConnection: close\r\n\r\n";
        self.write(&mut s, req.as_bytes())?;
        let (line, body) = read_head(&mut s, Duration::from_secs(10)).map_err(Outcome::Error)?;
        if !line.contains(" 200") {
            return Err(Outcome::Refused(format!("polling handshake: {line}")));
        }
        string_after(&body, b"\"sid\":\"")
            .map(|sid| String::from_utf8_lossy(sid).into_owned())
            .ok_or_else(|| Outcome::Error("polling handshake without a sid".into()))
    }

    /// POSTs 1, 2 or 3 MB (by round) to the admin API; a 413 is the expected refusal.
    fn big_post(&self, round: u64) -> Result<Outcome, Outcome> {
        let mut s = self.tcp()?;
        let len = (1 + round % 3) as usize * (1 << 20) + 1;
        let head = format!(
            "POST /api/v1/messages HTTP/1.1\r\nHost: attacker\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n",
            self.plan.admin_token
        );
        let mut req = head.into_bytes();
        req.resize(req.len() + len, b'x');
        // The server may answer before the body is all in and close: the answer still counts.
        let wrote = self.write(&mut s, &req);
        match read_head(&mut s, Duration::from_secs(15)) {
            Ok((line, _)) if line.contains(" 413") => Err(Outcome::Refused(line)),
            Ok((line, _)) => Err(Outcome::Error(format!("{len} bytes: {line}"))),
            Err(e) => Err(match wrote {
                Err(w) => w,
                Ok(_) => Outcome::Error(format!("{len} bytes: {e}")),
            }),
        }
    }

    /// The Socket.IO attackers: connect, then write their frames as fast as the server takes
    /// them (with at most `window` acks outstanding) while a second thread reads everything
    /// the server sends, answers its pings and sees the connection end.
    fn socket_flood(&self, kind: Kind, rng: &mut XorShift) -> Result<Outcome, Outcome> {
        let p = self.plan;
        let packet = p
            .connect_packets
            .get(kind.name())
            .ok_or_else(|| Outcome::Error(format!("no user for {}", kind.name())))?;
        let mut s = self.tcp()?;
        let mut r = ws_upgrade(&mut s, &p.host, rng, "")?;
        socketio_connect(&mut s, &mut r, rng, packet)?;
        let mut rs = s
            .try_clone()
            .map_err(|e| Outcome::Error(format!("clone: {e}")))?;
        let ended: Mutex<Option<String>> = Mutex::new(None);
        let outstanding = AtomicI64::new(0);
        let ping_due = AtomicBool::new(false);
        let done = AtomicBool::new(false);
        let end = |why: String| {
            if let Ok(mut e) = ended.lock() {
                e.get_or_insert(why);
            }
        };
        let (window, per_batch) = match kind {
            Kind::NulSend => (256, 64),
            // Replies of up to 256 KiB each: four outstanding stay within what the server
            // queues for a client that reads (4 x CHAT_MAX_OUTBOUND_BYTES at 1 MiB).
            Kind::LongHistory => (4, 2),
            Kind::BigSends => (64, 8),
            _ => (i64::MAX, 0),
        };
        std::thread::scope(|sc| {
            sc.spawn(|| {
                while !done.load(Relaxed) {
                    match r.next(&mut rs) {
                        Ok(Some(Frame::Text(t))) => match classify(&t) {
                            Inbound::Ping => ping_due.store(true, Relaxed),
                            Inbound::Ack { success, .. } => {
                                outstanding.fetch_sub(1, Relaxed);
                                let n = if success {
                                    &self.c.acks_ok
                                } else {
                                    &self.c.acks_refused
                                };
                                n.fetch_add(1, Relaxed);
                            }
                            Inbound::Disconnect => end("Socket.IO DISCONNECT".into()),
                            Inbound::Close => end("Engine.IO close".into()),
                            _ => {}
                        },
                        Ok(Some(Frame::Close(why))) => end(why),
                        Ok(_) => {}
                        Err(e) => {
                            end(e);
                            return;
                        }
                    }
                }
            });
            let tiny = (kind == Kind::TinyFrames).then(|| {
                let mut b = Vec::new();
                for _ in 0..16_384 {
                    ws::encode_client(ws::OP_TEXT, b"3", rng.mask_key(), &mut b);
                }
                b
            });
            let long = long_content();
            let mut id = 0u64;
            let mut batch = Vec::new();
            let result = loop {
                if self.stop.load(Relaxed) || ended.lock().map(|e| e.is_some()).unwrap_or(true) {
                    break Ok(());
                }
                if ping_due.swap(false, Relaxed) {
                    if let Err(e) = send_text(&mut s, rng, b"3") {
                        break Err(Outcome::Cut(format!("write: {}", e.kind())));
                    }
                }
                if outstanding.load(Relaxed) + per_batch > window {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                let buf = match &tiny {
                    Some(t) => t,
                    None => {
                        batch.clear();
                        let n = if per_batch > 0 { per_batch } else { 200 };
                        for _ in 0..n {
                            let text = next_event(kind, p, &long, &mut id);
                            ws::encode_client(
                                ws::OP_TEXT,
                                text.as_bytes(),
                                rng.mask_key(),
                                &mut batch,
                            );
                        }
                        &batch
                    }
                };
                outstanding.fetch_add(per_batch, Relaxed);
                if let Err(o) = self.write(&mut s, buf) {
                    break Err(o);
                }
            };
            // What the reader saw is taken before our own shutdown, which it would see as
            // the connection ending.
            done.store(true, Relaxed);
            let why = ended.lock().ok().and_then(|mut e| e.take());
            let _ = s.shutdown(std::net::Shutdown::Both);
            match (result, why) {
                (_, Some(why)) => Ok(Outcome::Cut(why)),
                (Err(o), None) => Err(o),
                (Ok(()), None) => Ok(Outcome::Held),
            }
        })
    }
}

/// The next event text of a Socket.IO attacker; events with acks take the next `id`.
fn next_event(kind: Kind, p: &AttackPlan, long: &str, id: &mut u64) -> String {
    let mut ack = || {
        *id += 1;
        *id
    };
    match kind {
        Kind::NulSend => format!(
            "42{}[\"message:send\",{{\"targetId\":\"{}\",\"targetType\":\"channel\",\"content\":\"a\\u0000b\"}}]",
            ack(),
            p.channel
        ),
        Kind::LongHistory => format!(
            "42{}[\"message:history\",{{\"targetId\":\"{}\",\"targetType\":\"channel\",\"limit\":100}}]",
            ack(),
            p.history_channel
        ),
        Kind::BigSends => format!(
            "42{}[\"message:send\",{{\"targetId\":\"{}\",\"targetType\":\"channel\",\"content\":\"{long}\"}}]",
            ack(),
            p.channel
        ),
        Kind::PresenceFlip => {
            *id += 1;
            let which = if id.is_multiple_of(2) { "setActive" } else { "setAway" };
            format!("42[\"presence:{which}\"]")
        }
        _ => "3".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attack_lists_parse_or_name_the_choices() {
        assert_eq!(Kind::parse_list("all").unwrap().len(), 10);
        assert!(Kind::parse_list("none").unwrap().is_empty());
        assert_eq!(
            Kind::parse_list("nul-send,big-post").unwrap(),
            vec![Kind::NulSend, Kind::BigPost]
        );
        let e = Kind::parse_list("nul,big-post").unwrap_err();
        assert!(e.contains("\"nul\"") && e.contains("tiny-frames"), "{e}");
    }

    #[test]
    fn events_are_the_attacks_and_ack_ids_count_up() {
        let p = AttackPlan {
            server: "127.0.0.1:1".parse().unwrap(),
            host: "h".into(),
            channel: "c".into(),
            history_channel: "h".into(),
            connect_packets: HashMap::new(),
            session_token: String::new(),
            admin_token: String::new(),
            reconnect_gap: Duration::ZERO,
        };
        let mut id = 0;
        let nul = next_event(Kind::NulSend, &p, "", &mut id);
        assert_eq!(
            nul,
            r#"421["message:send",{"targetId":"c","targetType":"channel","content":"a\u0000b"}]"#
        );
        let h = next_event(Kind::LongHistory, &p, "", &mut id);
        assert!(h.starts_with("422[\"message:history\"") && h.contains("\"limit\":100"));
        let big = next_event(Kind::BigSends, &p, &long_content(), &mut id);
        assert!(big.len() > 16_000 && big.starts_with("423["));
        id = 0;
        let a = next_event(Kind::PresenceFlip, &p, "", &mut id);
        let b = next_event(Kind::PresenceFlip, &p, "", &mut id);
        assert_eq!(
            (a.as_str(), b.as_str()),
            ("42[\"presence:setAway\"]", "42[\"presence:setActive\"]")
        );
        assert_ne!(source(0), source(1));
        assert_eq!(source(0), Ipv4Addr::new(127, 0, 3, 1));
    }
}
