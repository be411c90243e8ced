//! Two shards driven in memory ([`harness::Pair`]): what only the end-to-end suite covered
//! before, now step by step and with virtual time. The routing of polling requests to the
//! shard that owns the session, the handover of a session to the shard of the WebSocket
//! that upgrades it, and connection state recovery across shards.

use std::time::Duration;

use serde_json::{json, Value};

use super::harness::{
    events, messages, request, text_frame, websocket_request, Client, Pair, Received,
};
use crate::ids::{session_shard, ShardId};

const POLLING: &str = "/socket.io/?EIO=4&transport=polling";

/// The `sid` of an Engine.IO open packet.
fn open_sid(packet: &str) -> String {
    let open: Value =
        serde_json::from_str(packet.strip_prefix('0').expect("an open packet")).expect("JSON");
    open["sid"].as_str().expect("a sid").to_owned()
}

/// The `40{…}` CONNECT answer among `packets`, as JSON.
fn connected(packets: &[String]) -> Value {
    let answer = packets
        .iter()
        .find_map(|p| p.strip_prefix("40"))
        .unwrap_or_else(|| panic!("no CONNECT answer in {packets:?}"));
    serde_json::from_str(answer).expect("JSON")
}

/// A polling session opened on `client`'s shard: its sid.
fn open_polling(pair: &mut Pair, client: &Client) -> String {
    pair.send(client, &request("GET", POLLING, b""));
    pair.drive();
    let got = Received::parse(&pair.received(client));
    open_sid(&got.packets()[0])
}

/// A POST of `packets` (already joined) to session `sid` on `client`; asserts the `ok`.
fn post(pair: &mut Pair, client: &Client, sid: &str, packets: &str) {
    let target = format!("{POLLING}&sid={sid}");
    pair.send(client, &request("POST", &target, packets.as_bytes()));
    pair.drive();
    let got = Received::parse(&pair.received(client));
    assert_eq!(got.responses, vec![(200, "ok".to_owned())]);
}

/// A GET of session `sid` on `client`, sent; its answer is read by [`answered`].
fn poll(pair: &mut Pair, client: &Client, sid: &str) {
    let target = format!("{POLLING}&sid={sid}");
    pair.send(client, &request("GET", &target, b""));
    pair.drive();
}

/// The packets of the polling answers `client` received since the last read.
fn answered(pair: &Pair, client: &Client) -> Vec<String> {
    Received::parse(&pair.received(client)).packets()
}

/// A WebSocket socket of user `n` connected on `shard`, with `extra` in its CONNECT
/// payload; returns the client and the CONNECT answer.
fn websocket_member(pair: &mut Pair, shard: usize, n: usize, extra: Value) -> (Client, Value) {
    let client = pair.connect(shard);
    pair.send(&client, &websocket_request(None));
    pair.send(&client, &text_frame(&format!("40{}", pair.auth(n, extra))));
    pair.drive();
    let got = Received::parse(&pair.received(&client));
    assert_eq!(got.responses[0].0, 101);
    (client, connected(&got.frames))
}

/// User `n` sends `content` to the channel over its WebSocket `client`; asserts the ack.
fn say(pair: &mut Pair, client: &Client, content: &str) {
    let data = json!({
        "targetId": pair.world.channel,
        "targetType": "channel",
        "content": content,
    });
    pair.send(
        client,
        &text_frame(&format!("421{}", json!(["message:send", data]))),
    );
    pair.drive();
}

/// The `message:new` contents `client` received over its WebSocket since the last read.
fn heard(pair: &Pair, client: &Client) -> Vec<String> {
    messages(&Received::parse(&pair.received(client)).frames)
}

#[test]
fn polling_requests_reach_the_shard_that_owns_the_session() {
    let mut pair = Pair::new(2);
    let opener = pair.connect(0);
    let sid = open_polling(&mut pair, &opener);
    assert_eq!(session_shard(&sid, 2), Some(ShardId(0)));

    // Every later request arrives on shard 1 and is answered by shard 0's session.
    let other = pair.connect(1);
    let hello = format!("40{}", pair.auth(0, json!({})));
    post(&mut pair, &other, &sid, &hello);
    poll(&mut pair, &other, &sid);
    let packets = answered(&pair, &other);
    assert!(connected(&packets)["sid"].is_string(), "{packets:?}");
    assert_eq!(pair.shards[0].sockets.polls.count(), 1);
    assert_eq!(
        pair.shards[1].sockets.polls.count(),
        0,
        "no session on shard 1"
    );

    // An event posted through shard 1 is acked on the next poll, with its broadcast.
    let data = json!({"targetId": pair.world.channel, "targetType": "channel", "content": "hi"});
    post(
        &mut pair,
        &other,
        &sid,
        &format!("427{}", json!(["message:send", data])),
    );
    poll(&mut pair, &other, &sid);
    let packets = answered(&pair, &other);
    assert_eq!(messages(&packets), ["hi"]);
    let ack = packets
        .iter()
        .find_map(|p| p.strip_prefix("437"))
        .expect("the ack");
    let ack: Value = serde_json::from_str(ack).expect("JSON");
    assert_eq!(ack[0]["success"], true, "{ack}");

    // A sid naming no session of its shard is refused wherever it arrives.
    let stranger = pair.connect(1);
    let unknown = format!("{POLLING}&sid=0aaaaabbbbbcccccddddd");
    pair.send(&stranger, &request("GET", &unknown, b""));
    pair.drive();
    let got = Received::parse(&pair.received(&stranger));
    assert_eq!(got.responses[0].0, 400);
    assert!(got.responses[0].1.contains("Session ID unknown"));
}

#[test]
fn an_upgrade_hands_the_session_to_the_websocket_shard_without_loss_or_repeat() {
    let mut pair = Pair::new(2);
    let (bob, _) = websocket_member(&mut pair, 1, 1, json!({}));

    // Ann polls on shard 0.
    let polling = pair.connect(0);
    let sid = open_polling(&mut pair, &polling);
    let hello = format!("40{}", pair.auth(0, json!({})));
    post(&mut pair, &polling, &sid, &hello);
    poll(&mut pair, &polling, &sid);
    assert!(connected(&answered(&pair, &polling))["sid"].is_string());
    let mut got = Vec::new();

    // Her WebSocket opens on shard 1 while a message reaches her held poll.
    let ws = pair.connect(1);
    pair.send(&ws, &websocket_request(Some(&sid)));
    poll(&mut pair, &polling, &sid);
    say(&mut pair, &bob, "one");
    got.extend(messages(&answered(&pair, &polling)));
    let switched = Received::parse(&pair.received(&ws));
    assert_eq!(switched.responses[0].0, 101);
    assert!(switched.frames.is_empty(), "nothing over the WebSocket yet");

    // The probe releases the next poll with a noop; a message sent then waits in the
    // session's queue on shard 0 (and is kept aside on shard 1).
    pair.send(&ws, &text_frame("2probe"));
    poll(&mut pair, &polling, &sid);
    assert_eq!(answered(&pair, &polling), ["6"]);
    assert_eq!(Received::parse(&pair.received(&ws)).frames, ["3probe"]);
    say(&mut pair, &bob, "two");
    assert!(pair.received(&polling).is_empty(), "no poll is held");

    // `5`: the session moves to shard 1 and what was queued comes over the WebSocket.
    pair.send(&ws, &text_frame("5"));
    pair.drive();
    got.extend(heard(&pair, &ws));
    say(&mut pair, &bob, "three");
    got.extend(heard(&pair, &ws));
    assert_eq!(got, ["one", "two", "three"]);
    assert_eq!(
        pair.shards[0].sockets.polls.count(),
        0,
        "the session left shard 0"
    );
    assert_eq!(heard(&pair, &bob), ["one", "two", "three"]);

    // The old sid is gone from shard 0.
    poll(&mut pair, &polling, &sid);
    let got = Received::parse(&pair.received(&polling));
    assert_eq!(got.responses[0].0, 400);
}

#[test]
fn a_session_detached_on_one_shard_is_recovered_on_the_other() {
    let mut pair = Pair::new(2);
    let (bob, _) = websocket_member(&mut pair, 1, 1, json!({}));
    let (ann, answer) = websocket_member(&mut pair, 0, 0, json!({}));
    let pid = answer["pid"].as_str().expect("a pid").to_owned();
    assert_eq!(session_shard(&pid, 2), Some(ShardId(0)));

    say(&mut pair, &bob, "before");
    let frames = Received::parse(&pair.received(&ann)).frames;
    let (_, data) = &events(&frames)[0];
    let offset = frames[0].rsplit('"').nth(1).expect("an offset").to_owned();
    assert_eq!(data["content"], "before");

    // Ann's transport drops without a goodbye; two messages are sent meanwhile.
    pair.hang_up(&ann);
    pair.drive();
    say(&mut pair, &bob, "missed 1");
    say(&mut pair, &bob, "missed 2");

    // She reconnects on shard 1: shard 0 hands her detached session over.
    let recover = json!({"pid": pid, "offset": offset});
    let (again, answer) = websocket_member_frames(&mut pair, 1, 0, recover);
    assert_eq!(answer.0["pid"], pid.as_str(), "the same session");
    assert_eq!(
        messages(&answer.1),
        ["missed 1", "missed 2"],
        "replayed in order"
    );
    say(&mut pair, &bob, "live");
    assert_eq!(heard(&pair, &again), ["live"]);
}

/// Like [`websocket_member`], also returning every frame after the CONNECT answer.
fn websocket_member_frames(
    pair: &mut Pair,
    shard: usize,
    n: usize,
    extra: Value,
) -> (Client, (Value, Vec<String>)) {
    let client = pair.connect(shard);
    pair.send(&client, &websocket_request(None));
    pair.send(&client, &text_frame(&format!("40{}", pair.auth(n, extra))));
    pair.drive();
    let frames = Received::parse(&pair.received(&client)).frames;
    let at = frames
        .iter()
        .position(|f| f.starts_with("40"))
        .expect("a CONNECT answer");
    let answer = connected(&frames[at..=at]);
    (client, (answer, frames[at + 1..].to_vec()))
}

#[test]
fn a_polling_client_that_stops_polling_is_dropped_at_the_ping_timeout() {
    let mut pair = Pair::new(2);
    let client = pair.connect(1);
    let sid = open_polling(&mut pair, &client);
    let hello = format!("40{}", pair.auth(0, json!({})));
    post(&mut pair, &client, &sid, &hello);
    let engine = pair.shards[1].core.shared.config.engine;

    // At the ping interval the session pings; the client neither polls nor answers.
    pair.advance(engine.ping_interval);
    assert_eq!(pair.shards[1].sockets.polls.count(), 1, "still there");
    pair.advance(engine.ping_timeout - Duration::from_millis(1));
    assert_eq!(
        pair.shards[1].sockets.polls.count(),
        1,
        "not before the timeout"
    );
    pair.advance(Duration::from_millis(1));
    assert_eq!(
        pair.shards[1].sockets.polls.count(),
        0,
        "dropped at the timeout"
    );
    assert_eq!(
        pair.shards[1]
            .core
            .metrics()
            .sockets
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[test]
fn a_flood_of_frames_is_handled_within_a_budget_per_turn_and_finished_on_later_turns() {
    // Fairness must hold whatever a client sends: the idle-packet budget, which would close
    // this flood of pongs, is lifted.
    let mut pair = Pair::with_flags(1, &["--limit-idle-packets", "10000000/1s"]);
    let flooder = pair.connect(0);
    pair.send(&flooder, &websocket_request(None));
    pair.drive();
    assert!(
        !pair.received(&flooder).is_empty(),
        "the 101 and the open packet"
    );
    // Engine.IO `3` frames, four budgets' worth, in one read.
    let frame = text_frame("3");
    let count = super::read::FRAME_BUDGET * 4;
    pair.send(&flooder, &frame.repeat(count));
    let key = pair.key(&flooder);
    let now = pair.now;
    let shard = &mut pair.shards[0];
    shard.on_readable(key, now);
    let conn = &shard.sockets.conns[key as usize];
    assert_eq!(
        conn.inbuf.len(),
        frame.len() * (count - super::read::FRAME_BUDGET),
        "one budget of frames handled, the rest held"
    );
    assert!(conn.more, "it has more: the ready list brings it back");
    shard.end_turn(now);
    assert_eq!(shard.core.ready, vec![key]);
    // Later turns handle the rest, one budget each.
    pair.drive();
    let conn = &pair.shards[0].sockets.conns[key as usize];
    assert!(conn.inbuf.is_empty(), "everything handled");
    assert!(matches!(conn.phase, super::connection::Phase::Socket(_)));
}
