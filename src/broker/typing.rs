//! Typers on other nodes, as this node has shown them (design: `docs/cluster.md`, typing).
//!
//! The origin node owns a typer's 5 s timer and publishes its stop. When that node dies the
//! stop never comes, so each receiving node keeps the typers it has shown with a timer of its
//! own, kept alive by the origin's refreshes (at most every 2 s while the user keeps typing):
//! last start or refresh + [`REMOTE_TYPING_TIMEOUT`]. A stop removes the typer and is shown
//! once; a timer that runs out shows the stop itself, and the origin's stop that may follow is
//! dropped; a refresh of a typer this node never saw (it subscribed mid-typing) shows the
//! start once. So a typer whose node died stops showing within the timeout, and nobody sees a
//! start or a stop twice.
//!
//! It does no IO and reads no clock: the broker passes `now` and shows what it is told to.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rustc_hash::FxHashMap;

use super::names::NodeId;
use crate::ids::{Room, UserId};

/// The origin's 5 s, from a keystroke up to 2 s after the last refresh it passed on, plus
/// half a second for the hop.
pub const REMOTE_TYPING_TIMEOUT: Duration = Duration::from_millis(7500);

/// Most typers remembered; past it a start is still shown but gets no timer.
pub const MAX_REMOTE_TYPERS: usize = 100_000;

/// Who is typing where, from which node.
type Key = (Room, UserId, NodeId);

/// What to show this node's members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Show {
    /// The packet as it came.
    AsIs,
    /// Nothing.
    Nothing,
}

/// Remote typers with their timers.
#[derive(Debug, Default)]
pub struct RemoteTypers {
    /// Each typer's timer and its start packet (to build the stop from).
    typers: FxHashMap<Key, (Instant, Bytes)>,
}

impl RemoteTypers {
    /// A `typing:update` from another node: `start` or a stop.
    pub fn update(&mut self, key: Key, start: bool, packet: &Bytes, now: Instant) -> Show {
        if start {
            self.remember(key, packet, now);
            Show::AsIs
        } else if self.typers.remove(&key).is_some() {
            Show::AsIs
        } else {
            // Already shown as stopped (its timer ran out), or never shown here.
            Show::Nothing
        }
    }

    /// A refresh (`packet` is the typer's start): keeps the timer alive, or shows the start of
    /// a typer this node had not seen.
    pub fn refresh(&mut self, key: Key, packet: &Bytes, now: Instant) -> Show {
        match self.typers.get_mut(&key) {
            Some((until, _)) => {
                *until = now + REMOTE_TYPING_TIMEOUT;
                Show::Nothing
            }
            None => {
                self.remember(key, packet, now);
                Show::AsIs
            }
        }
    }

    /// Typers whose timer ran out by `now`, each with its stop packet to show (to the room
    /// but the typer's own sockets).
    pub fn expire(&mut self, now: Instant) -> Vec<(Room, UserId, Bytes)> {
        let mut out = Vec::new();
        self.typers.retain(|(room, user, _), (until, start)| {
            if *until > now {
                return true;
            }
            if let Some(stop) = stop_packet(start) {
                out.push((*room, *user, stop));
            }
            false
        });
        out
    }

    /// How many typers have a timer.
    pub fn len(&self) -> usize {
        self.typers.len()
    }

    /// Whether none has.
    pub fn is_empty(&self) -> bool {
        self.typers.is_empty()
    }

    fn remember(&mut self, key: Key, packet: &Bytes, now: Instant) {
        if self.typers.len() < MAX_REMOTE_TYPERS || self.typers.contains_key(&key) {
            self.typers
                .insert(key, (now + REMOTE_TYPING_TIMEOUT, packet.clone()));
        }
    }
}

/// Whether a `typing:update` packet (`42["typing:update",{…}]`) is a start; `None` when it is
/// not one.
pub fn is_start(packet: &[u8]) -> Option<bool> {
    let (_, data) = decode(packet)?;
    data.get("isTyping")?.as_bool()
}

/// The stop matching a start packet: the same event with `isTyping: false`.
fn stop_packet(start: &[u8]) -> Option<Bytes> {
    let (event, mut data) = decode(start)?;
    data.as_object_mut()?
        .insert("isTyping".into(), serde_json::Value::Bool(false));
    Some(Bytes::from(crate::protocol::packet::event(
        &event, &data, None,
    )))
}

/// The event name and data of a server-made `42["event",data]` packet.
fn decode(packet: &[u8]) -> Option<(String, serde_json::Value)> {
    let body = packet.strip_prefix(b"42")?;
    let (event, data): (String, serde_json::Value) = serde_json::from_slice(body).ok()?;
    Some((event, data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ChannelId;
    use serde_json::json;
    use uuid::Uuid;

    fn packet(typing: bool) -> Bytes {
        Bytes::from(crate::protocol::packet::event(
            "typing:update",
            &json!({"userId": "u", "userName": "Ann", "targetId": "c", "isTyping": typing}),
            None,
        ))
    }

    fn key() -> Key {
        (
            Room::Channel(ChannelId(Uuid::from_u128(1))),
            UserId(Uuid::from_u128(2)),
            NodeId(7),
        )
    }

    #[test]
    fn a_start_and_its_stop_are_shown_once_each() {
        let t0 = Instant::now();
        let mut t = RemoteTypers::default();
        assert_eq!(is_start(&packet(true)), Some(true));
        assert_eq!(is_start(&packet(false)), Some(false));
        assert_eq!(t.update(key(), true, &packet(true), t0), Show::AsIs);
        assert_eq!(t.update(key(), false, &packet(false), t0), Show::AsIs);
        assert_eq!(
            t.update(key(), false, &packet(false), t0),
            Show::Nothing,
            "a second stop is not shown"
        );
        assert!(t.expire(t0 + REMOTE_TYPING_TIMEOUT * 2).is_empty());
    }

    #[test]
    fn a_typer_whose_node_went_silent_is_stopped_by_its_timer_and_its_late_stop_dropped() {
        let t0 = Instant::now();
        let mut t = RemoteTypers::default();
        t.update(key(), true, &packet(true), t0);
        let refreshed = t0 + Duration::from_secs(2);
        assert_eq!(t.refresh(key(), &packet(true), refreshed), Show::Nothing);
        assert!(
            t.expire(t0 + REMOTE_TYPING_TIMEOUT).is_empty(),
            "the refresh moved the timer"
        );
        let expired = t.expire(refreshed + REMOTE_TYPING_TIMEOUT);
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].0, key().0);
        assert_eq!(expired[0].1, key().1);
        assert_eq!(
            is_start(&expired[0].2),
            Some(false),
            "the stop says isTyping: false"
        );
        assert_eq!(
            decode(&expired[0].2).unwrap().1["userName"],
            "Ann",
            "the stop is built from the start's data"
        );
        assert_eq!(
            t.update(key(), false, &packet(false), refreshed),
            Show::Nothing
        );
        assert!(t.is_empty());
    }

    #[test]
    fn a_refresh_of_an_unseen_typer_shows_its_start_once() {
        let t0 = Instant::now();
        let mut t = RemoteTypers::default();
        assert_eq!(t.refresh(key(), &packet(true), t0), Show::AsIs);
        assert_eq!(t.refresh(key(), &packet(true), t0), Show::Nothing);
        assert_eq!(t.len(), 1);
    }
}
