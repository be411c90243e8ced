//! Tests of the web routes: what is served with and without demo mode, and demo sign-in.

use chrono::Utc;

use super::*;
use crate::protocol::http::parse_head;
use crate::store::MemoryBackend;

fn head(method: &str, target: &str) -> RequestHead {
    let raw = format!("{method} {target} HTTP/1.1\r\nHost: x\r\n\r\n");
    parse_head(raw.as_bytes(), 8192, 1 << 20)
        .unwrap()
        .unwrap()
        .0
}

fn demo() -> Demo {
    demo::seed(&mut MemoryBackend::new(), Utc::now()).unwrap()
}

/// The status line and headers of a `Raw` response, and its body.
fn raw(route: Option<Route>) -> (String, String) {
    match route {
        Some(Route::Raw(bytes)) => {
            let text = String::from_utf8(bytes).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            (head.to_owned(), body.to_owned())
        }
        other => panic!("expected a raw response, got {other:?}"),
    }
}

fn refused(route: Option<Route>) -> (u16, String) {
    match route {
        Some(Route::Respond { status, body }) => {
            let v: Value = serde_json::from_str(&body).unwrap();
            (status, v["error"].as_str().unwrap().to_owned())
        }
        Some(Route::NotAllowed { body, .. }) => refused(Some(Route::Respond { status: 405, body })),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn the_chat_page_is_served_only_in_demo_mode() {
    let demo = demo();
    let (head_text, body) = raw(route(&head("GET", "/"), b"", Some(&demo)));
    assert!(head_text.starts_with("HTTP/1.1 200"), "{head_text}");
    assert!(head_text.contains("Content-Type: text/html"), "{head_text}");
    assert!(head_text.contains("Content-Security-Policy: default-src 'self'"));
    assert!(
        body.contains("/assets/chat.js"),
        "the page loads its script"
    );

    let (status, error) = refused(route(&head("GET", "/"), b"", None));
    assert_eq!(status, 404);
    assert!(error.contains("--demo"), "{error}");
    assert!(error.contains("/dashboard"), "{error}");
}

#[test]
fn the_dashboard_and_assets_are_served_with_or_without_demo_mode() {
    for demo in [None, Some(demo())] {
        let (head_text, body) = raw(route(&head("GET", "/dashboard"), b"", demo.as_ref()));
        assert!(head_text.starts_with("HTTP/1.1 200"));
        assert!(body.contains("/assets/dashboard.js"));
        for (file, kind) in [
            ("socket.js", "text/javascript"),
            ("chat.js", "text/javascript"),
            ("dashboard.js", "text/javascript"),
            ("charts.js", "text/javascript"),
            ("style.css", "text/css"),
        ] {
            let (head_text, body) = raw(route(
                &head("GET", &format!("/assets/{file}")),
                b"",
                demo.as_ref(),
            ));
            assert!(
                head_text.contains(&format!("Content-Type: {kind}")),
                "{file}"
            );
            assert!(!body.is_empty(), "{file}");
        }
    }
    let (status, error) = refused(route(&head("GET", "/assets/nope.js"), b"", None));
    assert_eq!((status, error.as_str()), (404, "no file /assets/nope.js"));
    let (status, _) = refused(route(&head("POST", "/dashboard"), b"", None));
    assert_eq!(status, 405);
}

#[test]
fn other_paths_are_left_to_the_api() {
    for path in [
        "/healthz",
        "/metrics",
        "/api/v1/users",
        "/socket.io/",
        "/assets",
    ] {
        assert!(route(&head("GET", path), b"", None).is_none(), "{path}");
    }
}

#[test]
fn demo_sign_in_is_refused_unless_demo_mode_is_on() {
    let demo = demo();
    let user = demo.users[1].0;
    let body = format!(r#"{{"userId":"{user}"}}"#);
    for path in ["/demo/api/session", "/demo/api/workspace"] {
        let method = if path.ends_with("session") {
            "POST"
        } else {
            "GET"
        };
        let (status, error) = refused(route(&head(method, path), body.as_bytes(), None));
        assert_eq!(status, 403, "{path}");
        assert!(error.contains("--demo"), "{error}");
    }
    match route(
        &head("POST", "/demo/api/session"),
        body.as_bytes(),
        Some(&demo),
    ) {
        Some(Route::Store(AdminRequest::CreateSession { user: u, .. })) => assert_eq!(u, user),
        other => panic!("expected a session request, got {other:?}"),
    }
}

#[test]
fn demo_sign_in_serves_demo_users_only_and_names_bad_bodies() {
    let demo = demo();
    let call = |body: &str| {
        route(
            &head("POST", "/demo/api/session"),
            body.as_bytes(),
            Some(&demo),
        )
    };
    let stranger = format!(r#"{{"userId":"{}"}}"#, UserId::random());
    let (status, error) = refused(call(&stranger));
    assert_eq!(status, 404);
    assert!(error.contains("not a demo user"), "{error}");
    for bad in ["", "{}", "[1]", r#"{"userId":"ann"}"#] {
        let (status, error) = refused(call(bad));
        assert_eq!(status, 400, "{bad:?}");
        assert!(error.contains("userId"), "{error}");
    }
    let (status, _) = refused(route(&head("GET", "/demo/api/session"), b"", Some(&demo)));
    assert_eq!(status, 405);
}

#[test]
fn the_roster_lists_the_demo_workspace() {
    let demo = demo();
    match route(&head("GET", "/demo/api/workspace"), b"", Some(&demo)) {
        Some(Route::Respond { status: 200, body }) => {
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["workspace"]["id"], demo.workspace.to_string());
            assert_eq!(v["users"].as_array().unwrap().len(), demo.users.len());
        }
        other => panic!("expected the roster, got {other:?}"),
    }
}
