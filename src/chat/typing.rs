//! Typing indicators (contract §3–§5): broadcast to the room's other members, never stored;
//! a repeated `typing:start` only refreshes the 5 s timer; typing ends on `typing:stop`,
//! after 5 s without a refresh, or at once when the socket goes away. A socket that floods
//! typing events is throttled (the seed's pitfall 6) by its typing budget (`budget.rs`)
//! without affecting anyone else.

use std::time::{Duration, Instant};

use crate::ids::Target;

/// A user who stops sending `typing:start` is shown as not typing after this long.
pub const TYPING_TIMEOUT: Duration = Duration::from_secs(5);
/// A repeated `typing:start` is passed on to other nodes at most this often (so their timers
/// for a typer whose node dies run out; see `docs/cluster.md`, typing).
pub const REFRESH_EVERY: Duration = Duration::from_secs(2);
/// Rooms one socket may be typing in at once.
const MAX_TYPING_ROOMS: usize = 16;

/// One socket's typing state.
#[derive(Debug, Default)]
pub struct Typing {
    /// Targets being typed in: (target, when it expires, when it was last passed on).
    active: Vec<(Target, Instant, Instant)>,
}

/// What a typing event led to.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Tell the room: the user started (`true`) or stopped typing.
    Update(bool),
    /// A refresh that other nodes should hear of (not shown to anyone).
    Refresh,
    /// Nothing to tell (a refresh, or a stop while not typing).
    Quiet,
}

impl Typing {
    /// A socket that is not typing.
    pub fn new() -> Self {
        Typing { active: Vec::new() }
    }

    /// `typing:start` (`start`) or `typing:stop` in `target` (within the socket's budget).
    pub fn handle(&mut self, now: Instant, target: Target, start: bool) -> Outcome {
        let position = self.active.iter().position(|(t, _, _)| *t == target);
        match (start, position) {
            (true, Some(i)) => {
                let (_, until, passed) = &mut self.active[i];
                *until = now + TYPING_TIMEOUT;
                if now.duration_since(*passed) >= REFRESH_EVERY {
                    *passed = now;
                    Outcome::Refresh
                } else {
                    Outcome::Quiet
                }
            }
            (true, None) if self.active.len() >= MAX_TYPING_ROOMS => Outcome::Quiet,
            (true, None) => {
                self.active.push((target, now + TYPING_TIMEOUT, now));
                Outcome::Update(true)
            }
            (false, Some(i)) => {
                self.active.swap_remove(i);
                Outcome::Update(false)
            }
            (false, None) => Outcome::Quiet,
        }
    }

    /// Targets whose timer ran out by `now`; they are no longer typed in.
    pub fn expire(&mut self, now: Instant) -> Vec<Target> {
        let mut expired = Vec::new();
        self.active.retain(|(target, until, _)| {
            let keep = *until > now;
            if !keep {
                expired.push(*target);
            }
            keep
        });
        expired
    }

    /// Every target being typed in (the socket is going away).
    pub fn stop_all(&mut self) -> Vec<Target> {
        self.active.drain(..).map(|(t, _, _)| t).collect()
    }

    /// Stops typing in one target (the user left the room); whether it was typing there.
    pub fn stop(&mut self, target: Target) -> bool {
        let before = self.active.len();
        self.active.retain(|(t, _, _)| *t != target);
        before != self.active.len()
    }

    /// When the next timer runs out. Changes on every `handle`, `expire` and `stop`.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.active.iter().map(|(_, until, _)| *until).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ChannelId;

    fn target(n: u128) -> Target {
        Target::Channel(ChannelId(uuid::Uuid::from_u128(n)))
    }

    #[test]
    fn repeated_start_only_refreshes_the_timer() {
        let t0 = Instant::now();
        let mut typing = Typing::new();
        assert_eq!(typing.handle(t0, target(1), true), Outcome::Update(true));
        let soon = t0 + Duration::from_secs(1);
        assert_eq!(typing.handle(soon, target(1), true), Outcome::Quiet);
        let later = t0 + Duration::from_secs(3);
        assert_eq!(
            typing.handle(later, target(1), true),
            Outcome::Refresh,
            "a refresh 2 s or more after the last one passed on is passed on"
        );
        assert_eq!(typing.handle(later, target(1), true), Outcome::Quiet);
        assert_eq!(typing.poll_timeout(), Some(later + TYPING_TIMEOUT));
        assert_eq!(
            typing.handle(later, target(1), false),
            Outcome::Update(false)
        );
        assert_eq!(typing.handle(later, target(1), false), Outcome::Quiet);
        assert_eq!(typing.poll_timeout(), None);
    }

    #[test]
    fn typing_expires_after_five_seconds_without_a_refresh() {
        let t0 = Instant::now();
        let mut typing = Typing::new();
        typing.handle(t0, target(1), true);
        typing.handle(t0 + Duration::from_secs(2), target(2), true);
        assert!(typing.expire(t0 + Duration::from_millis(4999)).is_empty());
        assert_eq!(typing.expire(t0 + TYPING_TIMEOUT), vec![target(1)]);
        assert_eq!(typing.stop_all(), vec![target(2)]);
    }
}
