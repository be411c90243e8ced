//! The embedded store used when no `DATABASE_URL` is set, and the test double of the others:
//! the tables of contract §7 as hash maps, owned by the store thread alone (so no locks).
//! Each target's messages live in a `Vec` whose index is `sequence - 1`, which makes the next
//! sequence its length and a history page a slice. Nothing survives a restart.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use indexmap::IndexSet;
use uuid::Uuid;

use crate::chat::auth::Credential;
use crate::ids::{ChannelId, ConversationId, MessageId, Room, Target, UserId, WorkspaceId};
use crate::model::{Grant, MembershipChange, Message, User};

use super::{
    Backend, Deletion, HistoryQuery, NewMessage, Reader, StoreError, Stored, MAX_HISTORY_LIMIT,
};

/// The in-memory backend. Start empty with [`MemoryBackend::new`] and fill it through the
/// admin operations of [`Backend`].
#[derive(Debug, Default)]
pub struct MemoryBackend {
    users: HashMap<UserId, User>,
    /// `users.email` is unique.
    emails: HashMap<String, UserId>,
    /// `sessions.token` to its row.
    sessions: HashMap<String, SessionRow>,
    workspaces: HashMap<WorkspaceId, WorkspaceRow>,
    /// `workspaces.slug` is unique.
    workspace_slugs: HashMap<String, WorkspaceId>,
    channels: HashMap<ChannelId, ChannelRow>,
    /// `unique(workspace_id, slug)` of `channels`.
    channel_slugs: HashMap<(WorkspaceId, String), ChannelId>,
    conversations: HashMap<ConversationId, ConversationRow>,
    /// Every channel and DM room of each user, across workspaces, in the order joined: what
    /// CONNECT lists without scanning every channel.
    rooms: HashMap<UserId, IndexSet<Room>>,
    /// Each target's messages; index `sequence - 1`.
    timelines: HashMap<Target, Vec<Message>>,
    /// Where each message is: its target and sequence.
    messages: HashMap<MessageId, (Target, i64)>,
    /// `unique(author_id, client_msg_id)`.
    client_msg_ids: HashMap<(UserId, String), MessageId>,
}

#[derive(Debug)]
struct SessionRow {
    user: UserId,
    expires_at: DateTime<Utc>,
}

#[derive(Debug, Default)]
struct WorkspaceRow {
    /// Member to role.
    members: HashMap<UserId, Option<String>>,
}

#[derive(Debug)]
struct ChannelRow {
    workspace: WorkspaceId,
    members: HashSet<UserId>,
}

#[derive(Debug)]
struct ConversationRow {
    workspace: WorkspaceId,
    participants: HashSet<UserId>,
}

impl MemoryBackend {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn user(&self, id: UserId) -> Result<&User, StoreError> {
        self.users
            .get(&id)
            .ok_or_else(|| StoreError::NotFound(format!("user {id} does not exist")))
    }

    fn workspace(&self, id: WorkspaceId) -> Result<&WorkspaceRow, StoreError> {
        self.workspaces
            .get(&id)
            .ok_or_else(|| StoreError::NotFound(format!("workspace {id} does not exist")))
    }

    /// The workspace a target belongs to; `NotFound` when the target does not exist.
    fn target_workspace(&self, target: Target) -> Result<WorkspaceId, StoreError> {
        let found = match target {
            Target::Channel(c) => self.channels.get(&c).map(|row| row.workspace),
            Target::Dm(d) => self.conversations.get(&d).map(|row| row.workspace),
        };
        found.ok_or_else(|| StoreError::NotFound(format!("{} does not exist", describe(target))))
    }

    fn is_member(&self, user: UserId, target: Target) -> bool {
        match target {
            Target::Channel(c) => self
                .channels
                .get(&c)
                .is_some_and(|row| row.members.contains(&user)),
            Target::Dm(d) => self
                .conversations
                .get(&d)
                .is_some_and(|row| row.participants.contains(&user)),
        }
    }

    /// The target exists, lies in `workspace` (when the caller is scoped to one), and has
    /// `user` as a member.
    fn check_access(
        &self,
        user: UserId,
        workspace: Option<WorkspaceId>,
        target: Target,
    ) -> Result<(), StoreError> {
        let home = self.target_workspace(target)?;
        if let Some(workspace) = workspace {
            if home != workspace {
                return Err(StoreError::Forbidden(format!(
                    "{} belongs to another workspace than {workspace}; connect to workspace {home} to use it",
                    describe(target)
                )));
            }
        }
        if !self.is_member(user, target) {
            return Err(StoreError::Forbidden(format!(
                "user {user} is not a member of {}",
                describe(target)
            )));
        }
        Ok(())
    }

    /// A workspace member, for adding to a channel or conversation of that workspace.
    fn check_workspace_member(
        &self,
        workspace: WorkspaceId,
        user: UserId,
        what: &str,
    ) -> Result<(), StoreError> {
        self.user(user)?;
        if !self.workspace(workspace)?.members.contains_key(&user) {
            return Err(StoreError::Conflict(format!(
                "user {user} is not a member of workspace {workspace}, which {what} belongs to; \
                 add them to the workspace first"
            )));
        }
        Ok(())
    }

    fn send_one(&mut self, new: NewMessage, now: DateTime<Utc>) -> Result<Stored, StoreError> {
        let author = self.user(new.author)?.clone();
        self.check_access(new.author, new.workspace, new.target)?;
        if let Some(key) = &new.client_msg_id {
            if let Some(id) = self.client_msg_ids.get(&(new.author, key.clone())) {
                if let Some(original) = self.message(*id) {
                    return Ok(Stored {
                        message: original.clone(),
                        created: false,
                    });
                }
            }
        }
        let timeline = self.timelines.entry(new.target).or_default();
        let sequence = timeline.len() as i64 + 1;
        let message = Message {
            // v7: time-ordered, like the ids PostgreSQL will index.
            id: MessageId(Uuid::now_v7()),
            content: new.content,
            author,
            target: new.target,
            sequence,
            client_msg_id: new.client_msg_id,
            created_at: now,
            deleted_at: None,
        };
        timeline.push(message.clone());
        self.messages.insert(message.id, (new.target, sequence));
        if let Some(key) = &message.client_msg_id {
            self.client_msg_ids
                .insert((message.author.id, key.clone()), message.id);
        }
        Ok(Stored {
            message,
            created: true,
        })
    }

    fn message(&self, id: MessageId) -> Option<&Message> {
        let (target, sequence) = self.messages.get(&id)?;
        self.timelines
            .get(target)?
            .get(usize::try_from(sequence - 1).ok()?)
    }

    fn message_mut(&mut self, id: MessageId) -> Option<&mut Message> {
        let (target, sequence) = self.messages.get(&id)?;
        self.timelines
            .get_mut(target)?
            .get_mut(usize::try_from(sequence - 1).ok()?)
    }

    /// Records a new channel or DM membership; `false` if the user already had it.
    fn join(&mut self, user: UserId, room: Room) -> bool {
        self.rooms.entry(user).or_default().insert(room)
    }
}

/// `channel <id>` or `conversation <id>`, for error texts.
fn describe(target: Target) -> String {
    match target {
        Target::Channel(c) => format!("channel {c}"),
        Target::Dm(d) => format!("conversation {d}"),
    }
}

/// The index range of a history page in a timeline of `len` messages (see
/// [`Backend::history`]); sequence `s` is at index `s - 1`.
fn page(len: usize, query: &HistoryQuery) -> std::ops::Range<usize> {
    // One more than a page: a socket asks for it to tell whether there is more.
    let limit = query.limit.clamp(1, MAX_HISTORY_LIMIT + 1) as usize;
    let len64 = len as i64;
    // Sequences above `after` start at index `after`.
    let lo = query.after.map_or(0, |a| a.clamp(0, len64) as usize);
    // Sequences below `before` end before index `before - 1`.
    let hi = query
        .before
        .map_or(len, |b| b.saturating_sub(1).clamp(0, len64) as usize);
    if lo >= hi {
        return 0..0;
    }
    if query.after.is_some() {
        lo..hi.min(lo + limit)
    } else {
        hi.saturating_sub(limit).max(lo)..hi
    }
}

impl Backend for MemoryBackend {
    fn authenticate(
        &mut self,
        credential: &Credential,
        workspace: WorkspaceId,
        now: DateTime<Utc>,
    ) -> Result<Grant, StoreError> {
        let user = match credential {
            // The stored name wins over the token's `name`: the web app may have renamed the user.
            Credential::Jwt { user, .. } => *user,
            Credential::Session(token) => match self.sessions.get(token) {
                Some(row) if row.expires_at > now => row.user,
                // Never echo the token: it is a secret.
                _ => {
                    return Err(StoreError::Forbidden(
                        "session token is unknown or expired: sign in again".into(),
                    ))
                }
            },
        };
        let user = self.user(user)?.clone();
        if !self.workspace(workspace)?.members.contains_key(&user.id) {
            return Err(StoreError::Forbidden(format!(
                "user {} is not a member of workspace {workspace}",
                user.id
            )));
        }
        let mut rooms = vec![Room::User(user.id), Room::Workspace(workspace)];
        if let Some(joined) = self.rooms.get(&user.id) {
            rooms.extend(joined.iter().copied().filter(|room| {
                room.target()
                    .and_then(|t| self.target_workspace(t).ok())
                    .is_some_and(|home| home == workspace)
            }));
        }
        Ok(Grant {
            user,
            workspace,
            rooms,
        })
    }

    fn send_batch(
        &mut self,
        batch: Vec<NewMessage>,
        now: DateTime<Utc>,
    ) -> Vec<Result<Stored, StoreError>> {
        batch.into_iter().map(|m| self.send_one(m, now)).collect()
    }

    fn delete(
        &mut self,
        author: UserId,
        workspace: WorkspaceId,
        id: MessageId,
        now: DateTime<Utc>,
    ) -> Result<Deletion, StoreError> {
        let not_found = || StoreError::NotFound(format!("message {id} does not exist"));
        let (target, _) = *self.messages.get(&id).ok_or_else(not_found)?;
        if self.target_workspace(target)? != workspace {
            return Err(StoreError::Forbidden(format!(
                "message {id} belongs to another workspace than {workspace}"
            )));
        }
        let message = self.message_mut(id).ok_or_else(not_found)?;
        if message.author.id != author {
            return Err(StoreError::Forbidden(format!(
                "only the author may delete message {id}, and user {author} is not its author"
            )));
        }
        let first = message.deleted_at.is_none();
        if first {
            message.deleted_at = Some(now);
            // A tombstone keeps no text, whichever path later reads it.
            message.content.clear();
        }
        Ok(Deletion {
            message: message.clone(),
            first,
        })
    }

    fn history(
        &mut self,
        reader: Option<Reader>,
        query: &HistoryQuery,
    ) -> Result<Vec<Message>, StoreError> {
        match reader {
            Some(r) => self.check_access(r.user, Some(r.workspace), query.target)?,
            None => {
                self.target_workspace(query.target)?;
            }
        }
        let timeline = self
            .timelines
            .get(&query.target)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        Ok(timeline[page(timeline.len(), query)].to_vec())
    }

    fn check_member(
        &mut self,
        user: UserId,
        workspace: WorkspaceId,
        target: Target,
    ) -> Result<(), StoreError> {
        self.check_access(user, Some(workspace), target)
    }

    fn create_user(
        &mut self,
        name: &str,
        email: Option<&str>,
        _now: DateTime<Utc>,
    ) -> Result<UserId, StoreError> {
        if let Some(email) = email {
            if let Some(owner) = self.emails.get(email) {
                return Err(StoreError::Conflict(format!(
                    "email {email:?} is already used by user {owner}"
                )));
            }
        }
        let id = UserId::random();
        self.users.insert(
            id,
            User {
                id,
                name: name.to_owned(),
            },
        );
        if let Some(email) = email {
            self.emails.insert(email.to_owned(), id);
        }
        Ok(id)
    }

    fn create_workspace(
        &mut self,
        slug: &str,
        _name: &str,
        _now: DateTime<Utc>,
    ) -> Result<WorkspaceId, StoreError> {
        if let Some(owner) = self.workspace_slugs.get(slug) {
            return Err(StoreError::Conflict(format!(
                "workspace slug {slug:?} is already taken by workspace {owner}"
            )));
        }
        let id = WorkspaceId::random();
        self.workspaces.insert(id, WorkspaceRow::default());
        self.workspace_slugs.insert(slug.to_owned(), id);
        Ok(id)
    }

    fn add_workspace_member(
        &mut self,
        workspace: WorkspaceId,
        user: UserId,
        role: Option<&str>,
    ) -> Result<(), StoreError> {
        self.user(user)?;
        self.workspace(workspace)?;
        if let Some(row) = self.workspaces.get_mut(&workspace) {
            row.members.insert(user, role.map(str::to_owned));
        }
        Ok(())
    }

    fn create_channel(
        &mut self,
        workspace: WorkspaceId,
        slug: &str,
        _name: &str,
        _is_private: bool,
        _now: DateTime<Utc>,
    ) -> Result<ChannelId, StoreError> {
        self.workspace(workspace)?;
        let key = (workspace, slug.to_owned());
        if let Some(owner) = self.channel_slugs.get(&key) {
            return Err(StoreError::Conflict(format!(
                "channel slug {slug:?} is already taken in workspace {workspace} by channel {owner}"
            )));
        }
        let id = ChannelId::random();
        self.channels.insert(
            id,
            ChannelRow {
                workspace,
                members: HashSet::new(),
            },
        );
        self.channel_slugs.insert(key, id);
        Ok(id)
    }

    fn add_channel_member(
        &mut self,
        channel: ChannelId,
        user: UserId,
    ) -> Result<Option<MembershipChange>, StoreError> {
        let workspace = self.target_workspace(Target::Channel(channel))?;
        self.check_workspace_member(workspace, user, &format!("channel {channel}"))?;
        let added = self
            .channels
            .get_mut(&channel)
            .is_some_and(|row| row.members.insert(user));
        self.join(user, Room::Channel(channel));
        Ok(added.then_some(MembershipChange {
            user,
            workspace,
            room: Room::Channel(channel),
            joined: true,
        }))
    }

    fn remove_workspace_member(
        &mut self,
        workspace: WorkspaceId,
        user: UserId,
    ) -> Result<MembershipChange, StoreError> {
        self.workspace(workspace)?;
        let removed = self
            .workspaces
            .get_mut(&workspace)
            .is_some_and(|row| row.members.remove(&user).is_some());
        if !removed {
            return Err(StoreError::NotFound(format!(
                "user {user} is not a member of workspace {workspace}"
            )));
        }
        Ok(MembershipChange {
            user,
            workspace,
            room: Room::Workspace(workspace),
            joined: false,
        })
    }

    fn remove_channel_member(
        &mut self,
        channel: ChannelId,
        user: UserId,
    ) -> Result<MembershipChange, StoreError> {
        let workspace = self.target_workspace(Target::Channel(channel))?;
        let removed = self
            .channels
            .get_mut(&channel)
            .is_some_and(|row| row.members.remove(&user));
        if !removed {
            return Err(StoreError::NotFound(format!(
                "user {user} is not a member of channel {channel}"
            )));
        }
        if let Some(rooms) = self.rooms.get_mut(&user) {
            rooms.shift_remove(&Room::Channel(channel));
        }
        Ok(MembershipChange {
            user,
            workspace,
            room: Room::Channel(channel),
            joined: false,
        })
    }

    fn create_conversation(
        &mut self,
        workspace: WorkspaceId,
        participants: &[UserId],
        _now: DateTime<Utc>,
    ) -> Result<(ConversationId, Vec<MembershipChange>), StoreError> {
        self.workspace(workspace)?;
        if participants.is_empty() {
            return Err(StoreError::Invalid(
                "participantIds is empty: a conversation needs at least one participant".into(),
            ));
        }
        for &user in participants {
            self.check_workspace_member(workspace, user, "the conversation")?;
        }
        let id = ConversationId::random();
        let unique: IndexSet<UserId> = participants.iter().copied().collect();
        self.conversations.insert(
            id,
            ConversationRow {
                workspace,
                participants: unique.iter().copied().collect(),
            },
        );
        let changes = unique
            .into_iter()
            .map(|user| {
                self.join(user, Room::Dm(id));
                MembershipChange {
                    user,
                    workspace,
                    room: Room::Dm(id),
                    joined: true,
                }
            })
            .collect();
        Ok((id, changes))
    }

    fn create_session(
        &mut self,
        user: UserId,
        token: &str,
        expires_at: DateTime<Utc>,
        _now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.user(user)?;
        self.sessions
            .insert(token.to_owned(), SessionRow { user, expires_at });
        Ok(())
    }
}

#[cfg(test)]
mod tests;
