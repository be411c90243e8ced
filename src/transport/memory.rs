//! A byte stream in memory, for tests that drive a shard without sockets: the test writes
//! what the client sends and reads what the server wrote, through a [`Pipe`] it shares with
//! the shard's connection.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex, MutexGuard};

/// Both directions of one connection.
#[derive(Debug, Default)]
pub struct Ends {
    /// Client → server, not read yet.
    pub input: VecDeque<u8>,
    /// Server → client, not taken by the test yet.
    pub output: Vec<u8>,
    /// The client closed its side: reads return 0 once `input` is empty.
    pub closed: bool,
}

/// A shared handle on the two directions (one for the shard, one for the test).
#[derive(Clone, Debug, Default)]
pub struct Pipe(Arc<Mutex<Ends>>);

impl Pipe {
    /// Both ends, locked.
    pub fn ends(&self) -> MutexGuard<'_, Ends> {
        // A test thread that panicked while holding it leaves nothing worth guarding.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads what the client sent; `WouldBlock` when there is nothing (yet).
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut ends = self.ends();
        if ends.input.is_empty() {
            return if ends.closed {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let n = buf.len().min(ends.input.len());
        for (slot, byte) in buf.iter_mut().zip(ends.input.drain(..n)) {
            *slot = byte;
        }
        Ok(n)
    }

    /// Takes everything the server writes.
    pub fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut ends = self.ends();
        let mut n = 0;
        for buf in bufs {
            ends.output.extend_from_slice(buf);
            n += buf.len();
        }
        Ok(n)
    }
}
