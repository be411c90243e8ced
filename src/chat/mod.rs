//! What each client event means (contract §2–§5), and the rest of a socket's life as chat
//! sees it ([`connect`]: CONNECT, admission, what ends with the socket). Handlers take the
//! socket's identity, state and input and return [`Effect`]s for the shard to carry out;
//! they never touch a socket, a clock or another thread.

pub mod auth;
pub mod budget;
pub mod connect;
mod history;
pub mod state;
pub mod typing;
pub mod validate;

pub use state::{Auth, ChatState, Credentials, Detached, Member, Recovery};

use std::time::Instant;

use budget::{Kind, Verdict};
use serde_json::{json, Map, Value};

use crate::ids::{ConnectionId, MessageId, Room, Target, UserId, WorkspaceId};
use crate::json::{self, Fields};
use crate::limits::EventBudgets;
use crate::mesh::{Asker, Except, PresenceCommand, Publication, StoreCommand, StoreReply};
use crate::model::{timestamp, User};
use crate::store::request::{NewMessage, StoreError};

/// What became of a session a client asked to recover (counted in `/metrics`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovered {
    /// Recovered from this node's log.
    Here,
    /// Recovered from another node's hand-over.
    Moved,
    /// Not found, or not exactly: a new session.
    Missed,
}

/// What a handler asks the shard to do.
#[derive(Debug)]
pub enum Effect {
    /// Answer the client's ack id with this data.
    Ack(u64, Value),
    /// Emit an event to this socket only.
    Emit(&'static str, Value),
    /// Ask the store thread.
    Store(StoreCommand),
    /// Fan an event out to a room through the broker.
    Publish(Publication),
    /// A typer's refresh (its `typing:update` start), for other nodes only: never shown.
    TypingRefresh(Publication),
    /// Join a room on this shard.
    Join(Room),
    /// Leave a room on this shard.
    Leave(Room),
    /// Tell the presence keeper.
    Presence(PresenceCommand),
    /// Refuse the CONNECT with this reason (`44{"message":…}`); the client may try again.
    Refuse(String),
    /// Accept the CONNECT (`40{"sid":…,"pid":…}`): the socket is now a member.
    Accept {
        /// Its recovery pid, when connection state recovery is on.
        pid: Option<Box<str>>,
        /// What became of the session the client asked to recover, if it asked.
        recovery: Option<Recovered>,
    },
    /// Fetch the detached session with this pid (from the shard that made the pid), then
    /// hand it to [`connect::recovered`].
    Recover(String),
    /// In a cluster, ask `node` (through the broker) for the session detached under `pid`,
    /// with the client's `offset` in that node's counter and the rooms granted now; the answer
    /// comes as a replay to hand to [`connect::recovered`].
    RecoverFrom {
        /// The node that holds the session.
        node: String,
        /// The session's private id.
        pid: String,
        /// The client's last offset, a counter of `node`.
        offset: Option<u64>,
        /// Who reconnected.
        user: crate::ids::UserId,
        /// Where.
        workspace: crate::ids::WorkspaceId,
        /// The rooms granted now.
        rooms: Vec<Room>,
    },
    /// Send the durable events after this offset to the socket's rooms, after what the
    /// session has queued (the CONNECT answer).
    Replay(u64),
    /// Send these packets (a replay another node's session needed, read by the broker), after
    /// what the session has queued (the CONNECT answer).
    ReplayPackets(Vec<bytes::Bytes>),
    /// Keep this session for the recovery window, on the shard that made its pid.
    Detach(Box<str>, Detached),
    /// The socket kept going over its budget after it was told: tell it why, end it with a
    /// Socket.IO DISCONNECT (socket.io-client does not retry that) and close it.
    Cut(String),
}

/// Most users one `presence:query` may ask about.
pub const MAX_PRESENCE_QUERY: usize = 1000;

/// What a handler may read about the socket.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    /// The socket's connection.
    pub conn: ConnectionId,
    /// Its user.
    pub user: &'a User,
    /// Its workspace.
    pub workspace: WorkspaceId,
    /// Longest message content.
    pub max_message_chars: usize,
    /// Event budgets.
    pub budgets: &'a EventBudgets,
    /// The current time.
    pub now: Instant,
    /// Whether the socket is in a room (membership is kept current on live sockets).
    pub in_room: &'a dyn Fn(Room) -> bool,
}

impl Context<'_> {
    fn asker(&self) -> Asker {
        Asker {
            from: self.conn,
            user: self.user.id,
            workspace: self.workspace,
        }
    }
}

/// A refused request: `{success: false, error}` to the ack if the client asked for one,
/// else an `error` event (contract §3).
pub fn refuse(ack: Option<u64>, error: &str, out: &mut Vec<Effect>) {
    match ack {
        Some(id) => out.push(Effect::Ack(id, json!({"success": false, "error": error}))),
        None => out.push(Effect::Emit("error", json!({"message": error}))),
    }
}

/// The budget an event is counted against before it is handled (presence changes are
/// counted only when they change something, in [`set_away`]), and whether it asks the
/// store or presence something (so counts as a request in flight until answered).
fn budget_of(name: &str) -> (Option<Kind>, bool) {
    match name {
        "message:send" => (Some(Kind::Send), true),
        "message:delete" => (Some(Kind::Delete), true),
        "message:history" => (Some(Kind::History), true),
        "room:join" => (Some(Kind::Join), true),
        "room:leave" => (Some(Kind::Join), false),
        "typing:start" | "typing:stop" => (Some(Kind::Typing), false),
        "presence:setAway" | "presence:setActive" => (None, false),
        "presence:query" => (Some(Kind::Query), true),
        _ => (Some(Kind::Other), false),
    }
}

/// An event over a budget: refused (told once with an `error` event, and answered with
/// `{success: false, error}` when it asked for an ack), or the socket is cut.
fn over_budget(verdict: Verdict, error: String, ack: Option<u64>, out: &mut Vec<Effect>) {
    match verdict {
        Verdict::Allow => {}
        Verdict::Refuse { told } => {
            if let Some(id) = ack {
                out.push(Effect::Ack(id, json!({"success": false, "error": error})));
            }
            if told {
                out.push(Effect::Emit("error", json!({"message": error})));
            }
        }
        Verdict::Cut => out.push(Effect::Cut(format!(
            "disconnected: this socket went on sending after it was told it was over its \
             budget ({error})"
        ))),
    }
}

/// Handles one client event. `args` are the event's arguments after its name.
pub fn handle_event(
    ctx: &Context<'_>,
    state: &mut ChatState,
    name: &str,
    mut args: Vec<Value>,
    ack: Option<u64>,
    out: &mut Vec<Effect>,
) {
    let (kind, asks) = budget_of(name);
    if let Some(kind) = kind {
        let verdict = state.budgets.take(ctx.budgets, kind, ctx.now);
        if verdict != Verdict::Allow {
            return over_budget(verdict, budget::over(ctx.budgets, kind), ack, out);
        }
    }
    if asks {
        let verdict = state.budgets.request(ctx.budgets, ctx.now);
        if verdict != Verdict::Allow {
            let error = budget::too_many_in_flight(ctx.budgets);
            return over_budget(verdict, error, ack, out);
        }
    }
    let data = if args.is_empty() {
        Value::Null
    } else {
        args.swap_remove(0)
    };
    let result = match name {
        "message:send" => message_send(ctx, data, ack, out),
        "message:delete" => message_delete(ctx, data, ack, out),
        "message:history" => history::request(ctx, data, ack, out),
        "room:join" => room_join(ctx, data, ack, out),
        "room:leave" => room_leave(ctx, state, data, ack, out),
        "typing:start" => typing_event(ctx, state, data, true, ack, out),
        "typing:stop" => typing_event(ctx, state, data, false, ack, out),
        "presence:setAway" => set_away(ctx, state, true, ack, out),
        "presence:setActive" => set_away(ctx, state, false, ack, out),
        "presence:query" => presence_query(ctx, data, ack, out),
        other => Err(format!(
            "unknown event {other:?}; this server handles message:send, message:delete, \
             message:history, room:join, room:leave, typing:start, typing:stop, \
             presence:setAway, presence:setActive, presence:query"
        )),
    };
    if let Err(error) = result {
        if asks {
            // Refused here: nothing was asked.
            state.budgets.answered();
        }
        refuse(ack, &error, out);
    }
}

/// Turns the store's (or presence's) answer to a socket request into effects; a history page
/// takes at most `max_page_bytes` of JSON.
pub fn handle_reply(
    auth: &mut Auth,
    reply: StoreReply,
    max_page_bytes: usize,
    out: &mut Vec<Effect>,
) {
    if let Auth::Connected(member) = auth {
        member.chat.budgets.answered();
    }
    let failed =
        |ack: Option<u64>, e: StoreError, out: &mut Vec<Effect>| refuse(ack, e.message(), out);
    match reply {
        StoreReply::Sent { ack, result: Ok(m) } => {
            if let Some(id) = ack {
                out.push(Effect::Ack(
                    id,
                    json!({
                        "success": true,
                        "messageId": m.id,
                        "sequence": m.sequence,
                        "createdAt": timestamp(m.created_at),
                    }),
                ));
            }
        }
        StoreReply::Deleted {
            ack,
            result: Ok(()),
        } => {
            if let Some(id) = ack {
                out.push(Effect::Ack(id, json!({"success": true})));
            }
        }
        StoreReply::History {
            ack,
            query,
            result: Ok(messages),
        } => {
            if let Some(id) = ack {
                out.push(Effect::Ack(
                    id,
                    history::page(&query, &messages, max_page_bytes),
                ));
            }
        }
        StoreReply::Member {
            ack,
            target,
            result: Ok(()),
        } => {
            out.push(Effect::Join(target.room()));
            if let Some(id) = ack {
                out.push(Effect::Ack(id, json!({"success": true})));
            }
        }
        StoreReply::Sent {
            ack,
            result: Err(e),
        }
        | StoreReply::Deleted {
            ack,
            result: Err(e),
        }
        | StoreReply::History {
            ack,
            result: Err(e),
            ..
        }
        | StoreReply::Member {
            ack,
            result: Err(e),
            ..
        } => failed(ack, e, out),
        StoreReply::Presence { ack, statuses } => {
            if let Some(id) = ack {
                let presence: Map<String, Value> = statuses
                    .into_iter()
                    .map(|(user, status)| (user.to_string(), Value::from(status.as_str())))
                    .collect();
                out.push(Effect::Ack(
                    id,
                    json!({"success": true, "presence": presence}),
                ));
            }
        }
        // Answered by the shard itself (CONNECT and HTTP).
        StoreReply::Authenticated(_) | StoreReply::Admin { .. } => {}
    }
}

/// The event's data as a JSON object, or an error naming the event.
fn object(event: &str, data: Value) -> Result<Fields, String> {
    Fields::object(data, format_args!("the data of {event}"))
}

fn message_send(
    ctx: &Context<'_>,
    data: Value,
    ack: Option<u64>,
    out: &mut Vec<Effect>,
) -> Result<(), String> {
    let fields = object("message:send", data)?;
    let target = fields.target("targetId", "targetType")?;
    let content = validate::validate_content(fields.raw_text("content")?, ctx.max_message_chars)?;
    let client_msg_id = match fields.opt_raw_text("clientMsgId")? {
        Some(id) => Some(validate::validate_client_msg_id(id)?),
        None => None,
    };
    out.push(Effect::Store(StoreCommand::Send {
        asker: ctx.asker(),
        ack,
        message: NewMessage {
            author: ctx.user.id,
            workspace: Some(ctx.workspace),
            target,
            content,
            client_msg_id,
        },
        received: ctx.now,
    }));
    Ok(())
}

fn message_delete(
    ctx: &Context<'_>,
    data: Value,
    ack: Option<u64>,
    out: &mut Vec<Effect>,
) -> Result<(), String> {
    let message: MessageId = object("message:delete", data)?.id("messageId")?;
    out.push(Effect::Store(StoreCommand::Delete {
        asker: ctx.asker(),
        ack,
        message,
    }));
    Ok(())
}

fn room_join(
    ctx: &Context<'_>,
    data: Value,
    ack: Option<u64>,
    out: &mut Vec<Effect>,
) -> Result<(), String> {
    let target = object("room:join", data)?.target("roomId", "roomType")?;
    out.push(Effect::Store(StoreCommand::CheckMember {
        asker: ctx.asker(),
        ack,
        target,
    }));
    Ok(())
}

fn room_leave(
    ctx: &Context<'_>,
    state: &mut ChatState,
    data: Value,
    ack: Option<u64>,
    out: &mut Vec<Effect>,
) -> Result<(), String> {
    let target = object("room:leave", data)?.target("roomId", "roomType")?;
    connect::leave(ctx.user, state, target.room(), out);
    if let Some(id) = ack {
        out.push(Effect::Ack(id, json!({"success": true})));
    }
    Ok(())
}

fn ok(ack: Option<u64>, out: &mut Vec<Effect>) {
    if let Some(id) = ack {
        out.push(Effect::Ack(id, json!({"success": true})));
    }
}

fn typing_event(
    ctx: &Context<'_>,
    state: &mut ChatState,
    data: Value,
    start: bool,
    ack: Option<u64>,
    out: &mut Vec<Effect>,
) -> Result<(), String> {
    let name = if start { "typing:start" } else { "typing:stop" };
    let target = object(name, data)?.target("targetId", "targetType")?;
    if !(ctx.in_room)(target.room()) {
        // Contract §3: typing in a room the user is not a member of is ignored.
        ok(ack, out);
        return Ok(());
    }
    match state.typing.handle(ctx.now, target, start) {
        typing::Outcome::Update(is_typing) => {
            out.push(Effect::Publish(typing_update(ctx.user, target, is_typing)));
        }
        typing::Outcome::Refresh => {
            out.push(Effect::TypingRefresh(typing_update(ctx.user, target, true)));
        }
        typing::Outcome::Quiet => {}
    }
    ok(ack, out);
    Ok(())
}

fn set_away(
    ctx: &Context<'_>,
    state: &mut ChatState,
    away: bool,
    ack: Option<u64>,
    out: &mut Vec<Effect>,
) -> Result<(), String> {
    state.pending_away = None;
    if state.away != away {
        // Over the budget a change waits for it, and counts towards the cut like any
        // refusal: a socket flipping without end is disconnected, not served forever.
        match state.budgets.take(ctx.budgets, Kind::Presence, ctx.now) {
            Verdict::Allow => {
                state.away = away;
                out.push(Effect::Presence(PresenceCommand::Away {
                    user: ctx.user.id,
                    workspace: ctx.workspace,
                    away,
                }));
            }
            verdict => {
                // Announced once the budget refills (`connect::expire`), unless the socket
                // changes its mind before.
                let at = state.budgets.ready(ctx.budgets, Kind::Presence);
                state.pending_away = Some((away, at));
                let error = format!(
                    "presence changes are limited to {} on this socket; the last one is \
                     announced when the budget refills",
                    ctx.budgets.presence
                );
                over_budget(verdict, error, None, out);
            }
        }
    }
    ok(ack, out);
    Ok(())
}

fn presence_query(
    ctx: &Context<'_>,
    data: Value,
    ack: Option<u64>,
    out: &mut Vec<Effect>,
) -> Result<(), String> {
    let fields = object("presence:query", data)?;
    let ids = fields.array("userIds")?;
    if ids.len() > MAX_PRESENCE_QUERY {
        return Err(format!(
            "userIds has {} entries; ask about at most {MAX_PRESENCE_QUERY} at a time",
            ids.len()
        ));
    }
    let users = ids
        .iter()
        .map(|v| match v {
            Value::String(s) => s
                .parse::<UserId>()
                .map_err(|_| format!("userIds entry {s:?} is not a uuid")),
            other => Err(format!(
                "userIds entries must be strings, got {}",
                json::kind(other)
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    out.push(Effect::Presence(PresenceCommand::Query {
        asker: ctx.asker(),
        ack,
        users,
    }));
    Ok(())
}

/// `typing:update {userId, userName, targetId, isTyping}` to the target's room, skipping
/// every socket of the typing user.
fn typing_update(user: &User, target: Target, is_typing: bool) -> Publication {
    let data = json!({
        "userId": user.id,
        "userName": user.name,
        "targetId": target.uuid(),
        "isTyping": is_typing,
    });
    Publication::event(target.room(), "typing:update", &data, Except::User(user.id))
}

#[cfg(test)]
mod tests;
