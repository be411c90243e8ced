//! What each client event means (contract §2–§5). Handlers take the socket's identity and
//! the event's data and return [`Effect`]s for the shard to carry out; they never touch a
//! socket, a clock or another thread.

pub mod auth;
pub mod validate;

use serde_json::{json, Map, Value};

use crate::ids::{ConnectionId, MessageId, Room, Target, WorkspaceId};
use crate::mesh::{
    Asker, Broadcast, HistoryQuery, NewMessage, StoreCommand, StoreError, StoreReply,
};
use crate::model::{timestamp, User};

/// What a handler asks the shard to do.
#[derive(Debug)]
pub enum Effect {
    /// Answer the client's ack id with this data.
    Ack(u64, Value),
    /// Emit an event to this socket only.
    Emit(&'static str, Value),
    /// Ask the store thread.
    Store(StoreCommand),
    /// Fan a frame out to a room through the broker.
    Publish(Broadcast),
    /// Join a room on this shard.
    Join(Room),
    /// Leave a room on this shard.
    Leave(Room),
}

/// What a handler may read about the socket.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    /// The socket's connection.
    pub conn: ConnectionId,
    /// Its user.
    pub user: &'a User,
    /// Its workspace.
    pub workspace: WorkspaceId,
    /// Longest message content.
    pub max_message_chars: usize,
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

/// Handles one client event. `args` are the event's arguments after its name.
pub fn handle_event(
    ctx: &Context<'_>,
    name: &str,
    mut args: Vec<Value>,
    ack: Option<u64>,
    out: &mut Vec<Effect>,
) {
    let data = if args.is_empty() {
        Value::Null
    } else {
        args.swap_remove(0)
    };
    let result = match name {
        "message:send" => message_send(ctx, data, ack, out),
        "message:delete" => message_delete(ctx, data, ack, out),
        "message:history" => message_history(ctx, data, ack, out),
        "room:join" => room_join(ctx, data, ack, out),
        "room:leave" => room_leave(data, ack, out),
        other => Err(format!(
            "unknown event {other:?}; this server handles message:send, message:delete, \
             message:history, room:join, room:leave"
        )),
    };
    if let Err(error) = result {
        refuse(ack, &error, out);
    }
}

/// Turns the store's answer to a socket request into effects.
pub fn handle_reply(reply: StoreReply, out: &mut Vec<Effect>) {
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
            result: Ok(messages),
        } => {
            if let Some(id) = ack {
                let messages: Vec<Value> = messages
                    .iter()
                    .map(|m| serde_json::to_value(m.to_json()).unwrap_or(Value::Null))
                    .collect();
                out.push(Effect::Ack(
                    id,
                    json!({"success": true, "messages": messages}),
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
        }
        | StoreReply::Member {
            ack,
            result: Err(e),
            ..
        } => failed(ack, e, out),
        // Answered by the shard itself (CONNECT and HTTP).
        StoreReply::Authenticated(_) | StoreReply::Admin { .. } => {}
    }
}

/// The event's data as a JSON object, or an error naming the event.
fn object(event: &str, data: Value) -> Result<Map<String, Value>, String> {
    match data {
        Value::Object(map) => Ok(map),
        other => Err(format!(
            "{event} expects an object as its data, got {}",
            kind(&other)
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn string<'a>(map: &'a Map<String, Value>, field: &str) -> Result<&'a str, String> {
    match map.get(field) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(format!("{field} must be a string, got {}", kind(other))),
        None => Err(format!("{field} is missing")),
    }
}

fn optional_sequence(map: &Map<String, Value>, field: &str) -> Result<Option<i64>, String> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(v) if v >= 0 => Ok(Some(v)),
            _ => Err(format!(
                "{field} must be a whole number of 0 or more, got {n}"
            )),
        },
        Some(other) => Err(format!("{field} must be a number, got {}", kind(other))),
    }
}

fn target(map: &Map<String, Value>, id_field: &str, type_field: &str) -> Result<Target, String> {
    Target::parse(string(map, type_field)?, string(map, id_field)?)
}

fn message_send(
    ctx: &Context<'_>,
    data: Value,
    ack: Option<u64>,
    out: &mut Vec<Effect>,
) -> Result<(), String> {
    let map = object("message:send", data)?;
    let target = target(&map, "targetId", "targetType")?;
    let content = validate::validate_content(string(&map, "content")?, ctx.max_message_chars)?;
    let client_msg_id = match map.get("clientMsgId") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(validate::validate_client_msg_id(s)?),
        Some(other) => return Err(format!("clientMsgId must be a string, got {}", kind(other))),
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
    }));
    Ok(())
}

fn message_delete(
    ctx: &Context<'_>,
    data: Value,
    ack: Option<u64>,
    out: &mut Vec<Effect>,
) -> Result<(), String> {
    let map = object("message:delete", data)?;
    let id = string(&map, "messageId")?;
    let message: MessageId = id
        .parse()
        .map_err(|_| format!("messageId {id:?} is not a uuid"))?;
    out.push(Effect::Store(StoreCommand::Delete {
        asker: ctx.asker(),
        ack,
        message,
    }));
    Ok(())
}

fn message_history(
    ctx: &Context<'_>,
    data: Value,
    ack: Option<u64>,
    out: &mut Vec<Effect>,
) -> Result<(), String> {
    let map = object("message:history", data)?;
    let target = target(&map, "targetId", "targetType")?;
    let limit = match map.get("limit") {
        None | Some(Value::Null) => validate::history_limit(None)?,
        Some(Value::Number(n)) => match n.as_i64() {
            Some(v) => validate::history_limit(Some(v))?,
            None => {
                return Err(format!(
                    "limit must be a whole number from 1 to 100, got {n}"
                ))
            }
        },
        Some(other) => return Err(format!("limit must be a number, got {}", kind(other))),
    };
    let query = HistoryQuery {
        target,
        before: optional_sequence(&map, "beforeSequence")?,
        after: optional_sequence(&map, "afterSequence")?,
        limit,
    };
    out.push(Effect::Store(StoreCommand::History {
        asker: ctx.asker(),
        ack,
        query,
    }));
    Ok(())
}

fn room_join(
    ctx: &Context<'_>,
    data: Value,
    ack: Option<u64>,
    out: &mut Vec<Effect>,
) -> Result<(), String> {
    let map = object("room:join", data)?;
    let target = target(&map, "roomId", "roomType")?;
    out.push(Effect::Store(StoreCommand::CheckMember {
        asker: ctx.asker(),
        ack,
        target,
    }));
    Ok(())
}

fn room_leave(data: Value, ack: Option<u64>, out: &mut Vec<Effect>) -> Result<(), String> {
    let map = object("room:leave", data)?;
    let target = target(&map, "roomId", "roomType")?;
    out.push(Effect::Leave(target.room()));
    if let Some(id) = ack {
        out.push(Effect::Ack(id, json!({"success": true})));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ShardId, UserId};

    fn ctx(user: &User) -> Context<'_> {
        Context {
            conn: ConnectionId {
                shard: ShardId(0),
                slot: 1,
                generation: 1,
            },
            user,
            workspace: WorkspaceId(uuid::Uuid::from_u128(9)),
            max_message_chars: 10,
        }
    }

    fn user() -> User {
        User {
            id: UserId(uuid::Uuid::from_u128(1)),
            name: "Ann".into(),
        }
    }

    #[test]
    fn send_goes_to_the_store_with_the_socket_scope() {
        let u = user();
        let mut out = Vec::new();
        let data = json!({"targetId": uuid::Uuid::from_u128(5).to_string(), "targetType": "channel", "content": " hi ", "clientMsgId": "c1"});
        handle_event(&ctx(&u), "message:send", vec![data], Some(3), &mut out);
        match &out[..] {
            [Effect::Store(StoreCommand::Send {
                ack: Some(3),
                message,
                asker,
            })] => {
                assert_eq!(message.client_msg_id.as_deref(), Some("c1"));
                assert_eq!(message.workspace, Some(asker.workspace));
                assert_eq!(message.author, u.id);
            }
            other => panic!("unexpected effects {other:?}"),
        }
    }

    #[test]
    fn bad_data_is_refused_by_ack_or_error_event() {
        let u = user();
        let mut out = Vec::new();
        handle_event(
            &ctx(&u),
            "message:send",
            vec![json!("x")],
            Some(1),
            &mut out,
        );
        match &out[..] {
            [Effect::Ack(1, v)] => {
                assert_eq!(v["success"], false);
                assert!(v["error"].as_str().unwrap().contains("object"));
            }
            other => panic!("{other:?}"),
        }
        out.clear();
        handle_event(&ctx(&u), "nope", vec![], None, &mut out);
        assert!(
            matches!(&out[..], [Effect::Emit("error", v)] if v["message"].as_str().unwrap().contains("\"nope\""))
        );
        out.clear();
        let long = json!({"targetId": uuid::Uuid::nil().to_string(), "targetType": "channel", "content": "x".repeat(11)});
        handle_event(&ctx(&u), "message:send", vec![long], Some(2), &mut out);
        assert!(matches!(&out[..], [Effect::Ack(2, v)] if v["success"] == false));
    }

    #[test]
    fn history_caps_the_limit_and_refuses_zero() {
        let u = user();
        let mut out = Vec::new();
        let q = |limit: Value| json!({"targetId": uuid::Uuid::nil().to_string(), "targetType": "dm", "limit": limit});
        handle_event(
            &ctx(&u),
            "message:history",
            vec![q(json!(500))],
            Some(1),
            &mut out,
        );
        assert!(
            matches!(&out[..], [Effect::Store(StoreCommand::History { query, .. })] if query.limit == 100)
        );
        out.clear();
        handle_event(
            &ctx(&u),
            "message:history",
            vec![q(json!(0))],
            Some(1),
            &mut out,
        );
        assert!(matches!(&out[..], [Effect::Ack(1, v)] if v["success"] == false));
    }
}
