//! Every client event has a budget (contract §3): a token bucket per kind of event and
//! socket ([`Bucket`]), the requests it has in flight, and a bucket of refusals that cuts
//! a socket which keeps going after it was told. A socket over a budget is told once with
//! an `error` event; the events over it are refused (with `{success: false, error}` when
//! they asked for an ack) until the bucket refills. Nobody else notices anything.

use std::time::{Duration, Instant};

use crate::limits::{EventBudgets, Rate};

/// A token bucket. It does not keep its [`Rate`] (every socket has the same ones, in the
/// settings): 8 bytes per bucket and socket. Time is counted in milliseconds from the
/// socket's start ([`Budgets::epoch`]).
#[derive(Clone, Copy, Debug)]
pub struct Bucket {
    tokens: f32,
    filled_ms: u32,
}

impl Bucket {
    /// A full bucket, whatever its rate (the first refill caps it at the burst).
    pub const FULL: Bucket = Bucket {
        tokens: f32::MAX,
        filled_ms: 0,
    };

    fn refill(&mut self, rate: Rate, now_ms: u32) {
        let elapsed = now_ms.saturating_sub(self.filled_ms) as f32 / 1000.0;
        self.tokens = (self.tokens + elapsed * rate.per_second() as f32).min(rate.burst as f32);
        self.filled_ms = now_ms;
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, rate: Rate, now_ms: u32) -> bool {
        self.refill(rate, now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Milliseconds (from the epoch) when the next token is there.
    pub fn ready_ms(&self, rate: Rate) -> u32 {
        let missing = (1.0 - self.tokens).max(0.0) as f64;
        self.filled_ms + (missing / rate.per_second() * 1000.0).ceil() as u32
    }
}

/// Kinds of client event with a budget of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `message:send`
    Send,
    /// `message:delete`
    Delete,
    /// `message:history`
    History,
    /// `room:join`, `room:leave`
    Join,
    /// `presence:setAway`, `presence:setActive` (changes announced)
    Presence,
    /// `presence:query`
    Query,
    /// `typing:start`, `typing:stop`
    Typing,
    /// Any other event.
    Other,
}

const KINDS: usize = 8;
/// The `told` bit of too many requests in flight.
const IN_FLIGHT: u16 = 1 << KINDS;

impl Kind {
    fn rate(self, b: &EventBudgets) -> Rate {
        match self {
            Kind::Send => b.sends,
            Kind::Delete => b.deletes,
            Kind::History => b.history,
            Kind::Join => b.joins,
            Kind::Presence => b.presence,
            Kind::Query => b.queries,
            Kind::Typing => b.typing,
            Kind::Other => b.other,
        }
    }

    /// How the events of this kind are named to the client.
    pub fn events(self) -> &'static str {
        match self {
            Kind::Send => "message:send",
            Kind::Delete => "message:delete",
            Kind::History => "message:history",
            Kind::Join => "room:join and room:leave",
            Kind::Presence => "presence changes",
            Kind::Query => "presence:query",
            Kind::Typing => "typing events",
            Kind::Other => "unknown events",
        }
    }
}

/// What the budget says about one event.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead.
    Allow,
    /// Over the budget: refuse it. `told` is `true` the first time (since the last allowed
    /// event of that kind), when the socket gets its one `error` event.
    Refuse {
        /// Tell the socket now.
        told: bool,
    },
    /// The socket kept going long after it was told: disconnect it.
    Cut,
}

/// One socket's budgets.
#[derive(Debug)]
pub struct Budgets {
    epoch: Instant,
    buckets: [Bucket; KINDS],
    refused: Bucket,
    /// Kinds whose refusal the socket was told about (bit per kind, and [`IN_FLIGHT`]).
    told: u16,
    /// Requests sent to the store or presence and not answered yet.
    pub in_flight: u32,
}

impl Budgets {
    /// Full budgets for a socket that starts at `now`.
    pub fn new(now: Instant) -> Self {
        Budgets {
            epoch: now,
            buckets: [Bucket::FULL; KINDS],
            refused: Bucket::FULL,
            told: 0,
            in_flight: 0,
        }
    }

    fn ms(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.epoch).as_millis() as u32
    }

    /// Takes a token for an event of `kind`; over the budget, the refusal counts towards
    /// cutting the socket.
    pub fn take(&mut self, b: &EventBudgets, kind: Kind, now: Instant) -> Verdict {
        let bit = 1u16 << kind as u16;
        let ms = self.ms(now);
        if self.buckets[kind as usize].take(kind.rate(b), ms) {
            self.told &= !bit;
            return Verdict::Allow;
        }
        self.refuse(b, bit, ms)
    }

    /// Marks `bit` told; whether it was not yet.
    fn tell(&mut self, bit: u16) -> bool {
        let first = self.told & bit == 0;
        self.told |= bit;
        first
    }

    /// Counts a request that will be answered later, if there is room for it.
    pub fn request(&mut self, b: &EventBudgets, now: Instant) -> Verdict {
        if self.in_flight < b.in_flight {
            self.in_flight += 1;
            self.told &= !IN_FLIGHT;
            return Verdict::Allow;
        }
        let ms = self.ms(now);
        self.refuse(b, IN_FLIGHT, ms)
    }

    /// A request was answered.
    pub fn answered(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    fn refuse(&mut self, b: &EventBudgets, bit: u16, ms: u32) -> Verdict {
        if !self.refused.take(b.refused, ms) {
            return Verdict::Cut;
        }
        Verdict::Refuse {
            told: self.tell(bit),
        }
    }

    /// When the next token of `kind` is there.
    pub fn ready(&self, b: &EventBudgets, kind: Kind) -> Instant {
        let ms = self.buckets[kind as usize].ready_ms(kind.rate(b));
        self.epoch + Duration::from_millis(u64::from(ms))
    }

    /// Takes a token of `kind` if one is there, without counting a refusal (for work the
    /// socket already asked for and that waits for its budget).
    pub fn try_take(&mut self, b: &EventBudgets, kind: Kind, now: Instant) -> bool {
        let ms = self.ms(now);
        self.buckets[kind as usize].take(kind.rate(b), ms)
    }
}

/// The words of a refusal for being over the budget of `kind`.
pub fn over(b: &EventBudgets, kind: Kind) -> String {
    format!(
        "{} are limited to {} on this socket; this one was refused, and so will be the \
         next ones until the budget refills (a socket that keeps going is disconnected)",
        kind.events(),
        kind.rate(b)
    )
}

/// The words of a refusal for having too many requests unanswered.
pub fn too_many_in_flight(b: &EventBudgets) -> String {
    format!(
        "{} requests of this socket are still unanswered; wait for their acks before \
         sending more",
        b.in_flight
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budgets() -> EventBudgets {
        EventBudgets {
            sends: Rate {
                burst: 3,
                per: Duration::from_secs(1),
            },
            refused: Rate {
                burst: 5,
                per: Duration::from_secs(10),
            },
            in_flight: 2,
            ..EventBudgets::default()
        }
    }

    #[test]
    fn a_burst_passes_then_refusals_are_told_once_then_the_socket_is_cut() {
        let b = budgets();
        let t0 = Instant::now();
        let mut s = Budgets::new(t0);
        for _ in 0..3 {
            assert_eq!(s.take(&b, Kind::Send, t0), Verdict::Allow);
        }
        assert_eq!(s.take(&b, Kind::Send, t0), Verdict::Refuse { told: true });
        assert_eq!(s.take(&b, Kind::Send, t0), Verdict::Refuse { told: false });
        // Other kinds have their own buckets.
        assert_eq!(s.take(&b, Kind::History, t0), Verdict::Allow);
        // The bucket refills at 3 a second: one token after 334 ms, and the next refusal
        // is told again.
        let later = t0 + Duration::from_millis(334);
        assert_eq!(s.ready(&b, Kind::Send), later);
        assert_eq!(s.take(&b, Kind::Send, later), Verdict::Allow);
        assert_eq!(
            s.take(&b, Kind::Send, later),
            Verdict::Refuse { told: true }
        );
        // Five refusals in all is the most: the sixth cuts.
        assert_eq!(
            s.take(&b, Kind::Send, later),
            Verdict::Refuse { told: false }
        );
        assert_eq!(
            s.take(&b, Kind::Send, later),
            Verdict::Refuse { told: false }
        );
        assert_eq!(s.take(&b, Kind::Send, later), Verdict::Cut);
    }

    #[test]
    fn requests_in_flight_are_bounded_until_answered() {
        let b = budgets();
        let t0 = Instant::now();
        let mut s = Budgets::new(t0);
        assert_eq!(s.request(&b, t0), Verdict::Allow);
        assert_eq!(s.request(&b, t0), Verdict::Allow);
        assert_eq!(s.request(&b, t0), Verdict::Refuse { told: true });
        s.answered();
        assert_eq!(s.request(&b, t0), Verdict::Allow);
        assert!(over(&b, Kind::Send).contains("3 per 1 s"));
    }
}
