//! Connection state recovery on one shard: the recent durable broadcasts (every shard sees
//! every broadcast, so each keeps its own log of the shared frames), and the sessions that
//! went away without a goodbye, kept for the recovery window.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use crate::chat::Detached;
use crate::ids::Room;
use crate::mesh::Broadcast;

/// Broadcasts kept per shard at most, whatever the window: bounds memory under a flood.
const MAX_LOG: usize = 200_000;
/// Broadcasts are kept at least this long even with recovery off: a session handed over at a
/// transport upgrade is caught up from the log.
const MIN_LOG_WINDOW: Duration = Duration::from_secs(30);

/// Recent broadcasts and detached sessions.
#[derive(Debug)]
pub struct RecoveryLog {
    /// The recovery window; zero: recovery is off.
    window: Duration,
    /// How long broadcasts stay in the log.
    log_window: Duration,
    log: VecDeque<(Instant, Arc<Broadcast>)>,
    /// Bytes of the packets in `log`, and the most it may hold.
    bytes: usize,
    max_bytes: usize,
    /// Highest offset dropped from the log: a client that last saw an offset below it has
    /// missed events we no longer have, and gets a new session instead.
    floor: u64,
    newest: u64,
    detached: FxHashMap<Box<str>, (Instant, Detached)>,
    expiry: VecDeque<(Instant, Box<str>)>,
}

impl RecoveryLog {
    /// A log for `window` (zero: recovery is off and nothing is kept) of at most
    /// `max_bytes` of packets.
    pub fn new(window: Duration, max_bytes: usize) -> Self {
        RecoveryLog {
            window,
            log_window: window.max(MIN_LOG_WINDOW),
            log: VecDeque::new(),
            bytes: 0,
            max_bytes,
            floor: 0,
            newest: 0,
            detached: FxHashMap::default(),
            expiry: VecDeque::new(),
        }
    }

    /// Whether connection state recovery is on.
    pub fn enabled(&self) -> bool {
        !self.window.is_zero()
    }

    /// The newest offset seen.
    pub fn newest(&self) -> u64 {
        self.newest
    }

    /// Keeps a durable broadcast for replay.
    pub fn remember(&mut self, now: Instant, broadcast: &Arc<Broadcast>) {
        let Some(offset) = broadcast.offset else {
            return;
        };
        self.newest = self.newest.max(offset);
        self.bytes += broadcast.packet.len();
        self.log.push_back((now, Arc::clone(broadcast)));
        self.sweep(now);
    }

    /// Drops what fell out of the window (or past the size bounds).
    pub fn sweep(&mut self, now: Instant) {
        while let Some((at, b)) = self.log.front() {
            if self.log.len() <= MAX_LOG
                && self.bytes <= self.max_bytes
                && now.saturating_duration_since(*at) <= self.log_window
            {
                break;
            }
            self.floor = self.floor.max(b.offset.unwrap_or(0));
            self.bytes -= b.packet.len();
            self.log.pop_front();
        }
        while let Some((until, _)) = self.expiry.front() {
            if *until > now {
                break;
            }
            if let Some((_, pid)) = self.expiry.pop_front() {
                if self.detached.get(&pid).is_some_and(|(u, _)| *u <= now) {
                    self.detached.remove(&pid);
                }
            }
        }
    }

    /// Keeps a session that went away for the window.
    pub fn detach(&mut self, now: Instant, pid: Box<str>, session: Detached) {
        if !self.enabled() {
            return;
        }
        let until = now + self.window;
        self.expiry.push_back((until, pid.clone()));
        self.detached.insert(pid, (until, session));
    }

    /// Takes a detached session back, if it is still within its window.
    pub fn take(&mut self, now: Instant, pid: &str) -> Option<Detached> {
        match self.detached.remove(pid) {
            Some((until, session)) if until > now => Some(session),
            _ => None,
        }
    }

    /// Whether every broadcast after `offset` is still in the log.
    pub fn can_replay(&self, offset: u64) -> bool {
        offset >= self.floor
    }

    /// Whether the broadcasts after `offset` to any of `rooms` are all in the log and
    /// together take at most `budget` bytes: a replay that can be sent whole.
    pub fn can_replay_within(&self, offset: u64, rooms: &[Room], budget: usize) -> bool {
        let mut bytes = 0;
        self.can_replay(offset)
            && self.replay(offset, rooms).all(|b| {
                bytes += b.packet.len();
                bytes <= budget
            })
    }

    /// The broadcasts after `offset` to any of `rooms`, in order.
    pub fn replay<'a>(
        &'a self,
        offset: u64,
        rooms: &'a [Room],
    ) -> impl Iterator<Item = &'a Arc<Broadcast>> + 'a {
        self.log
            .iter()
            .filter(move |(_, b)| b.offset.is_some_and(|o| o > offset) && rooms.contains(&b.room))
            .map(|(_, b)| b)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::ids::{ChannelId, UserId, WorkspaceId};
    use crate::mesh::{BroadcastId, Except};

    fn broadcast(room: Room, offset: u64) -> Arc<Broadcast> {
        Arc::new(Broadcast {
            id: BroadcastId(offset),
            room,
            except: Except::Nobody,
            offset: Some(offset),
            packet: Bytes::from(offset.to_string()),
        })
    }

    fn room(n: u128) -> Room {
        Room::Channel(ChannelId(uuid::Uuid::from_u128(n)))
    }

    #[test]
    fn replays_later_broadcasts_of_the_sessions_rooms_in_order() {
        let t0 = Instant::now();
        let mut log = RecoveryLog::new(Duration::from_secs(120), 1 << 20);
        for (i, r) in [(1, room(1)), (2, room(2)), (3, room(1)), (4, room(1))] {
            log.remember(t0, &broadcast(r, i));
        }
        let rooms = [room(1)];
        let packets: Vec<&Bytes> = log.replay(1, &rooms).map(|b| &b.packet).collect();
        assert_eq!(packets, vec![&Bytes::from("3"), &Bytes::from("4")]);
        assert_eq!(log.newest(), 4);
    }

    #[test]
    fn sessions_and_broadcasts_expire_with_the_window() {
        let t0 = Instant::now();
        let window = Duration::from_secs(120);
        let mut log = RecoveryLog::new(window, 1 << 20);
        log.remember(t0, &broadcast(room(1), 1));
        let session = Detached {
            user: UserId(uuid::Uuid::from_u128(1)),
            workspace: WorkspaceId(uuid::Uuid::from_u128(2)),
            since_offset: 0,
        };
        log.detach(t0, "0abc".into(), session);
        log.detach(t0, "0def".into(), session);
        assert!(log.take(t0 + Duration::from_secs(1), "0abc").is_some());
        assert!(log.take(t0, "0abc").is_none(), "taken once");
        let late = t0 + window + Duration::from_secs(1);
        assert!(
            log.take(late, "0def").is_none(),
            "after the window: a new session"
        );
        log.remember(late, &broadcast(room(1), 2));
        assert!(!log.can_replay(0), "offset 1 fell out of the log");
        assert!(log.can_replay(1));
    }

    #[test]
    fn the_log_is_bounded_in_bytes_and_a_replay_over_budget_is_refused() {
        let t0 = Instant::now();
        // Packets "1" to "9" are one byte each; keep at most 4 bytes.
        let mut log = RecoveryLog::new(Duration::from_secs(120), 4);
        for i in 1..=9 {
            log.remember(t0, &broadcast(room(1), i));
        }
        assert_eq!(
            log.replay(0, &[room(1)]).count(),
            4,
            "the oldest were dropped"
        );
        assert!(!log.can_replay(4), "offset 5 fell out");
        assert!(log.can_replay_within(5, &[room(1)], 4));
        assert!(
            !log.can_replay_within(5, &[room(1)], 3),
            "4 bytes to replay"
        );
        assert!(log.can_replay_within(8, &[room(1)], 1));
    }

    #[test]
    fn off_keeps_no_session_but_still_logs_for_upgrades() {
        let t0 = Instant::now();
        let mut log = RecoveryLog::new(Duration::ZERO, 1 << 20);
        assert!(!log.enabled());
        let session = Detached {
            user: UserId(uuid::Uuid::from_u128(1)),
            workspace: WorkspaceId(uuid::Uuid::from_u128(2)),
            since_offset: 0,
        };
        log.detach(t0, "0abc".into(), session);
        assert!(log.take(t0, "0abc").is_none());
        log.remember(t0, &broadcast(room(1), 1));
        assert_eq!(log.replay(0, &[room(1)]).count(), 1);
        log.sweep(t0 + MIN_LOG_WINDOW + Duration::from_secs(1));
        assert_eq!(log.replay(0, &[room(1)]).count(), 0);
    }
}
