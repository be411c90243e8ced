//! HTTP routes other than the Socket.IO endpoint (contract §6): `/healthz`, `/metrics` and
//! the admin API under `/api/v1` (which also serves both of the former, behind the admin
//! token, as `/api/v1/healthz` and `/api/v1/metrics`).
//!
//! [`route`] only decides: it checks the admin token, parses and validates the JSON body
//! into an [`AdminRequest`], and answers every mistake at once with a JSON `{"error"}` that
//! names the bad field. The shard builds the health and metrics bodies and hands admin
//! requests to the store thread.

use std::str::FromStr;

use crate::chat::validate::{history_limit, validate_client_msg_id, validate_content};
use crate::ids::{ChannelId, ConversationId, Target, UserId, WorkspaceId};
use crate::json::Fields;
use crate::protocol::http::RequestHead;
use crate::store::request::{HistoryQuery, NewMessage};

/// Default lifetime of a session made by `POST /api/v1/sessions`: one day.
pub const DEFAULT_SESSION_TTL_SECS: u64 = 86_400;

/// Longest session lifetime the admin API grants: ten years.
pub const MAX_SESSION_TTL_SECS: u64 = 10 * 365 * 86_400;

/// What to do with a request.
#[derive(Clone, Debug)]
pub enum Route {
    /// `GET /healthz`: the shard answers with the node's status.
    Health,
    /// `GET /metrics`: the shard answers with the Prometheus text.
    Metrics,
    /// An authorised, validated admin request for the store thread.
    Store(AdminRequest),
    /// Answer now with this status and JSON body (an error: `{"error": "…"}`).
    Respond {
        /// HTTP status.
        status: u16,
        /// JSON body.
        body: String,
    },
    /// Answer now with this complete HTTP response (a page or file of [`crate::web`]).
    Raw(Vec<u8>),
    /// 405: the path exists, with other methods (the `Allow` header) .
    NotAllowed {
        /// The methods the path takes, for `Allow`.
        allow: &'static str,
        /// JSON body `{"error": "…"}`.
        body: String,
    },
}

/// The admin API of contract §6, parsed and validated.
#[derive(Clone, Debug)]
pub enum AdminRequest {
    /// `POST /api/v1/users`
    CreateUser {
        /// `name`
        name: String,
        /// `email`
        email: Option<String>,
    },
    /// `POST /api/v1/workspaces`
    CreateWorkspace {
        /// `slug`
        slug: String,
        /// `name`
        name: String,
    },
    /// `POST /api/v1/workspaces/{id}/members`
    AddWorkspaceMember {
        /// Path id.
        workspace: WorkspaceId,
        /// `userId`
        user: UserId,
        /// `role`
        role: Option<String>,
    },
    /// `DELETE /api/v1/workspaces/{id}/members/{userId}`: the user's live sockets in that
    /// workspace leave all its rooms at once.
    RemoveWorkspaceMember {
        /// Path id.
        workspace: WorkspaceId,
        /// Path user id.
        user: UserId,
    },
    /// `POST /api/v1/channels`
    CreateChannel {
        /// `workspaceId`
        workspace: WorkspaceId,
        /// `slug`
        slug: String,
        /// `name`
        name: String,
        /// `isPrivate`
        is_private: bool,
    },
    /// `POST /api/v1/channels/{id}/members`
    AddChannelMember {
        /// Path id.
        channel: ChannelId,
        /// `userId`
        user: UserId,
    },
    /// `DELETE /api/v1/channels/{id}/members/{userId}`
    RemoveChannelMember {
        /// Path id.
        channel: ChannelId,
        /// Path user id.
        user: UserId,
    },
    /// `POST /api/v1/conversations`
    CreateConversation {
        /// `workspaceId`
        workspace: WorkspaceId,
        /// `participantIds`
        participants: Vec<UserId>,
    },
    /// `POST /api/v1/sessions`
    CreateSession {
        /// `userId`
        user: UserId,
        /// `ttlSeconds` (default one day)
        ttl_seconds: u64,
    },
    /// `POST /api/v1/messages`: server-side publish.
    Publish(NewMessage),
    /// `GET /api/v1/{channels|conversations}/{id}/messages`
    History(HistoryQuery),
}

/// Decides what to do with a request that is not for `/socket.io/`.
///
/// `admin_token` is `CHAT_ADMIN_TOKEN` (`None`: the admin API answers 503);
/// `max_message_chars` bounds `POST /api/v1/messages` content as it bounds `message:send`.
/// Errors: 401 for a missing or wrong admin token, 404 for an unknown path, 405 for a known
/// path with another method, 400 naming the field for a bad body or query.
pub fn route(
    head: &RequestHead,
    body: &[u8],
    admin_token: Option<&str>,
    max_message_chars: usize,
) -> Route {
    let Some(segments) = segments(&head.path) else {
        return not_found(head);
    };
    match segments.as_slice() {
        ["healthz"] => only_get(head).unwrap_or(Route::Health),
        ["metrics"] => only_get(head).unwrap_or(Route::Metrics),
        ["api", "v1", rest @ ..] => {
            if let Err(refusal) = authorise(head, admin_token) {
                return refusal;
            }
            // The same bodies as `/healthz` and `/metrics`, behind the admin token: the
            // dashboard reads these, so it keeps working where the balancer closes the others.
            match rest {
                ["healthz"] => return only_get(head).unwrap_or(Route::Health),
                ["metrics"] => return only_get(head).unwrap_or(Route::Metrics),
                _ => {}
            }
            let Some(allowed) = admin_method(rest) else {
                return not_found(head);
            };
            if head.method != allowed {
                return method_not_allowed(head, allowed);
            }
            match admin(head, rest, body, max_message_chars) {
                Ok(request) => Route::Store(request),
                Err(message) => error(400, &message),
            }
        }
        _ => not_found(head),
    }
}

/// A `Route::Respond` with body `{"error": message}`.
pub fn error(status: u16, message: &str) -> Route {
    Route::Respond {
        status,
        body: serde_json::json!({ "error": message }).to_string(),
    }
}

/// Compares the bearer token with `CHAT_ADMIN_TOKEN`.
fn authorise(head: &RequestHead, admin_token: Option<&str>) -> Result<(), Route> {
    let Some(expected) = admin_token.filter(|t| !t.is_empty()) else {
        return Err(error(
            503,
            "the admin API is disabled: set CHAT_ADMIN_TOKEN to enable it",
        ));
    };
    match head.bearer_token() {
        None => Err(error(
            401,
            "missing admin token: send Authorization: Bearer <CHAT_ADMIN_TOKEN>",
        )),
        Some(given) if !same_secret(given.as_bytes(), expected.as_bytes()) => Err(error(
            401,
            "the bearer token does not match CHAT_ADMIN_TOKEN",
        )),
        Some(_) => Ok(()),
    }
}

/// Equality whose running time depends only on the lengths, so a wrong guess does not
/// reveal how many leading bytes were right.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != expected.len());
    for (i, &e) in expected.iter().enumerate() {
        diff |= e ^ given.get(i).copied().unwrap_or(0);
    }
    std::hint::black_box(diff) == 0
}

/// The method an admin path takes, or `None` for an unknown path.
fn admin_method(rest: &[&str]) -> Option<&'static str> {
    Some(match rest {
        ["users"]
        | ["workspaces"]
        | ["channels"]
        | ["conversations"]
        | ["sessions"]
        | ["messages"] => "POST",
        ["workspaces", _, "members"] | ["channels", _, "members"] => "POST",
        ["workspaces" | "channels", _, "members", _] => "DELETE",
        ["channels" | "conversations", _, "messages"] => "GET",
        _ => return None,
    })
}

/// Parses an admin request whose path and method are known to match.
fn admin(
    head: &RequestHead,
    rest: &[&str],
    body: &[u8],
    max_message_chars: usize,
) -> Result<AdminRequest, String> {
    Ok(match rest {
        ["users"] => {
            let f = Fields::parse(body)?;
            let email = f.opt_text("email")?;
            if let Some(email) = &email {
                if !email.contains('@') {
                    return Err(format!("field \"email\" {email:?} is not an email address"));
                }
            }
            AdminRequest::CreateUser {
                name: f.text("name")?,
                email,
            }
        }
        ["workspaces"] => {
            let f = Fields::parse(body)?;
            AdminRequest::CreateWorkspace {
                slug: f.text("slug")?,
                name: f.text("name")?,
            }
        }
        ["workspaces", id, "members"] => {
            let f = Fields::parse(body)?;
            AdminRequest::AddWorkspaceMember {
                workspace: path_id(id, "workspace")?,
                user: f.id("userId")?,
                role: f.opt_text("role")?,
            }
        }
        ["channels"] => {
            let f = Fields::parse(body)?;
            AdminRequest::CreateChannel {
                workspace: f.id("workspaceId")?,
                slug: f.text("slug")?,
                name: f.text("name")?,
                is_private: f.opt_bool("isPrivate")?.unwrap_or(false),
            }
        }
        ["channels", id, "members"] => {
            let f = Fields::parse(body)?;
            AdminRequest::AddChannelMember {
                channel: path_id::<ChannelId>(id, "channel")?,
                user: f.id("userId")?,
            }
        }
        ["workspaces", id, "members", user] => AdminRequest::RemoveWorkspaceMember {
            workspace: path_id(id, "workspace")?,
            user: path_id(user, "user")?,
        },
        ["channels", id, "members", user] => AdminRequest::RemoveChannelMember {
            channel: path_id(id, "channel")?,
            user: path_id(user, "user")?,
        },
        ["conversations"] => {
            let f = Fields::parse(body)?;
            AdminRequest::CreateConversation {
                workspace: f.id::<WorkspaceId>("workspaceId")?,
                participants: f.id_list("participantIds")?,
            }
        }
        ["sessions"] => {
            let f = Fields::parse(body)?;
            let ttl_seconds = match f.opt_u64("ttlSeconds")? {
                None => DEFAULT_SESSION_TTL_SECS,
                Some(ttl) if (1..=MAX_SESSION_TTL_SECS).contains(&ttl) => ttl,
                Some(ttl) => {
                    return Err(format!(
                    "field \"ttlSeconds\" {ttl} is out of range: use 1 to {MAX_SESSION_TTL_SECS}"
                ))
                }
            };
            AdminRequest::CreateSession {
                user: f.id::<UserId>("userId")?,
                ttl_seconds,
            }
        }
        ["messages"] => {
            let f = Fields::parse(body)?;
            let author = f.id::<UserId>("authorId")?;
            let target = f.target("targetId", "targetType")?;
            let content = validate_content(f.raw_text("content")?, max_message_chars)?;
            let client_msg_id = match f.opt_raw_text("clientMsgId")? {
                Some(id) => Some(validate_client_msg_id(id)?),
                None => None,
            };
            AdminRequest::Publish(NewMessage {
                author,
                workspace: None,
                target,
                content,
                client_msg_id,
            })
        }
        [kind, id, "messages"] => {
            let target = if *kind == "channels" {
                Target::Channel(path_id::<ChannelId>(id, "channel")?)
            } else {
                Target::Dm(path_id::<ConversationId>(id, "conversation")?)
            };
            AdminRequest::History(HistoryQuery {
                target,
                after: query_i64(head, "afterSequence")?,
                before: query_i64(head, "beforeSequence")?,
                limit: query_limit(head)?,
            })
        }
        // admin_method accepted only the shapes above.
        _ => return Err("unknown admin path".to_owned()),
    })
}

/// The path split at `/`, without the leading slash and one trailing slash; `None` for an
/// empty segment in the middle (`/api//v1`).
fn segments(path: &str) -> Option<Vec<&str>> {
    let path = path.strip_prefix('/').unwrap_or(path);
    let path = path.strip_suffix('/').unwrap_or(path);
    let segments: Vec<&str> = path.split('/').collect();
    (!segments.iter().any(|s| s.is_empty())).then_some(segments)
}

fn path_id<T: FromStr>(segment: &str, what: &str) -> Result<T, String> {
    segment
        .parse()
        .map_err(|_| format!("{what} id {segment:?} in the path is not a uuid"))
}

/// An optional integer query parameter; an empty value counts as absent.
fn query_i64(head: &RequestHead, name: &str) -> Result<Option<i64>, String> {
    match head.query_param(name).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| format!("{name} {v:?} is not a whole number")),
    }
}

fn query_limit(head: &RequestHead) -> Result<u32, String> {
    let limit = match head.query_param("limit").filter(|v| !v.is_empty()) {
        None => None,
        Some(v) => match v.parse::<i64>() {
            Ok(n) => Some(n),
            // Digits too many for an i64 are still "over 100": capped, not refused.
            Err(_) if v.bytes().all(|b| b.is_ascii_digit()) => Some(i64::MAX),
            Err(_) => return Err(format!("limit {v:?} is not a number: use 1 to 100")),
        },
    };
    history_limit(limit)
}

/// `/healthz` and `/metrics` take GET, and HEAD (the same head without the body).
fn only_get(head: &RequestHead) -> Option<Route> {
    let allowed = head.method == "GET" || head.method == "HEAD";
    (!allowed).then(|| method_not_allowed(head, "GET, HEAD"))
}

fn not_found(head: &RequestHead) -> Route {
    error(404, &format!("no route for {} {}", head.method, head.path))
}

/// 405 naming the method to use, in the body and in `Allow`.
pub(crate) fn method_not_allowed(head: &RequestHead, allowed: &'static str) -> Route {
    let message = format!(
        "{} is not allowed on {}: use {allowed}",
        head.method, head.path
    );
    Route::NotAllowed {
        allow: allowed,
        body: serde_json::json!({ "error": message }).to_string(),
    }
}

#[cfg(test)]
mod tests;
