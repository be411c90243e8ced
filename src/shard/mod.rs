//! One `mio` event loop per shard thread: the only owner of its sockets. It accepts on its
//! own `SO_REUSEPORT` listener, reads requests and frames, runs the sans-IO session and chat
//! rules, carries out their effects, and writes each connection's queue once per loop turn
//! with vectored writes (so a burst of broadcasts costs one `writev` per recipient).

mod connect;
mod connection;
mod http;
mod polling;
mod recovery;
mod socket;
mod timers;
mod upgrade;

pub use polling::Handover;

use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::chat::auth::JwtVerifier;
use crate::config::Config;
use crate::hub::Hub;
use crate::ids::{ConnectionId, ShardId};
use crate::mesh::{Mesh, ShardCommand};
use crate::metrics::{Metrics, ShardMetrics};
use crate::transport::Stream;
use rustc_hash::FxHashMap;

use connection::{Connection, Phase};
use timers::{Due, Timers};

/// Token of the shard's listener.
const LISTENER: Token = Token(usize::MAX - 1);
/// Token of the shard's waker (commands in the inbox).
pub const WAKER: Token = Token(usize::MAX - 2);
/// Bytes read from a socket per `read` call, into one buffer shared by the shard.
const READ_CHUNK: usize = 64 * 1024;
/// Commands taken from the inbox per loop turn, so sockets are served between bursts.
const INBOX_BATCH: usize = 8192;
/// How long a connection being closed may take to flush its last bytes.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Read-only state shared by every shard of the node.
#[derive(Debug)]
pub struct Shared {
    /// Settings.
    pub config: Config,
    /// JWT checks.
    pub jwt: JwtVerifier,
    /// TLS, when configured.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// `"memory"` or `"postgres"`, for `/healthz`.
    pub store_kind: &'static str,
    /// When the node started.
    pub started: Instant,
    /// The demo workspace, in demo mode.
    pub demo: Option<crate::web::Demo>,
}

/// A shard: its poll, listener, inbox and connections.
pub struct Shard {
    poll: Poll,
    listener: Option<TcpListener>,
    inbox: Receiver<ShardCommand>,
    conns: Slab<Connection>,
    /// Long-polling sessions owned by this shard (slots carry `polling::POLL_BIT`).
    polls: Slab<polling::PollSession>,
    /// Session id → slot in `polls`.
    poll_sids: FxHashMap<Box<str>, u32>,
    /// Sessions handed to a WebSocket on another connection: (slot, generation) → the new
    /// connection and until when store replies are forwarded to it.
    moved: FxHashMap<(u32, u32), (ConnectionId, Instant)>,
    /// Connections (slot → generation) waiting for a polling answer, possibly from another
    /// shard: at shutdown they are answered here, as that shard may already be gone.
    poll_waiting: FxHashMap<u32, u32>,
    core: Core,
}

/// Everything of a shard but its connections, so handlers can borrow both at once.
struct Core {
    id: ShardId,
    shared: Arc<Shared>,
    mesh: Mesh,
    hub: Hub,
    timers: Timers,
    /// Connections with bytes to write or state to re-check at the end of this turn.
    dirty: Vec<u32>,
    next_generation: u32,
    scratch: Vec<u8>,
    /// Set by `Shutdown`: the instant unfinished writes are abandoned.
    shutdown: Option<Instant>,
    /// Recent durable broadcasts and detached sessions (connection state recovery).
    recovery: recovery::RecoveryLog,
}

impl Core {
    fn metrics(&self) -> &ShardMetrics {
        &self.shared.metrics.shards[usize::from(self.id.0)]
    }
}

/// Why a connection is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Close {
    /// Drop it now (peer gone, IO error, slow consumer).
    Now,
    /// Write what is queued, then drop it.
    AfterFlush,
}

impl Shard {
    /// Builds a shard around a poll (whose waker is already in the mesh) and its listener.
    pub fn new(
        id: ShardId,
        poll: Poll,
        mut listener: TcpListener,
        inbox: Receiver<ShardCommand>,
        mesh: Mesh,
        shared: Arc<Shared>,
    ) -> io::Result<Shard> {
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let window = shared.config.recovery_window;
        Ok(Shard {
            poll,
            listener: Some(listener),
            inbox,
            conns: Slab::new(),
            polls: Slab::new(),
            poll_sids: FxHashMap::default(),
            moved: FxHashMap::default(),
            poll_waiting: FxHashMap::default(),
            core: Core {
                id,
                shared,
                mesh,
                hub: Hub::default(),
                timers: Timers::default(),
                dirty: Vec::new(),
                next_generation: 0,
                scratch: vec![0; READ_CHUNK],
                shutdown: None,
                recovery: recovery::RecoveryLog::new(window),
            },
        })
    }

    /// Runs the event loop until shutdown has closed every connection (or its deadline passed).
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = if !self.inbox.is_empty() {
                Some(Duration::ZERO)
            } else {
                self.core
                    .timers
                    .next()
                    .map(|t| t.saturating_duration_since(Instant::now()))
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(now),
                    // Commands are drained below on every turn.
                    WAKER => {}
                    Token(slot) => {
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.on_readable(slot as u32, now);
                        }
                        if event.is_writable() {
                            self.mark(slot as u32);
                        }
                    }
                }
            }
            self.drain_inbox(now);
            self.run_timers(now);
            self.core.recovery.sweep(now);
            self.flush_dirty(now);
            if let Some(deadline) = self.core.shutdown {
                if self.conns.is_empty() || now >= deadline {
                    return Ok(());
                }
            }
        }
    }

    fn accept(&mut self, now: Instant) {
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            let (tcp, _peer) = match listener.accept() {
                Ok(pair) => pair,
                // Drained the backlog.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and the like: the connection stays in the backlog; say why once per burst.
                    tracing::warn!(shard = self.core.id.0, error = %e, "accept failed");
                    return;
                }
            };
            let _ = tcp.set_nodelay(true);
            let stream = match Stream::new(tcp, self.core.shared.tls.as_ref()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "TLS session setup failed");
                    continue;
                }
            };
            let generation = self.core.next_generation;
            self.core.next_generation = generation.wrapping_add(1);
            let deadline = now + self.core.shared.config.request_timeout;
            let entry = self.conns.vacant_entry();
            let slot = entry.key();
            let conn = entry.insert(Connection::new(generation, stream, deadline));
            if let Err(e) =
                self.poll
                    .registry()
                    .register(conn.stream.tcp(), Token(slot), Interest::READABLE)
            {
                tracing::warn!(error = %e, "register failed");
                self.conns.remove(slot);
                continue;
            }
            conn.registered = Some(Interest::READABLE);
            let m = self.core.metrics();
            m.accepted.fetch_add(1, Relaxed);
            m.connections.fetch_add(1, Relaxed);
            self.mark(slot as u32);
        }
    }

    fn on_readable(&mut self, slot: u32, now: Instant) {
        let mut buf = std::mem::take(&mut self.core.scratch);
        while let Some(conn) = self.conns.get_mut(slot as usize) {
            let n = match conn.stream.read(&mut buf) {
                Ok(0) => {
                    self.close(slot, Close::Now, "peer closed");
                    break;
                }
                Ok(n) => n,
                // Drained the socket for this readiness event.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(slot, error = %e, "read failed");
                    self.close(slot, Close::Now, "read error");
                    break;
                }
            };
            if conn.closing.is_some() {
                // Input after we decided to close is discarded.
                continue;
            }
            if conn.inbuf.is_empty() {
                // Fast path: parse straight from the shard's buffer, keep only a remainder.
                let used = self.process(slot, &mut buf[..n], now);
                if let Some(conn) = self.conns.get_mut(slot as usize) {
                    if used < n && conn.closing.is_none() {
                        conn.inbuf.extend_from_slice(&buf[used..n]);
                    }
                }
            } else {
                let mut pending = std::mem::take(&mut conn.inbuf);
                pending.extend_from_slice(&buf[..n]);
                self.resume(slot, pending, now);
            }
            if let Some(conn) = self.conns.get_mut(slot as usize) {
                if conn.inbuf.capacity() > 0 && conn.inbuf.is_empty() {
                    // Give the remainder buffer back: idle sockets should own none.
                    conn.inbuf = Vec::new();
                }
            }
            self.mark(slot);
        }
        self.core.scratch = buf;
    }

    /// Uses as much of `buf` as makes whole requests or frames; returns how much.
    fn process(&mut self, slot: u32, buf: &mut [u8], now: Instant) -> usize {
        let mut used = 0;
        loop {
            let Some(conn) = self.conns.get_mut(slot as usize) else {
                return used;
            };
            if conn.closing.is_some() || used == buf.len() {
                return used;
            }
            let step = match conn.phase {
                Phase::Http { waiting: true, .. } => return used,
                Phase::Http { .. } => self.http_input(slot, &mut buf[used..], now),
                Phase::Socket(_) => self.socket_input(slot, &mut buf[used..], now),
                Phase::Upgrading(ref up) if !up.accepted || up.switching => return used,
                Phase::Upgrading(_) => self.upgrade_input(slot, &mut buf[used..], now),
            };
            match step {
                0 => return used,
                n => used += n,
            }
        }
    }

    /// Processes bytes held back for a connection; keeps what is still incomplete.
    fn resume(&mut self, slot: u32, mut pending: Vec<u8>, now: Instant) {
        let used = self.process(slot, &mut pending, now);
        if let Some(conn) = self.conns.get_mut(slot as usize) {
            if conn.closing.is_none() && used < pending.len() {
                pending.drain(..used);
                conn.inbuf = pending;
            }
        }
    }

    fn drain_inbox(&mut self, now: Instant) {
        for _ in 0..INBOX_BATCH {
            let command = match self.inbox.try_recv() {
                Ok(c) => c,
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => break,
            };
            match command {
                ShardCommand::Deliver(broadcast) => self.deliver(&broadcast, now),
                ShardCommand::Polling(command) => self.on_poll_command(*command, now),
                ShardCommand::Recover { pid, to } => self.on_recover_request(&pid, to, now),
                ShardCommand::Recovered { to, session } => self.on_recovered(to, session, now),
                ShardCommand::Reply(to, reply) => self.on_reply(to, reply, now),
                ShardCommand::Membership(change) => self.on_membership(change),
                ShardCommand::Shutdown { deadline } => {
                    self.close_all_polls(now);
                    self.release_poll_waiters(now);
                    self.begin_shutdown(deadline)
                }
            }
        }
        self.core
            .metrics()
            .inbox_depth
            .store(self.inbox.len() as i64, Relaxed);
    }

    fn begin_shutdown(&mut self, deadline: Instant) {
        self.core.shutdown = Some(deadline);
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        let slots: Vec<u32> = self.conns.iter().map(|(k, _)| k as u32).collect();
        for slot in slots {
            let conn = &mut self.conns[slot as usize];
            match conn.phase {
                Phase::Socket(_) => {
                    // 1001 "going away": socket.io-client reconnects, to another node if need be.
                    conn.out.push(crate::transport::websocket::close(
                        1001,
                        "server shutting down",
                    ));
                    self.close(slot, Close::AfterFlush, "shutdown");
                }
                Phase::Http { waiting: true, .. } => {}
                // A response still queued (a polling answer) is written first.
                Phase::Http { .. } if !conn.out.is_empty() => {
                    self.close(slot, Close::AfterFlush, "shutdown")
                }
                // Mid-upgrade, the client may have paused polling already: only the
                // WebSocket can still tell it, once it sends `5` (see `upgrade_input`).
                Phase::Upgrading(ref up) if up.accepted && !up.switching => {}
                Phase::Upgrading(ref up) if up.accepted => {
                    conn.out.push(crate::transport::websocket::close(
                        1001,
                        "server shutting down",
                    ));
                    self.close(slot, Close::AfterFlush, "shutdown");
                }
                Phase::Http { .. } | Phase::Upgrading(_) => {
                    self.close(slot, Close::Now, "shutdown")
                }
            }
        }
    }

    fn run_timers(&mut self, now: Instant) {
        while let Some(due) = self.core.timers.pop_due(now) {
            if polling::is_poll(due.slot) {
                self.poll_timer(due, now);
                continue;
            }
            let Some(conn) = self.conns.get_mut(due.slot as usize) else {
                continue;
            };
            if conn.generation != due.generation || conn.armed != Some(due.at) {
                // Stale: the connection re-armed for another instant, or the slot was reused.
                continue;
            }
            conn.armed = None;
            if conn.closing.is_some_and(|t| t <= now) {
                self.close(due.slot, Close::Now, "close grace over");
                continue;
            }
            match &mut conn.phase {
                Phase::Http {
                    deadline,
                    waiting: false,
                    ..
                } if *deadline <= now => {
                    // Slowloris or an idle keep-alive connection: cut it off.
                    self.core.metrics().protocol_errors.fetch_add(1, Relaxed);
                    let bytes = crate::protocol::http::json_error(
                        408,
                        "request head not received in time",
                        false,
                    );
                    conn.out.push(bytes.into());
                    self.close(due.slot, Close::AfterFlush, "request timeout");
                }
                Phase::Http { .. } => {}
                Phase::Upgrading(up) => {
                    if up.deadline <= now {
                        self.core.metrics().protocol_errors.fetch_add(1, Relaxed);
                        let close = crate::transport::websocket::close(
                            1008,
                            "the upgrade was not completed in time",
                        );
                        conn.out.push(close);
                        self.close(due.slot, Close::AfterFlush, "upgrade timeout");
                    }
                }
                Phase::Socket(socket) => {
                    if let Err(e) = socket.session.handle_timeout(now) {
                        self.core.metrics().protocol_errors.fetch_add(1, Relaxed);
                        tracing::debug!(slot = due.slot, reason = %e, "session timed out");
                        self.close(due.slot, Close::Now, "ping timeout");
                        continue;
                    }
                    self.expire_typing(due.slot, now);
                    self.drive(due.slot, now);
                }
            }
            self.mark(due.slot);
        }
    }

    /// Queues `slot` for the end-of-turn flush and re-check.
    fn mark(&mut self, slot: u32) {
        if let Some(conn) = self.conns.get_mut(slot as usize) {
            if !conn.dirty {
                conn.dirty = true;
                self.core.dirty.push(slot);
            }
        }
    }

    /// Writes every marked connection's queue, closes those that are done, re-arms
    /// deadlines and updates poll interest.
    fn flush_dirty(&mut self, _now: Instant) {
        let mut dirty = std::mem::take(&mut self.core.dirty);
        for slot in dirty.drain(..) {
            let Some(conn) = self.conns.get_mut(slot as usize) else {
                continue;
            };
            conn.dirty = false;
            let before = conn.out.bytes();
            match conn.flush() {
                Ok(written) => {
                    let m = &self.core.shared.metrics.shards[usize::from(self.core.id.0)];
                    m.bytes_out.fetch_add(written as u64, Relaxed);
                    m.queued_bytes
                        .fetch_sub((before - conn.out.bytes()) as i64, Relaxed);
                }
                Err(e) => {
                    tracing::debug!(slot, error = %e, "write failed");
                    self.close(slot, Close::Now, "write error");
                    continue;
                }
            }
            if conn.closing.is_some() && conn.out.is_empty() {
                // Everything queued is in the stream: only now end TLS (close_notify after
                // the last record, or the peer loses the response), then drop the socket
                // once that alert is out too.
                conn.stream.close_notify();
                let _ = conn.stream.flush_tls();
                if !conn.stream.wants_write() {
                    self.close(slot, Close::Now, "closed after flush");
                    continue;
                }
            }
            if let Some(at) = conn.next_deadline() {
                if conn.armed.is_none_or(|armed| at < armed) {
                    conn.armed = Some(at);
                    self.core.timers.push(Due {
                        at,
                        slot,
                        generation: conn.generation,
                    });
                }
            }
            let interest = conn.interest();
            if conn.registered != Some(interest) {
                if let Err(e) = self.poll.registry().reregister(
                    conn.stream.tcp(),
                    Token(slot as usize),
                    interest,
                ) {
                    tracing::debug!(slot, error = %e, "reregister failed");
                    self.close(slot, Close::Now, "reregister failed");
                    continue;
                }
                conn.registered = Some(interest);
            }
        }
        self.core.dirty = dirty;
    }

    /// Closes a connection: at once, or once its queue is written.
    fn close(&mut self, slot: u32, how: Close, why: &'static str) {
        if polling::is_poll(slot) {
            self.close_poll(slot, why, Instant::now());
            return;
        }
        let Some(conn) = self.conns.get_mut(slot as usize) else {
            return;
        };
        if how == Close::AfterFlush {
            if conn.closing.is_none() {
                conn.closing = Some(Instant::now() + CLOSE_GRACE);
                conn.inbuf = Vec::new();
            }
            self.mark(slot);
            return;
        }
        let mut conn = self.conns.remove(slot as usize);
        tracing::trace!(slot, why, "connection closed");
        let _ = self.poll.registry().deregister(conn.stream.tcp());
        let m = &self.core.shared.metrics.shards[usize::from(self.core.id.0)];
        m.connections.fetch_sub(1, Relaxed);
        m.queued_bytes.fetch_sub(conn.out.bytes() as i64, Relaxed);
        match conn.phase {
            Phase::Socket(socket) => self.core.on_socket_closed(slot, *socket),
            Phase::Upgrading(up) => self.on_upgrading_closed(slot, *up, Instant::now()),
            Phase::Http { .. } => {}
        }
    }

    fn connection_id(&self, slot: u32) -> Option<ConnectionId> {
        if polling::is_poll(slot) {
            return self.poll_id(slot);
        }
        self.conns.get(slot as usize).map(|c| ConnectionId {
            shard: self.core.id,
            slot,
            generation: c.generation,
        })
    }

    /// The connection an id names, if it is still the same one.
    fn lookup(&self, id: ConnectionId) -> Option<u32> {
        if polling::is_poll(id.slot) {
            return self.poll_lookup(id);
        }
        self.conns
            .get(id.slot as usize)
            .filter(|c| c.generation == id.generation)
            .map(|_| id.slot)
    }
}
