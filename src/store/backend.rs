//! The [`Backend`] trait: what a store (the embedded one, PostgreSQL) does for the store
//! thread.

use chrono::{DateTime, Utc};

use super::{Deletion, HistoryQuery, NewMessage, Reader, StoreError, Stored};
use crate::chat::auth::Credential;
use crate::ids::{ChannelId, ConversationId, MessageId, Target, UserId, WorkspaceId};
use crate::model::{Grant, MembershipChange, Message};

/// What a store backend does. The thread loop ([`Store`]) drives it; the embedded
/// [`MemoryBackend`] implements it, and so will PostgreSQL. Every call takes `now` so the
/// rules about time (session expiry, `createdAt`, `deletedAt`) can be tested with a fixed
/// clock. Errors name the bad value (`"user … is not a member of channel …"`).
pub trait Backend {
    /// CONNECT (contract §2): resolves the credential to a user, checks that the user is a
    /// member of `workspace`, and lists the rooms to join: `user:`, `workspace:`, then every
    /// channel and DM of that workspace the user belongs to.
    fn authenticate(
        &mut self,
        credential: &Credential,
        workspace: WorkspaceId,
        now: DateTime<Utc>,
    ) -> Result<Grant, StoreError>;

    /// Stores a batch of messages in order, one result per message, in the same order. The
    /// target must exist, lie in `workspace` when one is given, and have the author as a
    /// member. A message whose `(author, client_msg_id)` is already stored (earlier, or
    /// earlier in this batch) yields that original with `created: false`. A new message gets
    /// the target's next sequence (from 1) and `created_at = now`.
    fn send_batch(
        &mut self,
        batch: Vec<NewMessage>,
        now: DateTime<Utc>,
    ) -> Vec<Result<Stored, StoreError>>;

    /// Messages an earlier batch stored although its senders were told it failed (its
    /// connection broke during COMMIT), found since: nobody was told of them, so the store
    /// publishes them, before the results of the batch just stored.
    fn take_orphans(&mut self) -> Vec<Message> {
        Vec::new()
    }

    /// Soft-deletes a message for its author (`deleted_at = now` the first time only).
    fn delete(
        &mut self,
        author: UserId,
        workspace: WorkspaceId,
        message: MessageId,
        now: DateTime<Utc>,
    ) -> Result<Deletion, StoreError>;

    /// A page of a target's messages, ascending by sequence, tombstones included. With
    /// `after`, the oldest `limit` above it; otherwise the newest `limit` below `before` (or
    /// of all). `limit` is capped at one more than [`MAX_HISTORY_LIMIT`]. With a `reader`, they must be a
    /// member of the target and the target must be in their workspace; without one (admin
    /// API) only the target's existence is checked.
    fn history(
        &mut self,
        reader: Option<Reader>,
        query: &HistoryQuery,
    ) -> Result<Vec<Message>, StoreError>;

    /// Each channel and DM room's top sequence now (0 when it has no message), read after
    /// the membership that lists it: where a cluster node starts the room's stream for a
    /// member joining it. The embedded store never runs in a cluster and answers nothing.
    fn floors(&mut self, rooms: &[crate::ids::Room]) -> Vec<(crate::ids::Room, u64)> {
        let _ = rooms;
        Vec::new()
    }

    /// `Ok` when `user` is a member of `target` and the target lies in `workspace`.
    fn check_member(
        &mut self,
        user: UserId,
        workspace: WorkspaceId,
        target: Target,
    ) -> Result<(), StoreError>;

    /// Adds a user; a taken email is a conflict.
    fn create_user(
        &mut self,
        name: &str,
        email: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<UserId, StoreError>;

    /// Adds a workspace; a taken slug is a conflict.
    fn create_workspace(
        &mut self,
        slug: &str,
        name: &str,
        now: DateTime<Utc>,
    ) -> Result<WorkspaceId, StoreError>;

    /// Makes a user a member of a workspace (again: updates the role).
    fn add_workspace_member(
        &mut self,
        workspace: WorkspaceId,
        user: UserId,
        role: Option<&str>,
    ) -> Result<(), StoreError>;

    /// Adds a channel; a slug taken in the same workspace is a conflict.
    fn create_channel(
        &mut self,
        workspace: WorkspaceId,
        slug: &str,
        name: &str,
        is_private: bool,
        now: DateTime<Utc>,
    ) -> Result<ChannelId, StoreError>;

    /// Adds a workspace member to a channel. Returns the change to announce, or `None` when
    /// the user already was a member.
    fn add_channel_member(
        &mut self,
        channel: ChannelId,
        user: UserId,
    ) -> Result<Option<MembershipChange>, StoreError>;

    /// Removes a workspace member (the row only: its channel and DM rows stay, unreachable
    /// without the workspace); not being one is `NotFound`. Returns the change to announce:
    /// the user's sockets in that workspace leave every room of it.
    fn remove_workspace_member(
        &mut self,
        workspace: WorkspaceId,
        user: UserId,
    ) -> Result<MembershipChange, StoreError>;

    /// Removes a channel member; not being one is `NotFound`. Returns the change to announce.
    fn remove_channel_member(
        &mut self,
        channel: ChannelId,
        user: UserId,
    ) -> Result<MembershipChange, StoreError>;

    /// Adds a DM conversation between workspace members (duplicates ignored). Returns its id
    /// and one change per participant to announce.
    fn create_conversation(
        &mut self,
        workspace: WorkspaceId,
        participants: &[UserId],
        now: DateTime<Utc>,
    ) -> Result<(ConversationId, Vec<MembershipChange>), StoreError>;

    /// Stores a session token for a user, valid until `expires_at`.
    fn create_session(
        &mut self,
        user: UserId,
        token: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
}
