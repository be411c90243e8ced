//! message:send, message:delete and message:history through the thread, and how sends batch.

use super::*;

#[test]
fn sends_are_sequenced_from_one_and_broadcast_before_the_ack() {
    let h = Harness::start(|_| vec![]);
    let w = &h.w;
    for i in 1..=5 {
        let m = h.post(w.ann, Target::Channel(w.general), &format!("hello {i}"));
        assert_eq!(m.sequence, i);
        assert_eq!(m.author.name, "Ann");
    }
    // Each target counts on its own.
    assert_eq!(h.post(w.bob, Target::Dm(w.dm), "psst").sequence, 1);
    assert_eq!(h.metrics.store.messages.load(Relaxed), 6);
    h.stop();
}

#[test]
fn a_retried_send_returns_the_original_without_a_second_broadcast() {
    let h = Harness::start(|_| vec![]);
    let w = &h.w;
    let mut message = new_message(w.ann, w.ws, Target::Channel(w.general), "once");
    message.client_msg_id = Some("c-1".into());
    h.send(StoreCommand::Send {
        asker: h.asker(w.ann),
        ack: Some(3),
        message: message.clone(),
        received: std::time::Instant::now(),
    });
    let (_, name, _) = h.broadcast();
    assert_eq!(name, "message:new");
    let StoreReply::Sent {
        result: Ok(original),
        ..
    } = h.reply()
    else {
        panic!("first send refused")
    };
    let retried = h.send_message(message).unwrap();
    assert_eq!(retried, original);
    assert_eq!(
        h.post(w.ann, Target::Channel(w.general), "next").sequence,
        2
    );
    h.stop();
}

#[test]
fn sends_outside_membership_or_workspace_are_refused() {
    let h = Harness::start(|_| vec![]);
    let w = &h.w;
    let err = h
        .send_message(new_message(w.carl, w.ws, Target::Channel(w.general), "hi"))
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::Forbidden(format!(
            "user {} is not a member of channel {}",
            w.carl, w.general
        ))
    );
    let err = h
        .send_message(new_message(w.ann, w.ws, Target::Channel(w.elsewhere), "hi"))
        .unwrap_err();
    assert_eq!(err.status(), 403);
    assert!(
        err.message().contains("belongs to another workspace"),
        "{err}"
    );
    let missing = ChannelId::random();
    let err = h
        .send_message(new_message(w.ann, w.ws, Target::Channel(missing), "hi"))
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::NotFound(format!("channel {missing} does not exist"))
    );
    h.stop();
}

#[test]
fn only_the_author_deletes_and_only_the_first_delete_is_announced() {
    let h = Harness::start(|_| vec![]);
    let w = &h.w;
    let m = h.post(w.ann, Target::Channel(w.general), "oops");
    let err = h.delete(w.bob, m.id).unwrap_err();
    assert_eq!(err.status(), 403);
    assert!(err.message().contains("only the author"), "{err}");
    let missing = MessageId::random();
    assert_eq!(h.delete(w.ann, missing).unwrap_err().status(), 404);

    h.send(StoreCommand::Delete {
        asker: h.asker(w.ann),
        ack: Some(9),
        message: m.id,
    });
    let (room, name, data) = h.broadcast();
    assert_eq!(room, Room::Channel(w.general));
    assert_eq!(name, "message:deleted");
    assert_eq!(data["messageId"], m.id.to_string());
    assert_eq!(data["channelId"], w.general.to_string());
    assert!(data["conversationId"].is_null());
    assert_eq!(data["sequence"], 1);
    assert!(data["deletedAt"].is_string());
    assert!(matches!(
        h.reply(),
        StoreReply::Deleted {
            ack: Some(9),
            result: Ok(())
        }
    ));

    // Again: success, and the reply comes with no broadcast before it.
    assert_eq!(h.delete(w.ann, m.id), Ok(()));

    // The tombstone stays in history with its content hidden.
    h.send(StoreCommand::History {
        asker: h.asker(w.bob),
        ack: None,
        query: query(Target::Channel(w.general), None, None, 50),
    });
    let StoreReply::History {
        result: Ok(page), ..
    } = h.reply()
    else {
        panic!("history refused")
    };
    let json = serde_json::to_value(page[0].to_json()).unwrap();
    assert_eq!(json["content"], "");
    assert!(json["deletedAt"].is_string());
    h.stop();
}

#[test]
fn history_pages_through_120_messages() {
    let h = Harness::start(|_| vec![]);
    let w = &h.w;
    let general = Target::Channel(w.general);
    for i in 1..=120 {
        h.post(w.bob, general, &format!("m{i}"));
    }
    let seqs = |from: i64, to: i64| (from..=to).collect::<Vec<_>>();
    assert_eq!(
        h.history(w.ann, query(general, None, None, 50)),
        Ok(seqs(71, 120)),
        "newest by default"
    );
    assert_eq!(
        h.history(w.ann, query(general, None, None, 500)),
        Ok(seqs(20, 120)),
        "capped at 100, and one more that tells a socket whether there is more"
    );
    assert_eq!(
        h.history(w.ann, query(general, Some(71), None, 50)),
        Ok(seqs(21, 70))
    );
    assert_eq!(
        h.history(w.ann, query(general, Some(21), None, 50)),
        Ok(seqs(1, 20))
    );
    assert_eq!(
        h.history(w.ann, query(general, None, Some(100), 50)),
        Ok(seqs(101, 120))
    );
    assert_eq!(
        h.history(w.ann, query(general, None, Some(0), 10)),
        Ok(seqs(1, 10))
    );
    assert_eq!(
        h.history(w.ann, query(general, Some(50), Some(10), 5)),
        Ok(seqs(11, 15))
    );
    assert_eq!(
        h.history(w.ann, query(general, None, Some(120), 50)),
        Ok(vec![])
    );
    assert_eq!(
        h.history(w.ann, query(general, Some(1), None, 50)),
        Ok(vec![])
    );
    assert_eq!(
        h.history(w.bob, query(Target::Dm(w.dm), None, None, 50)),
        Ok(vec![])
    );
    let err = h
        .history(w.carl, query(general, None, None, 50))
        .unwrap_err();
    assert_eq!(err.status(), 403);
    h.stop();
}

#[test]
fn queued_sends_form_one_batch_and_authentication_may_overtake_them() {
    let h = Harness::start(|w| {
        let asker = Asker {
            from: CONN,
            user: w.ann,
            workspace: w.ws,
        };
        let mut commands: Vec<_> = (0..10)
            .map(|i| StoreCommand::Send {
                asker,
                ack: Some(i),
                message: new_message(w.ann, w.ws, Target::Channel(w.general), "batched"),
                received: std::time::Instant::now(),
            })
            .collect();
        commands.insert(
            5,
            StoreCommand::Authenticate {
                from: CONN,
                credential: Credential::Jwt {
                    user: w.bob,
                    name: None,
                },
                workspace: w.ws,
            },
        );
        commands
    });
    assert!(matches!(h.reply(), StoreReply::Authenticated(Ok(_))));
    for i in 0..10 {
        let (_, _, data) = h.broadcast();
        assert_eq!(data["sequence"], i + 1);
        let StoreReply::Sent { ack, result: Ok(m) } = h.reply() else {
            panic!("send refused")
        };
        assert_eq!((ack, m.sequence), (Some(i as u64), i + 1));
    }
    let store = &h.metrics.store;
    assert_eq!(store.batches.load(Relaxed), 1);
    assert_eq!(store.max_batch.load(Relaxed), 10);
    assert_eq!(store.messages.load(Relaxed), 10);
    h.stop();
}

#[test]
fn the_thread_exits_when_its_inbox_closes() {
    let mut h = Harness::start(|_| vec![]);
    assert_eq!(h.thread.as_ref().unwrap().thread().name(), Some("store"));
    h.inbox.take();
    h.thread.take().unwrap().join().unwrap();
}
