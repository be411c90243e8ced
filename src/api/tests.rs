//! Tests of every route and its errors.

use serde_json::{json, Value};

use super::*;
use crate::protocol::http::parse_head;

const TOKEN: &str = "admin-secret";
const A: &str = "6f1c1d2e-0000-4000-8000-00000000000a";
const B: &str = "6f1c1d2e-0000-4000-8000-00000000000b";
const MAX_CHARS: usize = 4000;

fn head(method: &str, target: &str, auth: Option<&str>) -> RequestHead {
    let auth = auth.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let raw = format!("{method} {target} HTTP/1.1\r\nHost: x\r\n{auth}\r\n");
    parse_head(raw.as_bytes(), 8192, 1 << 20)
        .unwrap()
        .unwrap()
        .0
}

/// An admin request with the right token.
fn admin_call(method: &str, target: &str, body: &str) -> Route {
    route(
        &head(method, target, Some(TOKEN)),
        body.as_bytes(),
        Some(TOKEN),
        MAX_CHARS,
    )
}

fn stored(route: Route) -> AdminRequest {
    match route {
        Route::Store(request) => request,
        other => panic!("expected Store, got {other:?}"),
    }
}

/// The status and error text of a `Respond`.
fn refused(route: Route) -> (u16, String) {
    match route {
        Route::NotAllowed { allow, body } => {
            assert!(!allow.is_empty(), "Allow names a method");
            refused(Route::Respond { status: 405, body })
        }
        Route::Respond { status, body } => {
            let body: Value = serde_json::from_str(&body).expect("JSON body");
            (
                status,
                body["error"].as_str().expect("error text").to_owned(),
            )
        }
        other => panic!("expected Respond, got {other:?}"),
    }
}

fn assert_400(route: Route, needle: &str) {
    let (status, message) = refused(route);
    assert_eq!(status, 400, "{message}");
    assert!(
        message.contains(needle),
        "{message:?} should name {needle:?}"
    );
}

#[test]
fn health_and_metrics_need_no_token() {
    assert!(matches!(
        route(&head("GET", "/healthz", None), b"", None, MAX_CHARS),
        Route::Health
    ));
    assert!(matches!(
        route(&head("GET", "/metrics", None), b"", None, MAX_CHARS),
        Route::Metrics
    ));
    assert!(matches!(
        route(&head("GET", "/healthz/", None), b"", None, MAX_CHARS),
        Route::Health
    ));
    let (status, message) = refused(route(&head("POST", "/metrics", None), b"", None, MAX_CHARS));
    assert_eq!(status, 405);
    assert!(message.contains("use GET"), "{message}");
}

#[test]
fn health_and_metrics_under_the_admin_api_need_the_token() {
    let call = |method: &str, path: &str, token: Option<&str>| {
        route(&head(method, path, token), b"", Some(TOKEN), MAX_CHARS)
    };
    assert!(matches!(
        call("GET", "/api/v1/healthz", Some(TOKEN)),
        Route::Health
    ));
    assert!(matches!(
        call("GET", "/api/v1/metrics", Some(TOKEN)),
        Route::Metrics
    ));
    assert_eq!(refused(call("GET", "/api/v1/metrics", None)).0, 401);
    assert_eq!(
        refused(call("GET", "/api/v1/healthz", Some("wrong"))).0,
        401
    );
    assert_eq!(refused(call("POST", "/api/v1/metrics", Some(TOKEN))).0, 405);
    let disabled = route(
        &head("GET", "/api/v1/metrics", Some(TOKEN)),
        b"",
        None,
        MAX_CHARS,
    );
    assert_eq!(refused(disabled).0, 503);
}

#[test]
fn unknown_paths_are_404() {
    for path in [
        "/",
        "/nope",
        "/api/v2/users",
        "/api//v1/users",
        "/healthz/x",
    ] {
        let (status, message) =
            refused(route(&head("GET", path, None), b"", Some(TOKEN), MAX_CHARS));
        assert_eq!(status, 404, "{path}");
        assert!(message.contains(path), "{message}");
    }
    let (status, _) = refused(admin_call("GET", "/api/v1/teams", ""));
    assert_eq!(status, 404);
}

#[test]
fn the_admin_api_is_503_without_a_configured_token() {
    for configured in [None, Some("")] {
        let (status, message) = refused(route(
            &head("POST", "/api/v1/users", Some("anything")),
            b"{}",
            configured,
            MAX_CHARS,
        ));
        assert_eq!(status, 503);
        assert!(message.contains("CHAT_ADMIN_TOKEN"), "{message}");
    }
}

#[test]
fn the_admin_api_is_401_without_the_right_token() {
    for given in [
        None,
        Some("wrong"),
        Some("admin-secre"),
        Some("admin-secretX"),
    ] {
        let (status, message) = refused(route(
            &head("POST", "/api/v1/users", given),
            br#"{"name":"a"}"#,
            Some(TOKEN),
            MAX_CHARS,
        ));
        assert_eq!(status, 401, "{given:?}");
        assert!(
            !message.contains(TOKEN),
            "the admin token leaked: {message}"
        );
    }
    assert!(same_secret(b"abc", b"abc"));
    assert!(!same_secret(b"abd", b"abc"));
    assert!(!same_secret(b"", b"abc"));
    assert!(!same_secret(b"abcd", b"abc"));
}

#[test]
fn wrong_methods_on_admin_paths_are_405() {
    for (method, path, allowed) in [
        ("GET", "/api/v1/users", "POST"),
        (
            "POST",
            format!("/api/v1/channels/{A}/members/{B}").as_str(),
            "DELETE",
        ),
        (
            "DELETE",
            format!("/api/v1/channels/{A}/members").as_str(),
            "POST",
        ),
        (
            "POST",
            format!("/api/v1/channels/{A}/messages").as_str(),
            "GET",
        ),
    ] {
        let (status, message) = refused(admin_call(method, path, "{}"));
        assert_eq!(status, 405, "{method} {path}");
        assert!(message.contains(&format!("use {allowed}")), "{message}");
    }
}

#[test]
fn bodies_must_be_json_objects() {
    assert_400(admin_call("POST", "/api/v1/users", ""), "empty");
    assert_400(
        admin_call("POST", "/api/v1/users", "{\"name\":"),
        "not valid JSON",
    );
    assert_400(admin_call("POST", "/api/v1/users", "[1]"), "JSON object");
}

#[test]
fn create_user() {
    match stored(admin_call(
        "POST",
        "/api/v1/users",
        r#"{"name":" Ada ","email":"a@x.io"}"#,
    )) {
        AdminRequest::CreateUser { name, email } => {
            assert_eq!(name, "Ada");
            assert_eq!(email.as_deref(), Some("a@x.io"));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        stored(admin_call(
            "POST",
            "/api/v1/users",
            r#"{"name":"Ada","email":null}"#
        )),
        AdminRequest::CreateUser { email: None, .. }
    ));
    assert_400(
        admin_call("POST", "/api/v1/users", "{}"),
        "\"name\" is required",
    );
    assert_400(
        admin_call("POST", "/api/v1/users", r#"{"name":"  "}"#),
        "\"name\" must not be empty",
    );
    assert_400(
        admin_call("POST", "/api/v1/users", r#"{"name":5}"#),
        "\"name\" must be a string",
    );
    assert_400(
        admin_call("POST", "/api/v1/users", r#"{"name":"a","email":"nope"}"#),
        "\"email\" \"nope\"",
    );
}

#[test]
fn create_workspace_and_add_member() {
    assert!(matches!(
        stored(admin_call("POST", "/api/v1/workspaces", r#"{"slug":"acme","name":"Acme"}"#)),
        AdminRequest::CreateWorkspace { slug, name } if slug == "acme" && name == "Acme"
    ));
    assert_400(
        admin_call("POST", "/api/v1/workspaces", r#"{"name":"Acme"}"#),
        "\"slug\"",
    );

    let path = format!("/api/v1/workspaces/{A}/members");
    match stored(admin_call(
        "POST",
        &path,
        &format!(r#"{{"userId":"{B}","role":"admin"}}"#),
    )) {
        AdminRequest::AddWorkspaceMember {
            workspace,
            user,
            role,
        } => {
            assert_eq!(workspace.to_string(), A);
            assert_eq!(user.to_string(), B);
            assert_eq!(role.as_deref(), Some("admin"));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        stored(admin_call("POST", &path, &format!(r#"{{"userId":"{B}"}}"#))),
        AdminRequest::AddWorkspaceMember { role: None, .. }
    ));
    assert_400(
        admin_call("POST", &path, r#"{"userId":"bob"}"#),
        "\"userId\" must be a uuid, got \"bob\"",
    );
    assert_400(
        admin_call(
            "POST",
            "/api/v1/workspaces/acme/members",
            &format!(r#"{{"userId":"{B}"}}"#),
        ),
        "workspace id \"acme\" in the path is not a uuid",
    );
}

#[test]
fn channels_and_their_members() {
    let body = format!(r#"{{"workspaceId":"{A}","slug":"general","name":"General"}}"#);
    assert!(matches!(
        stored(admin_call("POST", "/api/v1/channels", &body)),
        AdminRequest::CreateChannel {
            is_private: false,
            ..
        }
    ));
    let body = format!(r#"{{"workspaceId":"{A}","slug":"s","name":"S","isPrivate":true}}"#);
    assert!(matches!(
        stored(admin_call("POST", "/api/v1/channels", &body)),
        AdminRequest::CreateChannel {
            is_private: true,
            ..
        }
    ));
    let body = format!(r#"{{"workspaceId":"{A}","slug":"s","name":"S","isPrivate":"yes"}}"#);
    assert_400(
        admin_call("POST", "/api/v1/channels", &body),
        "\"isPrivate\" must be true or false",
    );
    assert_400(
        admin_call("POST", "/api/v1/channels", r#"{"slug":"s","name":"S"}"#),
        "\"workspaceId\"",
    );

    let members = format!("/api/v1/channels/{A}/members");
    assert!(matches!(
        stored(admin_call("POST", &members, &format!(r#"{{"userId":"{B}"}}"#))),
        AdminRequest::AddChannelMember { channel, user }
            if channel.to_string() == A && user.to_string() == B
    ));
    assert!(matches!(
        stored(admin_call("DELETE", &format!("{members}/{B}"), "")),
        AdminRequest::RemoveChannelMember { channel, user }
            if channel.to_string() == A && user.to_string() == B
    ));
    assert_400(
        admin_call("DELETE", &format!("{members}/bob"), ""),
        "user id \"bob\"",
    );
}

#[test]
fn create_conversation() {
    let body = format!(r#"{{"workspaceId":"{A}","participantIds":["{A}","{B}","{A}"]}}"#);
    match stored(admin_call("POST", "/api/v1/conversations", &body)) {
        AdminRequest::CreateConversation {
            workspace,
            participants,
        } => {
            assert_eq!(workspace.to_string(), A);
            let ids: Vec<String> = participants.iter().map(ToString::to_string).collect();
            assert_eq!(ids, [A, B], "duplicates dropped, order kept");
        }
        other => panic!("{other:?}"),
    }
    let body = format!(r#"{{"workspaceId":"{A}","participantIds":[]}}"#);
    assert_400(
        admin_call("POST", "/api/v1/conversations", &body),
        "at least one",
    );
    let body = format!(r#"{{"workspaceId":"{A}","participantIds":["{A}", 3]}}"#);
    assert_400(
        admin_call("POST", "/api/v1/conversations", &body),
        "\"participantIds\"[1]",
    );
    let body = format!(r#"{{"workspaceId":"{A}"}}"#);
    assert_400(
        admin_call("POST", "/api/v1/conversations", &body),
        "\"participantIds\" is required",
    );
}

#[test]
fn create_session() {
    let body = format!(r#"{{"userId":"{A}"}}"#);
    assert!(matches!(
        stored(admin_call("POST", "/api/v1/sessions", &body)),
        AdminRequest::CreateSession {
            ttl_seconds: 86_400,
            ..
        }
    ));
    let body = format!(r#"{{"userId":"{A}","ttlSeconds":60}}"#);
    assert!(matches!(
        stored(admin_call("POST", "/api/v1/sessions", &body)),
        AdminRequest::CreateSession {
            ttl_seconds: 60,
            ..
        }
    ));
    for ttl in ["0", "-1", "1.5", "\"60\""] {
        let body = format!(r#"{{"userId":"{A}","ttlSeconds":{ttl}}}"#);
        assert_400(
            admin_call("POST", "/api/v1/sessions", &body),
            "\"ttlSeconds\"",
        );
    }
}

#[test]
fn publish_a_message() {
    let body = json!({"authorId": A, "targetId": B, "targetType": "channel",
                      "content": "hello", "clientMsgId": "m1"})
    .to_string();
    match stored(admin_call("POST", "/api/v1/messages", &body)) {
        AdminRequest::Publish(message) => {
            assert_eq!(message.author.to_string(), A);
            assert_eq!(message.workspace, None);
            assert!(matches!(message.target, Target::Channel(c) if c.to_string() == B));
            assert_eq!(message.content, "hello");
            assert_eq!(message.client_msg_id.as_deref(), Some("m1"));
        }
        other => panic!("{other:?}"),
    }
    let body =
        json!({"authorId": A, "targetId": B, "targetType": "dm", "content": "hi"}).to_string();
    assert!(matches!(
        stored(admin_call("POST", "/api/v1/messages", &body)),
        AdminRequest::Publish(NewMessage {
            target: Target::Dm(_),
            client_msg_id: None,
            ..
        })
    ));
}

#[test]
fn published_messages_are_validated() {
    let with = |patch: Value| {
        let mut body =
            json!({"authorId": A, "targetId": B, "targetType": "channel", "content": "x"});
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        admin_call("POST", "/api/v1/messages", &body.to_string())
    };
    assert_400(with(json!({"content": " \n "})), "content is empty");
    assert_400(
        with(json!({"content": "é".repeat(MAX_CHARS + 1)})),
        "limit is 4000",
    );
    assert!(matches!(
        with(json!({"content": "é".repeat(MAX_CHARS)})),
        Route::Store(_)
    ));
    assert_400(with(json!({"content": 1})), "\"content\" must be a string");
    assert_400(with(json!({"targetType": "group"})), "targetType \"group\"");
    assert_400(with(json!({"targetId": "x"})), "targetId \"x\"");
    assert_400(
        with(json!({"authorId": "x"})),
        "\"authorId\" must be a uuid",
    );
    assert_400(with(json!({"clientMsgId": ""})), "clientMsgId");
    assert_400(with(json!({"content": null})), "\"content\" is required");
}

#[test]
fn history_queries() {
    let call = |kind: &str, query: &str| {
        admin_call("GET", &format!("/api/v1/{kind}/{A}/messages{query}"), "")
    };
    match stored(call("channels", "")) {
        AdminRequest::History(q) => {
            assert!(matches!(q.target, Target::Channel(c) if c.to_string() == A));
            assert_eq!((q.after, q.before, q.limit), (None, None, 50));
        }
        other => panic!("{other:?}"),
    }
    match stored(call(
        "conversations",
        "?afterSequence=5&beforeSequence=20&limit=10",
    )) {
        AdminRequest::History(q) => {
            assert!(matches!(q.target, Target::Dm(_)));
            assert_eq!((q.after, q.before, q.limit), (Some(5), Some(20), 10));
        }
        other => panic!("{other:?}"),
    }
    for (query, limit) in [
        ("?limit=1000", 100),
        ("?limit=100", 100),
        ("?limit=99999999999999999999999", 100),
        ("?afterSequence=&beforeSequence=&limit=", 50),
    ] {
        match stored(call("channels", query)) {
            AdminRequest::History(q) => assert_eq!(q.limit, limit, "{query}"),
            other => panic!("{other:?}"),
        }
    }
    assert_400(call("channels", "?limit=0"), "limit 0");
    assert_400(call("channels", "?limit=ten"), "limit \"ten\"");
    assert_400(call("channels", "?limit=-3"), "limit -3");
    assert_400(call("channels", "?afterSequence=x"), "afterSequence \"x\"");
    assert_400(
        call("channels", "?beforeSequence=1.5"),
        "beforeSequence \"1.5\"",
    );
    assert_400(
        admin_call("GET", "/api/v1/channels/general/messages", ""),
        "channel id \"general\"",
    );
}
