//! Writer lanes on PostgreSQL: several connections store batches at once, yet each room's
//! `message:new` goes out in sequence order before its sender's ack, and a read after sends
//! sees them all.

use std::collections::HashMap;

use super::*;

/// Sends in three rooms (one per lane at most), all queued before the thread starts.
fn sends(w: &World, per_room: u64) -> Vec<StoreCommand> {
    let rooms = [
        (w.ann, Target::Channel(w.general)),
        (w.bob, Target::Dm(w.dm)),
        (w.ann, Target::Channel(w.quiet)),
    ];
    let mut commands = Vec::new();
    for i in 0..per_room {
        for (k, (author, target)) in rooms.iter().enumerate() {
            commands.push(StoreCommand::Send {
                asker: Asker {
                    from: CONN,
                    user: *author,
                    workspace: w.ws,
                },
                ack: Some(i * 3 + k as u64),
                message: new_message(*author, w.ws, *target, &format!("m{i}")),
                received: std::time::Instant::now(),
            });
        }
    }
    commands
}

/// [`sends`], then a history of one of the rooms.
fn interleaved(w: &World, per_room: u64) -> Vec<StoreCommand> {
    let mut commands = sends(w, per_room);
    commands.push(StoreCommand::History {
        asker: Asker {
            from: CONN,
            user: w.ann,
            workspace: w.ws,
        },
        ack: Some(u64::MAX),
        query: query(Target::Channel(w.general), None, None, 100),
    });
    commands
}

#[test]
fn lanes_keep_each_rooms_order_and_a_read_after_sends_sees_them_all() {
    const PER_ROOM: u64 = 40;
    let h = Harness::start_pg_lanes(3, |w| interleaved(w, PER_ROOM));
    let mut last: HashMap<Room, i64> = HashMap::new();
    let mut broadcast: HashMap<Room, Vec<i64>> = HashMap::new();
    let mut acked = 0;
    // Every send's broadcast and ack, in any order across rooms, then the history.
    let page = loop {
        match h.next() {
            ShardCommand::Deliver(b) => {
                let (name, data) = event_of(&b.packet);
                assert_eq!(name, "message:new");
                let sequence = data["sequence"].as_i64().unwrap();
                let previous = last.insert(b.room, sequence).unwrap_or(0);
                assert_eq!(sequence, previous + 1, "room {:?} out of order", b.room);
                broadcast.entry(b.room).or_default().push(sequence);
            }
            ShardCommand::Reply(_, StoreReply::Sent { result, ack }) => {
                let m = result.expect("every send is stored");
                let sent = broadcast.get(&m.room()).map_or(&[][..], Vec::as_slice);
                assert!(
                    sent.contains(&m.sequence),
                    "ack {ack:?} came before its broadcast"
                );
                acked += 1;
            }
            ShardCommand::Reply(_, StoreReply::History { ack, result, .. }) => {
                assert_eq!(ack, Some(u64::MAX));
                break result.unwrap();
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(
        acked,
        3 * PER_ROOM,
        "the history overtook sends queued before it"
    );
    assert_eq!(page.len() as u64, PER_ROOM);
    assert!(broadcast.values().all(|s| s.len() as u64 == PER_ROOM));
    // Everything answered: the store holds nothing back any more.
    assert_eq!(h.metrics.store.messages.load(Relaxed), 3 * PER_ROOM);
    h.stop();
}

#[test]
fn a_lanes_answers_go_out_with_nothing_else_arriving() {
    const PER_ROOM: u64 = 10;
    // Sends only: once they are taken, nothing arrives in the store's inbox but the lanes'
    // own word that a batch is done, which must be enough to answer them.
    let h = Harness::start_pg_lanes(2, |w| sends(w, PER_ROOM));
    let mut acked = 0;
    let mut broadcasts = 0;
    while acked < 3 * PER_ROOM || broadcasts < 3 * PER_ROOM {
        match h.next() {
            ShardCommand::Deliver(_) => broadcasts += 1,
            ShardCommand::Reply(_, StoreReply::Sent { result, .. }) => {
                result.expect("every send is stored");
                acked += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    h.stop();
}
