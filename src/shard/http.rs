//! The HTTP phase of a connection: request heads (with limits), the WebSocket upgrade on
//! `/socket.io/`, `/healthz`, `/metrics` and the admin API.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use serde_json::json;

use super::connection::{Phase, Socket};
use super::{Close, Shard};
use crate::api::{self, Route};
use crate::chat::{Auth, Credentials};
use crate::mesh::StoreCommand;
use crate::protocol::http::{self, RequestHead};
use crate::protocol::polling;
use crate::protocol::session::Session;

impl Shard {
    /// Handles the request at the start of `buf`; returns the bytes it used (0: need more).
    pub(super) fn http_input(&mut self, slot: u32, buf: &mut [u8], now: Instant) -> usize {
        let config = &self.core.shared.config;
        let parsed = http::parse_head(buf, config.max_header_bytes, config.engine.max_payload);
        let (head, head_len) = match parsed {
            // The head is not complete yet.
            Ok(None) => return 0,
            Ok(Some(found)) => found,
            Err(e) => {
                self.core.metrics().protocol_errors.fetch_add(1, Relaxed);
                self.respond(
                    slot,
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
        if head.path == "/socket.io/" || head.path == "/socket.io" {
            self.engine_request(slot, head, &buf[head_len..total], now);
            return total;
        }
        let keep_alive = head.keep_alive;
        let route = api::route(
            &head,
            &buf[head_len..total],
            config.admin_token.as_deref(),
            config.max_message_chars,
        );
        match route {
            Route::Health => {
                let body = self.health();
                self.respond(
                    slot,
                    http::response(200, "application/json", body.as_bytes(), keep_alive),
                    keep_alive,
                    now,
                );
            }
            Route::Metrics => {
                let body = self.core.shared.metrics.render();
                let bytes = http::response(
                    200,
                    "text/plain; version=0.0.4",
                    body.as_bytes(),
                    keep_alive,
                );
                self.respond(slot, bytes, keep_alive, now);
            }
            Route::Respond { status, body } => {
                let bytes = http::response(status, "application/json", body.as_bytes(), keep_alive);
                self.respond(slot, bytes, keep_alive, now);
            }
            Route::Store(request) => {
                let Some(from) = self.connection_id(slot) else {
                    return total;
                };
                if self
                    .core
                    .mesh
                    .store
                    .send(StoreCommand::Admin { from, request })
                {
                    if let Phase::Http {
                        waiting,
                        keep_alive: keep,
                        ..
                    } = &mut self.conns[slot as usize].phase
                    {
                        *waiting = true;
                        *keep = keep_alive;
                    }
                } else {
                    let bytes = http::json_error(503, "the store is shutting down", false);
                    self.respond(slot, bytes, false, now);
                }
            }
        }
        total
    }

    /// The store answered an admin request: write the response, then take the next
    /// pipelined request if one is buffered.
    pub(super) fn on_admin_reply(&mut self, slot: u32, status: u16, body: String, now: Instant) {
        let keep_alive = match &mut self.conns[slot as usize].phase {
            Phase::Http {
                waiting,
                keep_alive,
                ..
            } => {
                *waiting = false;
                *keep_alive
            }
            Phase::Socket(_) | Phase::Upgrading(_) => return,
        };
        let bytes = http::response(status, "application/json", body.as_bytes(), keep_alive);
        self.respond(slot, bytes, keep_alive, now);
        let Some(conn) = self.conns.get_mut(slot as usize) else {
            return;
        };
        if conn.closing.is_none() && !conn.inbuf.is_empty() {
            let pending = std::mem::take(&mut conn.inbuf);
            self.resume(slot, pending, now);
        }
    }

    /// Queues a response; keeps the connection for the next request or closes it after.
    pub(super) fn respond(&mut self, slot: u32, bytes: Vec<u8>, keep_alive: bool, now: Instant) {
        let timeout = self.core.shared.config.request_timeout;
        let Some(conn) = self.conns.get_mut(slot as usize) else {
            return;
        };
        self.core.queue(conn, bytes.into());
        if keep_alive {
            if let Phase::Http { deadline, .. } = &mut conn.phase {
                *deadline = now + timeout;
            }
            self.mark(slot);
        } else {
            self.close(slot, Close::AfterFlush, "response sent");
        }
    }

    /// `/socket.io/`: Engine.IO's handshake. Errors use Engine.IO's JSON codes.
    fn engine_request(&mut self, slot: u32, head: RequestHead, body: &[u8], now: Instant) {
        if head.query_param("EIO").as_deref() != Some("4") {
            self.respond(
                slot,
                polling::engine_error(5, "Unsupported protocol version", None),
                false,
                now,
            );
            return;
        }
        match head.query_param("transport").as_deref() {
            Some("websocket") => {}
            Some("polling") => {
                self.polling_request(slot, &head, body, now);
                return;
            }
            _ => {
                self.respond(
                    slot,
                    polling::engine_error(0, "Transport unknown", None),
                    false,
                    now,
                );
                return;
            }
        }
        let Some(key) = head.websocket_key.as_deref() else {
            self.respond(
                slot,
                polling::engine_error(3, "Bad request: a WebSocket upgrade was expected", None),
                false,
                now,
            );
            return;
        };
        if let Some(sid) = head.query_param("sid") {
            // An upgrade of a long-polling session (see `upgrade.rs`).
            self.websocket_upgrade(slot, key, sid, now);
            return;
        }
        let bearer = head.bearer_token().map(Box::from);
        let cookie = crate::chat::auth::session_cookie(&head).map(Box::from);
        let accept = http::websocket_accept(key);
        let sid = crate::ids::new_session_id(self.core.id);
        let session = Session::new(now, sid, self.core.shared.config.engine);
        let conn = &mut self.conns[slot as usize];
        self.core.queue(conn, accept.into());
        conn.phase = Phase::Socket(Box::new(Socket {
            session,
            auth: Auth::Pending(Credentials { bearer, cookie }),
            fragment: None,
        }));
        self.drive(slot, now);
    }

    fn health(&self) -> String {
        let shared = &self.core.shared;
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
            "redis": {"status": if shared.config.redis_url.is_some() { "configured" } else { "not configured" }},
        })
        .to_string()
    }
}
