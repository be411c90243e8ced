//! Deadlines of one shard's connections (heartbeats, request heads, closing grace), in a
//! min-heap. Entries are never removed early: a connection keeps the deadline it armed, and
//! an entry that no longer matches it is skipped when it comes due.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// A due deadline: the connection's slot and generation, and the instant it was armed for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Due {
    /// When.
    pub at: Instant,
    /// Slab slot.
    pub slot: u32,
    /// Connection generation, so a reused slot does not inherit a deadline.
    pub generation: u32,
}

/// Min-heap of deadlines.
#[derive(Debug, Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<Due>>,
}

impl Timers {
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
            slot: 2,
            generation: 0,
        });
        timers.push(Due {
            at: t0 + Duration::from_secs(1),
            slot: 1,
            generation: 0,
        });
        assert_eq!(timers.next(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(timers.pop_due(t0), None);
        assert_eq!(timers.pop_due(t0 + Duration::from_secs(5)).unwrap().slot, 1);
        assert_eq!(timers.pop_due(t0 + Duration::from_secs(5)).unwrap().slot, 2);
        assert_eq!(timers.next(), None);
    }
}
