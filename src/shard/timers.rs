//! Deadlines of one shard's sockets (heartbeats, typing, request heads, closing grace), in a
//! min-heap. Entries are never removed early: a socket keeps the deadline it armed, and an
//! entry that no longer matches it is skipped when it comes due.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use crate::ids::SocketRef;

/// A due deadline: the socket, its generation, and the instant it was armed for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Due {
    /// When.
    pub at: Instant,
    /// Which socket.
    pub socket: SocketRef,
    /// Its generation, so a reused slot does not inherit a deadline.
    pub generation: u32,
}

/// Min-heap of deadlines.
#[derive(Debug, Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<Due>>,
}

impl Timers {
    /// Arms `next`, the earliest deadline of `socket`, unless it already waits for one that
    /// comes sooner; `armed` is the socket's record of what it armed.
    pub fn arm(
        &mut self,
        armed: &mut Option<Instant>,
        next: Option<Instant>,
        socket: SocketRef,
        generation: u32,
    ) {
        if let Some(at) = next {
            if armed.is_none_or(|armed| at < armed) {
                *armed = Some(at);
                self.push(Due {
                    at,
                    socket,
                    generation,
                });
            }
        }
    }

    /// Adds a deadline.
    pub fn push(&mut self, due: Due) {
        self.heap.push(Reverse(due));
    }

    /// The earliest deadline, if any.
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(d)| d.at)
    }

    /// Takes the earliest deadline if it is at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Due> {
        match self.heap.peek() {
            Some(Reverse(d)) if d.at <= now => self.heap.pop().map(|Reverse(d)| d),
            _ => None,
        }
    }
}

/// The earlier of two optional deadlines.
pub fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_in_deadline_order_only_when_due() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        timers.push(Due {
            at: t0 + Duration::from_secs(2),
            socket: SocketRef::Conn(2),
            generation: 0,
        });
        timers.push(Due {
            at: t0 + Duration::from_secs(1),
            socket: SocketRef::Poll(1),
            generation: 0,
        });
        assert_eq!(timers.next(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(timers.pop_due(t0), None);
        assert_eq!(
            timers.pop_due(t0 + Duration::from_secs(5)).unwrap().socket,
            SocketRef::Poll(1)
        );
        assert_eq!(
            timers.pop_due(t0 + Duration::from_secs(5)).unwrap().socket,
            SocketRef::Conn(2)
        );
        assert_eq!(timers.next(), None);
    }

    #[test]
    fn arming_keeps_the_earliest() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        let mut armed = None;
        let later = t0 + Duration::from_secs(2);
        timers.arm(&mut armed, Some(later), SocketRef::Conn(0), 0);
        timers.arm(&mut armed, Some(later), SocketRef::Conn(0), 0);
        timers.arm(&mut armed, Some(t0), SocketRef::Conn(0), 0);
        assert_eq!(armed, Some(t0));
        assert_eq!(timers.heap.len(), 2, "the same deadline is armed once");
        assert_eq!(earliest(Some(later), None), Some(later));
        assert_eq!(earliest(Some(later), Some(t0)), Some(t0));
    }
}
