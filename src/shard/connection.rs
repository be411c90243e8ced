//! One socket on a shard: its byte stream, what phase it is in, and its bounded outbound
//! queue. The shard decides what to do; this file only keeps state and moves bytes.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::time::Instant;

use bytes::{Buf, Bytes};
use mio::Interest;

use crate::chat::Auth;
use crate::ids::Room;
use crate::model::User;
use crate::protocol::session::Session;
use crate::transport::Stream;

/// Most slices handed to one `writev`; more would exceed what a small socket buffer takes
/// in one call anyway.
const MAX_IOVECS: usize = 64;

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
    /// Set once the connection is being closed: read nothing more, flush, then drop it
    /// (at the latest at this instant).
    pub closing: Option<Instant>,
    /// Durable broadcasts up to this offset were delivered before the session came to this
    /// connection (by the shard that held it while it was polling): skip them. Zero: none.
    pub delivered_through: u64,
}

/// The phases of a connection. A WebSocket exists only after a complete upgrade request,
/// so "a frame before the upgrade" cannot be represented.
#[derive(Debug)]
pub enum Phase {
    /// Reading HTTP requests (keep-alive): the head must be complete by `deadline`.
    Http {
        /// When an incomplete request is cut off (slowloris).
        deadline: Instant,
        /// An admin request is with the store; further input waits for its answer.
        waiting: bool,
        /// Keep the connection after the pending response.
        keep_alive: bool,
    },
    /// Engine.IO + Socket.IO over WebSocket.
    Socket(Box<Socket>),
    /// A WebSocket taking over a long-polling session (see `shard::upgrade`).
    Upgrading(Box<Upgrading>),
}

/// A WebSocket opened with the `sid` of a long-polling session, until the session is
/// handed to it. The session lives on `owner` meanwhile.
#[derive(Debug)]
pub struct Upgrading {
    /// The session's id.
    pub sid: Box<str>,
    /// The shard that owns the session.
    pub owner: u16,
    /// Give up (close) if the upgrade is not done by then.
    pub deadline: Instant,
    /// The owner confirmed the session and the `101` was sent.
    pub accepted: bool,
    /// The client sent `5`: its next frames belong to the session, so they wait for it.
    pub switching: bool,
    /// Rooms joined in this shard's hub for this connection while upgrading.
    pub rooms: Vec<Room>,
    /// Broadcasts to those rooms received meanwhile, merged in at adoption (when the
    /// socket's user is known, for `Except::User`).
    pub shadow: Vec<std::sync::Arc<crate::mesh::Broadcast>>,
    /// The `101` answer, sent once the owner confirms the session.
    pub handshake: Vec<u8>,
}

/// A WebSocket connection's Socket.IO state.
#[derive(Debug)]
pub struct Socket {
    /// Engine.IO / Socket.IO state machine.
    pub session: Session,
    /// Where authentication stands.
    pub auth: Auth,
    /// A fragmented message being reassembled (rare: socket.io-client sends whole frames).
    pub fragment: Option<Vec<u8>>,
}

/// The socket of the connection in `slot`, if it is a WebSocket connection.
pub fn socket_at(conns: &mut slab::Slab<Connection>, slot: u32) -> Option<&mut Socket> {
    conns.get_mut(slot as usize).and_then(Connection::socket)
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

    /// The earliest deadline this connection has.
    pub fn next_deadline(&self) -> Option<Instant> {
        let phase = match &self.phase {
            Phase::Http {
                deadline,
                waiting: false,
                ..
            } => Some(*deadline),
            Phase::Http { waiting: true, .. } => None,
            Phase::Socket(s) => {
                let typing = match &s.auth {
                    Auth::Connected(m) => m.chat.typing.poll_timeout(),
                    _ => None,
                };
                match (s.session.poll_timeout(), typing) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            Phase::Upgrading(u) => Some(u.deadline),
        };
        match (phase, self.closing) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The socket state, if this is a WebSocket connection.
    pub fn socket(&mut self) -> Option<&mut Socket> {
        match &mut self.phase {
            Phase::Socket(s) => Some(s),
            Phase::Http { .. } | Phase::Upgrading(_) => None,
        }
    }

    /// The authenticated user of this connection, if any.
    pub fn user(&self) -> Option<&User> {
        match &self.phase {
            Phase::Socket(s) => match &s.auth {
                Auth::Connected(m) => Some(&m.user),
                _ => None,
            },
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
    /// Appends a frame.
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
