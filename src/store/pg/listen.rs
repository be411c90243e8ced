//! The membership listener: `LISTEN ocomms_membership` on its own connection and hand each
//! change the web app wrote straight into `channel_members` / `conversation_participants`
//! to the broker, which moves live sockets in or out of the room (contract §2: no
//! reconnect needed). Changes written by ocomms-rt itself are skipped: the store thread
//! announced those when it made them.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{Receiver, TryRecvError};
use fallible_iterator::FallibleIterator;
use serde::Deserialize;
use uuid::Uuid;

use crate::ids::{ChannelId, ConversationId, Room, UserId, WorkspaceId};
use crate::mesh::Mesh;
use crate::metrics::Metrics;
use crate::model::MembershipChange;

use super::{connect, status, APPLICATION_NAME, MAX_BACKOFF};

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
}

/// Parses a payload into the change to announce; `None` for our own writes or a payload
/// this version does not understand.
fn change_of(payload: &str) -> Option<MembershipChange> {
    let p: Payload = serde_json::from_str(payload).ok()?;
    if p.origin.starts_with(APPLICATION_NAME) {
        return None;
    }
    let room = match p.kind.as_str() {
        "channel" => Room::Channel(ChannelId(p.room)),
        "dm" => Room::Dm(ConversationId(p.room)),
        "workspace" => Room::Workspace(WorkspaceId(p.room)),
        _ => return None,
    };
    Some(MembershipChange {
        user: UserId(p.user),
        workspace: WorkspaceId(p.workspace),
        room,
        joined: p.joined,
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
        while !stopped(stop) {
            let next = {
                let mut notes = client.notifications();
                let mut iter = notes.timeout_iter(TICK);
                iter.next()
            };
            match next {
                Ok(Some(note)) => {
                    if let Some(change) = change_of(note.payload()) {
                        mesh.broker.membership(change);
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
    fn payloads_from_others_become_changes_and_ours_are_skipped() {
        let u = Uuid::new_v4();
        let w = Uuid::new_v4();
        let r = Uuid::new_v4();
        let theirs = format!(
            r#"{{"user":"{u}","workspace":"{w}","kind":"dm","room":"{r}","joined":false,"origin":"web"}}"#
        );
        let change = change_of(&theirs).unwrap();
        assert_eq!(change.room, Room::Dm(ConversationId(r)));
        assert_eq!(change.workspace, WorkspaceId(w));
        assert!(!change.joined);
        let ours = theirs.replace("\"web\"", "\"ocomms-rt\"");
        assert!(change_of(&ours).is_none());
    }
}
