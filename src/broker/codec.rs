//! The publication wire format: what one node publishes on a room's Redis channel.
//!
//! A publication is a fixed little-endian header followed by the Socket.IO packet text
//! exactly as clients receive it (`42["message:new",{…}]`), without the recovery offset: the
//! offset is a position in the *receiving* node's delivery order, so each node appends its
//! own when it frames the packet. The publishing node encodes once per publication; a
//! receiving node decodes the header and keeps the packet as a zero-copy slice of the payload.
//!
//! ```text
//!  0  version  u8 (1)          1  kind  u8            2  flags u8 (1: except user, 2: durable)
//!  3  room kind u8 (0 user, 1 workspace, 2 channel, 3 dm, 255 none)
//!  4  origin node u64          12 publication id u64 (per origin)
//! 20  sent at, µs since the Unix epoch, u64 (origin's clock: lag metrics only)
//! 28  room uuid [16]
//! 44  durable: event position u64, message sequence u64
//!  …  except user: uuid [16]
//!  …  packet (the rest)
//! ```

use bytes::Bytes;
use uuid::Uuid;

use super::names::NodeId;
use crate::ids::{ChannelId, ConversationId, Room, UserId, WorkspaceId};

/// Wire format version; a node drops publications of a version it does not know.
pub const VERSION: u8 = 1;

const FIXED: usize = 44;
const EXCEPT_USER: u8 = 1;
const DURABLE: u8 = 2;
const NO_ROOM: u8 = 255;

/// Largest header: fixed part, position and sequence, except user.
pub const MAX_HEADER: usize = FIXED + 16 + 16;

/// What a publication carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `message:new` (durable).
    MessageNew,
    /// `message:deleted` (durable).
    MessageDeleted,
    /// `typing:update`.
    Typing,
    /// A typing user's refresh, not shown to clients: keeps receivers' expiry timers alive.
    TypingRefresh,
    /// `presence:update` (published by the presence script).
    Presence,
    /// "This room's events are committed up to `pos`": sent after publications were lost
    /// (a failed publish, an outage), so receivers fill the gap from PostgreSQL at once.
    Watermark,
    /// Node-to-node requests and answers on a node's own channel (JSON packet).
    Control,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::MessageNew => 1,
            Kind::MessageDeleted => 2,
            Kind::Typing => 3,
            Kind::TypingRefresh => 4,
            Kind::Presence => 5,
            Kind::Watermark => 6,
            Kind::Control => 7,
        }
    }

    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::MessageNew,
            2 => Kind::MessageDeleted,
            3 => Kind::Typing,
            4 => Kind::TypingRefresh,
            5 => Kind::Presence,
            6 => Kind::Watermark,
            7 => Kind::Control,
            _ => return None,
        })
    }

    /// Whether publications of this kind have an event position (and go through the room's
    /// sequencer).
    pub fn durable(self) -> bool {
        matches!(
            self,
            Kind::MessageNew | Kind::MessageDeleted | Kind::Watermark
        )
    }
}

/// A durable event's place in its room: `pos` orders every durable event of the room
/// (messages and deletions), `seq` is the message's `sequence`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    /// The room's event position (1, 2, …; no gaps but holes PostgreSQL can explain).
    pub pos: u64,
    /// The message's sequence (the deleted message's for a deletion; 0 for a watermark).
    pub seq: u64,
}

/// Everything but the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// What it is.
    pub kind: Kind,
    /// The node that published it.
    pub origin: NodeId,
    /// Unique per origin: `(origin, id)` names a publication in the whole cluster.
    pub id: u64,
    /// When the origin sent it (µs since the Unix epoch, origin's clock).
    pub sent_at_micros: u64,
    /// Who receives it (`None` for control messages).
    pub room: Option<Room>,
    /// Durable events only.
    pub place: Option<Place>,
    /// Every socket of this user is left out (a typing user's own tabs).
    pub except: Option<UserId>,
}

/// A decoded publication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publication {
    /// Metadata.
    pub header: Header,
    /// The Socket.IO packet text, a slice of the received payload.
    pub packet: Bytes,
}

/// Why a payload was not a publication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CodecError {
    /// Shorter than its header says.
    Truncated,
    /// A version this node does not know (a newer node in a mixed cluster).
    Version(u8),
    /// An unknown kind or room kind.
    Unknown(&'static str, u8),
}

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodecError::Truncated => f.write_str("publication shorter than its header"),
            CodecError::Version(v) => {
                write!(f, "publication version {v}, this node reads {VERSION}")
            }
            CodecError::Unknown(what, b) => write!(f, "unknown {what} {b}"),
        }
    }
}

fn room_parts(room: Option<Room>) -> (u8, Uuid) {
    match room {
        Some(Room::User(UserId(id))) => (0, id),
        Some(Room::Workspace(WorkspaceId(id))) => (1, id),
        Some(Room::Channel(ChannelId(id))) => (2, id),
        Some(Room::Dm(ConversationId(id))) => (3, id),
        None => (NO_ROOM, Uuid::nil()),
    }
}

fn room_of(kind: u8, id: Uuid) -> Result<Option<Room>, CodecError> {
    Ok(Some(match kind {
        0 => Room::User(UserId(id)),
        1 => Room::Workspace(WorkspaceId(id)),
        2 => Room::Channel(ChannelId(id)),
        3 => Room::Dm(ConversationId(id)),
        NO_ROOM => return Ok(None),
        other => return Err(CodecError::Unknown("room kind", other)),
    }))
}

/// Writes the header into `out` (the packet goes right after it).
pub fn write_header(header: &Header, out: &mut Vec<u8>) {
    let (room_kind, room_id) = room_parts(header.room);
    let mut flags = 0;
    if header.except.is_some() {
        flags |= EXCEPT_USER;
    }
    if header.place.is_some() {
        flags |= DURABLE;
    }
    out.extend_from_slice(&[VERSION, header.kind.byte(), flags, room_kind]);
    out.extend_from_slice(&header.origin.0.to_le_bytes());
    out.extend_from_slice(&header.id.to_le_bytes());
    out.extend_from_slice(&header.sent_at_micros.to_le_bytes());
    out.extend_from_slice(room_id.as_bytes());
    if let Some(place) = header.place {
        out.extend_from_slice(&place.pos.to_le_bytes());
        out.extend_from_slice(&place.seq.to_le_bytes());
    }
    if let Some(UserId(user)) = header.except {
        out.extend_from_slice(user.as_bytes());
    }
}

/// One publication's payload: header, then the packet, in one allocation.
pub fn encode(header: &Header, packet: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_HEADER + packet.len());
    write_header(header, &mut out);
    out.extend_from_slice(packet);
    out
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut le = [0; 8];
    le.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(le)
}

fn uuid_at(b: &[u8], at: usize) -> Uuid {
    let mut raw = [0; 16];
    raw.copy_from_slice(&b[at..at + 16]);
    Uuid::from_bytes(raw)
}

/// Decodes a payload; the packet shares its bytes.
pub fn decode(payload: Bytes) -> Result<Publication, CodecError> {
    let b = &payload[..];
    if b.len() < FIXED {
        return Err(CodecError::Truncated);
    }
    if b[0] != VERSION {
        return Err(CodecError::Version(b[0]));
    }
    let kind = Kind::from_byte(b[1]).ok_or(CodecError::Unknown("kind", b[1]))?;
    let flags = b[2];
    let room = room_of(b[3], uuid_at(b, 28))?;
    let mut at = FIXED;
    let need = at
        + if flags & DURABLE != 0 { 16 } else { 0 }
        + if flags & EXCEPT_USER != 0 { 16 } else { 0 };
    if b.len() < need {
        return Err(CodecError::Truncated);
    }
    let place = (flags & DURABLE != 0).then(|| {
        let place = Place {
            pos: u64_at(b, at),
            seq: u64_at(b, at + 8),
        };
        at += 16;
        place
    });
    let except = (flags & EXCEPT_USER != 0).then(|| {
        let user = UserId(uuid_at(b, at));
        at += 16;
        user
    });
    let header = Header {
        kind,
        origin: NodeId(u64_at(b, 4)),
        id: u64_at(b, 12),
        sent_at_micros: u64_at(b, 20),
        room,
        place,
        except,
    };
    Ok(Publication {
        header,
        packet: payload.slice(at..),
    })
}

/// Reads only the origin of a payload, to drop a node's own publications coming back from
/// Redis before decoding anything else.
pub fn origin(payload: &[u8]) -> Option<NodeId> {
    (payload.len() >= FIXED && payload[0] == VERSION).then(|| NodeId(u64_at(payload, 4)))
}

/// The packet with a recovery offset as the event's last argument (socket.io-client reads
/// the last string argument as the offset): `42["e",{…}]` becomes `42["e",{…},"OFFSET"]`.
/// A packet that does not end in `]` is returned unchanged.
pub fn with_offset(packet: &[u8], offset: &str) -> Vec<u8> {
    let Some(body) = packet.strip_suffix(b"]") else {
        return packet.to_vec();
    };
    let mut out = Vec::with_capacity(packet.len() + offset.len() + 4);
    out.extend_from_slice(body);
    out.extend_from_slice(b",\"");
    out.extend_from_slice(offset.as_bytes());
    out.extend_from_slice(b"\"]");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: Kind) -> Header {
        Header {
            kind,
            origin: NodeId(0x1122_3344_5566_7788),
            id: 42,
            sent_at_micros: 1_700_000_000_000_000,
            room: Some(Room::Channel(ChannelId(Uuid::from_u128(9)))),
            place: None,
            except: None,
        }
    }

    #[test]
    fn every_shape_round_trips() {
        let packet = br#"42["message:new",{"sequence":7}]"#;
        let mut durable = header(Kind::MessageNew);
        durable.place = Some(Place { pos: 11, seq: 7 });
        let mut typing = header(Kind::Typing);
        typing.except = Some(UserId(Uuid::from_u128(5)));
        let mut both = durable;
        both.except = typing.except;
        let mut control = header(Kind::Control);
        control.room = None;
        for h in [header(Kind::Presence), durable, typing, both, control] {
            let wire = encode(&h, packet);
            let p = decode(Bytes::from(wire.clone())).unwrap();
            assert_eq!(p.header, h);
            assert_eq!(&p.packet[..], packet);
            assert_eq!(origin(&wire), Some(h.origin));
        }
    }

    #[test]
    fn the_header_is_compact() {
        let mut h = header(Kind::MessageNew);
        h.place = Some(Place { pos: 1, seq: 1 });
        assert_eq!(encode(&h, b"").len(), 60);
        assert_eq!(encode(&header(Kind::Presence), b"x").len(), 45);
    }

    #[test]
    fn the_packet_is_a_slice_of_the_payload() {
        let payload = Bytes::from(encode(&header(Kind::Typing), b"42[\"typing:update\",{}]"));
        let p = decode(payload.clone()).unwrap();
        let start = p.packet.as_ptr() as usize - payload.as_ptr() as usize;
        assert_eq!(start, FIXED, "no copy: the packet points into the payload");
    }

    #[test]
    fn bad_payloads_are_refused_not_misread() {
        let wire = encode(&header(Kind::Typing), b"x");
        assert_eq!(
            decode(Bytes::from_static(b"short")),
            Err(CodecError::Truncated)
        );
        let mut v2 = wire.clone();
        v2[0] = 2;
        assert_eq!(decode(Bytes::from(v2)), Err(CodecError::Version(2)));
        let mut bad_kind = wire.clone();
        bad_kind[1] = 99;
        assert_eq!(
            decode(Bytes::from(bad_kind)),
            Err(CodecError::Unknown("kind", 99))
        );
        let mut claims_durable = wire[..FIXED].to_vec();
        claims_durable[2] = DURABLE;
        assert_eq!(
            decode(Bytes::from(claims_durable)),
            Err(CodecError::Truncated)
        );
    }

    #[test]
    fn offsets_become_the_last_argument() {
        assert_eq!(
            with_offset(br#"42["message:new",{"a":1}]"#, "00ab:17"),
            br#"42["message:new",{"a":1},"00ab:17"]"#.to_vec()
        );
        assert_eq!(with_offset(b"3", "x"), b"3".to_vec());
    }
}
