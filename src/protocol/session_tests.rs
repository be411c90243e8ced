//! Session flows driven by hand-written packets and a fake clock (a base `Instant` plus
//! offsets), so no test sleeps.

use std::time::{Duration, Instant};

use serde_json::json;

use super::*;

fn limits() -> EngineLimits {
    EngineLimits {
        ping_interval: Duration::from_millis(25_000),
        ping_timeout: Duration::from_millis(20_000),
        max_payload: 1000,
        ..EngineLimits::default()
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn drain(s: &mut Session) -> Vec<String> {
    std::iter::from_fn(|| s.poll_transmit()).collect()
}

fn events(s: &mut Session) -> Vec<SessionEvent> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

/// A session whose open packet was drained and whose CONNECT was accepted at `t0`.
fn connected(t0: Instant) -> Session {
    let mut s = Session::new(t0, "eio-sid".into(), limits());
    drain(&mut s);
    s.handle_text(t0, "40").unwrap();
    events(&mut s);
    s.accept("sio-sid", None);
    drain(&mut s);
    s
}

#[test]
fn open_packet_is_sent_first() {
    let t0 = Instant::now();
    let mut s = Session::new(t0, "lv_VI97HAXpY6yYWAAAC".into(), limits());
    assert_eq!(s.sid(), "lv_VI97HAXpY6yYWAAAC");
    assert_eq!(
        drain(&mut s),
        [
            r#"0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000}"#
        ]
    );
    assert!(!s.is_connected());
    assert_eq!(s.poll_event(), None);
}

#[test]
fn pings_every_interval_and_pong_reschedules() {
    let t0 = Instant::now();
    let mut s = connected(t0);
    assert_eq!(s.poll_timeout(), Some(t0 + ms(25_000)));
    s.handle_timeout(t0 + ms(24_999)).unwrap();
    assert!(drain(&mut s).is_empty(), "no ping before pingInterval");
    s.handle_timeout(t0 + ms(25_000)).unwrap();
    assert_eq!(drain(&mut s), ["2"]);
    assert_eq!(s.poll_timeout(), Some(t0 + ms(45_000)), "pong deadline");
    s.handle_text(t0 + ms(26_000), "3").unwrap();
    assert_eq!(
        s.poll_timeout(),
        Some(t0 + ms(51_000)),
        "next ping a pingInterval after the pong"
    );
    s.handle_timeout(t0 + ms(45_000)).unwrap();
    assert!(drain(&mut s).is_empty(), "the old pong deadline is gone");
    s.handle_timeout(t0 + ms(51_000)).unwrap();
    assert_eq!(drain(&mut s), ["2"]);
    assert!(s.is_connected());
}

#[test]
fn missing_pong_times_out() {
    let t0 = Instant::now();
    let mut s = connected(t0);
    s.handle_timeout(t0 + ms(25_000)).unwrap();
    assert_eq!(drain(&mut s), ["2"]);
    s.handle_text(t0 + ms(30_000), r#"42["still","here"]"#)
        .unwrap();
    s.handle_timeout(t0 + ms(44_999)).unwrap();
    assert_eq!(
        s.handle_timeout(t0 + ms(45_000)),
        Err(ProtocolError::PingTimeout),
        "only a pong answers a ping"
    );
    assert!(!s.is_connected());
    assert_eq!(s.poll_timeout(), None);
    s.handle_text(t0 + ms(45_001), "3").unwrap();
    assert_eq!(
        s.handle_timeout(t0 + ms(90_000)),
        Ok(()),
        "closed stays quiet"
    );
}

#[test]
fn unsolicited_pong_changes_nothing() {
    let t0 = Instant::now();
    let mut s = connected(t0);
    s.handle_text(t0 + ms(1_000), "3").unwrap();
    assert_eq!(s.poll_timeout(), Some(t0 + ms(25_000)));
}

#[test]
fn connect_without_auth_is_accepted() {
    let t0 = Instant::now();
    let mut s = Session::new(t0, "e".into(), limits());
    drain(&mut s);
    assert_eq!(s.poll_timeout(), Some(t0 + ms(25_000)));
    s.handle_text(t0, "40").unwrap();
    assert_eq!(
        events(&mut s),
        [SessionEvent::Connect {
            auth: None,
            pid: None,
            offset: None
        }]
    );
    s.accept("wZX3oN0bSVIhsaknAAAI", None);
    assert_eq!(drain(&mut s), [r#"40{"sid":"wZX3oN0bSVIhsaknAAAI"}"#]);
    assert!(s.is_connected());
}

#[test]
fn connect_auth_and_recovery_fields_are_extracted() {
    let t0 = Instant::now();
    let mut s = Session::new(t0, "e".into(), limits());
    drain(&mut s);
    let auth = json!({"token": "t", "workspaceId": "w", "pid": "p1", "offset": "o9"});
    s.handle_text(t0, &format!("40{auth}")).unwrap();
    assert_eq!(
        events(&mut s),
        [SessionEvent::Connect {
            auth: Some(auth),
            pid: Some("p1".into()),
            offset: Some("o9".into())
        }]
    );
    s.accept("s1", Some("p2"));
    assert_eq!(drain(&mut s), [r#"40{"sid":"s1","pid":"p2"}"#]);
}

#[test]
fn refused_connect_may_be_retried() {
    let t0 = Instant::now();
    let mut s = Session::new(t0, "e".into(), limits());
    drain(&mut s);
    s.handle_text(t0, r#"40{"token":"bad"}"#).unwrap();
    assert_eq!(events(&mut s).len(), 1);
    s.handle_text(t0, r#"40{"token":"again"}"#).unwrap();
    assert!(
        events(&mut s).is_empty(),
        "ignored while the first is pending"
    );
    s.refuse("Token expired; sign in again");
    assert_eq!(
        drain(&mut s),
        [r#"44{"message":"Token expired; sign in again"}"#]
    );
    assert!(!s.is_connected());
    assert_eq!(
        s.handle_text(t0, r#"42["x"]"#),
        Err(ProtocolError::NotConnected)
    );

    let mut s = Session::new(t0, "e".into(), limits());
    drain(&mut s);
    s.handle_text(t0, "40").unwrap();
    s.refuse("no");
    s.handle_text(t0, r#"40{"token":"good"}"#).unwrap();
    assert_eq!(
        events(&mut s),
        [
            SessionEvent::Connect {
                auth: None,
                pid: None,
                offset: None
            },
            SessionEvent::Connect {
                auth: Some(json!({"token": "good"})),
                pid: None,
                offset: None
            }
        ]
    );
}

#[test]
fn second_connect_after_accept_is_ignored() {
    let t0 = Instant::now();
    let mut s = connected(t0);
    s.handle_text(t0, r#"40{"token":"x"}"#).unwrap();
    assert!(events(&mut s).is_empty());
    assert!(drain(&mut s).is_empty());
    s.accept("other", None);
    assert!(drain(&mut s).is_empty(), "accept twice sends nothing");
}

#[test]
fn connect_must_come_in_time() {
    let t0 = Instant::now();
    let mut s = Session::new(t0, "e".into(), limits());
    drain(&mut s);
    s.handle_timeout(t0 + ms(25_000)).unwrap();
    s.handle_text(t0 + ms(25_100), "3").unwrap();
    assert_eq!(s.poll_timeout(), Some(t0 + ms(45_000)), "CONNECT deadline");
    assert_eq!(
        s.handle_timeout(t0 + ms(45_000)),
        Err(ProtocolError::ConnectTimeout)
    );
}

#[test]
fn event_before_connect_is_refused() {
    let t0 = Instant::now();
    let mut s = Session::new(t0, "e".into(), limits());
    drain(&mut s);
    assert_eq!(
        s.handle_text(t0, r#"42["message:send",{}]"#),
        Err(ProtocolError::NotConnected)
    );
    assert_eq!(s.poll_timeout(), None, "closed after an error");
}

#[test]
fn events_after_connect_carry_name_args_and_ack() {
    let t0 = Instant::now();
    let mut s = connected(t0);
    s.handle_text(
        t0,
        r#"4212["message:send",{"targetId":"c1","targetType":"channel","content":"hi"}]"#,
    )
    .unwrap();
    s.handle_text(t0, r#"42["presence:setAway"]"#).unwrap();
    s.handle_text(t0, r#"42["message","1",2,{"3":[true]}]"#)
        .unwrap();
    assert_eq!(
        events(&mut s),
        [
            SessionEvent::Event {
                name: "message:send".into(),
                args: vec![json!({"targetId":"c1","targetType":"channel","content":"hi"})],
                ack: Some(12)
            },
            SessionEvent::Event {
                name: "presence:setAway".into(),
                args: vec![],
                ack: None
            },
            SessionEvent::Event {
                name: "message".into(),
                args: vec![json!("1"), json!(2), json!({"3": [true]})],
                ack: None
            }
        ]
    );
}

#[test]
fn acks_and_emits_encode_as_socket_io_packets() {
    let t0 = Instant::now();
    let mut s = connected(t0);
    s.ack(12, &json!({"success": true, "messageId": "m1"}));
    s.ack(456, &json!([1, "2"]));
    s.emit("error", &json!({"message": "Unknown event \"x\""}));
    assert_eq!(
        drain(&mut s),
        [
            r#"4312[{"messageId":"m1","success":true}]"#,
            r#"43456[[1,"2"]]"#,
            r#"42["error",{"message":"Unknown event \"x\""}]"#,
        ]
    );
}

#[test]
fn unknown_namespace_connect_gets_connect_error() {
    let t0 = Instant::now();
    let mut s = Session::new(t0, "e".into(), limits());
    drain(&mut s);
    s.handle_text(t0, "40/random").unwrap();
    s.handle_text(t0, r#"40/admin,{"token":"1"}"#).unwrap();
    assert_eq!(
        drain(&mut s),
        [
            r#"44/random,{"message":"Invalid namespace"}"#,
            r#"44/admin,{"message":"Invalid namespace"}"#
        ]
    );
    assert!(events(&mut s).is_empty());
    s.handle_text(t0, "41/admin,").unwrap();
    assert_eq!(
        s.handle_text(t0, r#"42/admin,["x"]"#),
        Err(ProtocolError::UnknownNamespace("/admin".into()))
    );
}

#[test]
fn client_ends_the_socket() {
    let t0 = Instant::now();
    let mut s = connected(t0);
    s.handle_text(t0, "41").unwrap();
    s.handle_text(t0, "1").unwrap();
    assert_eq!(
        events(&mut s),
        [SessionEvent::Closed {
            reason: CloseReason::ClientDisconnect
        }],
        "one Closed; the Engine.IO close after it is ignored"
    );
    assert!(!s.is_connected());

    let mut s = connected(t0);
    s.handle_text(t0, "1").unwrap();
    assert_eq!(
        events(&mut s),
        [SessionEvent::Closed {
            reason: CloseReason::TransportClose
        }]
    );
    s.emit("late", &1);
    assert!(drain(&mut s).is_empty(), "nothing is queued once closed");
}

#[test]
fn server_disconnect_queues_41() {
    let t0 = Instant::now();
    let mut s = connected(t0);
    s.disconnect();
    assert_eq!(drain(&mut s), ["41"]);
    assert!(!s.is_connected());
    assert_eq!(s.poll_timeout(), None);
    assert!(events(&mut s).is_empty());
}

#[test]
fn probe_and_upgrade_are_answered() {
    let t0 = Instant::now();
    let mut s = Session::new(t0, "e".into(), limits());
    drain(&mut s);
    s.handle_text(t0, "2probe").unwrap();
    s.handle_text(t0, "5").unwrap();
    s.handle_text(t0, "6").unwrap();
    s.handle_text(t0, "2").unwrap();
    assert_eq!(drain(&mut s), ["3probe", "3"]);
}

#[test]
fn client_acks_are_ignored() {
    let t0 = Instant::now();
    let mut s = connected(t0);
    s.handle_text(t0, r#"433["ok"]"#).unwrap();
    assert!(events(&mut s).is_empty());
    assert!(s.is_connected());
}

#[test]
fn oversize_binary_and_malformed_input_close_the_session() {
    let t0 = Instant::now();
    let big = format!(r#"42["x","{}"]"#, "a".repeat(1000));
    let mut s = connected(t0);
    assert_eq!(
        s.handle_text(t0, &big),
        Err(ProtocolError::PayloadTooLarge {
            len: big.len(),
            max: 1000
        })
    );
    assert!(!s.is_connected());

    let mut s = connected(t0);
    assert_eq!(
        s.handle_binary(t0, &[1, 2, 3]),
        Err(ProtocolError::BinaryUnsupported)
    );
    let mut s = connected(t0);
    assert_eq!(
        s.handle_text(t0, r#"451-["x",{"_placeholder":true,"num":0}]"#),
        Err(ProtocolError::BinaryUnsupported)
    );

    // The test suite's "invalid handshake": "4abc" must close the connection.
    for bad in [
        "4abc",
        "",
        "9",
        "0",
        r#"44{"message":"x"}"#,
        "42[1]",
        "42{}",
        "42[]",
    ] {
        let mut s = connected(t0);
        let err = s.handle_text(t0, bad).unwrap_err();
        assert!(
            matches!(err, ProtocolError::Malformed(_)),
            "{bad:?} gave {err:?}"
        );
        assert!(!s.is_connected(), "{bad:?} closes the session");
    }
}

#[test]
fn session_stays_small() {
    // Hundreds of thousands live at once; catch accidental growth.
    assert!(
        std::mem::size_of::<Session>() <= 160,
        "Session is {} bytes",
        std::mem::size_of::<Session>()
    );
}

#[test]
fn a_stream_of_packets_without_events_is_closed_past_its_budget_and_events_are_not_counted() {
    let t0 = Instant::now();
    let rate = crate::limits::Rate {
        burst: 5,
        per: Duration::from_secs(1),
    };
    let mut s = Session::new(
        t0,
        "sid".into(),
        EngineLimits {
            idle_packets: rate,
            ..limits()
        },
    );
    s.handle_text(t0, "40").unwrap();
    s.accept("x", None);
    // Events are the application's to budget: any number of them passes here.
    for _ in 0..50 {
        s.handle_text(t0, r#"42["hello"]"#).unwrap();
    }
    for _ in 0..5 {
        s.handle_text(t0, "3").unwrap();
    }
    // A second later five more tokens are back.
    let later = t0 + Duration::from_secs(1);
    for _ in 0..5 {
        s.handle_text(later, "6").unwrap();
    }
    let err = s.handle_text(later, "3").unwrap_err();
    assert_eq!(err, ProtocolError::Idle(rate));
    assert_eq!(err.close_code(), 1008);
    assert!(err.to_string().contains("CHAT_LIMIT_IDLE_PACKETS"), "{err}");
    assert!(!s.is_connected(), "the session is closed");
}
