//! One connection on a shard: its byte stream, what phase it is in, and its outbound queue
//! (bounded in bytes by the shard). The shard decides what to do; this file only keeps
//! state and moves bytes.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use mio::Interest;

use super::socket::Socket;
use super::upgrade::Upgrading;
use crate::metrics::ShardMetrics;
use crate::transport::Stream;

/// Most slices handed to one `writev`; more would exceed what a small socket buffer takes
/// in one call anyway.
const MAX_IOVECS: usize = 64;

/// How long a connection being closed may take to flush its last bytes.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Most bytes a closing connection's peer may still send to be read and thrown away (an
/// upload refused with 413 that is still on its way, so the client reads its answer rather
/// than a reset): past it the connection ends at once, whatever is left of [`CLOSE_GRACE`].
/// Without it a peer could keep a shard reading for the whole grace at its link's speed.
pub const MAX_DISCARD: u32 = 16 * 1024 * 1024;

/// A connection owned by a shard.
#[derive(Debug)]
pub struct Connection {
    /// Slot generation (see `ConnectionId`).
    pub generation: u32,
    /// Plain or TLS bytes.
    pub stream: Stream,
    /// What the connection is doing.
    pub phase: Phase,
    /// Frames and responses waiting to be written.
    pub out: Outbound,
    /// Bytes read but not yet used (a partial request or frame). Empty, and unallocated,
    /// for an idle connection.
    pub inbuf: Vec<u8>,
    /// Interest currently registered with the poll.
    pub registered: Option<Interest>,
    /// The deadline this connection armed in the shard's timers.
    pub armed: Option<Instant>,
    /// Queued on the shard's flush list for this loop turn.
    pub dirty: bool,
    /// Set once the connection is being closed: read nothing more, flush until then, and
    /// drop it at the end of the turn that reaches this instant (at once: the turn's end).
    pub closing: Option<Instant>,
    /// Durable broadcasts up to this offset were delivered before the session came to this
    /// connection (by the shard that held it while it was polling): skip them. Zero: none.
    pub delivered_through: u64,
    /// Input may be waiting that was not read or handled: the turn's budget ran out, or
    /// reading is paused (see [`Connection::may_read`]).
    pub more: bool,
    /// On the shard's ready list, to be read next turn.
    pub ready: bool,
    /// Since when the queue has been over the slow-consumer bound with nothing written.
    pub stuck_since: Option<Instant>,
    /// Closing, with everything written and our side shut: what the peer still sends is
    /// read and discarded until it closes too, or `closing` comes. Closing at once instead
    /// would answer its unread bytes with a reset, and it could lose our last response
    /// (a 413 to a large upload).
    pub lingering: bool,
    /// Bytes read and discarded since the connection began closing (see [`MAX_DISCARD`]).
    pub discarded: u32,
    /// The client's address, when the gate counts this connection (see `crate::gate`).
    pub peer: Option<std::net::IpAddr>,
}

/// The bounds on a connection's memory, from the settings.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Reading pauses while more output than this waits to be written.
    pub pause_output: usize,
    /// Most input held: one whole request or frame.
    pub max_input: usize,
    /// Most input held while a request waits for its answer (the next request's head).
    pub max_input_waiting: usize,
    /// A queue over this for longer than `grace`, with nothing written, is a slow consumer.
    pub outbound: usize,
    /// A queue over this is dropped at once.
    pub outbound_hard: usize,
    /// See `outbound`.
    pub grace: Duration,
}

/// Output that pauses reading (at most the slow-consumer bound).
const PAUSE_OUTPUT: usize = 64 * 1024;

impl Limits {
    /// The limits the settings give.
    pub fn new(config: &crate::config::Config) -> Self {
        Limits {
            pause_output: PAUSE_OUTPUT.min(config.max_outbound_bytes),
            // A WebSocket frame's head is at most 14 bytes.
            max_input: config.max_header_bytes + config.engine.max_payload + 14,
            max_input_waiting: config.max_header_bytes,
            outbound: config.max_outbound_bytes,
            outbound_hard: config.max_outbound_bytes.saturating_mul(4),
            grace: config.slow_consumer_grace,
        }
    }
}

/// The phases of a connection. A WebSocket exists only after a complete upgrade request,
/// so "a frame before the upgrade" cannot be represented.
#[derive(Debug)]
pub enum Phase {
    /// Reading HTTP requests (keep-alive): the head must be complete by `deadline`.
    Http {
        /// When an incomplete request is cut off (slowloris).
        deadline: Instant,
        /// A request is being answered elsewhere (the store, or a polling session's
        /// shard); further input waits for the answer.
        waiting: bool,
        /// Keep the connection after the pending response.
        keep_alive: bool,
    },
    /// Engine.IO + Socket.IO over WebSocket.
    Socket(Box<Socket>),
    /// A WebSocket taking over a long-polling session (see `shard::upgrade`).
    Upgrading(Box<Upgrading>),
}

impl Connection {
    /// A freshly accepted connection, reading its first request.
    pub fn new(generation: u32, stream: Stream, deadline: Instant) -> Self {
        Connection {
            generation,
            stream,
            phase: Phase::Http {
                deadline,
                waiting: false,
                keep_alive: true,
            },
            out: Outbound::default(),
            inbuf: Vec::new(),
            registered: None,
            armed: None,
            dirty: false,
            closing: None,
            delivered_through: 0,
            more: false,
            ready: false,
            stuck_since: None,
            lingering: false,
            discarded: 0,
            peer: None,
        }
    }

    /// Drops the connection at the end of this turn, without writing what is queued (peer
    /// gone, IO error, slow consumer).
    pub fn close_now(&mut self, now: Instant, why: &'static str) {
        tracing::trace!(why, "closing a connection");
        self.closing = Some(self.closing.map_or(now, |at| at.min(now)));
        self.inbuf = Vec::new();
    }

    /// Writes what is queued, then drops the connection (within a grace period).
    pub fn close_after_flush(&mut self, now: Instant, why: &'static str) {
        if self.closing.is_none() {
            tracing::trace!(why, "closing a connection after its last writes");
            self.closing = Some(now + CLOSE_GRACE);
            self.inbuf = Vec::new();
        }
    }

    /// READABLE, plus WRITABLE while bytes wait to be written (rustls' `event_set` rule).
    pub fn interest(&self) -> Interest {
        if self.out.is_empty() && !self.stream.wants_write() {
            Interest::READABLE
        } else {
            Interest::READABLE | Interest::WRITABLE
        }
    }

    /// Whether more input may be read now: not while the output it made is unread, nor
    /// past one whole request or frame held (a request's head while one waits).
    pub fn may_read(&self, limits: &Limits) -> bool {
        if self.closing.is_some() {
            // Drained and discarded (a graceful close).
            return true;
        }
        let held = match self.phase {
            Phase::Http { waiting: true, .. } => limits.max_input_waiting,
            _ => limits.max_input,
        };
        self.out.bytes() <= limits.pause_output && self.inbuf.len() < held
    }

    /// Whether the queue stayed over the slow-consumer bound for the grace period without a
    /// byte written (`written` this time); starts or restarts that clock as needed.
    pub fn stuck(&mut self, limits: &Limits, written: usize, now: Instant) -> bool {
        if self.out.bytes() <= limits.outbound {
            self.stuck_since = None;
            return false;
        }
        match self.stuck_since {
            Some(since) if written == 0 => now >= since + limits.grace,
            _ => {
                self.stuck_since = Some(now);
                false
            }
        }
    }

    /// The earliest deadline this connection has; once it is closing, only the end of its
    /// grace.
    pub fn next_deadline(&self, limits: &Limits) -> Option<Instant> {
        if self.closing.is_some() {
            return self.closing;
        }
        let stuck = self.stuck_since.map(|since| since + limits.grace);
        super::timers::earliest(stuck, self.phase_deadline())
    }

    fn phase_deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Http {
                deadline,
                waiting: false,
                ..
            } => Some(*deadline),
            Phase::Http { waiting: true, .. } => None,
            Phase::Socket(socket) => socket.deadline(),
            Phase::Upgrading(up) => Some(up.deadline),
        }
    }

    /// The socket state, if this is a WebSocket connection.
    pub fn socket(&mut self) -> Option<&mut Socket> {
        match &mut self.phase {
            Phase::Socket(s) => Some(s),
            Phase::Http { .. } | Phase::Upgrading(_) => None,
        }
    }

    /// Writes queued bytes until the queue is empty or the socket would block.
    /// Returns the number of bytes written.
    pub fn flush(&mut self) -> io::Result<usize> {
        let mut written = 0;
        loop {
            match self.stream.flush_tls() {
                Ok(()) => {}
                // The socket is full; WRITABLE will bring us back.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(written),
                Err(e) => return Err(e),
            }
            if self.out.is_empty() {
                return Ok(written);
            }
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let count = self.out.slices(&mut slices);
            match self.stream.write_vectored(&slices[..count]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.out.advance(n);
                    written += n;
                }
                // The socket is full; WRITABLE will bring us back.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(written),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// A queue of whole frames (shared `Bytes`, so a broadcast is not copied per recipient),
/// bounded in bytes by the shard.
#[derive(Debug, Default)]
pub struct Outbound {
    frames: VecDeque<Bytes>,
    bytes: usize,
}

impl Outbound {
    /// Appends a frame and counts it (a broadcast's deliveries are counted in bulk instead,
    /// see [`Outbound::push`]).
    pub fn queue(&mut self, frame: Bytes, metrics: &ShardMetrics) {
        metrics.frames_out.fetch_add(1, Relaxed);
        metrics.queued_bytes.fetch_add(frame.len() as i64, Relaxed);
        self.push(frame);
    }

    /// Appends a frame without counting it.
    pub fn push(&mut self, frame: Bytes) {
        self.bytes += frame.len();
        self.frames.push_back(frame);
    }

    /// Bytes waiting.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Nothing waiting.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Fills `slices` with the front of the queue; returns how many were filled.
    fn slices<'a>(&'a self, slices: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, frame) in slices.iter_mut().zip(self.frames.iter()) {
            *slot = IoSlice::new(frame);
            n += 1;
        }
        n
    }

    /// Drops `n` written bytes from the front.
    fn advance(&mut self, mut n: usize) {
        self.bytes -= n;
        while n > 0 {
            // `n` never exceeds the bytes handed to the write, all of which are queued.
            let front = self.frames.front_mut().expect("written bytes were queued");
            if front.len() <= n {
                n -= front.len();
                self.frames.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
        if self.frames.is_empty() && self.frames.capacity() > 16 {
            // A burst is over: give its queue memory back, idle sockets should cost little.
            self.frames = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_splits_frames_and_counts_bytes() {
        let mut out = Outbound::default();
        out.push(Bytes::from_static(b"abc"));
        out.push(Bytes::from_static(b"defg"));
        assert_eq!(out.bytes(), 7);
        out.advance(4);
        assert_eq!(out.bytes(), 3);
        let mut slices = [IoSlice::new(&[]); 4];
        let n = out.slices(&mut slices);
        assert_eq!(n, 1);
        assert_eq!(&*slices[0], b"efg");
        out.advance(3);
        assert!(out.is_empty());
    }
}
