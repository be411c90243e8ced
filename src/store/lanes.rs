//! Writer lanes: send batches stored on several connections at once, each room always on the
//! same lane.
//!
//! One connection stores one batch at a time, and a batch spends much of its time waiting
//! for its COMMIT to reach the disk. With lanes, the store thread hands each lane the sends of
//! its rooms ([`lane_of`]) and goes on taking commands while the lanes' statements run; a lane
//! that comes back gets everything queued for it meanwhile as its next batch. Per-room order
//! holds because a room's batches run one after the other on its one lane, and the store
//! thread publishes each lane's results in the order the lane returns them. The store thread
//! stays the one publisher (offsets, replies), so nothing else changes for the shards.
//!
//! A lane puts its answer in [`Lanes::done`], then rings the store thread on its inbox
//! ([`StoreCommand::LaneDone`]), so the store thread waits on its inbox alone. A select over
//! the inbox and the answers contended for a lock on its wake-ups: the thread that woke it
//! often still held the channel's lock when the woken one came to unregister from it. At 5,000
//! messages/s that was 9-13% of the server's CPU (`docs/benchmarks.md`, "a fifth machine").

use std::io;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use chrono::Utc;
use crossbeam_channel::{Receiver, Sender};

use super::{Backend, NewMessage, StoreError, Stored};
use crate::ids::Target;
use crate::mesh::{StoreCommand, StoreHandle};
use crate::model::Message;

/// Most sends in one batch (one statement).
pub const MAX_BATCH: usize = 512;

/// The lane that stores `target`'s messages, out of `lanes`.
pub fn lane_of(target: Target, lanes: usize) -> usize {
    let id = match target {
        Target::Channel(c) => c.0,
        Target::Dm(d) => d.0,
    };
    // The low 64 bits: random in v4 and v7 ids alike.
    let bits = id.as_u128() as u64;
    (bits % lanes.max(1) as u64) as usize
}

/// A batch handed to a lane.
struct Job {
    lane: usize,
    messages: Vec<NewMessage>,
}

/// A lane's answer: one result per message, in order, and how long the batch took.
pub struct Done {
    /// Which lane.
    pub lane: usize,
    /// Messages of earlier batches found stored since (see [`Backend::take_orphans`]).
    pub orphans: Vec<Message>,
    /// One result per message of the batch.
    pub results: Vec<Result<Stored, StoreError>>,
    /// Time the backend took.
    pub took: Duration,
}

/// The lane threads, seen from the store thread.
pub struct Lanes {
    jobs: Vec<Sender<Job>>,
    /// Answers of every lane.
    pub done: Receiver<Done>,
    threads: Vec<JoinHandle<()>>,
}

impl Lanes {
    /// Starts one thread (`store-write-N`) per backend. Each answer is followed by
    /// [`StoreCommand::LaneDone`] on `bell` (the store thread's inbox), which wakes it.
    pub fn spawn<B: Backend + Send + 'static>(
        backends: Vec<B>,
        bell: StoreHandle,
    ) -> io::Result<Lanes> {
        let (done_tx, done) = crossbeam_channel::unbounded();
        let mut jobs = Vec::with_capacity(backends.len());
        let mut threads = Vec::with_capacity(backends.len());
        for (i, mut backend) in backends.into_iter().enumerate() {
            // At most one batch is ever in flight per lane.
            let (tx, rx) = crossbeam_channel::bounded::<Job>(1);
            let done_tx = done_tx.clone();
            let bell = bell.clone();
            threads.push(
                thread::Builder::new()
                    .name(format!("store-write-{i}"))
                    .spawn(move || {
                        // Ends once the store thread dropped its sender.
                        while let Ok(job) = rx.recv() {
                            let started = Instant::now();
                            let results = backend.send_batch(job.messages, Utc::now());
                            let done = Done {
                                lane: job.lane,
                                orphans: backend.take_orphans(),
                                results,
                                took: started.elapsed(),
                            };
                            // The answer first: whoever takes the bell finds it.
                            if done_tx.send(done).is_err() || !bell.send(StoreCommand::LaneDone) {
                                return;
                            }
                        }
                    })?,
            );
            jobs.push(tx);
        }
        Ok(Lanes {
            jobs,
            done,
            threads,
        })
    }

    /// How many lanes.
    pub fn count(&self) -> usize {
        self.jobs.len()
    }

    /// Hands `messages` to `lane`, which must be idle. Gives them back if the lane is gone.
    pub fn start(&self, lane: usize, messages: Vec<NewMessage>) -> Result<(), Vec<NewMessage>> {
        match self.jobs.get(lane) {
            Some(tx) => tx
                .send(Job { lane, messages })
                .map_err(|crossbeam_channel::SendError(job)| job.messages),
            None => Err(messages),
        }
    }

    /// Stops the lanes once their current batch is answered.
    pub fn stop(self) {
        drop(self.jobs);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// A send batch that takes at least this long is logged (see [`SlowBatches`]).
pub const SLOW_BATCH: Duration = Duration::from_millis(500);

/// At most one log line about slow batches per this long.
const SLOW_LOG_EVERY: Duration = Duration::from_secs(10);

/// Which slow batches to log: the first at once, then at most one line per 10 s, which counts
/// the slow batches since the last line. `/metrics` shows how long batches take; the log line
/// puts a stall next to the database's own log, by time.
#[derive(Debug, Default)]
pub struct SlowBatches {
    logged: Option<Instant>,
    unlogged: u64,
    longest: Duration,
}

impl SlowBatches {
    /// Notes a batch that took `took`, stored at `now`. Returns what to log now, if anything:
    /// how many slow batches since the last line (this one included) and the longest of them.
    pub fn note(&mut self, took: Duration, now: Instant) -> Option<(u64, Duration)> {
        if took < SLOW_BATCH {
            return None;
        }
        self.unlogged += 1;
        self.longest = self.longest.max(took);
        if self
            .logged
            .is_some_and(|at| now.saturating_duration_since(at) < SLOW_LOG_EVERY)
        {
            return None;
        }
        self.logged = Some(now);
        let line = (self.unlogged, self.longest);
        (self.unlogged, self.longest) = (0, Duration::ZERO);
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ChannelId, ConversationId};
    use uuid::Uuid;

    #[test]
    fn slow_batches_are_logged_at_once_then_counted_into_one_line_per_ten_seconds() {
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let ms = Duration::from_millis;
        let mut slow = SlowBatches::default();
        assert_eq!(slow.note(ms(499), at(0)), None, "under the threshold");
        assert_eq!(slow.note(ms(700), at(1)), Some((1, ms(700))));
        assert_eq!(slow.note(ms(2_000), at(2)), None);
        assert_eq!(
            slow.note(ms(100), at(3)),
            None,
            "fast batches are not counted"
        );
        assert_eq!(slow.note(ms(600), at(10)), None, "9 s after the line");
        assert_eq!(slow.note(ms(800), at(11)), Some((3, ms(2_000))));
        assert_eq!(
            slow.note(ms(500), at(30)),
            Some((1, ms(500))),
            "the count restarts"
        );
    }

    #[test]
    fn a_room_always_maps_to_the_same_lane_and_rooms_spread_over_all_lanes() {
        let mut seen = [0usize; 4];
        for _ in 0..400 {
            let room = Target::Channel(ChannelId(Uuid::new_v4()));
            let lane = lane_of(room, 4);
            assert_eq!(lane, lane_of(room, 4));
            seen[lane] += 1;
        }
        assert!(
            seen.iter().all(|&n| n > 50),
            "lanes used unevenly: {seen:?}"
        );
        let dm = Target::Dm(ConversationId(Uuid::now_v7()));
        assert!(lane_of(dm, 3) < 3);
        assert_eq!(lane_of(dm, 1), 0);
        assert_eq!(lane_of(dm, 0), 0);
    }
}
