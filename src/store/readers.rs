//! The store's reader pool: threads with their own backend connections that answer CONNECT,
//! history and membership checks, so they never wait behind a write batch (see the module
//! above for the ordering rule that still holds).

use std::io;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use chrono::Utc;
use crossbeam_channel::Receiver;

use super::{admin, Backend, HistoryQuery, Reader, Store};
use crate::api::AdminRequest;
use crate::chat::auth::Credential;
use crate::ids::{ConnectionId, Target, WorkspaceId};
use crate::mesh::{Asker, Mesh, StoreCommand, StoreHandle, StoreReply};
use crate::metrics::Metrics;

/// Starts the store thread over `writer`, plus one reader thread (`store-read-N`) per backend
/// in `readers`, each with its own connection; without readers, the store thread alone
/// ([`super::spawn_with`]).
/// Reader threads stop after the store thread has answered `Shutdown`.
pub fn spawn_pool<B: Backend + Send + 'static>(
    writer: B,
    readers: Vec<B>,
    inbox: Receiver<StoreCommand>,
    mut mesh: Mesh,
    metrics: Arc<Metrics>,
) -> io::Result<JoinHandle<()>> {
    // The store never writes to its own inbox, and the copy of its handle inside `mesh` would
    // keep the inbox open forever; swap it for a dead one so "every sender gone" can end it.
    let (dead, _) = crossbeam_channel::bounded(0);
    mesh.store = StoreHandle::new(dead);
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
        let mut store = Store::new(writer, mesh, metrics);
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
