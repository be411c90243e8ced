//! Connection state recovery across nodes, the `broker` thread's side (design:
//! `docs/cluster.md`, "Connection state recovery across nodes").
//!
//! The node where the client reconnects (B) asks the node that holds the session (A) on A's
//! node channel ([`Control::Recover`]). A's thread has the shard that keeps the session take
//! it ([`ShardCommand::Handover`]), turns the client's offset into each room's last position
//! with its [`ReleaseLog`](super::super::handover::ReleaseLog), and answers on B's channel. B
//! then admits the socket like any membership read ([`Broker::ready`]), with the positions as
//! floors: for a room B streams past the client's position, the messages in between are read
//! from PostgreSQL (the replay) and everything after the last one B handed its shards is held
//! back until the socket is in; a room B does not stream starts at the position; a room B
//! streams behind it is waited for. No answer within [`ASK_WAIT`]: a clean new session.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::super::codec::{self, Header, Kind};
use super::super::handover::{Control, Session};
use super::super::names::NodeId;
use super::super::pg::Ask;
use super::Broker;
use crate::broker::input::Admission;
use crate::chat::state::Detached;
use crate::ids::{pid_shard, Room};
use crate::mesh::{RecoverAsk, ShardCommand};

/// How long a reconnect waits for the holder's answer.
pub(super) const ASK_WAIT: Duration = Duration::from_secs(1);

/// How long a holder waits for its shard to hand a session over.
const HANDOVER_WAIT: Duration = Duration::from_secs(5);

/// A reconnect waiting for the holder's answer (on B).
pub(super) struct Asking {
    ask: RecoverAsk,
    since: Instant,
}

/// A request waiting for this node's shard (on A).
pub(super) struct Handing {
    req: u64,
    from: NodeId,
    pid: String,
    offset: Option<u64>,
    rooms: Vec<Room>,
    since: Instant,
}

impl Broker {
    fn next_req(&mut self) -> u64 {
        self.next_req += 1;
        self.next_req
    }

    /// Publishes a control message on `node`'s channel; `false` if Redis did not take it.
    fn control(&mut self, node: NodeId, message: &Control) -> bool {
        let header = Header {
            kind: Kind::Control,
            origin: self.node,
            id: self.next_id,
            sent_at_micros: super::super::now_micros(),
            room: None,
            place: None,
            except: None,
        };
        self.next_id += 1;
        let payload = codec::encode(&header, &message.encode());
        self.link.publish(self.names.node(node), payload).is_ok()
    }

    /// B: a reconnect asks another node for its session (or this node, where the session
    /// was not: the node it moved on to, if it did).
    pub(super) fn ask(&mut self, ask: RecoverAsk, now: Instant) {
        let holder = match NodeId::parse(&ask.node) {
            Some(n) if n == self.node => match self.moved.get(ask.pid.as_str()) {
                Some(&(node, until)) if until > now => Some(node),
                _ => None,
            },
            other => other,
        };
        let Some(holder) = holder.filter(|n| *n != self.node) else {
            return self.new_session(&ask);
        };
        let req = self.next_req();
        let message = Control::Recover {
            req,
            pid: ask.pid.clone(),
            offset: ask.offset,
            from: self.node,
            rooms: ask
                .rooms
                .iter()
                .filter(|r| r.target().is_some())
                .copied()
                .collect(),
        };
        if self.control(holder, &message) {
            self.asking.insert(req, Asking { ask, since: now });
        } else {
            self.new_session(&ask);
        }
    }

    /// A control message from another node.
    pub(super) fn control_message(&mut self, packet: &[u8], now: Instant) {
        match Control::decode(packet) {
            Ok(Control::Recover {
                req,
                pid,
                offset,
                from,
                rooms,
            }) => self.hand_over(req, pid, offset, from, rooms, now),
            Ok(Control::Recovered { req, found }) => self.answered(req, found, now),
            Err(e) => tracing::debug!(error = %e, "dropped a control message"),
        }
    }

    /// A: another node asks for a session; the shard that keeps it takes it.
    fn hand_over(
        &mut self,
        req: u64,
        pid: String,
        offset: Option<u64>,
        from: NodeId,
        rooms: Vec<Room>,
        now: Instant,
    ) {
        let shards = self.broker.shards();
        let Some(shard) = pid_shard(&pid, shards.len()).and_then(|s| shards.get(usize::from(s.0)))
        else {
            self.control(from, &Control::Recovered { req, found: None });
            return;
        };
        let shard = shard.clone();
        let local = self.next_req();
        shard.send(ShardCommand::Handover {
            pid: pid.clone(),
            req: local,
        });
        self.handing.insert(
            local,
            Handing {
                req,
                from,
                pid,
                offset,
                rooms,
                since: now,
            },
        );
    }

    /// A: the shard's answer. The session's positions go to the asking node; a session that
    /// moved on from here is asked for where it went.
    pub(super) fn handed(&mut self, local: u64, session: Option<Detached>, now: Instant) {
        let Some(h) = self.handing.remove(&local) else {
            return;
        };
        let Some(d) = session else {
            match self.moved.get(h.pid.as_str()) {
                Some(&(node, until)) if until > now && node != h.from => {
                    let forward = Control::Recover {
                        req: h.req,
                        pid: h.pid,
                        offset: None,
                        from: h.from,
                        rooms: h.rooms,
                    };
                    if !self.control(node, &forward) {
                        self.control(
                            h.from,
                            &Control::Recovered {
                                req: h.req,
                                found: None,
                            },
                        );
                    }
                }
                _ => {
                    self.control(
                        h.from,
                        &Control::Recovered {
                            req: h.req,
                            found: None,
                        },
                    );
                }
            }
            return;
        };
        let at = h.offset.unwrap_or(d.since_offset);
        let found = self
            .log
            .positions(at, &h.rooms)
            .map(|(positions, deletions)| Session {
                user: d.user,
                workspace: d.workspace,
                positions,
                deletions,
            });
        if found.is_some() {
            self.metrics.handovers.fetch_add(1, Relaxed);
            self.moved
                .insert(h.pid.into_boxed_str(), (h.from, now + self.window));
        }
        self.control(h.from, &Control::Recovered { req: h.req, found });
    }

    /// B: the holder answered. The socket is admitted at the positions it had.
    fn answered(&mut self, req: u64, found: Option<Session>, now: Instant) {
        let Some(Asking { ask, .. }) = self.asking.remove(&req) else {
            return;
        };
        let Some(s) = found.filter(|s| s.user == ask.user && s.workspace == ask.workspace) else {
            return self.new_session(&ask);
        };
        // The session is here now: where it once went from here no longer leads to it (and
        // the pointers between nodes can never form a loop).
        self.moved.remove(ask.pid.as_str());
        let mut ranges = Vec::new();
        let mut floors = Vec::new();
        for (room, position) in s.positions {
            if !ask.rooms.contains(&room) {
                continue;
            }
            // Handed to the shards here past the client's position: read in between.
            if let Some(last) = self.log.last(&room).filter(|l| *l > position) {
                ranges.push((room, position, last));
            }
            floors.push((room, position));
        }
        let replay = if ranges.is_empty() {
            None
        } else {
            let req = self.next_req();
            let _ = self.pg.send(Ask::Replay { req, ranges });
            Some(req)
        };
        // The deletions of messages the client had go first; the messages after its
        // positions follow when they are read.
        // (The holder sent only those of the rooms asked for: the rooms granted now.)
        let deletions = s.deletions;
        let admission = Admission::Resume {
            to: ask.to,
            session: Some(Detached {
                user: ask.user,
                workspace: ask.workspace,
                since_offset: 0,
            }),
            replay: deletions,
        };
        self.ready_with(floors, ask.rooms, true, admission, Some(replay), now);
    }

    /// The socket that asked gets a clean new session.
    fn new_session(&self, ask: &RecoverAsk) {
        self.metrics.recoveries_unanswered.fetch_add(1, Relaxed);
        self.broker.carry_out(fresh(ask));
    }

    /// Requests that waited too long: a clean new session, or an answer dropped.
    pub(super) fn resume_tick(&mut self, now: Instant) {
        let late: Vec<u64> = self
            .asking
            .iter()
            .filter(|(_, a)| now.duration_since(a.since) >= ASK_WAIT)
            .map(|(req, _)| *req)
            .collect();
        for req in late {
            if let Some(a) = self.asking.remove(&req) {
                self.new_session(&a.ask);
            }
        }
        self.handing
            .retain(|_, h| now.duration_since(h.since) < HANDOVER_WAIT);
        self.moved.retain(|_, (_, until)| *until > now);
    }
}

/// A clean new session for the socket that asked.
fn fresh(ask: &RecoverAsk) -> Admission {
    Admission::Resume {
        to: ask.to,
        session: None,
        replay: Vec::new(),
    }
}

/// The replay's packets with the offset they are handed over at.
pub(super) fn with_offsets(packets: Vec<Bytes>, offset: &str) -> Vec<Bytes> {
    packets
        .into_iter()
        .map(|p| Bytes::from(codec::with_offset(&p, offset)))
        .collect()
}
