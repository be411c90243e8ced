//! The membership listener: `LISTEN ocomms_membership` on its own connection and hand each
//! change the web app wrote straight into `channel_members` / `conversation_participants`
//! to the broker, which moves live sockets in or out of the room (contract §2: no
//! reconnect needed). Changes written by this node itself are skipped: its store thread
//! announced those when it made them. Every other writer's are applied: the web app's, and
//! in a cluster every other node's (each node's connections are named `ocomms-rt/<node>`).
//! In a cluster a change also carries the room's top sequence read by the trigger (`floor`),
//! handed to the broker before the change so the room's stream starts there; for this node's
//! own changes only the floor is handed on. Each time it starts listening (again) it has the
//! shards re-check their sockets (`ShardCommand::Recheck`): what was removed while nobody
//! listened takes effect then.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{Receiver, TryRecvError};
use fallible_iterator::FallibleIterator;
use serde::Deserialize;
use uuid::Uuid;

use crate::ids::{ChannelId, ConversationId, Room, UserId, WorkspaceId};
use crate::mesh::{Mesh, ShardCommand};
use crate::metrics::Metrics;
use crate::model::MembershipChange;

use super::{application_name, connect, status, MAX_BACKOFF};

/// The NOTIFY channel the migration's triggers use.
pub const CHANNEL: &str = "ocomms_membership";

/// How often the thread looks at its stop signal while no notification comes.
const TICK: Duration = Duration::from_millis(250);

/// The trigger's JSON payload.
#[derive(Deserialize)]
struct Payload {
    user: Uuid,
    workspace: Uuid,
    kind: String,
    room: Uuid,
    joined: bool,
    #[serde(default)]
    origin: String,
    /// The room's top sequence when the change was written (absent before migration V10).
    #[serde(default)]
    floor: Option<u64>,
}

/// A parsed notification: the change, whether this node wrote it, and the room's floor.
struct Note {
    change: MembershipChange,
    own: bool,
    floor: Option<u64>,
}

/// Parses a payload; `None` for a payload this version does not understand.
fn note_of(payload: &str, own_name: &str) -> Option<Note> {
    let p: Payload = serde_json::from_str(payload).ok()?;
    let room = match p.kind.as_str() {
        "channel" => Room::Channel(ChannelId(p.room)),
        "dm" => Room::Dm(ConversationId(p.room)),
        "workspace" => Room::Workspace(WorkspaceId(p.room)),
        _ => return None,
    };
    Some(Note {
        change: MembershipChange {
            user: UserId(p.user),
            workspace: WorkspaceId(p.workspace),
            room,
            joined: p.joined,
        },
        own: p.origin == own_name,
        floor: p.floor,
    })
}

/// Starts the listener thread (`pg-listen`). It reconnects with backoff while the database
/// is down and stops once every sender of `stop` is gone.
pub fn spawn_listener(
    url: String,
    mesh: Mesh,
    metrics: Arc<Metrics>,
    stop: Receiver<()>,
) -> std::io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name("pg-listen".into())
        .spawn(move || run(&url, &mesh, &metrics, &stop))
}

fn stopped(stop: &Receiver<()>) -> bool {
    matches!(stop.try_recv(), Err(TryRecvError::Disconnected))
}

fn run(url: &str, mesh: &Mesh, metrics: &Metrics, stop: &Receiver<()>) {
    let mut backoff = Duration::from_millis(100);
    while !stopped(stop) {
        let mut client = match connect(url) {
            Ok(c) => c,
            Err(e) => {
                metrics.store.db_status.store(status::DOWN, Relaxed);
                tracing::warn!(error = %e, "membership listener cannot reach PostgreSQL; retrying");
                // Sleep in ticks so a stop is noticed.
                let mut waited = Duration::ZERO;
                while waited < backoff && !stopped(stop) {
                    thread::sleep(TICK);
                    waited += TICK;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")) {
            tracing::warn!(error = %e, "LISTEN failed; reconnecting");
            continue;
        }
        backoff = Duration::from_millis(100);
        metrics.store.db_status.store(status::OK, Relaxed);
        tracing::debug!("membership listener is listening");
        // Whatever changed while nobody listened (a lost connection, a late start) is read
        // again for every connected socket: missed removals take effect now.
        for shard in mesh.broker.shards() {
            shard.send(ShardCommand::Recheck);
        }
        while !stopped(stop) {
            let next = {
                let mut notes = client.notifications();
                let mut iter = notes.timeout_iter(TICK);
                iter.next()
            };
            match next {
                Ok(Some(note)) => {
                    if let Some(note) = note_of(note.payload(), application_name()) {
                        let floor = note.floor.filter(|_| note.change.joined);
                        if note.own {
                            // This node's shards have the change already.
                            let floors = floor.map(|f| vec![(note.change.room, f)]);
                            mesh.broker.floors(floors.unwrap_or_default());
                        } else {
                            mesh.broker.admit_membership(floor, note.change);
                        }
                    }
                }
                Ok(None) => {
                    if client.is_closed() {
                        break;
                    }
                }
                Err(e) => {
                    metrics.store.db_status.store(status::DOWN, Relaxed);
                    tracing::warn!(error = %e, "membership listener lost PostgreSQL; reconnecting");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_from_others_become_changes_and_ours_are_marked() {
        let u = Uuid::new_v4();
        let w = Uuid::new_v4();
        let r = Uuid::new_v4();
        let theirs = format!(
            r#"{{"user":"{u}","workspace":"{w}","kind":"dm","room":"{r}","joined":false,"origin":"web"}}"#
        );
        let note = note_of(&theirs, "ocomms-rt").unwrap();
        assert_eq!(note.change.room, Room::Dm(ConversationId(r)));
        assert_eq!(note.change.workspace, WorkspaceId(w));
        assert!(!note.change.joined);
        assert!(!note.own);
        assert_eq!(note.floor, None);
        let ours = theirs.replace("\"web\"", "\"ocomms-rt\"");
        assert!(note_of(&ours, "ocomms-rt").unwrap().own);
        // In a cluster only this very node's writes are its own; another node's are applied.
        let other = theirs.replace("\"web\"", "\"ocomms-rt/00000000000000aa\",\"floor\":7");
        let note = note_of(&other, "ocomms-rt/00000000000000bb").unwrap();
        assert!(!note.own);
        assert_eq!(note.floor, Some(7));
        assert!(note_of(&other, "ocomms-rt/00000000000000aa").unwrap().own);
    }
}
