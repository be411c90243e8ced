//! Presence per user and workspace across all of the user's connections (contract §5):
//! `active` if any socket is active, `away` if all are away, `offline` once the last closes.
//! [`PresenceBook`] is the rule, without IO; [`spawn`] runs it on the node's presence thread,
//! which publishes `presence:update` only when a status really changes and answers
//! `presence:query`.

use std::collections::hash_map::Entry;
use std::thread::JoinHandle;

use crossbeam_channel::Receiver;
use rustc_hash::FxHashMap;
use serde_json::json;

use crate::ids::{Room, UserId, WorkspaceId};
use crate::mesh::{Except, Mesh, PresenceCommand, Publication, StoreReply};
use crate::model::PresenceStatus;

#[derive(Clone, Copy, Debug, Default)]
struct Sockets {
    active: u32,
    away: u32,
}

impl Sockets {
    fn status(self) -> PresenceStatus {
        if self.active > 0 {
            PresenceStatus::Active
        } else if self.away > 0 {
            PresenceStatus::Away
        } else {
            PresenceStatus::Offline
        }
    }
}

/// Socket counts per (workspace, user).
#[derive(Debug, Default)]
pub struct PresenceBook {
    users: FxHashMap<(WorkspaceId, UserId), Sockets>,
}

impl PresenceBook {
    /// Applies one change; returns the new status if it differs from the old one.
    pub fn apply(
        &mut self,
        workspace: WorkspaceId,
        user: UserId,
        change: Change,
    ) -> Option<PresenceStatus> {
        let key = (workspace, user);
        let entry = self.users.entry(key);
        let before = match &entry {
            Entry::Occupied(e) => e.get().status(),
            Entry::Vacant(_) => PresenceStatus::Offline,
        };
        let sockets = entry.or_default();
        match change {
            Change::Connected => sockets.active += 1,
            Change::Away(true) if sockets.active > 0 => {
                sockets.active -= 1;
                sockets.away += 1;
            }
            Change::Away(false) if sockets.away > 0 => {
                sockets.away -= 1;
                sockets.active += 1;
            }
            Change::Away(_) => {}
            Change::Disconnected { away: true } => sockets.away = sockets.away.saturating_sub(1),
            Change::Disconnected { away: false } => {
                sockets.active = sockets.active.saturating_sub(1)
            }
        }
        let after = sockets.status();
        if after == PresenceStatus::Offline {
            self.users.remove(&key);
        }
        (after != before).then_some(after)
    }

    /// Every user with a socket here, and their status.
    pub fn snapshot(&self) -> Vec<(WorkspaceId, UserId, PresenceStatus)> {
        self.users
            .iter()
            .map(|((w, u), s)| (*w, *u, s.status()))
            .collect()
    }

    /// A user's status.
    pub fn status(&self, workspace: WorkspaceId, user: UserId) -> PresenceStatus {
        self.users
            .get(&(workspace, user))
            .map_or(PresenceStatus::Offline, |s| s.status())
    }
}

/// One socket's change of presence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// A socket authenticated (active).
    Connected,
    /// A socket went away (`true`) or came back.
    Away(bool),
    /// A socket closed in the given state.
    Disconnected {
        /// Whether it was away.
        away: bool,
    },
}

/// A socket's change as (workspace, user, change); the other commands (`Query`, `Shutdown`)
/// come back as they are.
pub fn change_of(
    command: PresenceCommand,
) -> Result<(WorkspaceId, UserId, Change), PresenceCommand> {
    Ok(match command {
        PresenceCommand::Connected { user, workspace } => (workspace, user, Change::Connected),
        PresenceCommand::Away {
            user,
            workspace,
            away,
        } => (workspace, user, Change::Away(away)),
        PresenceCommand::Disconnected {
            user,
            workspace,
            away,
        } => (workspace, user, Change::Disconnected { away }),
        other => return Err(other),
    })
}

/// Starts the presence thread of a single node.
pub fn spawn(inbox: Receiver<PresenceCommand>, mesh: Mesh) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("presence".into())
        .spawn(move || {
            let mut book = PresenceBook::default();
            for command in inbox.iter() {
                let (workspace, user, change) = match change_of(command) {
                    Ok(change) => change,
                    Err(PresenceCommand::Query { asker, ack, users }) => {
                        let statuses = users
                            .into_iter()
                            .map(|u| (u, book.status(asker.workspace, u)))
                            .collect();
                        mesh.reply(asker.from, StoreReply::Presence { ack, statuses });
                        continue;
                    }
                    Err(_) => return,
                };
                if let Some(status) = book.apply(workspace, user, change) {
                    let data = json!({"userId": user, "status": status.as_str()});
                    mesh.broker.publish(Publication::event(
                        Room::Workspace(workspace),
                        "presence:update",
                        &data,
                        Except::Nobody,
                    ));
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (WorkspaceId, UserId) {
        (
            WorkspaceId(uuid::Uuid::from_u128(1)),
            UserId(uuid::Uuid::from_u128(2)),
        )
    }

    #[test]
    fn closing_one_of_two_tabs_keeps_the_user_present() {
        let (w, u) = ids();
        let mut book = PresenceBook::default();
        assert_eq!(
            book.apply(w, u, Change::Connected),
            Some(PresenceStatus::Active)
        );
        assert_eq!(
            book.apply(w, u, Change::Connected),
            None,
            "second tab: no change"
        );
        assert_eq!(book.apply(w, u, Change::Disconnected { away: false }), None);
        assert_eq!(book.status(w, u), PresenceStatus::Active);
        assert_eq!(
            book.apply(w, u, Change::Disconnected { away: false }),
            Some(PresenceStatus::Offline)
        );
    }

    #[test]
    fn away_only_when_every_socket_is_away() {
        let (w, u) = ids();
        let mut book = PresenceBook::default();
        book.apply(w, u, Change::Connected);
        book.apply(w, u, Change::Connected);
        assert_eq!(
            book.apply(w, u, Change::Away(true)),
            None,
            "one tab still active"
        );
        assert_eq!(
            book.apply(w, u, Change::Away(true)),
            Some(PresenceStatus::Away)
        );
        assert_eq!(
            book.apply(w, u, Change::Away(true)),
            None,
            "repeated away changes nothing"
        );
        assert_eq!(
            book.apply(w, u, Change::Away(false)),
            Some(PresenceStatus::Active)
        );
        assert_eq!(
            book.apply(w, u, Change::Disconnected { away: false }),
            Some(PresenceStatus::Away)
        );
        assert_eq!(
            book.apply(w, u, Change::Disconnected { away: true }),
            Some(PresenceStatus::Offline)
        );
        assert_eq!(book.status(w, u), PresenceStatus::Offline);
    }

    #[test]
    fn workspaces_are_separate() {
        let (w, u) = ids();
        let other = WorkspaceId(uuid::Uuid::from_u128(3));
        let mut book = PresenceBook::default();
        book.apply(w, u, Change::Connected);
        assert_eq!(book.status(other, u), PresenceStatus::Offline);
    }
}
