//! The HTTP phase of a connection: request heads (with limits), `/socket.io/` (the
//! WebSocket handshake and upgrade, and the connection's side of long-polling: requests sent
//! to the session's shard, answers written back), `/healthz`, `/metrics`, the admin API and
//! the web pages.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use bytes::Bytes;
use serde_json::json;

use super::connection::{Connection, Phase};
use super::polling::HeldGet;
use super::socket::Socket;
use super::sockets::Sockets;
use super::{upgrade, Core};
use crate::api::{self, Route};
use crate::chat::Credentials;
use crate::ids::{new_session_id, session_shard, ConnectionId, SocketRef};
use crate::mesh::{PollCommand, StoreCommand};
use crate::protocol::http::{self, RequestHead};
use crate::protocol::polling::{self, TEXT_PLAIN};
use crate::protocol::Session;

/// Handles the request at the start of `buf` on connection `key`; returns the bytes it
/// used (0: need more).
pub fn input(
    sockets: &mut Sockets,
    core: &mut Core,
    key: u32,
    buf: &mut [u8],
    now: Instant,
) -> usize {
    let config = &core.shared.config;
    let parsed = http::parse_head(buf, config.max_header_bytes, config.engine.max_payload);
    let conn = &mut sockets.conns[key as usize];
    let (head, head_len) = match parsed {
        // The head is not complete yet.
        Ok(None) => return 0,
        Ok(Some(found)) => found,
        Err(e) => {
            core.metrics().protocol_errors.fetch_add(1, Relaxed);
            respond(
                conn,
                core,
                key,
                http::json_error(e.status, &e.reason, false),
                false,
                now,
            );
            return buf.len();
        }
    };
    let total = head_len + head.content_length;
    if buf.len() < total {
        // The body is not complete yet.
        return 0;
    }
    let body = &buf[head_len..total];
    if head.path == "/socket.io/" || head.path == "/socket.io" {
        engine_request(sockets, core, key, &head, body, now);
        return total;
    }
    let keep_alive = head.keep_alive;
    let route = crate::web::route(&head, body, core.shared.demo.as_ref()).unwrap_or_else(|| {
        api::route(
            &head,
            body,
            config.admin_token.as_deref(),
            config.max_message_chars,
        )
    });
    let json = "application/json";
    match route {
        Route::Health => {
            let bytes = without_body(
                &head,
                http::response(200, json, health(core).as_bytes(), keep_alive),
            );
            respond(conn, core, key, bytes, keep_alive, now);
        }
        Route::Metrics => {
            let body = core.shared.metrics.render();
            let kind = "text/plain; version=0.0.4";
            let bytes = without_body(
                &head,
                http::response(200, kind, body.as_bytes(), keep_alive),
            );
            respond(conn, core, key, bytes, keep_alive, now);
        }
        Route::Raw(bytes) => respond(conn, core, key, bytes, keep_alive, now),
        Route::NotAllowed { allow, body } => {
            let headers = [("Allow", allow)];
            let bytes = http::write_response(405, &headers, json, body.as_bytes(), keep_alive);
            respond(conn, core, key, bytes, keep_alive, now);
        }
        Route::Respond { status, body } => {
            let bytes = http::response(status, json, body.as_bytes(), keep_alive);
            respond(conn, core, key, bytes, keep_alive, now);
        }
        Route::Store(request) => {
            let from = id(conn, core, key);
            if core.mesh.store.send(StoreCommand::Admin { from, request }) {
                wait(conn, keep_alive);
            } else {
                let bytes = http::json_error(503, "the store is shutting down", false);
                respond(conn, core, key, bytes, false, now);
            }
        }
    }
    total
}

/// The response to a HEAD request: the head of `response`, whose `Content-Length` still
/// gives the body's length (RFC 9110 §9.3.2).
fn without_body(head: &RequestHead, mut response: Vec<u8>) -> Vec<u8> {
    if head.method == "HEAD" {
        if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            response.truncate(end + 4);
        }
    }
    response
}

/// Queues a response; keeps the connection for the next request or closes it after.
pub fn respond(
    conn: &mut Connection,
    core: &mut Core,
    key: u32,
    bytes: Vec<u8>,
    keep_alive: bool,
    now: Instant,
) {
    conn.out.queue(bytes.into(), core.metrics());
    if keep_alive {
        if let Phase::Http { deadline, .. } = &mut conn.phase {
            *deadline = now + core.shared.config.request_timeout;
        }
    } else {
        conn.close_after_flush(now, "response sent");
    }
    core.mark(SocketRef::Conn(key), &mut conn.dirty);
}

/// The store answered an admin request: write the response, then take the next pipelined
/// request if one is buffered.
pub fn admin_answered(
    conns: &mut slab::Slab<super::connection::Connection>,
    core: &mut Core,
    key: u32,
    status: u16,
    body: String,
    now: Instant,
) {
    let conn = &mut conns[key as usize];
    let Phase::Http {
        waiting,
        keep_alive,
        ..
    } = &mut conn.phase
    else {
        return;
    };
    *waiting = false;
    let keep_alive = *keep_alive;
    let bytes = http::response(status, "application/json", body.as_bytes(), keep_alive);
    respond(conn, core, key, bytes, keep_alive, now);
    core.resume.push(key);
}

/// `/socket.io/`: Engine.IO's handshake. Errors use Engine.IO's JSON codes.
fn engine_request(
    sockets: &mut Sockets,
    core: &mut Core,
    key: u32,
    head: &RequestHead,
    body: &[u8],
    now: Instant,
) {
    let conn = &mut sockets.conns[key as usize];
    let refuse = |code, message| polling::engine_error(code, message, None);
    if head.query_param("EIO").as_deref() != Some("4") {
        let bytes = refuse(5, "Unsupported protocol version");
        respond(conn, core, key, bytes, false, now);
        return;
    }
    match head.query_param("transport").as_deref() {
        Some("websocket") => {}
        Some("polling") => return polling_request(sockets, core, key, head, body, now),
        _ => return respond(conn, core, key, refuse(0, "Transport unknown"), false, now),
    }
    let Some(websocket_key) = head.websocket_key.as_deref() else {
        let bytes = refuse(3, "Bad request: a WebSocket upgrade was expected");
        respond(conn, core, key, bytes, false, now);
        return;
    };
    if let Some(sid) = head.query_param("sid") {
        // An upgrade of a long-polling session (see `upgrade.rs`).
        match session_shard(&sid, core.shared.config.shards) {
            Some(owner) => upgrade::start(conn, core, key, owner, websocket_key, sid, now),
            None => respond(conn, core, key, refuse(1, "Session ID unknown"), false, now),
        }
        return;
    }
    if let Some(refusal) = over_socket_limit(conn, core, now) {
        return respond(conn, core, key, refusal, false, now);
    }
    let session = Session::new(now, new_session_id(core.id), core.shared.config.engine);
    conn.out
        .queue(http::websocket_accept(websocket_key).into(), core.metrics());
    let mut credentials = Credentials::from_head(head, &core.shared.config.cors_origins);
    credentials.peer = conn.peer;
    let socket = Socket::new(session, credentials);
    conn.phase = Phase::Socket(Box::new(socket));
    sockets.drive(core, SocketRef::Conn(key), now);
}

/// `/socket.io/?EIO=4&transport=polling…` on connection `key`: the handshake creates a
/// session here; a request with a `sid` goes to the session's shard.
fn polling_request(
    sockets: &mut Sockets,
    core: &mut Core,
    key: u32,
    head: &RequestHead,
    body: &[u8],
    now: Instant,
) {
    let conn = &mut sockets.conns[key as usize];
    let origin = polling::allowed_origin(head, &core.shared.config.cors_origins);
    let keep_alive = head.keep_alive;
    if head.method == "OPTIONS" {
        let bytes = polling::preflight(head, origin.as_deref(), keep_alive);
        respond(conn, core, key, bytes, keep_alive, now);
        return;
    }
    let from = id(conn, core, key);
    let refuse = |code, message: &str| polling::engine_error(code, message, origin.as_deref());
    let Some(sid) = head.query_param("sid") else {
        if head.method != "GET" {
            let message = format!(
                "Bad handshake method: {}; open a session with GET",
                head.method
            );
            respond(conn, core, key, refuse(2, &message), false, now);
            return;
        }
        if let Some(refusal) = over_socket_limit(conn, core, now) {
            return respond(conn, core, key, refusal, false, now);
        }
        wait(conn, keep_alive);
        let get = HeldGet {
            from,
            origin,
            keep_alive,
        };
        let index = sockets.polls.open(core, head, conn.peer, get, now);
        sockets.drive(core, SocketRef::Poll(index), now);
        return;
    };
    let body = match head.method.as_str() {
        "GET" => None,
        "POST" => Some(Bytes::copy_from_slice(body)),
        other => {
            let message = format!("Bad request: method {other}; long-polling uses GET and POST");
            respond(conn, core, key, refuse(3, &message), false, now);
            return;
        }
    };
    let Some(owner) = session_shard(&sid, core.shared.config.shards) else {
        respond(conn, core, key, refuse(1, "Session ID unknown"), false, now);
        return;
    };
    if core.shutdown.is_some() {
        // The node is stopping and the session's shard may be gone: the close packet tells
        // the client at once ("transport close"), so it reconnects elsewhere.
        let bytes = polling::response(200, TEXT_PLAIN, b"1", false, origin.as_deref());
        respond(conn, core, key, bytes, false, now);
        return;
    }
    wait(conn, keep_alive);
    sockets.polls.waiting.insert(key, from.generation);
    let command = PollCommand::Request {
        from,
        sid,
        body,
        origin,
        keep_alive,
    };
    core.send_poll(owner, command);
}

/// The answer to a polling request of connection `to` came back: write it, then take the
/// next pipelined request.
pub fn answered(
    sockets: &mut Sockets,
    core: &mut Core,
    to: ConnectionId,
    response: Vec<u8>,
    keep_alive: bool,
    now: Instant,
) {
    let Some(SocketRef::Conn(key)) = sockets.find(to) else {
        // The client went away before its answer.
        return;
    };
    sockets.polls.waiting.remove(&key);
    let conn = &mut sockets.conns[key as usize];
    if conn.closing.is_some() {
        // Shutdown answered it already.
        return;
    }
    match &mut conn.phase {
        Phase::Http { waiting, .. } => *waiting = false,
        _ => return,
    }
    respond(conn, core, key, response, keep_alive, now);
    core.resume.push(key);
}

/// Shutdown: answers every connection still waiting for a polling answer with the close
/// packet `1` (so the client reports "transport close"), as the session's shard may exit
/// before it answers.
pub fn release_waiters(sockets: &mut Sockets, core: &mut Core, now: Instant) {
    for (key, generation) in std::mem::take(&mut sockets.polls.waiting) {
        let Some(conn) = sockets.conns.get_mut(key as usize) else {
            continue;
        };
        if conn.generation != generation || conn.closing.is_some() {
            continue;
        }
        if let Phase::Http { waiting, .. } = &mut conn.phase {
            if *waiting {
                *waiting = false;
                let bytes = polling::response(200, TEXT_PLAIN, b"1", false, None);
                respond(conn, core, key, bytes, false, now);
            }
        }
    }
}

/// A `429` when the connection's address opened too many sockets lately (see `crate::gate`).
fn over_socket_limit(conn: &Connection, core: &Core, now: Instant) -> Option<Vec<u8>> {
    let refusal = core.shared.gate.new_socket(conn.peer?, now).err()?;
    core.metrics().connections_refused.fetch_add(1, Relaxed);
    Some(http::json_error(429, &refusal.0, false))
}

/// Input on connection `key` waits until the pending answer is written.
fn wait(conn: &mut Connection, keep: bool) {
    if let Phase::Http {
        waiting,
        keep_alive,
        ..
    } = &mut conn.phase
    {
        *waiting = true;
        *keep_alive = keep;
    }
}

/// The id other threads know connection `key` by.
fn id(conn: &Connection, core: &Core, key: u32) -> ConnectionId {
    ConnectionId {
        shard: core.id,
        slot: SocketRef::Conn(key),
        generation: conn.generation,
    }
}

/// `/healthz`: the node's status.
fn health(core: &Core) -> String {
    let shared = &core.shared;
    let connections: i64 = shared
        .metrics
        .shards
        .iter()
        .map(|s| s.connections.load(Relaxed))
        .sum();
    let sockets: i64 = shared
        .metrics
        .shards
        .iter()
        .map(|s| s.sockets.load(Relaxed))
        .sum();
    json!({
        "status": "ok",
        "uptimeSeconds": shared.started.elapsed().as_secs(),
        "node": {
            "shards": shared.config.shards,
            "connections": connections,
            "sockets": sockets,
            "singleNode": shared.config.redis_url.is_none(),
        },
        "store": {
            "kind": shared.store_kind,
            "status": if shared.metrics.store.db_status.load(Relaxed)
                == crate::store::pg::status::DOWN { "unavailable" } else { "ok" },
        },
        "redis": match shared.metrics.cluster.get() {
            Some(cluster) => {
                let mut link = cluster.link.to_json();
                link["node"] = json!(cluster.node.to_string());
                link
            }
            None => json!({"status": "not configured"}),
        },
    })
    .to_string()
}
