//! Connection state recovery across nodes, the parts without I/O (design: `docs/cluster.md`,
//! "Connection state recovery across nodes"):
//!
//! - [`ReleaseLog`]: what the `broker` thread released, per room, at which of its offsets, so
//!   the offset a client last received turns into each room's last position (message
//!   sequence) it had;
//! - [`Control`]: the requests and answers nodes send each other on their node channels.
//!
//! The thread's side (asking, answering, the replay) is `node/resume.rs`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustc_hash::FxHashMap;
use serde_json::{json, Value};
use uuid::Uuid;

use super::names::NodeId;
use crate::ids::{ChannelId, ConversationId, Room, UserId, WorkspaceId};

/// Releases kept at most, whatever the window (as the shards' recovery log).
pub const MAX_RELEASES: usize = 200_000;

/// Most deletions one recovery carries (past it the holder answers that it cannot recover
/// the session exactly).
pub const MAX_DELETIONS: usize = 1_000;

/// One room's releases.
#[derive(Debug, Default)]
struct RoomLog {
    /// The room's position before the first release kept: where its stream started, or the
    /// last release dropped.
    base: u64,
    /// `(offset, position)` of each release kept, both increasing.
    releases: VecDeque<(u64, u64)>,
    /// `(offset, sequence of the deleted message, packet)` of each deletion kept.
    deletions: VecDeque<(u64, u64, Bytes)>,
}

/// The positions this node released, per room, with the offset each release was given.
#[derive(Debug)]
pub struct ReleaseLog {
    window: Duration,
    rooms: FxHashMap<Room, RoomLog>,
    /// Every release kept (`true`: a deletion), oldest first, for dropping them in order.
    order: VecDeque<(Instant, u64, Room, bool)>,
    /// Offsets up to this one may have lost releases: positions at them are not exact.
    floor: u64,
}

impl ReleaseLog {
    /// A log that keeps releases for `window` (and at most [`MAX_RELEASES`]).
    pub fn new(window: Duration) -> ReleaseLog {
        ReleaseLog {
            window,
            rooms: FxHashMap::default(),
            order: VecDeque::new(),
            floor: 0,
        }
    }

    /// A room's stream started at `floor`.
    pub fn start(&mut self, room: Room, floor: u64) {
        self.rooms.insert(
            room,
            RoomLog {
                base: floor,
                releases: VecDeque::new(),
                deletions: VecDeque::new(),
            },
        );
    }

    /// A room's stream stopped.
    pub fn stop(&mut self, room: &Room) {
        self.rooms.remove(room);
    }

    /// The room's event at `position` was released with `offset` (offsets increase).
    pub fn record(&mut self, room: Room, offset: u64, position: u64, now: Instant) {
        let Some(log) = self.rooms.get_mut(&room) else {
            return;
        };
        if log.releases.back().is_some_and(|(_, p)| *p >= position) || log.base >= position {
            return;
        }
        log.releases.push_back((offset, position));
        self.order.push_back((now, offset, room, false));
        self.trim(now);
    }

    /// The room's deletion of the message at `seq` was released with `offset`; `packet` is
    /// the `message:deleted` event without an offset.
    pub fn record_deletion(
        &mut self,
        room: Room,
        offset: u64,
        seq: u64,
        packet: Bytes,
        now: Instant,
    ) {
        let Some(log) = self.rooms.get_mut(&room) else {
            return;
        };
        log.deletions.push_back((offset, seq, packet));
        self.order.push_back((now, offset, room, true));
        self.trim(now);
    }

    /// Drops what fell out of the window or past the bound.
    pub fn trim(&mut self, now: Instant) {
        while let Some(&(at, offset, room, deletion)) = self.order.front() {
            if self.order.len() <= MAX_RELEASES && now.saturating_duration_since(at) <= self.window
            {
                break;
            }
            self.order.pop_front();
            self.floor = self.floor.max(offset);
            if let Some(log) = self.rooms.get_mut(&room) {
                if deletion {
                    if log.deletions.front().is_some_and(|(o, _, _)| *o == offset) {
                        log.deletions.pop_front();
                    }
                } else if log.releases.front().is_some_and(|(o, _)| *o == offset) {
                    if let Some((_, position)) = log.releases.pop_front() {
                        log.base = position;
                    }
                }
            }
        }
    }

    /// The last position released in `room` (its stream's floor before any), if it streams.
    pub fn last(&self, room: &Room) -> Option<u64> {
        let log = self.rooms.get(room)?;
        Some(log.releases.back().map_or(log.base, |(_, p)| *p))
    }

    /// For each of `rooms` this node streams, the last position released at or before
    /// `offset`: what a client whose last event had `offset` had received of it; and the
    /// deletions released after `offset` of messages up to those positions (which the client
    /// had), in release order. `None` when releases after `offset` were dropped already, or
    /// past [`MAX_DELETIONS`] (the answer would not be exact).
    #[allow(clippy::type_complexity)]
    pub fn positions(&self, offset: u64, rooms: &[Room]) -> Option<(Vec<(Room, u64)>, Vec<Bytes>)> {
        if offset < self.floor {
            return None;
        }
        let mut positions = Vec::new();
        let mut deletions: Vec<(u64, Bytes)> = Vec::new();
        for room in rooms {
            let Some(log) = self.rooms.get(room) else {
                continue;
            };
            let n = log.releases.partition_point(|(o, _)| *o <= offset);
            let position = match n {
                0 => log.base,
                n => log.releases[n - 1].1,
            };
            positions.push((*room, position));
            let after = log.deletions.partition_point(|(o, _, _)| *o <= offset);
            deletions.extend(
                log.deletions
                    .range(after..)
                    .filter(|(_, seq, _)| *seq <= position)
                    .map(|(o, _, p)| (*o, p.clone())),
            );
        }
        if deletions.len() > MAX_DELETIONS {
            return None;
        }
        deletions.sort_by_key(|(o, _)| *o);
        Some((positions, deletions.into_iter().map(|(_, p)| p).collect()))
    }
}

/// What nodes ask each other on their node channels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    /// "Hand me the session detached under `pid`": from node `from`, request `req`; `offset`
    /// is the client's last offset in the asked node's counter; `rooms` are granted now.
    Recover {
        /// The asking node's request number.
        req: u64,
        /// The session's private id.
        pid: String,
        /// The client's last offset, a counter of the asked node.
        offset: Option<u64>,
        /// Who asks (where the answer goes).
        from: NodeId,
        /// The rooms granted now (channels and DMs).
        rooms: Vec<Room>,
    },
    /// The answer: the session's user and workspace and, for each room the holder streamed,
    /// the last position the client had; `None` when the holder does not have the session.
    Recovered {
        /// The request answered.
        req: u64,
        /// What the holder had.
        found: Option<Session>,
    },
}

/// A session as the holder hands it over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// Whose.
    pub user: UserId,
    /// Where.
    pub workspace: WorkspaceId,
    /// Per room, the last position the client had.
    pub positions: Vec<(Room, u64)>,
    /// The `message:deleted` events the client missed of messages it had, in order.
    pub deletions: Vec<Bytes>,
}

/// A channel or DM room as control messages write it (`c:<uuid>`, `d:<uuid>`).
fn room_text(room: &Room) -> Option<String> {
    match room {
        Room::Channel(c) => Some(format!("c:{}", c.0)),
        Room::Dm(d) => Some(format!("d:{}", d.0)),
        _ => None,
    }
}

fn room_of(text: &str) -> Option<Room> {
    let (kind, id) = text.split_once(':')?;
    let id = Uuid::parse_str(id).ok()?;
    match kind {
        "c" => Some(Room::Channel(ChannelId(id))),
        "d" => Some(Room::Dm(ConversationId(id))),
        _ => None,
    }
}

impl Control {
    /// The JSON text of a control message.
    pub fn encode(&self) -> Vec<u8> {
        let value = match self {
            Control::Recover {
                req,
                pid,
                offset,
                from,
                rooms,
            } => json!({
                "type": "recover",
                "req": req,
                "pid": pid,
                "offset": offset,
                "from": from.to_string(),
                "rooms": rooms.iter().filter_map(room_text).collect::<Vec<_>>(),
            }),
            Control::Recovered { req, found: None } => {
                json!({"type": "recovered", "req": req, "found": false})
            }
            Control::Recovered {
                req,
                found: Some(s),
            } => json!({
                "type": "recovered",
                "req": req,
                "found": true,
                "user": s.user.0.to_string(),
                "workspace": s.workspace.0.to_string(),
                "positions": s.positions.iter()
                    .filter_map(|(r, p)| Some(json!([room_text(r)?, p])))
                    .collect::<Vec<_>>(),
                "deletions": s.deletions.iter()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect::<Vec<_>>(),
            }),
        };
        value.to_string().into_bytes()
    }

    /// Reads a control message; the error names what is wrong.
    pub fn decode(text: &[u8]) -> Result<Control, String> {
        let v: Value =
            serde_json::from_slice(text).map_err(|e| format!("control message not JSON: {e}"))?;
        let req = v["req"]
            .as_u64()
            .ok_or_else(|| format!("control message without req: {v}"))?;
        match v["type"].as_str() {
            Some("recover") => {
                let from = v["from"]
                    .as_str()
                    .and_then(NodeId::parse)
                    .ok_or_else(|| format!("recover without a node in from: {v}"))?;
                let pid = v["pid"]
                    .as_str()
                    .ok_or_else(|| format!("recover without pid: {v}"))?
                    .to_owned();
                let rooms = v["rooms"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|r| room_of(r.as_str()?)).collect())
                    .unwrap_or_default();
                Ok(Control::Recover {
                    req,
                    pid,
                    offset: v["offset"].as_u64(),
                    from,
                    rooms,
                })
            }
            Some("recovered") if v["found"] == Value::Bool(false) => {
                Ok(Control::Recovered { req, found: None })
            }
            Some("recovered") => {
                let uuid = |key: &str| {
                    v[key]
                        .as_str()
                        .and_then(|s| Uuid::parse_str(s).ok())
                        .ok_or_else(|| format!("recovered without a uuid in {key}: {v}"))
                };
                let positions = v["positions"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|p| Some((room_of(p[0].as_str()?)?, p[1].as_u64()?)))
                            .collect()
                    })
                    .unwrap_or_default();
                let deletions = v["deletions"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|p| Some(Bytes::from(p.as_str()?.to_owned())))
                            .collect()
                    })
                    .unwrap_or_default();
                Ok(Control::Recovered {
                    req,
                    found: Some(Session {
                        user: UserId(uuid("user")?),
                        workspace: WorkspaceId(uuid("workspace")?),
                        positions,
                        deletions,
                    }),
                })
            }
            other => Err(format!("unknown control message type {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(n: u128) -> Room {
        Room::Channel(ChannelId(Uuid::from_u128(n)))
    }

    #[test]
    fn a_position_is_the_last_release_at_or_before_the_offset_whatever_the_interleaving() {
        let t0 = Instant::now();
        let mut log = ReleaseLog::new(Duration::from_secs(120));
        let (a, b, c) = (room(1), room(2), room(3));
        log.start(a, 10);
        log.start(b, 0);
        // Offsets 1..: a11, b1, b2, a12, (a deletion at 5 records nothing), b3.
        log.record(a, 1, 11, t0);
        log.record(b, 2, 1, t0);
        log.record(b, 3, 2, t0);
        log.record(a, 4, 12, t0);
        log.record(b, 6, 3, t0);
        let at = |o, rooms: &[Room]| log.positions(o, rooms).map(|(p, _)| p);
        assert_eq!(at(0, &[a, b]), Some(vec![(a, 10), (b, 0)]));
        assert_eq!(at(3, &[a, b]), Some(vec![(a, 11), (b, 2)]));
        assert_eq!(at(5, &[a, b]), Some(vec![(a, 12), (b, 2)]));
        assert_eq!(
            at(9, &[a, b, c]),
            Some(vec![(a, 12), (b, 3)]),
            "a room this node does not stream has no position"
        );
        assert_eq!(log.last(&a), Some(12));
        assert_eq!(log.last(&c), None);
        log.stop(&a);
        assert_eq!(log.last(&a), None);
    }

    #[test]
    fn deletions_the_client_missed_of_messages_it_had_come_in_release_order() {
        let t0 = Instant::now();
        let mut log = ReleaseLog::new(Duration::from_secs(120));
        let (a, b) = (room(1), room(2));
        log.start(a, 0);
        log.start(b, 0);
        log.record(a, 1, 1, t0);
        log.record(a, 2, 2, t0);
        log.record(b, 3, 1, t0);
        log.record_deletion(a, 4, 1, Bytes::from_static(b"del a1"), t0);
        log.record(a, 5, 3, t0);
        log.record_deletion(b, 6, 1, Bytes::from_static(b"del b1"), t0);
        log.record_deletion(a, 7, 3, Bytes::from_static(b"del a3"), t0);
        let (positions, deletions) = log.positions(3, &[a, b]).unwrap();
        assert_eq!(positions, vec![(a, 2), (b, 1)]);
        assert_eq!(
            deletions,
            vec![Bytes::from_static(b"del a1"), Bytes::from_static(b"del b1")],
            "a3 was not had: it comes with the message's replay"
        );
        assert_eq!(
            log.positions(4, &[a, b]).unwrap().1,
            vec![Bytes::from_static(b"del b1")]
        );
        log.trim(t0 + Duration::from_secs(121));
        assert_eq!(
            log.positions(7, &[a]),
            Some((vec![(a, 3)], Vec::new())),
            "all dropped, the base moved"
        );
    }

    #[test]
    fn releases_out_of_the_window_are_dropped_and_earlier_offsets_refused() {
        let t0 = Instant::now();
        let window = Duration::from_secs(10);
        let mut log = ReleaseLog::new(window);
        let a = room(1);
        log.start(a, 0);
        log.record(a, 1, 1, t0);
        log.record(a, 2, 2, t0 + Duration::from_secs(5));
        log.record(a, 3, 3, t0 + Duration::from_secs(11));
        let at = |o| log.positions(o, &[a]).map(|(p, _)| p);
        assert_eq!(at(0), None, "offset 1 fell out");
        assert_eq!(at(1), Some(vec![(a, 1)]), "the base");
        assert_eq!(at(2), Some(vec![(a, 2)]));
        assert_eq!(log.last(&a), Some(3));
        log.record(a, 4, 3, t0 + Duration::from_secs(11));
        assert_eq!(log.last(&a), Some(3), "positions only go up");
    }

    #[test]
    fn control_messages_round_trip_and_errors_name_the_bad_value() {
        let from = NodeId(0xabc);
        let ask = Control::Recover {
            req: 7,
            pid: "00000000000abc0f00".into(),
            offset: Some(41),
            from,
            rooms: vec![room(1), Room::Dm(ConversationId(Uuid::from_u128(2)))],
        };
        assert_eq!(Control::decode(&ask.encode()), Ok(ask));
        let none = Control::Recovered {
            req: 7,
            found: None,
        };
        assert_eq!(Control::decode(&none.encode()), Ok(none));
        let found = Control::Recovered {
            req: 8,
            found: Some(Session {
                user: UserId(Uuid::from_u128(5)),
                workspace: WorkspaceId(Uuid::from_u128(6)),
                positions: vec![(room(1), 12), (room(3), 0)],
                deletions: vec![Bytes::from_static(
                    br#"42["message:deleted",{"sequence":3}]"#,
                )],
            }),
        };
        assert_eq!(Control::decode(&found.encode()), Ok(found));
        let err = Control::decode(br#"{"type":"hello","req":1}"#).unwrap_err();
        assert!(err.contains("\"hello\""), "{err}");
        let err = Control::decode(br#"{"type":"recover","req":1,"from":"xyz"}"#).unwrap_err();
        assert!(err.contains("from"), "{err}");
    }
}
