//! What the store is asked besides its commands' own fields (a message to store, a page of
//! history), and how it says no. Shared by the socket events, the admin API and every backend.

use crate::ids::{Target, UserId, WorkspaceId};

/// A message to store (socket `message:send` or `POST /api/v1/messages`).
#[derive(Clone, Debug)]
pub struct NewMessage {
    /// The author.
    pub author: UserId,
    /// The workspace the sending socket is scoped to (`None` for the admin API).
    pub workspace: Option<WorkspaceId>,
    /// Channel or DM.
    pub target: Target,
    /// Validated content.
    pub content: String,
    /// Idempotency key.
    pub client_msg_id: Option<String>,
}

/// `message:history` and `GET …/messages`.
#[derive(Clone, Copy, Debug)]
pub struct HistoryQuery {
    /// Channel or DM.
    pub target: Target,
    /// Only sequences below this.
    pub before: Option<i64>,
    /// Only sequences above this.
    pub after: Option<i64>,
    /// 1..=100.
    pub limit: u32,
}

/// Why the store refused a request; the text names the bad value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// Malformed or out of range (HTTP 400).
    Invalid(String),
    /// Not allowed for this user (HTTP 403).
    Forbidden(String),
    /// No such row (HTTP 404).
    NotFound(String),
    /// Clashes with an existing row (HTTP 409).
    Conflict(String),
    /// The database cannot answer now (HTTP 503).
    Unavailable(String),
}

impl StoreError {
    /// The reason, for a person.
    pub fn message(&self) -> &str {
        match self {
            StoreError::Invalid(m)
            | StoreError::Forbidden(m)
            | StoreError::NotFound(m)
            | StoreError::Conflict(m)
            | StoreError::Unavailable(m) => m,
        }
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}
