//! The WebSocket phase of a connection: frames in (decoded in place from the read buffer),
//! control frames answered, fragments reassembled, and each text message handed to the
//! socket's session, which is then driven.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use super::connection::{Connection, Phase};
use super::sockets::Sockets;
use super::Core;
use crate::ids::SocketRef;
use crate::transport::websocket::{self, Opcode};

/// Handles the frame at the start of `buf` on connection `key`; returns the bytes it used
/// (0: need more).
pub fn input(
    sockets: &mut Sockets,
    core: &mut Core,
    key: u32,
    buf: &mut [u8],
    now: Instant,
) -> usize {
    let max = core.shared.config.engine.max_payload;
    match websocket::decode(buf, max) {
        // The frame is not complete yet.
        Ok(None) => 0,
        Ok(Some((frame, used))) => {
            let payload = &buf[frame.payload.clone()];
            on_frame(sockets, core, key, frame.opcode, frame.fin, payload, now);
            used
        }
        Err(e) => {
            fail(
                &mut sockets.conns[key as usize],
                core,
                key,
                e.code,
                &e.reason,
                now,
            );
            buf.len()
        }
    }
}

fn on_frame(
    sockets: &mut Sockets,
    core: &mut Core,
    key: u32,
    opcode: Opcode,
    fin: bool,
    payload: &[u8],
    now: Instant,
) {
    let max = core.shared.config.engine.max_payload;
    let conn = &mut sockets.conns[key as usize];
    let Phase::Socket(socket) = &mut conn.phase else {
        return;
    };
    match opcode {
        Opcode::Text | Opcode::Binary if socket.fragment.is_some() => {
            let reason = "a new message began before the fragmented one ended";
            fail(conn, core, key, 1002, reason, now);
        }
        Opcode::Text if fin => text(sockets, core, key, payload, now),
        Opcode::Text => socket.fragment = Some(payload.to_vec()),
        Opcode::Continuation => {
            let Some(fragment) = &mut socket.fragment else {
                let reason = "continuation frame without a message to continue";
                fail(conn, core, key, 1002, reason, now);
                return;
            };
            if fragment.len() + payload.len() > max {
                let reason = format!("message is over the {max}-byte limit");
                fail(conn, core, key, 1009, &reason, now);
                return;
            }
            fragment.extend_from_slice(payload);
            if fin {
                let whole = socket.fragment.take().unwrap_or_default();
                text(sockets, core, key, &whole, now);
            }
        }
        Opcode::Binary => {
            let reason = match socket.session.handle_binary(now, payload) {
                Err(e) => e.to_string(),
                Ok(()) => "binary frames are not supported".to_string(),
            };
            fail(conn, core, key, 1003, &reason, now);
        }
        Opcode::Ping | Opcode::Pong | Opcode::Close => {
            control(conn, core, key, opcode, payload, now)
        }
    }
}

/// A whole text message: one Engine.IO packet for the session.
fn text(sockets: &mut Sockets, core: &mut Core, key: u32, payload: &[u8], now: Instant) {
    let conn = &mut sockets.conns[key as usize];
    let Ok(text) = std::str::from_utf8(payload) else {
        fail(conn, core, key, 1007, "text frame is not valid UTF-8", now);
        return;
    };
    let Phase::Socket(socket) = &mut conn.phase else {
        return;
    };
    let result = socket.session.handle_text(now, text);
    // Either way, what the session queued goes out first.
    sockets.drive(core, SocketRef::Conn(key), now);
    if let Err(e) = result {
        let conn = &mut sockets.conns[key as usize];
        fail(conn, core, key, e.close_code(), &e.to_string(), now);
    }
}

/// Ping, pong and close frames, the same in every WebSocket phase.
pub fn control(
    conn: &mut Connection,
    core: &mut Core,
    key: u32,
    opcode: Opcode,
    payload: &[u8],
    now: Instant,
) {
    match opcode {
        Opcode::Ping => conn.out.queue(websocket::pong(payload), core.metrics()),
        Opcode::Close => {
            conn.out.queue(websocket::close(1000, ""), core.metrics());
            conn.close_after_flush(now, "client sent close");
        }
        _ => return,
    }
    core.mark(SocketRef::Conn(key), &mut conn.dirty);
}

/// Closes a WebSocket for a protocol error, telling the client why in the close frame.
pub fn fail(
    conn: &mut Connection,
    core: &mut Core,
    key: u32,
    code: u16,
    reason: &str,
    now: Instant,
) {
    core.metrics().protocol_errors.fetch_add(1, Relaxed);
    tracing::debug!(
        key,
        code,
        reason,
        "closing a WebSocket for a protocol error"
    );
    conn.out
        .queue(websocket::close(code, reason), core.metrics());
    conn.close_after_flush(now, "protocol error");
    core.mark(SocketRef::Conn(key), &mut conn.dirty);
}
