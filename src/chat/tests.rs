use super::*;
use crate::ids::{ChannelId, ShardId, Target};
use crate::store::request::HistoryQuery;

fn user() -> User {
    User {
        id: UserId(uuid::Uuid::from_u128(1)),
        name: "Ann".into(),
    }
}

fn member_of(n: u128) -> Target {
    Target::Channel(ChannelId(uuid::Uuid::from_u128(n)))
}

/// Runs one event for Ann, who is in the room of channel 5 only.
fn run(state: &mut ChatState, name: &str, data: Value, ack: Option<u64>) -> Vec<Effect> {
    let budgets = EventBudgets::default();
    run_at(state, &budgets, Instant::now(), name, data, ack)
}

/// [`run`] with these budgets, at `now`.
fn run_at(
    state: &mut ChatState,
    budgets: &EventBudgets,
    now: Instant,
    name: &str,
    data: Value,
    ack: Option<u64>,
) -> Vec<Effect> {
    let u = user();
    let in_room = |room: Room| room == member_of(5).room();
    let ctx = Context {
        conn: ConnectionId {
            shard: ShardId(0),
            slot: crate::ids::SocketRef::Conn(1),
            generation: 1,
        },
        user: &u,
        workspace: WorkspaceId(uuid::Uuid::from_u128(9)),
        max_message_chars: 10,
        budgets,
        now,
        in_room: &in_room,
    };
    let mut out = Vec::new();
    handle_event(&ctx, state, name, vec![data], ack, &mut out);
    out
}

/// Ann connected to workspace 9, in `rooms`.
fn ann(chat: ChatState, rooms: Vec<Room>) -> crate::chat::Member {
    crate::chat::Member {
        user: user(),
        workspace: WorkspaceId(uuid::Uuid::from_u128(9)),
        rooms,
        chat,
        pid: None,
        since_offset: 0,
        removed: false,
    }
}

fn target_json(n: u128) -> Value {
    json!({"targetId": uuid::Uuid::from_u128(n).to_string(), "targetType": "channel"})
}

#[test]
fn send_goes_to_the_store_with_the_socket_scope() {
    let mut state = ChatState::new(Instant::now());
    let data = json!({"targetId": uuid::Uuid::from_u128(5).to_string(), "targetType": "channel", "content": " hi ", "clientMsgId": "c1"});
    match &run(&mut state, "message:send", data, Some(3))[..] {
        [Effect::Store(StoreCommand::Send {
            ack: Some(3),
            message,
            asker,
            ..
        })] => {
            assert_eq!(message.client_msg_id.as_deref(), Some("c1"));
            assert_eq!(message.workspace, Some(asker.workspace));
            assert_eq!(message.author, user().id);
        }
        other => panic!("unexpected effects {other:?}"),
    }
}

#[test]
fn bad_data_is_refused_by_ack_or_error_event() {
    let mut state = ChatState::new(Instant::now());
    match &run(&mut state, "message:send", json!("x"), Some(1))[..] {
        [Effect::Ack(1, v)] => {
            assert_eq!(v["success"], false);
            assert!(v["error"].as_str().unwrap().contains("object"));
        }
        other => panic!("{other:?}"),
    }
    let out = run(&mut state, "nope", Value::Null, None);
    assert!(
        matches!(&out[..], [Effect::Emit("error", v)] if v["message"].as_str().unwrap().contains("\"nope\""))
    );
    let long = json!({"targetId": uuid::Uuid::nil().to_string(), "targetType": "channel", "content": "x".repeat(11)});
    let out = run(&mut state, "message:send", long, Some(2));
    assert!(matches!(&out[..], [Effect::Ack(2, v)] if v["success"] == false));
}

#[test]
fn history_caps_the_limit_and_refuses_zero() {
    let mut state = ChatState::new(Instant::now());
    let q = |limit: Value| json!({"targetId": uuid::Uuid::nil().to_string(), "targetType": "dm", "limit": limit});
    let out = run(&mut state, "message:history", q(json!(500)), Some(1));
    assert!(
        matches!(&out[..], [Effect::Store(StoreCommand::History { query, .. })] if query.limit == 101),
        "100, and one more to tell whether there is more"
    );
    let out = run(&mut state, "message:history", q(json!(0)), Some(1));
    assert!(matches!(&out[..], [Effect::Ack(1, v)] if v["success"] == false));
}

/// A page of `n` messages (sequences 1..=n) of `chars` characters each, as the store found
/// it for a query of `limit` (plus one) after `after` or before the end.
fn page_of(n: i64, chars: usize, limit: u32, after: Option<i64>, max_bytes: usize) -> Value {
    let messages = (1..=n)
        .map(|sequence| crate::model::Message {
            id: MessageId(uuid::Uuid::from_u128(sequence as u128)),
            content: "x".repeat(chars),
            author: user(),
            target: member_of(5),
            sequence,
            client_msg_id: None,
            created_at: chrono::DateTime::UNIX_EPOCH,
            deleted_at: None,
        })
        .collect();
    let query = HistoryQuery {
        target: member_of(5),
        before: None,
        after,
        limit: limit + 1,
    };
    let mut out = Vec::new();
    let reply = StoreReply::History {
        ack: Some(1),
        query,
        result: Ok(messages),
    };
    handle_reply(
        &mut Auth::Pending(Default::default()),
        reply,
        max_bytes,
        &mut out,
    );
    match out.pop() {
        Some(Effect::Ack(1, v)) => v,
        other => panic!("expected an ack, got {other:?}"),
    }
}

fn sequences(page: &Value) -> Vec<i64> {
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["sequence"].as_i64().unwrap())
        .collect()
}

#[test]
fn history_pages_are_capped_by_bytes_and_say_there_is_more() {
    // The store found one more than the limit: there is more.
    let p = page_of(4, 10, 3, Some(0), 1 << 20);
    assert_eq!(
        (sequences(&p), p["hasMore"].clone()),
        (vec![1, 2, 3], json!(true))
    );
    let p = page_of(3, 10, 3, Some(0), 1 << 20);
    assert_eq!(
        (sequences(&p), p["hasMore"].clone()),
        (vec![1, 2, 3], json!(false))
    );
    // Newest page: the newest are kept.
    let p = page_of(4, 10, 3, None, 1 << 20);
    assert_eq!(sequences(&p), vec![2, 3, 4]);
    // 1,000-character messages (some 1,200 bytes of JSON), 3,000 bytes a page: two each,
    // from the anchored end.
    let p = page_of(5, 1000, 10, Some(0), 3000);
    assert_eq!(
        (sequences(&p), p["hasMore"].clone()),
        (vec![1, 2], json!(true))
    );
    let p = page_of(5, 1000, 10, None, 3000);
    assert_eq!(
        (sequences(&p), p["hasMore"].clone()),
        (vec![4, 5], json!(true))
    );
    // One message is always sent, whatever its size.
    let p = page_of(2, 1000, 10, Some(0), 10);
    assert_eq!(sequences(&p), vec![1]);
}

#[test]
fn typing_reaches_the_room_except_the_typist_and_only_when_a_member() {
    let mut state = ChatState::new(Instant::now());
    let out = run(&mut state, "typing:start", target_json(5), None);
    match &out[..] {
        [Effect::Publish(b)] => {
            assert_eq!(b.except, crate::mesh::Except::User(user().id));
            assert_eq!(b.room, member_of(5).room());
            assert!(String::from_utf8_lossy(&b.packet).contains("\"isTyping\":true"));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        run(&mut state, "typing:start", target_json(5), None).is_empty(),
        "refresh only"
    );
    assert!(
        run(&mut state, "typing:start", target_json(6), None).is_empty(),
        "not a member"
    );
    let out = run(&mut state, "typing:stop", target_json(5), None);
    assert!(matches!(&out[..], [Effect::Publish(_)]));
}

#[test]
fn presence_changes_only_on_a_real_switch() {
    let mut state = ChatState::new(Instant::now());
    let out = run(&mut state, "presence:setAway", Value::Null, None);
    assert!(matches!(
        &out[..],
        [Effect::Presence(PresenceCommand::Away { away: true, .. })]
    ));
    assert!(run(&mut state, "presence:setAway", Value::Null, None).is_empty());
    let out = run(&mut state, "presence:setActive", Value::Null, Some(4));
    assert!(matches!(
        &out[..],
        [
            Effect::Presence(PresenceCommand::Away { away: false, .. }),
            Effect::Ack(4, _)
        ]
    ));
    let bad = run(
        &mut state,
        "presence:query",
        json!({"userIds": ["x"]}),
        Some(5),
    );
    assert!(
        matches!(&bad[..], [Effect::Ack(5, v)] if v["error"].as_str().unwrap().contains("\"x\""))
    );
}

fn small_budgets() -> EventBudgets {
    let rate = |burst| crate::limits::Rate {
        burst,
        per: std::time::Duration::from_secs(1),
    };
    EventBudgets {
        sends: rate(3),
        presence: rate(2),
        refused: rate(10),
        ..EventBudgets::default()
    }
}

#[test]
fn a_send_flood_is_refused_told_once_then_cut() {
    let b = small_budgets();
    let t0 = Instant::now();
    let mut state = ChatState::new(t0);
    let send = json!({"targetId": uuid::Uuid::from_u128(5).to_string(), "targetType": "channel", "content": "hi"});
    let outs: Vec<Vec<Effect>> = (0..14)
        .map(|i| run_at(&mut state, &b, t0, "message:send", send.clone(), Some(i)))
        .collect();
    for out in &outs[..3] {
        assert!(matches!(
            &out[..],
            [Effect::Store(StoreCommand::Send { .. })]
        ));
    }
    // The first refusal: its ack, and the one error event.
    match &outs[3][..] {
        [Effect::Ack(3, v), Effect::Emit("error", e)] => {
            assert_eq!(v["success"], false);
            assert!(e["message"]
                .as_str()
                .unwrap()
                .contains("message:send are limited to 3 per 1 s"));
        }
        other => panic!("{other:?}"),
    }
    for out in &outs[4..13] {
        assert!(
            matches!(&out[..], [Effect::Ack(_, v)] if v["success"] == false),
            "{out:?}"
        );
    }
    assert!(matches!(&outs[13][..], [Effect::Cut(_)]), "{:?}", outs[13]);
}

#[test]
fn requests_in_flight_are_bounded_and_freed_by_answers() {
    let b = EventBudgets {
        in_flight: 1,
        ..EventBudgets::default()
    };
    let t0 = Instant::now();
    let mut state = ChatState::new(t0);
    let q = json!({"userIds": []});
    let out = run_at(&mut state, &b, t0, "presence:query", q.clone(), Some(1));
    assert!(matches!(
        &out[..],
        [Effect::Presence(PresenceCommand::Query { .. })]
    ));
    let out = run_at(&mut state, &b, t0, "presence:query", q.clone(), Some(2));
    assert!(
        matches!(&out[..], [Effect::Ack(2, v), Effect::Emit(..)] if v["error"].as_str().unwrap().contains("unanswered"))
    );
    // A refused request does not count.
    let bad = run_at(&mut state, &b, t0, "message:history", json!(1), Some(3));
    assert!(
        matches!(&bad[..], [Effect::Ack(3, v)] if v["error"].as_str().unwrap().contains("unanswered"))
    );
    let mut auth = Auth::Connected(ann(state, Vec::new()));
    let mut out = Vec::new();
    handle_reply(
        &mut auth,
        StoreReply::Presence {
            ack: Some(1),
            statuses: vec![],
        },
        usize::MAX,
        &mut out,
    );
    let Auth::Connected(member) = &mut auth else {
        unreachable!()
    };
    let out = run_at(&mut member.chat, &b, t0, "presence:query", q, Some(4));
    assert!(matches!(&out[..], [Effect::Presence(_)]));
}

#[test]
fn presence_flips_over_the_budget_are_merged_and_the_last_word_wins() {
    // A flip over the budget waits for it (merged: the last word wins) and counts as one of
    // the 10 refusals that cut a socket; a flip back to what was announced counts nothing.
    let b = small_budgets();
    let t0 = Instant::now();
    let mut state = ChatState::new(t0);
    let mut announced = Vec::new();
    let mut errors = 0;
    for i in 0..12 {
        let name = if i % 2 == 0 {
            "presence:setAway"
        } else {
            "presence:setActive"
        };
        for e in run_at(&mut state, &b, t0, name, Value::Null, None) {
            match e {
                Effect::Presence(PresenceCommand::Away { away, .. }) => announced.push(away),
                Effect::Emit("error", _) => errors += 1,
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!(announced, vec![true, false], "the burst of 2, then nothing");
    assert_eq!(errors, 1, "told once");
    // The last word was setActive (i = 11): already announced, nothing waits.
    assert_eq!(state.pending_away, None);
    run_at(&mut state, &b, t0, "presence:setAway", Value::Null, None);
    let (away, at) = state.pending_away.expect("waits for the budget");
    assert!(away && at > t0);
    assert_eq!(state.poll_timeout(), Some(at));
    let mut member = ann(state, Vec::new());
    let mut out = Vec::new();
    connect::expire(&mut member, &b, at, &mut out);
    assert!(matches!(
        &out[..],
        [Effect::Presence(PresenceCommand::Away { away: true, .. })]
    ));
    assert_eq!(member.chat.pending_away, None);
}

#[test]
fn a_socket_that_keeps_flipping_its_presence_is_cut() {
    let b = small_budgets();
    let t0 = Instant::now();
    let mut state = ChatState::new(t0);
    let mut cut_at = None;
    for i in 0..100 {
        let name = if i % 2 == 0 {
            "presence:setAway"
        } else {
            "presence:setActive"
        };
        let out = run_at(&mut state, &b, t0, name, Value::Null, None);
        if out.iter().any(|e| matches!(e, Effect::Cut(_))) {
            cut_at = Some(i);
            break;
        }
    }
    // Flips 0 and 1 are announced; every setAway after them is refused (setActive matches
    // what was announced): the 11th refusal, flip 22, cuts.
    assert_eq!(cut_at, Some(22));
}

#[test]
fn removal_from_the_workspace_leaves_every_room_but_the_users_own() {
    let ws = WorkspaceId(uuid::Uuid::from_u128(9));
    let mut member = crate::chat::Member {
        user: user(),
        workspace: ws,
        rooms: vec![
            Room::User(user().id),
            Room::Workspace(ws),
            member_of(5).room(),
        ],
        chat: ChatState::new(Instant::now()),
        pid: Some("p".into()),
        since_offset: 0,
        removed: false,
    };
    let change = |workspace| crate::model::MembershipChange {
        user: user().id,
        workspace,
        room: Room::Workspace(workspace),
        joined: false,
    };
    let mut out = Vec::new();
    connect::membership(
        &mut member,
        change(WorkspaceId(uuid::Uuid::from_u128(8))),
        &mut out,
    );
    assert!(
        out.is_empty(),
        "another workspace's removal changes nothing"
    );
    connect::membership(&mut member, change(ws), &mut out);
    let left: Vec<Room> = out
        .iter()
        .filter_map(|e| match e {
            Effect::Leave(r) => Some(*r),
            _ => None,
        })
        .collect();
    assert_eq!(left, vec![Room::Workspace(ws), member_of(5).room()]);
    assert!(out
        .iter()
        .any(|e| matches!(e, Effect::Presence(PresenceCommand::Disconnected { .. }))));
    assert!(out.iter().any(|e| matches!(e, Effect::Emit("error", _))));
    assert!(
        member.removed && member.pid.is_none(),
        "not kept for recovery"
    );
}
