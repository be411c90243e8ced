//! The client worker: one thread, one `mio` poll, many Socket.IO client connections in a slab.
//! Each connection walks TCP connect -> HTTP upgrade (101) -> Engine.IO open `0{...}` ->
//! Socket.IO CONNECT `40{auth}` -> `40{"sid":...}` and then answers pings, publishes when it is
//! a publisher, and records what it receives. The main thread steers all workers through the
//! [`Shared`] phase and reads their progress counters.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::scan::{classify, Inbound};
pub use crate::shared::*;
use crate::stats::{latency_histogram, MemberRecord, SeqSet};
use crate::ws::{self, XorShift};

/// Largest frame payload we accept; far above any chat message and below the read buffer, so
/// a whole frame always fits in it.
const MAX_FRAME: usize = 1 << 20;
const READ_BUF: usize = 2 * MAX_FRAME + 16;
/// Most new messages one loop turn sends, so receiving is not starved when catching up.
const MAX_BURST: u64 = 2_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    Http,
    Open,
    Auth,
    Ready,
}

struct Conn {
    plan: usize,
    sock: mio::net::TcpStream,
    state: State,
    started: Instant,
    carry: Vec<u8>,
    frag: Option<Vec<u8>>,
    out: Vec<u8>,
    next_ack: u64,
    /// (ack id, send stamp) in send order; acks normally come back in that order, so the
    /// match is almost always at the front.
    pending: VecDeque<(u64, u64)>,
    member: Option<MemberRecord>,
}

struct Ctx {
    cfg: WorkerConfig,
    plans: Vec<ConnPlan>,
    shared: Arc<Shared>,
    res: WorkerResult,
    rng: XorShift,
    inflight: usize,
    /// `soak` runs: figures not yet handed to the main thread, and when they last were.
    live: Option<(Live, Instant)>,
}

/// Runs one worker until the phase becomes [`PH_STOP`].
pub fn run(
    cfg: WorkerConfig,
    plans: Vec<ConnPlan>,
    shared: Arc<Shared>,
) -> io::Result<WorkerResult> {
    let began = Instant::now();
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(4096);
    let mut conns: Slab<Conn> = Slab::with_capacity(plans.len());
    let mut scratch = vec![0u8; READ_BUF];
    let mut publishers: Vec<usize> = Vec::new();
    let mut rr = 0usize;
    let mut next_plan = 0usize;
    let mut pub_start: Option<Instant> = None;
    let (mut synced_sent, mut synced_acks, mut synced_del) = (0u64, 0u64, 0u64);
    let mut ctx = Ctx {
        live: cfg.soak.map(|_| (Live::new(), Instant::now())),
        rng: XorShift::new(0x5EED ^ ((cfg.id as u64 + 1) << 32) ^ shared.nanos(Instant::now())),
        cfg,
        plans,
        shared,
        inflight: 0,
        res: WorkerResult {
            established: 0,
            failed: 0,
            dropped: 0,
            reasons: HashMap::new(),
            connect_hist: latency_histogram(),
            ack_hist: latency_histogram(),
            delivery_hist: latency_histogram(),
            delivery_local_hist: latency_histogram(),
            delivery_remote_hist: latency_histogram(),
            sent: 0,
            acked_ok: 0,
            acked_err: 0,
            acked: Vec::new(),
            deliveries: 0,
            cycles: 0,
            cycle_hist: latency_histogram(),
            pings: 0,
            members: Vec::new(),
            first_send_nanos: None,
            last_delivery_nanos: 0,
            thread_cpu: Duration::ZERO,
            wall: Duration::ZERO,
        },
    };

    loop {
        let phase = ctx.shared.phase.load(Relaxed);
        if phase == PH_STOP {
            break;
        }
        let now = Instant::now();
        let mut timeout = Duration::from_millis(100);

        // Open new connections, paced by the ramp and capped by the in-flight limit.
        let elapsed = now.duration_since(began).as_secs_f64();
        let allowed = if ctx.cfg.ramp_per_sec > 0.0 {
            ((elapsed * ctx.cfg.ramp_per_sec) as usize + 1).min(ctx.plans.len())
        } else {
            ctx.plans.len()
        };
        while next_plan < allowed && ctx.inflight < ctx.cfg.max_inflight {
            open(&mut ctx, &poll, &mut conns, next_plan, now);
            next_plan += 1;
        }
        if next_plan < ctx.plans.len() {
            timeout = Duration::from_millis(if next_plan < allowed { 10 } else { 2 });
        }

        // Publish what is due; stamps are taken per send, so a late loop shows up as latency.
        if phase == PH_PUBLISH && ctx.cfg.publish_rate > 0.0 {
            let t0 = *pub_start.get_or_insert(now);
            let due = (now.duration_since(t0).as_secs_f64() * ctx.cfg.publish_rate) as u64;
            let mut burst = 0;
            while ctx.res.sent < due && burst < MAX_BURST && !publishers.is_empty() {
                rr = if ctx.cfg.random_senders {
                    (ctx.rng.next_u64() % publishers.len() as u64) as usize
                } else {
                    (rr + 1) % publishers.len()
                };
                let key = publishers[rr];
                let c = &mut conns[key];
                match ctx.cfg.mode {
                    Mode::Messages => {
                        soak::before_send(&mut ctx, c, Instant::now());
                        send_message(&mut ctx, c, Instant::now())
                    }
                    Mode::Typing => send_typing(&mut ctx, c, Instant::now()),
                    Mode::Cycle => {}
                }
                if let Err(e) = flush(c) {
                    close(&mut ctx, &poll, &mut conns, &mut publishers, key, e);
                }
                burst += 1;
            }
            let next =
                t0 + Duration::from_secs_f64((ctx.res.sent + 1) as f64 / ctx.cfg.publish_rate);
            timeout = timeout.min(next.saturating_duration_since(Instant::now()));
        }

        poll.poll(&mut events, Some(timeout))?;
        for ev in events.iter() {
            let key = ev.token().0;
            let Some(c) = conns.get_mut(key) else {
                continue;
            };
            let now = Instant::now();
            let was_ready = c.state == State::Ready;
            let r = on_event(&mut ctx, c, &mut scratch, now);
            match r {
                Ok(()) if ctx.cfg.mode == Mode::Cycle => {
                    // A completed handshake in the publish phase is one cycle: close it and
                    // start the same user's next connection at once.
                    if !was_ready
                        && c.state == State::Ready
                        && ctx.shared.phase.load(Relaxed) == PH_PUBLISH
                    {
                        let plan = c.plan;
                        let mut old = conns.remove(key);
                        // The socket is dropped right after; a failed deregister cannot matter.
                        let _ = poll.registry().deregister(&mut old.sock);
                        drop(old);
                        open(&mut ctx, &poll, &mut conns, plan, Instant::now());
                    }
                }
                Ok(()) => {
                    if !was_ready && c.state == State::Ready && ctx.plans[c.plan].publisher {
                        publishers.push(key);
                    }
                }
                Err(e) => close(&mut ctx, &poll, &mut conns, &mut publishers, key, e),
            }
        }

        // Progress for the main thread, once per turn rather than per event.
        let s = &ctx.shared;
        s.sent.fetch_add(ctx.res.sent - synced_sent, Relaxed);
        synced_sent = ctx.res.sent;
        let acks = ctx.res.acked_ok + ctx.res.acked_err;
        s.acks.fetch_add(acks - synced_acks, Relaxed);
        synced_acks = acks;
        s.deliveries
            .fetch_add(ctx.res.deliveries - synced_del, Relaxed);
        synced_del = ctx.res.deliveries;
        soak::push(&mut ctx, now);
    }

    let keys: Vec<usize> = conns.iter().map(|(k, _)| k).collect();
    for key in keys {
        if conns[key].state == State::Ready {
            finish(&mut ctx, conns.remove(key), true);
        } else {
            let st = conns[key].state;
            close(
                &mut ctx,
                &poll,
                &mut conns,
                &mut publishers,
                key,
                format!("not connected by the end (stuck in {st:?})"),
            );
        }
    }
    // Plans never started (connect phase ended first) count as failures too.
    let never = (ctx.plans.len() - next_plan) as u64;
    if never > 0 {
        ctx.res.failed += never;
        ctx.shared.failed.fetch_add(never as usize, Relaxed);
        *ctx.res
            .reasons
            .entry("never started (run ended first)".into())
            .or_default() += never;
    }
    ctx.res.thread_cpu = thread_cpu();
    ctx.res.wall = began.elapsed();
    Ok(ctx.res)
}

fn open(ctx: &mut Ctx, poll: &Poll, conns: &mut Slab<Conn>, plan: usize, now: Instant) {
    let p = &ctx.plans[plan];
    let source = (ctx.cfg.sources > 0).then(|| crate::net::source_addr(p.index, ctx.cfg.sources));
    let sock = match crate::net::start_connect(ctx.cfg.node_of(p).0, source) {
        Ok(s) => s,
        Err(e) => return fail_early(ctx, format!("connect: {}", e.kind())),
    };
    let entry = conns.vacant_entry();
    let mut conn = Conn {
        plan,
        sock,
        state: State::Connecting,
        started: now,
        carry: Vec::new(),
        frag: None,
        out: Vec::new(),
        next_ack: 1,
        pending: VecDeque::new(),
        member: ctx.cfg.track_members.then(|| MemberRecord {
            group: p.group,
            plan,
            typing_seen: vec![0; ctx.shared.typing_sent.len()],
            ..MemberRecord::default()
        }),
    };
    if let Err(e) = poll.registry().register(
        &mut conn.sock,
        Token(entry.key()),
        Interest::READABLE | Interest::WRITABLE,
    ) {
        return fail_early(ctx, format!("register: {e}"));
    }
    entry.insert(conn);
    ctx.inflight += 1;
}

fn fail_early(ctx: &mut Ctx, reason: String) {
    ctx.res.failed += 1;
    ctx.shared.failed.fetch_add(1, Relaxed);
    *ctx.res.reasons.entry(reason).or_default() += 1;
}

fn close(
    ctx: &mut Ctx,
    poll: &Poll,
    conns: &mut Slab<Conn>,
    publishers: &mut Vec<usize>,
    key: usize,
    reason: String,
) {
    let mut c = conns.remove(key);
    // Deregistering a socket we are about to drop cannot matter if it fails.
    let _ = poll.registry().deregister(&mut c.sock);
    publishers.retain(|&k| k != key);
    if c.state == State::Ready {
        ctx.res.dropped += 1;
        ctx.shared.dropped.fetch_add(1, Relaxed);
    } else {
        ctx.res.failed += 1;
        ctx.inflight -= 1;
        ctx.shared.failed.fetch_add(1, Relaxed);
    }
    *ctx.res.reasons.entry(reason).or_default() += 1;
    let was_ready = c.state == State::Ready;
    finish(ctx, c, was_ready);
}

/// Keeps the member record of a connection that had connected; one that never joined the
/// room cannot be held to receiving its messages, and is counted as a failure instead.
fn finish(ctx: &mut Ctx, c: Conn, was_ready: bool) {
    if let (Some(m), true) = (c.member, was_ready) {
        ctx.res.members.push(m);
    }
}

fn on_event(ctx: &mut Ctx, c: &mut Conn, scratch: &mut [u8], now: Instant) -> Result<(), String> {
    if c.state == State::Connecting {
        if let Some(e) = c
            .sock
            .take_error()
            .map_err(|e| format!("connect: {}", e.kind()))?
        {
            return Err(format!("connect: {}", e.kind()));
        }
        match c.sock.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
            Err(e) => return Err(format!("connect: {}", e.kind())),
        }
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&ctx.rng.next_u64().to_ne_bytes());
        key[8..].copy_from_slice(&ctx.rng.next_u64().to_ne_bytes());
        let host = ctx.cfg.node_of(&ctx.plans[c.plan]).1;
        c.out.extend_from_slice(&ws::upgrade_request(host, key));
        c.state = State::Http;
    }
    read_all(ctx, c, scratch, now)?;
    flush(c)
}

/// Reads until the socket would block (mio is edge-triggered), handling every whole frame.
fn read_all(ctx: &mut Ctx, c: &mut Conn, scratch: &mut [u8], now: Instant) -> Result<(), String> {
    loop {
        let carried = c.carry.len();
        scratch[..carried].copy_from_slice(&c.carry);
        match c.sock.read(&mut scratch[carried..]) {
            Ok(0) => return Err(format!("server closed the connection ({:?})", c.state)),
            Ok(n) => {
                let total = carried + n;
                let used = process(ctx, c, &scratch[..total], now)?;
                c.carry.clear();
                c.carry.extend_from_slice(&scratch[used..total]);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read: {}", e.kind())),
        }
    }
}

/// Handles the whole frames at the front of `buf`; returns how many bytes were consumed.
fn process(ctx: &mut Ctx, c: &mut Conn, buf: &[u8], now: Instant) -> Result<usize, String> {
    let mut pos = 0;
    if c.state == State::Http {
        match ws::parse_upgrade_response(buf) {
            Ok(None) if buf.len() > 16 * 1024 => {
                return Err("upgrade response head over 16 KiB".into())
            }
            Ok(None) => return Ok(0),
            Ok(Some(n)) => {
                pos = n;
                c.state = State::Open;
            }
            Err(line) => return Err(format!("upgrade refused: {line}")),
        }
    }
    loop {
        let head = match ws::parse_frame(&buf[pos..], MAX_FRAME) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(pos),
            Err(e) => return Err(e.to_string()),
        };
        let start = pos + head.header_len;
        let end = pos + head.total_len();
        pos = end;
        let masked;
        let payload = match head.mask {
            None => &buf[start..end],
            Some(k) => {
                masked = {
                    let mut v = buf[start..end].to_vec();
                    ws::apply_mask(&mut v, k);
                    v
                };
                &masked[..]
            }
        };
        match head.opcode {
            ws::OP_TEXT if head.fin => packet(ctx, c, payload, now)?,
            ws::OP_TEXT => c.frag = Some(payload.to_vec()),
            ws::OP_CONT => {
                let Some(mut f) = c.frag.take() else {
                    return Err("continuation frame without a start".into());
                };
                f.extend_from_slice(payload);
                if head.fin {
                    packet(ctx, c, &f, now)?;
                } else {
                    c.frag = Some(f);
                }
            }
            ws::OP_PING => {
                let key = ctx.rng.mask_key();
                ws::encode_client(ws::OP_PONG, payload, key, &mut c.out);
            }
            ws::OP_CLOSE => {
                let code =
                    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default());
                return Err(format!(
                    "server sent a close frame (code {code:?}, {reason:?})"
                ));
            }
            // Binary frames carry Socket.IO attachments, which this load never asks for.
            ws::OP_BINARY | ws::OP_PONG => {}
            op => return Err(format!("unknown WebSocket opcode {op:#x}")),
        }
    }
}

fn flush(c: &mut Conn) -> Result<(), String> {
    let mut done = 0;
    while done < c.out.len() {
        match c.sock.write(&c.out[done..]) {
            Ok(0) => return Err("write returned 0".into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("write: {}", e.kind())),
        }
    }
    c.out.drain(..done);
    Ok(())
}

fn thread_cpu() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct; RUSAGE_THREAD is valid on Linux.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

#[path = "client_packet.rs"]
mod packet;
#[path = "client_send.rs"]
mod send;
#[path = "client_soak.rs"]
mod soak;
use packet::packet;
use send::{send_message, send_typing};

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
