//! Socket.IO v5 packets, in the text encoding of the default parser:
//! `<packet type>[<# of binary attachments>-][<namespace>,][<acknowledgment id>][JSON-stringified payload]`
//! ("the namespace is only included if it is different from the main namespace (`/`)").
//! The text here is what follows the Engine.IO message type `4`.

use std::borrow::Cow;
use std::io::Write as _;

use serde::Serialize;
use serde_json::Value;

use super::error::ProtocolError;
use crate::json;

/// The main namespace, which a packet without a namespace part addresses.
pub const MAIN_NAMESPACE: &str = "/";

/// One Socket.IO v5 packet. `nsp` is [`MAIN_NAMESPACE`] unless the text named another;
/// it borrows nothing, so decoding the main namespace allocates no namespace string.
#[derive(Debug, Clone, PartialEq)]
pub enum Packet {
    /// `0`: the client asks to join `nsp` (with an optional auth object); the server
    /// answers with one carrying `{"sid":…}`.
    Connect {
        /// Namespace.
        nsp: Cow<'static, str>,
        /// The client's auth object, or the server's `{"sid":…}`.
        data: Option<Value>,
    },
    /// `1`: either side leaves `nsp`.
    Disconnect {
        /// Namespace.
        nsp: Cow<'static, str>,
    },
    /// `2`: an event; `data` is `[name, args…]`, non-empty with a string name.
    Event {
        /// Namespace.
        nsp: Cow<'static, str>,
        /// `[name, args…]`.
        data: Vec<Value>,
        /// Ack id when the sender wants an ACK back.
        id: Option<u64>,
    },
    /// `3`: the answer to an event that carried `id`.
    Ack {
        /// Namespace.
        nsp: Cow<'static, str>,
        /// The ack callback's arguments (possibly none).
        data: Vec<Value>,
        /// The event's ack id.
        id: u64,
    },
    /// `4`: the server refuses a CONNECT; data is `{"message":…}`.
    ConnectError {
        /// Namespace.
        nsp: Cow<'static, str>,
        /// Usually `{"message":…}`.
        data: Value,
    },
    /// `5`: an event with binary attachments in the following frames. [`decode`] refuses it
    /// (this server takes no binary); the variant exists so the packet table is complete.
    BinaryEvent {
        /// Namespace.
        nsp: Cow<'static, str>,
        /// Number of attachments that follow.
        attachments: usize,
        /// `[name, args…]` with `{"_placeholder":true,"num":n}` for each attachment.
        data: Vec<Value>,
        /// Ack id.
        id: Option<u64>,
    },
    /// `6`: an ack with binary attachments; refused by [`decode`] like [`Packet::BinaryEvent`].
    BinaryAck {
        /// Namespace.
        nsp: Cow<'static, str>,
        /// Number of attachments that follow.
        attachments: usize,
        /// Arguments with placeholders.
        data: Vec<Value>,
        /// The event's ack id.
        id: u64,
    },
}

/// Decodes the Socket.IO packet carried by one Engine.IO message (the text after the `4`).
///
/// A namespace runs from a leading `/` to the first `,` or to the end of the text (the
/// reference parser and test suite accept `40/random` without a comma). An ack id is the run
/// of digits after it; the rest is the JSON payload.
///
/// # Errors
/// [`ProtocolError::BinaryUnsupported`] for types 5 and 6; [`ProtocolError::Malformed`] naming
/// the part at fault for anything else the spec does not allow: an empty text, an unknown type,
/// an ack id over `u64`, bad JSON, or a payload of the wrong shape for its type ("The payload is
/// mandatory and MUST be a non-empty array" for EVENT, "MUST be an array (possibly empty)" for
/// ACK, an object or nothing for CONNECT, nothing for DISCONNECT).
pub fn decode(text: &str) -> Result<Packet, ProtocolError> {
    let bytes = text.as_bytes();
    let Some(&kind) = bytes.first() else {
        return Err(malformed(
            "empty Socket.IO packet; expected a type digit 0-6 after the Engine.IO \"4\"",
        ));
    };
    match kind {
        b'0'..=b'4' => {}
        b'5' | b'6' => return Err(ProtocolError::BinaryUnsupported),
        _ => {
            return Err(ProtocolError::Malformed(format!(
                "unknown Socket.IO packet type {:?}; expected a digit 0-6",
                text.chars().next().unwrap_or_default()
            )))
        }
    }
    // Every index below stops on an ASCII byte ('/', ',', a digit) or at the end, so each
    // slice of `text` is on a character boundary.
    let mut at = 1;
    let nsp: Cow<'static, str> = if bytes.get(at) == Some(&b'/') {
        let end = bytes[at..]
            .iter()
            .position(|&b| b == b',')
            .map_or(bytes.len(), |i| at + i);
        let nsp = &text[at..end];
        at = (end + 1).min(bytes.len());
        if nsp == MAIN_NAMESPACE {
            Cow::Borrowed(MAIN_NAMESPACE)
        } else {
            Cow::Owned(nsp.to_owned())
        }
    } else {
        Cow::Borrowed(MAIN_NAMESPACE)
    };
    let digits = bytes[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    let id = if digits == 0 {
        None
    } else {
        let id = text[at..at + digits].parse::<u64>().map_err(|_| {
            ProtocolError::Malformed(format!(
                "ack id {} is over {}; ack ids count up from 0",
                &text[at..at + digits.min(40)],
                u64::MAX
            ))
        })?;
        at += digits;
        Some(id)
    };
    let payload = &text[at..];
    let data: Option<Value> =
        if payload.is_empty() {
            None
        } else {
            Some(serde_json::from_str(payload).map_err(|e| {
                ProtocolError::Malformed(format!("payload is not valid JSON ({e})"))
            })?)
        };
    let kind_name = TYPE_NAMES[usize::from(kind - b'0')];
    let no_id = |id: Option<u64>| match id {
        Some(id) => Err(ProtocolError::Malformed(format!(
            "{kind_name} packet carries ack id {id}; only EVENT and ACK have one"
        ))),
        None => Ok(()),
    };
    match kind {
        b'0' => {
            no_id(id)?;
            match data {
                None | Some(Value::Object(_)) => Ok(Packet::Connect { nsp, data }),
                Some(other) => Err(ProtocolError::Malformed(format!(
                    "CONNECT payload must be an object such as {{\"token\":\"…\"}}, got {}",
                    json::kind(&other)
                ))),
            }
        }
        b'1' => {
            no_id(id)?;
            match data {
                None => Ok(Packet::Disconnect { nsp }),
                Some(other) => Err(ProtocolError::Malformed(format!(
                    "DISCONNECT carries no payload, got {}",
                    json::kind(&other)
                ))),
            }
        }
        b'2' => {
            let data = array(kind_name, data)?;
            match data.first() {
                Some(Value::String(_)) => Ok(Packet::Event { nsp, data, id }),
                Some(other) => Err(ProtocolError::Malformed(format!(
                    "EVENT name must be a string, got {}",
                    json::kind(other)
                ))),
                None => Err(malformed(
                    "EVENT payload is an empty array; it must start with the event name",
                )),
            }
        }
        b'3' => {
            let data = array(kind_name, data)?;
            let Some(id) = id else {
                return Err(malformed("ACK packet without an ack id"));
            };
            Ok(Packet::Ack { nsp, data, id })
        }
        _ => {
            no_id(id)?;
            match data {
                Some(data @ (Value::Object(_) | Value::String(_))) => {
                    Ok(Packet::ConnectError { nsp, data })
                }
                Some(other) => Err(ProtocolError::Malformed(format!(
                    "CONNECT_ERROR payload must be an object or a string, got {}",
                    json::kind(&other)
                ))),
                None => Err(malformed("CONNECT_ERROR packet without a payload")),
            }
        }
    }
}

/// Encodes `packet` as Socket.IO text, without the Engine.IO `4` in front.
pub fn encode(packet: &Packet) -> String {
    let (kind, nsp, attachments, id) = match packet {
        Packet::Connect { nsp, .. } => (b'0', nsp, None, None),
        Packet::Disconnect { nsp } => (b'1', nsp, None, None),
        Packet::Event { nsp, id, .. } => (b'2', nsp, None, *id),
        Packet::Ack { nsp, id, .. } => (b'3', nsp, None, Some(*id)),
        Packet::ConnectError { nsp, .. } => (b'4', nsp, None, None),
        Packet::BinaryEvent {
            nsp,
            attachments,
            id,
            ..
        } => (b'5', nsp, Some(*attachments), *id),
        Packet::BinaryAck {
            nsp,
            attachments,
            id,
            ..
        } => (b'6', nsp, Some(*attachments), Some(*id)),
    };
    let mut out = Vec::with_capacity(32);
    write_head(&mut out, kind, nsp, attachments, id);
    match packet {
        Packet::Connect { data: Some(v), .. } | Packet::ConnectError { data: v, .. } => {
            write_json(&mut out, v)
        }
        Packet::Event { data, .. }
        | Packet::Ack { data, .. }
        | Packet::BinaryEvent { data, .. }
        | Packet::BinaryAck { data, .. } => write_json(&mut out, data),
        Packet::Connect { data: None, .. } | Packet::Disconnect { .. } => {}
    }
    into_text(out)
}

/// An event on the main namespace as an Engine.IO message: `42["name",data]`, or
/// `42["name",data,"offset"]` when connection state recovery tags it. Built straight from
/// `data`, without a `Value` in between: every emit and broadcast is made here.
pub fn event(name: &str, data: &(impl Serialize + ?Sized), offset: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(b'4');
    write_head(&mut out, b'2', MAIN_NAMESPACE, None, None);
    out.push(b'[');
    write_json(&mut out, name);
    out.push(b',');
    write_json(&mut out, data);
    if let Some(offset) = offset {
        out.push(b',');
        write_json(&mut out, offset);
    }
    out.push(b']');
    out
}

/// The answer to the client's event `id` as an Engine.IO message: `43<id>[data]`, so the
/// client's callback receives `data` as its one argument.
pub fn ack(id: u64, data: &(impl Serialize + ?Sized)) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(b'4');
    write_head(&mut out, b'3', MAIN_NAMESPACE, None, Some(id));
    out.push(b'[');
    write_json(&mut out, data);
    out.push(b']');
    out
}

/// The server's CONNECT answer as an Engine.IO message: `40{"sid":…}`, with `"pid"` when
/// connection state recovery is on.
pub fn connect(sid: &str, pid: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(48);
    out.push(b'4');
    write_head(&mut out, b'0', MAIN_NAMESPACE, None, None);
    out.extend_from_slice(b"{\"sid\":");
    write_json(&mut out, sid);
    if let Some(pid) = pid {
        out.extend_from_slice(b",\"pid\":");
        write_json(&mut out, pid);
    }
    out.push(b'}');
    out
}

/// A refused CONNECT as an Engine.IO message: `44{"message":…}` (on another namespace
/// `44/nsp,{…}`), which socket.io-client raises as `connect_error` with that message.
pub fn connect_error(nsp: &str, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + nsp.len() + message.len());
    out.push(b'4');
    write_head(&mut out, b'4', nsp, None, None);
    out.extend_from_slice(b"{\"message\":");
    write_json(&mut out, message);
    out.push(b'}');
    out
}

/// The head of a packet: type digit, `n-` for binary attachments, `nsp,` unless it is the
/// main namespace, then the ack id.
fn write_head(out: &mut Vec<u8>, kind: u8, nsp: &str, attachments: Option<usize>, id: Option<u64>) {
    out.push(kind);
    // Writing into a Vec cannot fail.
    if let Some(n) = attachments {
        let _ = write!(out, "{n}-");
    }
    if nsp != MAIN_NAMESPACE {
        out.extend_from_slice(nsp.as_bytes());
        out.push(b',');
    }
    if let Some(id) = id {
        let _ = write!(out, "{id}");
    }
}

/// Appends `value` as JSON. Our payload types always serialise (no maps with non-string
/// keys); should one fail, `null` replaces what it wrote, keeping the packet valid rather
/// than ending the shard.
fn write_json(out: &mut Vec<u8>, value: &(impl Serialize + ?Sized)) {
    let start = out.len();
    if let Err(e) = serde_json::to_writer(&mut *out, value) {
        debug_assert!(false, "payload failed to serialise: {e}");
        out.truncate(start);
        out.extend_from_slice(b"null");
    }
}

/// Text built from ASCII and serde_json output, both UTF-8.
pub(crate) fn into_text(out: Vec<u8>) -> String {
    String::from_utf8(out).unwrap_or_else(|e| {
        debug_assert!(false, "serde_json wrote invalid UTF-8: {e}");
        String::from_utf8_lossy(e.as_bytes()).into_owned()
    })
}

/// Packet type names from the spec's table, indexed by type digit.
const TYPE_NAMES: [&str; 7] = [
    "CONNECT",
    "DISCONNECT",
    "EVENT",
    "ACK",
    "CONNECT_ERROR",
    "BINARY_EVENT",
    "BINARY_ACK",
];

fn malformed(what: &str) -> ProtocolError {
    ProtocolError::Malformed(what.to_owned())
}

/// Requires an array payload, as EVENT and ACK do.
fn array(kind_name: &str, data: Option<Value>) -> Result<Vec<Value>, ProtocolError> {
    match data {
        Some(Value::Array(items)) => Ok(items),
        Some(other) => Err(ProtocolError::Malformed(format!(
            "{kind_name} payload must be an array, got {}",
            json::kind(&other)
        ))),
        None => Err(ProtocolError::Malformed(format!(
            "{kind_name} packet without a payload (after the namespace's comma, if any)"
        ))),
    }
}

#[cfg(test)]
#[path = "packet_tests.rs"]
mod tests;
