//! `message:history` (contract §3): the request, and the page sent back. A page is capped
//! by count (`limit`) and by bytes, so that an answer never outgrows what a client's queue
//! may hold; `hasMore` says whether the client should ask again in that direction. The
//! store is asked for one message more than `limit`, which tells whether there is more
//! without a second query.

use serde_json::{json, Value};

use super::{object, validate, Context, Effect};
use crate::json;
use crate::mesh::StoreCommand;
use crate::model::Message;
use crate::store::request::HistoryQuery;

/// Reads a `message:history` request and asks the store for the page (and one more).
pub fn request(
    ctx: &Context<'_>,
    data: Value,
    ack: Option<u64>,
    out: &mut Vec<Effect>,
) -> Result<(), String> {
    let fields = object("message:history", data)?;
    let target = fields.target("targetId", "targetType")?;
    let limit = match fields.get("limit") {
        None => validate::history_limit(None)?,
        Some(Value::Number(n)) => match n.as_i64() {
            Some(v) => validate::history_limit(Some(v))?,
            None => {
                return Err(format!(
                    "field \"limit\" must be a whole number from 1 to {}, got {n}",
                    validate::MAX_HISTORY_LIMIT
                ))
            }
        },
        Some(other) => {
            return Err(format!(
                "field \"limit\" must be a number, got {}",
                json::kind(other)
            ))
        }
    };
    let query = HistoryQuery {
        target,
        before: fields.opt_sequence("beforeSequence")?,
        after: fields.opt_sequence("afterSequence")?,
        limit: limit + 1,
    };
    out.push(Effect::Store(StoreCommand::History {
        asker: ctx.asker(),
        ack,
        query,
    }));
    Ok(())
}

/// The ack of a page: `query` as [`request`] made it (one more than the client's limit),
/// `messages` ascending as the store found them. A page anchored at its old end
/// (`afterSequence`) keeps the oldest messages, any other keeps the newest, so paging on
/// from the page's edge misses nothing; at least one message is always sent.
pub fn page(query: &HistoryQuery, messages: &[Message], max_bytes: usize) -> Value {
    let limit = query.limit.saturating_sub(1).max(1) as usize;
    let encoded: Vec<usize> = messages
        .iter()
        .map(|m| serde_json::to_string(&m.to_json()).map_or(0, |s| s.len()))
        .collect();
    let order: Box<dyn Iterator<Item = usize>> = if query.after.is_some() {
        Box::new(0..encoded.len())
    } else {
        Box::new((0..encoded.len()).rev())
    };
    let mut kept = Vec::new();
    let mut bytes = 0;
    for i in order {
        let len = encoded[i] + 1;
        if kept.len() == limit || (!kept.is_empty() && bytes + len > max_bytes) {
            break;
        }
        bytes += len;
        kept.push(i);
    }
    let has_more = kept.len() < encoded.len();
    kept.sort_unstable();
    let messages: Vec<Value> = kept
        .into_iter()
        .map(|i| serde_json::to_value(messages[i].to_json()).unwrap_or(Value::Null))
        .collect();
    json!({"success": true, "messages": messages, "hasMore": has_more})
}
