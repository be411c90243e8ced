//! The read path of a shard, and its fairness. Each connection gets a budget per loop turn
//! (bytes read, frames or requests handled); one that has more waiting goes on the shard's
//! ready list and is served again next turn, after everyone else had theirs, so a client
//! streaming tiny frames cannot starve the others, the inbox, the timers or the writes.
//! mio is edge-triggered, so the ready list is also what brings back a connection whose
//! reading was paused (too much output unread, or a request waiting) once it may go on.

use std::io;
use std::time::Instant;

use super::connection::{Phase, MAX_DISCARD};
use super::upgrade::Step;
use super::{http, upgrade, ws, Shard};
use crate::ids::SocketRef;

/// Bytes read from one connection per loop turn.
pub const READ_BUDGET: usize = 128 * 1024;
/// Frames (or HTTP requests) handled for one connection per loop turn.
pub const FRAME_BUDGET: usize = 256;

impl Shard {
    /// Serves the connections left on the ready list by the previous turn, oldest first.
    pub(super) fn serve_ready(&mut self, now: Instant) {
        let ready = std::mem::take(&mut self.core.ready);
        for &key in &ready {
            if let Some(conn) = self.sockets.conns.get_mut(key as usize) {
                conn.ready = false;
                self.on_readable(key, now);
            }
        }
        if self.core.ready.is_empty() {
            // Keep the allocation.
            self.core.ready = ready;
            self.core.ready.clear();
        }
    }

    /// The read path: handles input held back for connection `key`, then reads it until it
    /// would block, its budget for this turn runs out, or it may not read now (see
    /// `Connection::may_read`); then hands what it read to the connection's phase.
    pub(super) fn on_readable(&mut self, key: u32, now: Instant) {
        match self.sockets.conns.get(key as usize) {
            // Served from the ready list this turn instead.
            Some(conn) if conn.ready => return,
            Some(_) => {}
            None => return,
        }
        self.core.frames_left = FRAME_BUDGET;
        let held = &mut self.sockets.conns[key as usize].inbuf;
        if !held.is_empty() {
            let pending = std::mem::take(held);
            self.resume(key, pending, now);
        }
        let mut buf = std::mem::take(&mut self.core.scratch);
        let mut read = 0;
        let limits = self.core.limits;
        while let Some(conn) = self.sockets.conns.get_mut(key as usize) {
            if conn.closing.is_some_and(|at| at <= now) {
                // Dropped at the end of this turn.
                break;
            }
            if !conn.may_read(&limits) || read >= READ_BUDGET || self.core.frames_left == 0 {
                // More may wait: the end-of-turn flush puts it on the ready list once it
                // may read again.
                conn.more = true;
                break;
            }
            let n = match conn.stream.read(&mut buf) {
                Ok(0) => {
                    conn.close_now(now, "peer closed");
                    break;
                }
                Ok(n) => n,
                // Drained the socket for this readiness event.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.more = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(key, error = %e, "read failed");
                    conn.close_now(now, "read error");
                    break;
                }
            };
            read += n;
            if conn.closing.is_some() {
                // Input after we decided to close is discarded (a graceful close drains it),
                // up to a bound.
                conn.discarded = conn
                    .discarded
                    .saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
                if conn.discarded > MAX_DISCARD {
                    conn.close_now(now, "too much input after the close began");
                    break;
                }
                continue;
            }
            if conn.inbuf.is_empty() {
                // Fast path: parse straight from the shard's buffer, keep only a remainder.
                let used = self.process(key, &mut buf[..n], now);
                if let Some(conn) = self.sockets.conns.get_mut(key as usize) {
                    if used < n && conn.closing.is_none() {
                        conn.inbuf.extend_from_slice(&buf[used..n]);
                    }
                }
            } else {
                let mut pending = std::mem::take(&mut conn.inbuf);
                pending.extend_from_slice(&buf[..n]);
                self.resume(key, pending, now);
            }
        }
        if let Some(conn) = self.sockets.conns.get_mut(key as usize) {
            if conn.inbuf.capacity() > 0 && conn.inbuf.is_empty() {
                // Give the remainder buffer back: idle sockets should own none.
                conn.inbuf = Vec::new();
            }
        }
        self.core.scratch = buf;
        // Write what the input made, or drop the connection if it is done.
        self.sockets.mark(&mut self.core, SocketRef::Conn(key));
    }

    /// Uses as much of `buf` as makes whole requests or frames, within the turn's frame
    /// budget and while the connection's output is not over its pause bound; returns how
    /// much.
    pub(super) fn process(&mut self, key: u32, buf: &mut [u8], now: Instant) -> usize {
        let mut used = 0;
        let pause = self.core.limits.pause_output;
        loop {
            let Some(conn) = self.sockets.conns.get(key as usize) else {
                return used;
            };
            if conn.closing.is_some() || used == buf.len() || self.core.frames_left == 0 {
                return used;
            }
            if conn.out.bytes() > pause {
                // The client does not read what it asked for (pipelined requests, pings):
                // the rest waits until it does.
                return used;
            }
            let reader = match &conn.phase {
                Phase::Http { waiting: true, .. } => return used,
                Phase::Http { .. } => http::input,
                Phase::Socket(_) => ws::input,
                // Its frames wait for the `101`, or for the session to arrive.
                Phase::Upgrading(up) if !matches!(up.step, Step::Probing) => return used,
                Phase::Upgrading(_) => upgrade::input,
            };
            let step = reader(
                &mut self.sockets,
                &mut self.core,
                key,
                &mut buf[used..],
                now,
            );
            match step {
                0 => return used,
                n => used += n,
            }
            self.core.frames_left -= 1;
        }
    }

    /// Processes bytes held back for a connection; keeps what is still incomplete.
    pub(super) fn resume(&mut self, key: u32, mut pending: Vec<u8>, now: Instant) {
        let used = self.process(key, &mut pending, now);
        if let Some(conn) = self.sockets.conns.get_mut(key as usize) {
            if conn.closing.is_none() && used < pending.len() {
                pending.drain(..used);
                conn.inbuf = pending;
            }
        }
    }
}
