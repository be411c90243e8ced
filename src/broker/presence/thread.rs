//! The `presence` thread of a cluster node. It counts the node's own sockets per
//! (workspace, user) with [`PresenceBook`], as on one node, and hands each change of the
//! *node's* status for a user to [`Registry::set`] as a job on the link's publisher thread: the
//! script publishes `presence:update` on the workspace's channel when the cluster-wide status
//! changes, and every node (this one too) shows it to its members as it arrives. It beats the
//! node's heartbeat, sweeps dead nodes, answers `presence:query` for the whole cluster, and
//! asserts its state again after Redis came back or swept it. While Redis is down it
//! announces its own users' changes to local members only and answers from its own book.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use rustc_hash::FxHashMap;
use serde_json::json;

use super::{Beat, Registry};
use redis::Connection;

use crate::broker::link::topology::Mode;
use crate::broker::link::Link;
use crate::broker::names::{Names, NodeId};
use crate::ids::{Room, UserId, WorkspaceId};
use crate::mesh::{Except, Mesh, PresenceCommand, Publication, StoreReply};
use crate::model::PresenceStatus;
use crate::presence::PresenceBook;

/// How often dead nodes are looked for between beats.
const EXPIRY_CHECK: Duration = Duration::from_secs(1);

/// How long this node holds a user's last socket gone before it tells Redis the user left
/// here. A tab that opens on another node as one closes here is registered there meanwhile,
/// so the user is never shown `offline` then `active` again (a page reload on one node
/// neither); a user who really left is shown `offline` this much later.
const OFFLINE_GRACE: Duration = Duration::from_secs(1);

/// How long a clean shutdown waits for the node's `leave`.
const LEAVE_WAIT: Duration = Duration::from_secs(3);

/// What a job tells the thread back.
enum Done {
    /// A beat's result.
    Beat(Beat),
    /// Nodes found dead between beats.
    Dead(Vec<NodeId>),
    /// The node left (shutdown).
    Left,
}

/// The thread's settings.
pub struct Settings {
    /// This node.
    pub node: NodeId,
    /// The cluster's names.
    pub names: Names,
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// Heartbeat TTL.
    pub ttl: Duration,
}

/// Starts the cluster's `presence` thread.
pub fn spawn(
    inbox: Receiver<PresenceCommand>,
    mesh: Mesh,
    link: Arc<Link>,
    settings: Settings,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("presence".into())
        .spawn(move || {
            let registry = Arc::new(Mutex::new(Registry::new(
                settings.names.clone(),
                settings.node,
                settings.ttl,
            )));
            let (done_tx, done) = crossbeam_channel::unbounded();
            let mut p = Presence {
                book: PresenceBook::default(),
                mesh,
                link,
                registry,
                done: done_tx,
                was_up: false,
                next_beat: Instant::now(),
                next_check: Instant::now() + EXPIRY_CHECK,
                heartbeat: settings.heartbeat,
                leaving: FxHashMap::default(),
            };
            p.run(&inbox, &done);
        })
}

struct Presence {
    book: PresenceBook,
    mesh: Mesh,
    link: Arc<Link>,
    registry: Arc<Mutex<Registry>>,
    done: Sender<Done>,
    /// The link was up at the last look (a return makes the node assert its state again).
    was_up: bool,
    next_beat: Instant,
    next_check: Instant,
    heartbeat: Duration,
    /// Users whose last socket here went within [`OFFLINE_GRACE`]: when to tell Redis, and
    /// the node's status for them that Redis still holds.
    leaving: FxHashMap<(WorkspaceId, UserId), (Instant, PresenceStatus)>,
}

impl Presence {
    fn run(&mut self, inbox: &Receiver<PresenceCommand>, done: &Receiver<Done>) {
        loop {
            let wait = self
                .next_beat
                .min(self.next_check)
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(250));
            crossbeam_channel::select! {
                recv(inbox) -> command => match command {
                    Ok(PresenceCommand::Shutdown) | Err(_) => break,
                    Ok(command) => self.command(command),
                },
                recv(done) -> d => if let Ok(d) = d { self.done(d) },
                default(wait) => {}
            }
            self.tick();
        }
        // Leave cleanly: this node's users go offline (where it was their last node) now
        // rather than at the TTL.
        self.job(|reg, con, mode| reg.leave(con, mode).ok().map(|()| Done::Left));
        let deadline = Instant::now() + LEAVE_WAIT;
        while let Ok(d) = done.recv_deadline(deadline) {
            if matches!(d, Done::Left) {
                break;
            }
        }
    }

    /// Runs `f` on the publisher thread with the registry; what it returns comes back here.
    fn job(
        &self,
        f: impl FnOnce(&mut Registry, &mut Connection, Mode) -> Option<Done> + Send + 'static,
    ) {
        let registry = Arc::clone(&self.registry);
        let done = self.done.clone();
        self.link.run(Box::new(move |conns| {
            let Some(conns) = conns else { return };
            let mut reg = registry.lock().unwrap_or_else(|e| e.into_inner());
            let mode = conns.mode();
            let con = conns.for_name(&reg.nodes_key());
            if let Some(d) = f(&mut reg, con, mode) {
                let _ = done.send(d);
            }
        }));
    }

    fn command(&mut self, command: PresenceCommand) {
        let (workspace, user, change) = match crate::presence::change_of(command) {
            Ok(change) => change,
            Err(PresenceCommand::Query { asker, ack, users }) => {
                let local: Vec<(UserId, PresenceStatus)> = users
                    .iter()
                    .map(|u| (*u, self.book.status(asker.workspace, *u)))
                    .collect();
                let mesh = self.mesh.clone();
                let answered = self.link.is_up_now()
                    && self.link.run(Box::new({
                        let registry = Arc::clone(&self.registry);
                        let mesh = mesh.clone();
                        let local = local.clone();
                        move |conns| {
                            let statuses = conns
                                .and_then(|conns| {
                                    let reg = registry.lock().unwrap_or_else(|e| e.into_inner());
                                    let con = conns.for_name(&reg.nodes_key());
                                    reg.query(con, asker.workspace, &users).ok()
                                })
                                .map(|s| users.iter().copied().zip(s).collect())
                                .unwrap_or(local);
                            mesh.reply(asker.from, StoreReply::Presence { ack, statuses });
                        }
                    }));
                if !answered {
                    mesh.reply(
                        asker.from,
                        StoreReply::Presence {
                            ack,
                            statuses: local,
                        },
                    );
                }
                return;
            }
            Err(_) => return,
        };
        let before = self.book.status(workspace, user);
        let Some(status) = self.book.apply(workspace, user, change) else {
            return;
        };
        let key = (workspace, user);
        if status == PresenceStatus::Offline {
            let at = Instant::now() + OFFLINE_GRACE;
            self.leaving
                .entry(key)
                .and_modify(|(due, _)| *due = at)
                .or_insert((at, before));
            return;
        }
        // Back within the grace: Redis still holds what it held.
        if self
            .leaving
            .remove(&key)
            .is_some_and(|(_, held)| held == status)
        {
            return;
        }
        self.set(workspace, user, status);
    }

    /// Tells Redis this node's status for a user (the script publishes the cluster-wide
    /// change); while Redis is down, this node's members are told.
    fn set(&self, workspace: WorkspaceId, user: UserId, status: PresenceStatus) {
        let mesh = self.mesh.clone();
        let registry = Arc::clone(&self.registry);
        let sent = self.link.run(Box::new(move |conns| {
            let ok = conns.is_some_and(|conns| {
                let mode = conns.mode();
                let mut reg = registry.lock().unwrap_or_else(|e| e.into_inner());
                let con = conns.for_name(&reg.nodes_key());
                reg.set(con, mode, workspace, user, status).is_ok()
            });
            if !ok {
                announce_locally(&mesh, workspace, user, status);
            }
        }));
        if !sent {
            announce_locally(&self.mesh, workspace, user, status);
        }
    }

    fn done(&mut self, d: Done) {
        match d {
            Done::Beat(beat) => {
                if beat.rejoined {
                    self.reconcile();
                }
                self.sweep(beat.dead);
            }
            Done::Dead(dead) => self.sweep(dead),
            Done::Left => {}
        }
    }

    fn sweep(&self, dead: Vec<NodeId>) {
        for node in dead {
            self.job(move |reg, con, mode| {
                match reg.sweep(con, mode, node) {
                    Ok(Some(n)) => tracing::info!(%node, users = n, "swept a dead node's presence"),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(%node, error = %e, "presence sweep failed"),
                }
                None
            });
        }
    }

    /// Asserts every local user's status again (after a reconnect, or after being swept).
    fn reconcile(&self) {
        let local = self.book.snapshot();
        self.job(move |reg, con, mode| {
            if let Err(e) = reg.reconcile(con, mode, &local) {
                tracing::warn!(error = %e, "presence reconcile failed");
            }
            None
        });
    }

    fn tick(&mut self) {
        let now = Instant::now();
        let up = self.link.is_up_now();
        if up && !self.was_up {
            // The link came (back): assert this node's state, and beat at once.
            self.reconcile();
            self.next_beat = now;
        }
        self.was_up = up;
        if !self.leaving.is_empty() {
            let due: Vec<(WorkspaceId, UserId)> = self
                .leaving
                .iter()
                .filter(|(_, (at, _))| *at <= now)
                .map(|(key, _)| *key)
                .collect();
            for (workspace, user) in due {
                self.leaving.remove(&(workspace, user));
                if self.book.status(workspace, user) == PresenceStatus::Offline {
                    self.set(workspace, user, PresenceStatus::Offline);
                }
            }
        }
        if now >= self.next_beat {
            self.next_beat = now + self.heartbeat;
            self.job(|reg, con, _| match reg.beat(con) {
                Ok(beat) => Some(Done::Beat(beat)),
                Err(e) => {
                    tracing::warn!(error = %e, "presence heartbeat failed");
                    None
                }
            });
        }
        if now >= self.next_check {
            self.next_check = now + EXPIRY_CHECK;
            self.job(|reg, con, _| {
                reg.expired(con)
                    .ok()
                    .filter(|d| !d.is_empty())
                    .map(Done::Dead)
            });
        }
    }
}

/// `presence:update` to this node's members only (Redis is down).
fn announce_locally(mesh: &Mesh, workspace: WorkspaceId, user: UserId, status: PresenceStatus) {
    let data = json!({"userId": user, "status": status.as_str()});
    mesh.broker.fan_out(
        Publication::event(
            Room::Workspace(workspace),
            "presence:update",
            &data,
            Except::Nobody,
        ),
        None,
    );
}
