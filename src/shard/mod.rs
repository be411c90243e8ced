//! One `mio` event loop per shard thread: the only owner of its sockets. [`Shard`] is the
//! loop and the dispatch: it accepts on its own `SO_REUSEPORT` listener, reads bytes and
//! hands them to the connection's phase (`http.rs`, `ws.rs`, `upgrade.rs`), hands commands
//! from other threads to their handlers, fires deadlines, and at the end of each turn writes
//! every connection's queue once with vectored writes (so a burst of broadcasts costs one
//! `writev` per recipient) and answers the polling sessions that have packets.
//!
//! The rest is split by concern: `socket.rs` is a socket's Socket.IO state and where its
//! packets leave (drive, deliver, replay), `sockets.rs` the table of both kinds of socket,
//! `polling.rs` the long-polling sessions, `upgrade.rs` the move of a session from polling
//! to WebSocket, `recovery.rs` the log of durable events. Chat rules are not here: they are
//! `crate::chat` handlers, whose effects the shard carries out. `docs/architecture.md` walks
//! through it.

mod connection;
mod http;
mod polling;
mod read;
mod recovery;
mod socket;
mod sockets;
mod timers;
mod upgrade;
mod ws;

#[cfg(test)]
mod harness;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};

use crate::chat::auth::JwtVerifier;
use crate::chat::connect::Admission;
use crate::config::Config;
use crate::hub::Hub;
use crate::ids::{Room, ShardId, SocketRef};
use crate::mesh::{Mesh, PollCommand, ShardCommand, StoreCommand};
use crate::metrics::{Metrics, ShardMetrics};
use crate::transport::Stream;

use connection::{Connection, Limits, Phase};
use sockets::Sockets;
use timers::Timers;

/// Token of the shard's listener.
const LISTENER: Token = Token(usize::MAX - 1);
/// Token of the shard's waker (commands in the inbox).
pub const WAKER: Token = Token(usize::MAX - 2);
/// Bytes read from a socket per `read` call, into one buffer shared by the shard.
const READ_CHUNK: usize = 64 * 1024;
/// Commands taken from the inbox per loop turn, so sockets are served between bursts.
const INBOX_BATCH: usize = 8192;

/// Users per re-check sent to the store (see [`ShardCommand::Recheck`]).
const RECHECK_CHUNK: usize = 256;

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
    /// Connection counts and per-address limits, shared by every shard.
    pub gate: crate::gate::Gate,
}

/// A shard: its poll, listener and inbox, its sockets, and the rest of its state.
pub struct Shard {
    poll: Poll,
    listener: Option<TcpListener>,
    inbox: Receiver<ShardCommand>,
    sockets: Sockets,
    core: Core,
}

/// Everything of a shard but its IO and its sockets, so handlers can borrow both at once.
struct Core {
    id: ShardId,
    shared: Arc<Shared>,
    mesh: Mesh,
    hub: Hub<SocketRef>,
    timers: Timers,
    /// Sockets with packets to write (connections) or to answer with (polling sessions), or
    /// state to re-check, at the end of this turn.
    dirty: Vec<SocketRef>,
    /// Commands this shard addressed to itself, handled later in the same turn.
    local: VecDeque<ShardCommand>,
    /// Connections whose held-back input may go on (their pending answer was written).
    resume: Vec<u32>,
    next_generation: u32,
    scratch: Vec<u8>,
    /// Set by `Shutdown`: the instant unfinished writes are abandoned.
    shutdown: Option<Instant>,
    /// Recent durable broadcasts and detached sessions (connection state recovery).
    recovery: recovery::RecoveryLog,
    /// Connections to read next turn: their budget ran out, or their paused reading may go
    /// on (see `read.rs`).
    ready: Vec<u32>,
    /// Frames or requests the connection being read may still have handled this turn.
    frames_left: usize,
    /// Bounds on a connection's memory.
    limits: Limits,
}

impl Core {
    fn metrics(&self) -> &ShardMetrics {
        &self.shared.metrics.shards[usize::from(self.id.0)]
    }

    /// A generation for a new connection or polling session.
    fn generation(&mut self) -> u32 {
        let generation = self.next_generation;
        self.next_generation = generation.wrapping_add(1);
        generation
    }

    /// Queues `socket` for the end-of-turn flush (`dirty` is its own flag).
    fn mark(&mut self, socket: SocketRef, dirty: &mut bool) {
        if !*dirty {
            *dirty = true;
            self.dirty.push(socket);
        }
    }

    /// Counts and logs a client dropped because its queue passed the bound (`queued`
    /// bytes waiting).
    fn slow_consumer(&self, socket: SocketRef, queued: usize) {
        self.metrics().slow_consumers_dropped.fetch_add(1, Relaxed);
        tracing::info!(
            shard = self.id.0,
            ?socket,
            queued,
            "dropping a slow consumer: its queue stayed over CHAT_MAX_OUTBOUND_BYTES"
        );
    }

    /// Sends a command to `shard`; to this shard, it is handled later in this turn.
    fn send_to(&mut self, shard: ShardId, command: ShardCommand) {
        if shard == self.id {
            self.local.push_back(command);
        } else if let Some(handle) = self.mesh.shards.get(usize::from(shard.0)) {
            handle.send(command);
        }
    }

    /// Sends a polling command to `shard` (see [`Core::send_to`]).
    fn send_poll(&mut self, shard: ShardId, command: PollCommand) {
        self.send_to(shard, ShardCommand::Polling(Box::new(command)));
    }

    /// What admitting a socket reads about this shard (see `chat::connect`).
    fn admit<R>(&self, now: Instant, f: impl FnOnce(&Admission<'_>) -> R) -> R {
        // Half the slow-consumer bound: the rest of the queue stays for live traffic.
        let budget = self.limits.outbound / 2;
        let can_replay =
            |offset, rooms: &[Room]| self.recovery.can_replay_within(offset, rooms, budget);
        f(&Admission {
            shard: self.id,
            now,
            recovery: self.recovery.enabled(),
            node: self.mesh.broker.node(),
            newest: self.recovery.newest(),
            can_replay: &can_replay,
            replay_budget: budget,
        })
    }
}

impl Shard {
    /// Builds a shard around a poll (whose waker is already in the mesh) and its listener
    /// (`None`: connections are only added by hand, as the test harness does).
    pub fn new(
        id: ShardId,
        poll: Poll,
        mut listener: Option<TcpListener>,
        inbox: Receiver<ShardCommand>,
        mesh: Mesh,
        shared: Arc<Shared>,
    ) -> io::Result<Shard> {
        if let Some(listener) = &mut listener {
            poll.registry()
                .register(listener, LISTENER, Interest::READABLE)?;
        }
        let window = shared.config.recovery_window;
        let log_bytes = shared.config.recovery_log_bytes;
        let limits = Limits::new(&shared.config);
        let mut hub = Hub::default();
        if mesh.broker.is_cluster() {
            hub.track_changes();
        }
        Ok(Shard {
            poll,
            listener,
            inbox,
            sockets: Sockets::default(),
            core: Core {
                id,
                shared,
                mesh,
                hub,
                timers: Timers::default(),
                dirty: Vec::new(),
                local: VecDeque::new(),
                resume: Vec::new(),
                next_generation: 0,
                scratch: vec![0; READ_CHUNK],
                shutdown: None,
                recovery: recovery::RecoveryLog::new(window, log_bytes),
                ready: Vec::new(),
                frames_left: read::FRAME_BUDGET,
                limits,
            },
        })
    }

    /// Runs the event loop until shutdown has closed every connection (or its deadline passed).
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = if !self.inbox.is_empty() || !self.core.ready.is_empty() {
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
                    Token(key) => {
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.on_readable(key as u32, now);
                        }
                        if event.is_writable() {
                            self.sockets
                                .mark(&mut self.core, SocketRef::Conn(key as u32));
                        }
                    }
                }
            }
            // Who had more to read last turn goes after this turn's events.
            self.serve_ready(now);
            if self.end_turn(now) {
                return Ok(());
            }
        }
    }

    /// The end of a loop turn: commands, deadlines, then every write. Returns `true` once
    /// shutdown is done.
    fn end_turn(&mut self, now: Instant) -> bool {
        self.drain_inbox(now);
        self.run_timers(now);
        self.core.recovery.sweep(now);
        self.flush(now);
        self.core
            .shutdown
            .is_some_and(|deadline| self.sockets.conns.is_empty() || now >= deadline)
    }

    fn accept(&mut self, now: Instant) {
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            let (tcp, peer) = match listener.accept() {
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
            if let Err(refusal) = self.core.shared.gate.open(peer.ip(), now) {
                self.refuse(tcp, peer, &refusal.0);
                continue;
            }
            let _ = tcp.set_nodelay(true);
            match Stream::new(tcp, self.core.shared.tls.as_ref()) {
                Ok(stream) => match self.add(stream, now) {
                    Some(key) => self.sockets.conns[key as usize].peer = Some(peer.ip()),
                    None => self.core.shared.gate.close(peer.ip(), now),
                },
                Err(e) => {
                    self.core.shared.gate.close(peer.ip(), now);
                    tracing::warn!(error = %e, "TLS session setup failed");
                }
            }
        }
    }

    /// Turns a connection away at accept (over a connection limit): a plain-text client gets
    /// a `503` saying which limit (written if the socket buffer takes it, never waited for);
    /// a TLS client is closed.
    fn refuse(&self, tcp: mio::net::TcpStream, peer: std::net::SocketAddr, why: &str) {
        self.core
            .metrics()
            .connections_refused
            .fetch_add(1, Relaxed);
        tracing::debug!(%peer, why, "connection refused");
        if self.core.shared.tls.is_none() {
            let bytes = crate::protocol::http::json_error(503, why, false);
            let _ = std::io::Write::write(&mut &tcp, &bytes);
        }
    }

    /// Takes a new connection (accepted, or an in-memory one in tests); returns its key.
    fn add(&mut self, mut stream: Stream, now: Instant) -> Option<u32> {
        let entry = self.sockets.conns.vacant_entry();
        let key = entry.key() as u32;
        let token = Token(entry.key());
        if let Err(e) = stream.register(self.poll.registry(), token, Interest::READABLE) {
            tracing::warn!(error = %e, "register failed");
            return None;
        }
        let generation = self.core.generation();
        let deadline = now + self.core.shared.config.request_timeout;
        let conn = entry.insert(Connection::new(generation, stream, deadline));
        conn.registered = Some(Interest::READABLE);
        let m = self.core.metrics();
        m.accepted.fetch_add(1, Relaxed);
        m.connections.fetch_add(1, Relaxed);
        self.sockets.mark(&mut self.core, SocketRef::Conn(key));
        Some(key)
    }

    fn drain_inbox(&mut self, now: Instant) {
        for _ in 0..INBOX_BATCH {
            match self.inbox.try_recv() {
                Ok(command) => self.dispatch(command, now),
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => break,
            }
        }
        self.settle(now);
        self.core
            .metrics()
            .inbox_depth
            .store(self.inbox.len() as i64, Relaxed);
    }

    /// Hands one command to its handler.
    fn dispatch(&mut self, command: ShardCommand, now: Instant) {
        let (sockets, core) = (&mut self.sockets, &mut self.core);
        match command {
            ShardCommand::Deliver(broadcast) => socket::deliver(sockets, core, &broadcast, now),
            ShardCommand::Reply(to, reply) => sockets.reply(core, to, reply, now),
            ShardCommand::Membership(change) => sockets.membership(core, change, now),
            ShardCommand::Recheck => {
                let mut standings = sockets.standings();
                while !standings.is_empty() {
                    let rest = standings.split_off(standings.len().min(RECHECK_CHUNK));
                    core.mesh.store.send(StoreCommand::Recheck(standings));
                    standings = rest;
                }
            }
            ShardCommand::Recover { pid, to } => {
                let answer = ShardCommand::Recovered {
                    to,
                    session: core.recovery.take(now, &pid),
                    replay: None,
                };
                core.send_to(to.shard, answer);
            }
            ShardCommand::Recovered {
                to,
                session,
                replay,
            } => sockets.recovered(core, to, session, replay, now),
            ShardCommand::Handover { pid, req } => {
                core.mesh.broker.handed(req, core.recovery.take(now, &pid))
            }
            ShardCommand::Detach { pid, session } => core.recovery.detach(now, pid, session),
            ShardCommand::Polling(command) => match *command {
                PollCommand::Request {
                    from,
                    sid,
                    body,
                    origin,
                    keep_alive,
                } => sockets
                    .polls
                    .request(core, from, &sid, body, origin, keep_alive, now),
                PollCommand::Respond {
                    to,
                    response,
                    keep_alive,
                } => http::answered(sockets, core, to, response, keep_alive, now),
                PollCommand::Upgrade(from, sid) => {
                    upgrade::asked(&mut sockets.polls, core, from, &sid)
                }
                PollCommand::Upgradable(to, rooms) => {
                    upgrade::upgradable(sockets, core, to, rooms, now)
                }
                PollCommand::Probe(sid) => upgrade::probed(&mut sockets.polls, core, &sid),
                PollCommand::Cancel(sid) => upgrade::cancelled(&mut sockets.polls, &sid),
                PollCommand::Switch(from, sid) => {
                    upgrade::switch(&mut sockets.polls, core, from, &sid, now)
                }
                PollCommand::Adopt(to, handover) => {
                    upgrade::adopt(sockets, core, to, handover, now)
                }
            },
            ShardCommand::Shutdown { deadline } => self.shutdown(deadline, now),
        }
    }

    /// Handles what this turn left for itself: commands this shard sent itself, and
    /// connections whose held-back input may go on.
    fn settle(&mut self, now: Instant) {
        loop {
            if let Some(command) = self.core.local.pop_front() {
                self.dispatch(command, now);
            } else if let Some(key) = self.core.resume.pop() {
                if let Some(conn) = self.sockets.conns.get_mut(key as usize) {
                    if conn.closing.is_none() && !conn.inbuf.is_empty() {
                        self.core.frames_left = read::FRAME_BUDGET;
                        let pending = std::mem::take(&mut conn.inbuf);
                        self.resume(key, pending, now);
                    }
                }
            } else {
                return;
            }
        }
    }

    /// Stops accepting and closes every socket: polling sessions first (their held GETs
    /// get the close packet), then what still waits for another shard's polling answer
    /// (that shard may be gone), then every connection as its phase allows.
    fn shutdown(&mut self, deadline: Instant, now: Instant) {
        self.core.shutdown = Some(deadline);
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.sockets.polls.close_all(&mut self.core, now);
        self.settle(now);
        http::release_waiters(&mut self.sockets, &mut self.core, now);
        self.sockets.shutdown(&mut self.core, now);
    }

    fn run_timers(&mut self, now: Instant) {
        while let Some(due) = self.core.timers.pop_due(now) {
            self.sockets.timeout(&mut self.core, due, now);
        }
        self.settle(now);
    }

    /// Writes every marked connection's queue, answers every marked polling session's held
    /// GET, closes connections that are done, re-arms deadlines and updates poll interest.
    /// Answers and closes can mark more (a polling answer for a connection of this shard),
    /// so it goes on until nothing is left.
    fn flush(&mut self, now: Instant) {
        // In a cluster, the rooms this shard gained or lost go to the broker before anything
        // the sockets in them can ask of the store.
        for (room, joined) in self.core.hub.take_changes() {
            self.core.mesh.broker.interest(room, self.core.id, joined);
        }
        loop {
            self.settle(now);
            let mut dirty = std::mem::take(&mut self.core.dirty);
            if dirty.is_empty() {
                self.core.dirty = dirty;
                return;
            }
            for socket in dirty.drain(..) {
                match socket {
                    SocketRef::Conn(key) => self.flush_conn(key, now),
                    SocketRef::Poll(index) => self.sockets.polls.flush(&mut self.core, index, now),
                }
            }
            if self.core.dirty.is_empty() {
                // Keep the allocation for the next turn.
                self.core.dirty = dirty;
            }
        }
    }

    fn flush_conn(&mut self, key: u32, now: Instant) {
        let Some(conn) = self.sockets.conns.get_mut(key as usize) else {
            return;
        };
        conn.dirty = false;
        if conn.closing.is_some_and(|at| at <= now) {
            self.close(key, now);
            return;
        }
        let before = conn.out.bytes();
        let written = match conn.flush() {
            Ok(written) => {
                let m = &self.core.shared.metrics.shards[usize::from(self.core.id.0)];
                m.bytes_out.fetch_add(written as u64, Relaxed);
                m.queued_bytes
                    .fetch_sub((before - conn.out.bytes()) as i64, Relaxed);
                written
            }
            Err(e) => {
                tracing::debug!(key, error = %e, "write failed");
                self.close(key, now);
                return;
            }
        };
        let limits = self.core.limits;
        if conn.closing.is_none() && conn.stuck(&limits, written, now) {
            let queued = conn.out.bytes();
            self.core.slow_consumer(SocketRef::Conn(key), queued);
            self.close(key, now);
            return;
        }
        if conn.more && !conn.ready && conn.may_read(&limits) {
            // Its reading was cut short or paused, and may go on: next turn.
            conn.ready = true;
            self.core.ready.push(key);
        }
        if conn.closing.is_some() && conn.out.is_empty() && !conn.lingering {
            // Everything queued is in the stream: only now end TLS (close_notify after the
            // last record, or the peer loses the response), then shut our side once that
            // alert is out too, and linger (see `Connection::lingering`).
            conn.stream.close_notify();
            let _ = conn.stream.flush_tls();
            if !conn.stream.wants_write() {
                conn.stream.shutdown_write();
                conn.lingering = true;
            }
        }
        let next = conn.next_deadline(&limits);
        let socket = SocketRef::Conn(key);
        (self.core.timers).arm(&mut conn.armed, next, socket, conn.generation);
        let interest = conn.interest();
        if conn.registered != Some(interest) {
            let token = Token(key as usize);
            if let Err(e) = conn
                .stream
                .reregister(self.poll.registry(), token, interest)
            {
                tracing::debug!(key, error = %e, "reregister failed");
                self.close(key, now);
                return;
            }
            conn.registered = Some(interest);
        }
    }

    /// Drops a connection, and whatever socket or upgrade it carried. The only place a
    /// connection leaves the slab.
    fn close(&mut self, key: u32, now: Instant) {
        let Some(mut conn) = self.sockets.conns.try_remove(key as usize) else {
            return;
        };
        tracing::trace!(key, "connection closed");
        let _ = conn.stream.deregister(self.poll.registry());
        let m = self.core.metrics();
        m.connections.fetch_sub(1, Relaxed);
        m.queued_bytes.fetch_sub(conn.out.bytes() as i64, Relaxed);
        if let Some(ip) = conn.peer {
            self.core.shared.gate.close(ip, now);
        }
        match conn.phase {
            Phase::Socket(socket) => {
                socket::gone(&mut self.core, SocketRef::Conn(key), socket.auth, now)
            }
            Phase::Upgrading(up) => upgrade::closed(&mut self.core, key, *up),
            Phase::Http { .. } => {}
        }
    }
}
