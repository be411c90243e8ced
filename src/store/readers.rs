//! The store's reader pool: threads with their own backend connections that answer CONNECT,
//! history and membership checks, so they never wait behind a write batch (see the module
//! above for the ordering rule that still holds).

use std::io;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use chrono::Utc;
use crossbeam_channel::Receiver;

use super::StoreError;
use super::{admin, Backend, HistoryQuery, Reader, Store};
use crate::api::AdminRequest;
use crate::chat::auth::Credential;
use crate::ids::Room;
use crate::ids::{ConnectionId, Target, WorkspaceId};
use crate::mesh::{Asker, Mesh, Standing, StoreCommand, StoreReply};
use crate::metrics::Metrics;
use crate::model::MembershipChange;

/// Starts the store thread over `writer`, plus one reader thread (`store-read-N`) per backend
/// in `readers` and one writer lane (`store-write-N`, see [`super::lanes`]) per backend in
/// `lanes`, each with its own connection; without readers and lanes, the store thread alone
/// ([`super::spawn_with`]). Each lane starts at most one batch per `window`
/// ([`Store::with_window`]). Reader and lane threads stop after the store thread has answered
/// `Shutdown`.
pub fn spawn_pool<B: Backend + Send + 'static>(
    writer: B,
    readers: Vec<B>,
    lanes: Vec<B>,
    window: Duration,
    inbox: Receiver<StoreCommand>,
    mut mesh: Mesh,
    metrics: Arc<Metrics>,
) -> io::Result<JoinHandle<()>> {
    // The copy of its handle inside `mesh` would keep the inbox open forever; swap it for a
    // dead one so "every sender gone" can end the store thread. Its writer lanes ring it on
    // its inbox (with lanes, only Shutdown ends it).
    let bell = mesh.store.clone();
    let (dead, _) = crossbeam_channel::bounded(0);
    mesh.store = mesh.store.with_inbox(dead);
    let lanes = if lanes.is_empty() {
        None
    } else {
        Some(super::lanes::Lanes::spawn(lanes, bell)?)
    };
    let mut threads = Vec::with_capacity(readers.len());
    let (jobs, queue) = crossbeam_channel::unbounded::<ReadJob>();
    for (i, mut backend) in readers.into_iter().enumerate() {
        let queue = queue.clone();
        let mesh = mesh.clone();
        threads.push(
            thread::Builder::new()
                .name(format!("store-read-{i}"))
                .spawn(move || {
                    // Ends once the store thread dropped the sender and the queue is empty.
                    while let Ok(job) = queue.recv() {
                        serve(&mut backend, &mesh, job);
                    }
                })?,
        );
    }
    let readers = (!threads.is_empty()).then_some(jobs);
    thread::Builder::new().name("store".into()).spawn(move || {
        let mut store = Store::new(writer, mesh, metrics).with_window(window);
        if let Some(lanes) = lanes {
            store = store.with_lanes(lanes);
        }
        store.readers = readers;
        store.run(&inbox);
        for t in threads {
            let _ = t.join();
        }
    })
}

/// A read handed to the reader pool.
pub(super) enum ReadJob {
    Authenticate {
        from: ConnectionId,
        credential: Credential,
        workspace: WorkspaceId,
    },
    History {
        asker: Asker,
        ack: Option<u64>,
        query: HistoryQuery,
    },
    CheckMember {
        asker: Asker,
        ack: Option<u64>,
        target: Target,
    },
    AdminHistory {
        from: ConnectionId,
        query: HistoryQuery,
    },
    Recheck(Vec<Standing>),
}

/// Answers one read on `backend` (a reader thread's, or the writer's when there is no pool).
pub(super) fn serve<B: Backend>(backend: &mut B, mesh: &Mesh, job: ReadJob) {
    match job {
        ReadJob::Authenticate {
            from,
            credential,
            workspace,
        } => {
            let result = backend.authenticate(&credential, workspace, Utc::now());
            match &result {
                Ok(grant) if mesh.broker.is_cluster() => {
                    let floors = backend.floors(&grant.rooms);
                    let rooms = grant.rooms.clone();
                    let reply = StoreReply::Authenticated(result);
                    mesh.broker.admit_reply(floors, rooms, from, reply);
                }
                _ => mesh.reply(from, StoreReply::Authenticated(result)),
            }
        }
        ReadJob::History { asker, ack, query } => {
            let reader = Reader {
                user: asker.user,
                workspace: asker.workspace,
            };
            let result = backend.history(Some(reader), &query);
            mesh.reply(asker.from, StoreReply::History { ack, query, result });
        }
        ReadJob::CheckMember { asker, ack, target } => {
            let result = backend.check_member(asker.user, asker.workspace, target);
            let admitted = result.is_ok() && mesh.broker.is_cluster();
            let reply = StoreReply::Member {
                ack,
                target,
                result,
            };
            if admitted {
                let rooms = vec![target.room()];
                let floors = backend.floors(&rooms);
                mesh.broker.admit_reply(floors, rooms, asker.from, reply);
            } else {
                mesh.reply(asker.from, reply);
            }
        }
        ReadJob::Recheck(standings) => {
            for standing in standings {
                for change in recheck(backend, &standing) {
                    mesh.broker.admit_membership(None, change);
                }
            }
        }
        ReadJob::AdminHistory { from, query } => {
            let reply = admin::handle(
                backend,
                &mesh.broker,
                AdminRequest::History(query),
                Utc::now(),
            );
            mesh.reply(from, reply);
        }
    }
}

/// The removals `standing` missed: the workspace's when the user is no longer in it (or no
/// longer exists), else a leave for each room held that the user is no longer a member of.
/// A read that fails changes nothing (the next re-check tries again). Joins are not made up:
/// a socket may have left a room of its own accord (`room:leave`).
fn recheck<B: Backend>(backend: &mut B, standing: &Standing) -> Vec<MembershipChange> {
    let credential = Credential::Jwt {
        user: standing.user,
        name: None,
    };
    let change = |room, joined| MembershipChange {
        user: standing.user,
        workspace: standing.workspace,
        room,
        joined,
    };
    match backend.authenticate(&credential, standing.workspace, Utc::now()) {
        Ok(grant) => standing
            .rooms
            .iter()
            .filter(|room| room.target().is_some() && !grant.rooms.contains(room))
            .map(|room| change(*room, false))
            .collect(),
        Err(StoreError::Forbidden(_) | StoreError::NotFound(_)) => {
            vec![change(Room::Workspace(standing.workspace), false)]
        }
        Err(e) => {
            tracing::warn!(user = %standing.user, error = e.message(), "membership re-check failed; it is tried again at the next reconnect");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::UserId;
    use crate::store::tests::world;

    #[test]
    fn a_recheck_announces_the_rooms_and_workspaces_lost_and_nothing_gained() {
        let (mut b, w) = world();
        let general = Room::Channel(w.general);
        let quiet = Room::Channel(w.quiet);
        // Bob holds `quiet`, which he is not a member of, and `general`, which he is.
        let held = Standing {
            user: w.bob,
            workspace: w.ws,
            rooms: vec![general, quiet],
        };
        let changes = recheck(&mut b, &held);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].room, quiet);
        assert!(!changes[0].joined);
        // Ann holds nothing of her rooms (she left them with room:leave): nothing is joined.
        let left = Standing {
            user: w.ann,
            workspace: w.ws,
            rooms: Vec::new(),
        };
        assert!(recheck(&mut b, &left).is_empty());
        // Dave is in no workspace, and a user that does not exist is in none either.
        for user in [w.dave, UserId(uuid::Uuid::new_v4())] {
            let gone = Standing {
                user,
                workspace: w.ws,
                rooms: vec![general],
            };
            let changes = recheck(&mut b, &gone);
            assert_eq!(changes.len(), 1);
            assert_eq!(changes[0].room, Room::Workspace(w.ws));
            assert!(!changes[0].joined);
        }
    }
}
