//! Reading the JSON a client sent: one reader for socket event data (`chat`), admin API
//! bodies (`api`) and packet payloads (`protocol`), so every refusal names the field and says
//! what it must be, in the same words. Absent and `null` are the same to it.

use std::collections::HashSet;
use std::fmt::Display;
use std::hash::Hash;
use std::str::FromStr;

use serde_json::{Map, Value};

use crate::ids::Target;

/// A JSON value's kind, for error messages that must not echo client data at length.
pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The fields of a JSON object, read with messages that name the field.
#[derive(Debug)]
pub struct Fields(Map<String, Value>);

impl Fields {
    /// `value` as an object; `what` names it in the refusal
    /// (`"{what} must be a JSON object, got a string"`).
    pub fn object(value: Value, what: impl Display) -> Result<Fields, String> {
        match value {
            Value::Object(map) => Ok(Fields(map)),
            other => Err(format!(
                "{what} must be a JSON object, got {}",
                kind(&other)
            )),
        }
    }

    /// A request body holding one JSON object.
    pub fn parse(body: &[u8]) -> Result<Fields, String> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err("the request body is empty: send a JSON object".to_owned());
        }
        match serde_json::from_slice(body) {
            Ok(value) => Fields::object(value, "the request body"),
            Err(e) => Err(format!("the request body is not valid JSON: {e}")),
        }
    }

    /// A present, non-null value.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    /// An optional string, as sent.
    pub fn opt_raw_text(&self, name: &str) -> Result<Option<&str>, String> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(format!(
                "field {name:?} must be a string, got {}",
                kind(other)
            )),
        }
    }

    /// A string, as sent.
    pub fn raw_text(&self, name: &str) -> Result<&str, String> {
        self.opt_raw_text(name)?
            .ok_or_else(|| format!("field {name:?} is required"))
    }

    /// An optional string, trimmed; blank is an error, not absence.
    pub fn opt_text(&self, name: &str) -> Result<Option<String>, String> {
        match self.opt_raw_text(name)?.map(str::trim) {
            Some("") => Err(format!("field {name:?} must not be empty")),
            other => Ok(other.map(str::to_owned)),
        }
    }

    /// A string, trimmed and not blank.
    pub fn text(&self, name: &str) -> Result<String, String> {
        self.opt_text(name)?
            .ok_or_else(|| format!("field {name:?} is required"))
    }

    /// A uuid (or any id parsed from a string).
    pub fn id<T: FromStr>(&self, name: &str) -> Result<T, String> {
        let raw = self.raw_text(name)?;
        raw.parse()
            .map_err(|_| format!("field {name:?} must be a uuid, got {raw:?}"))
    }

    /// An optional `true` or `false`.
    pub fn opt_bool(&self, name: &str) -> Result<Option<bool>, String> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(format!("field {name:?} must be true or false")),
        }
    }

    /// An optional whole number of 1 or more.
    pub fn opt_u64(&self, name: &str) -> Result<Option<u64>, String> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| format!("field {name:?} must be a positive whole number")),
        }
    }

    /// An optional whole number of 0 or more (a message sequence).
    pub fn opt_sequence(&self, name: &str) -> Result<Option<i64>, String> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(v) if v >= 0 => Ok(Some(v)),
                _ => Err(format!(
                    "field {name:?} must be a whole number of 0 or more, got {n}"
                )),
            },
            Some(other) => Err(format!(
                "field {name:?} must be a number, got {}",
                kind(other)
            )),
        }
    }

    /// A channel or DM named by the contract's `{targetId, targetType}` pair (or another
    /// pair of field names, as `room:join`'s `{roomId, roomType}`).
    pub fn target(&self, id_field: &str, type_field: &str) -> Result<Target, String> {
        let id = self.raw_text(id_field)?;
        Target::parse(self.raw_text(type_field)?, id)
    }

    /// An array.
    pub fn array(&self, name: &str) -> Result<&[Value], String> {
        match self.get(name) {
            Some(Value::Array(items)) => Ok(items),
            Some(other) => Err(format!(
                "field {name:?} must be an array, got {}",
                kind(other)
            )),
            None => Err(format!("field {name:?} is required")),
        }
    }

    /// A non-empty array of uuids, duplicates dropped, order kept.
    pub fn id_list<T: FromStr + Eq + Hash + Copy>(&self, name: &str) -> Result<Vec<T>, String> {
        let Some(Value::Array(items)) = self.get(name) else {
            return Err(format!("field {name:?} is required: an array of uuids"));
        };
        if items.is_empty() {
            return Err(format!("field {name:?} must list at least one uuid"));
        }
        let mut ids = Vec::with_capacity(items.len());
        let mut seen = HashSet::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let id = item
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("field {name:?}[{i}] must be a uuid, got {item}"))?;
            if seen.insert(id) {
                ids.push(id);
            }
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fields(v: Value) -> Fields {
        Fields::object(v, "the data").unwrap()
    }

    #[test]
    fn refusals_name_the_field_and_the_kind_sent() {
        let f = fields(json!({"a": 1, "b": null, "c": "  ", "d": -1, "e": "x"}));
        assert_eq!(
            f.raw_text("a").unwrap_err(),
            "field \"a\" must be a string, got a number"
        );
        assert_eq!(f.raw_text("b").unwrap_err(), "field \"b\" is required");
        assert_eq!(f.text("c").unwrap_err(), "field \"c\" must not be empty");
        assert!(f.opt_sequence("d").unwrap_err().contains("0 or more"));
        assert_eq!(
            f.id::<uuid::Uuid>("e").unwrap_err(),
            "field \"e\" must be a uuid, got \"x\""
        );
        assert_eq!(
            Fields::object(json!("x"), "the data of message:send").unwrap_err(),
            "the data of message:send must be a JSON object, got a string"
        );
    }
}
