//! The batch window (`CHAT_DB_BATCH_WINDOW_MS`): a lane starts at most one batch per window,
//! a lane that was idle starts at once, and a read takes held sends at once. The store is
//! driven here without its thread, at chosen instants.

use std::time::Instant;

use super::*;

/// A store over the `world()` data with `window`, the shard inbox it answers on, and the
/// `Poll` its waker needs.
fn store(
    window: Duration,
) -> (
    Store<MemoryBackend>,
    World,
    Receiver<ShardCommand>,
    mio::Poll,
) {
    let (backend, w) = world();
    let (inbox, _) = crossbeam_channel::unbounded();
    let (mesh, shard, poll) = mesh(inbox);
    let store = Store::new(backend, mesh, Arc::new(Metrics::new(1))).with_window(window);
    (store, w, shard, poll)
}

fn send(w: &World, ack: u64, text: &str) -> StoreCommand {
    StoreCommand::Send {
        asker: Asker {
            from: CONN,
            user: w.ann,
            workspace: w.ws,
        },
        ack: Some(ack),
        message: new_message(w.ann, w.ws, Target::Channel(w.general), text),
        received: Instant::now(),
    }
}

/// The acks on the shard's inbox so far, in order (broadcasts skipped).
fn acks(shard: &Receiver<ShardCommand>) -> Vec<u64> {
    shard
        .try_iter()
        .filter_map(|c| match c {
            ShardCommand::Reply(_, StoreReply::Sent { ack, .. }) => ack,
            _ => None,
        })
        .collect()
}

#[test]
fn a_lane_starts_one_batch_per_window_and_a_read_takes_held_sends_at_once() {
    // Longer than the test can take: whatever is held stays held until asked.
    let window = Duration::from_secs(3600);
    let (mut s, w, shard, _poll) = store(window);

    // An idle lane starts at once.
    s.turn([send(&w, 1, "one")]);
    assert_eq!(acks(&shard), [1]);
    let started = s.started[0].expect("the batch's start is kept");

    // Within the window the next sends wait, together, for the window's end.
    s.turn([send(&w, 2, "two")]);
    s.turn([send(&w, 3, "three")]);
    assert_eq!(acks(&shard), Vec::<u64>::new());
    assert_eq!(s.unanswered(), 2);
    assert_eq!(s.due(), Some(started + window));

    // Just before it, still held; at it, one batch takes both.
    s.start_batches(started + window - Duration::from_millis(1), false);
    assert_eq!(acks(&shard), Vec::<u64>::new());
    s.start_batches(started + window, false);
    assert_eq!(acks(&shard), [2, 3]);
    assert_eq!((s.unanswered(), s.due()), (0, None));

    // A history read after a held send does not wait for the window, and sees the send.
    s.turn([send(&w, 4, "four")]);
    assert_eq!(acks(&shard), Vec::<u64>::new());
    s.turn([StoreCommand::History {
        asker: Asker {
            from: CONN,
            user: w.ann,
            workspace: w.ws,
        },
        ack: Some(5),
        query: query(Target::Channel(w.general), None, None, 10),
    }]);
    let mut replies = shard.try_iter().filter_map(|c| match c {
        ShardCommand::Reply(_, reply) => Some(reply),
        _ => None,
    });
    assert!(matches!(
        replies.next(),
        Some(StoreReply::Sent { ack: Some(4), .. })
    ));
    match replies.next() {
        Some(StoreReply::History { result, .. }) => {
            let contents: Vec<String> = result.unwrap().into_iter().map(|m| m.content).collect();
            assert_eq!(contents, ["one", "two", "three", "four"]);
        }
        other => panic!("expected the history, got {other:?}"),
    }
}

#[test]
fn without_a_window_every_turn_starts_its_batch() {
    let (mut s, w, shard, _poll) = store(Duration::ZERO);
    for ack in 1..=3 {
        s.turn([send(&w, ack, "hello")]);
        assert_eq!(acks(&shard), [ack]);
        assert_eq!(s.due(), None);
    }
}
