//! The pages a person opens in a browser: the demo chat page at `/` (demo mode only), the live
//! dashboard at `/dashboard`, their files under `/assets/`, and the demo's roster and sign-in
//! under `/demo/api/`.
//!
//! Every file is written in this repository and compiled into the binary (`include_str!`):
//! no build step, no network, no third-party script. The chat page speaks Engine.IO and
//! Socket.IO over a WebSocket with a small client of its own (`static/socket.js`); the
//! dashboard reads `/api/v1/metrics` and `/api/v1/healthz` with the admin token the operator
//! types in, and draws its charts on canvases.
//!
//! [`route`] only decides, like [`crate::api::route`]: it returns `None` for paths that are
//! not its own, and the shard carries out what it returns.

pub mod demo;

pub use demo::Demo;

use serde_json::Value;

use crate::api::AdminRequest;
use crate::api::{self, Route, DEFAULT_SESSION_TTL_SECS};
use crate::ids::UserId;
use crate::protocol::http::{self, RequestHead};

/// One embedded file: its path under `/assets/`, content type and bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

const CHAT_PAGE: &str = include_str!("static/index.html");
const DASHBOARD_PAGE: &str = include_str!("static/dashboard.html");

/// An [`Asset`] from `static/`, compiled in.
macro_rules! asset {
    ($name:literal, $content_type:expr) => {
        Asset {
            name: $name,
            content_type: $content_type,
            body: include_str!(concat!("static/", $name)),
        }
    };
}

const ASSETS: [Asset; 5] = [
    asset!("socket.js", JS),
    asset!("chat.js", JS),
    asset!("dashboard.js", JS),
    asset!("charts.js", JS),
    asset!("style.css", CSS),
];

/// Headers of every page and file: only this origin's scripts, styles and connections (the
/// WebSocket included), no framing, no referrer; revalidated, so an upgrade shows at once.
const PAGE_HEADERS: [(&str, &str); 4] = [
    (
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-cache"),
];

/// Why demo sign-in and the demo page are refused without demo mode.
const DEMO_OFF: &str = "demo mode is off: start the server with --demo (CHAT_DEMO=1), \
                        without DATABASE_URL, to serve the demo chat page and its sign-in";

/// Decides what to do with a request for one of the web paths; `None` for any other path.
///
/// `demo` is the seeded roster when demo mode is on. Errors are JSON `{"error"}` like the
/// admin API's: 403 for demo calls without demo mode, 404 for an unknown file or user, 405
/// for another method, 400 naming the field for a bad sign-in body.
pub fn route(head: &RequestHead, body: &[u8], demo: Option<&Demo>) -> Option<Route> {
    let path = head.path.as_str();
    let page = |content_type: &'static str, body: &'static str| {
        only(head, "GET").unwrap_or_else(|| {
            Route::Raw(http::write_response(
                200,
                &PAGE_HEADERS,
                content_type,
                body.as_bytes(),
                head.keep_alive,
            ))
        })
    };
    Some(match path {
        "/" | "/index.html" => match demo {
            Some(_) => page(HTML, CHAT_PAGE),
            None => api::error(
                404,
                &format!("no page at {path}: {DEMO_OFF}; the dashboard is at /dashboard"),
            ),
        },
        "/dashboard" | "/dashboard/" => page(HTML, DASHBOARD_PAGE),
        "/demo/api/workspace" => match demo {
            None => api::error(403, DEMO_OFF),
            Some(demo) => only(head, "GET").unwrap_or_else(|| Route::Respond {
                status: 200,
                body: demo.roster.clone(),
            }),
        },
        "/demo/api/session" => match demo {
            None => api::error(403, DEMO_OFF),
            Some(demo) => only(head, "POST").unwrap_or_else(|| sign_in(demo, body)),
        },
        _ => {
            let name = path.strip_prefix("/assets/")?;
            match ASSETS.iter().find(|a| a.name == name) {
                Some(asset) => page(asset.content_type, asset.body),
                None => api::error(404, &format!("no file {path}")),
            }
        }
    })
}

/// `POST /demo/api/session {userId}`: a session for one of the demo users, made by the store
/// like `POST /api/v1/sessions`, answered `{token, expiresAt}`.
fn sign_in(demo: &Demo, body: &[u8]) -> Route {
    let user = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("userId")?.as_str()?.parse::<UserId>().ok());
    match user {
        None => api::error(
            400,
            "send a JSON body {\"userId\": \"<uuid>\"} naming one of the users of GET /demo/api/workspace",
        ),
        Some(user) if !demo.has_user(user) => api::error(
            404,
            &format!("user {user} is not a demo user; pick one from GET /demo/api/workspace"),
        ),
        Some(user) => Route::Store(AdminRequest::CreateSession {
            user,
            ttl_seconds: DEFAULT_SESSION_TTL_SECS,
        }),
    }
}

/// A 405 unless the request uses `method`.
fn only(head: &RequestHead, method: &'static str) -> Option<Route> {
    (head.method != method).then(|| api::method_not_allowed(head, method))
}

#[cfg(test)]
mod tests;
