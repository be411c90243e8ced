//! The memory backend called directly, without the thread.

use chrono::Duration;

use super::*;
use crate::store::tests::{new_message, t0, world};

fn q(target: Target, before: Option<i64>, after: Option<i64>, limit: u32) -> HistoryQuery {
    HistoryQuery {
        target,
        before,
        after,
        limit,
    }
}

#[test]
fn page_windows_follow_the_cursor_rules() {
    let seqs = |r: std::ops::Range<usize>| (r.start + 1, r.end);
    let t = Target::Channel(ChannelId::random());
    assert_eq!(seqs(page(120, &q(t, None, None, 50))), (71, 120));
    // 100 and one more, which tells a socket whether there is more.
    assert_eq!(seqs(page(120, &q(t, None, None, 1000))), (20, 120));
    assert_eq!(seqs(page(120, &q(t, Some(30), None, 50))), (1, 29));
    assert_eq!(seqs(page(120, &q(t, None, Some(110), 50))), (111, 120));
    assert_eq!(seqs(page(120, &q(t, Some(i64::MAX), Some(-5), 3))), (1, 3));
    assert_eq!(page(120, &q(t, Some(i64::MIN), None, 3)), 0..0);
    assert_eq!(page(120, &q(t, Some(10), Some(20), 3)), 0..0);
    assert_eq!(page(0, &q(t, None, None, 50)), 0..0);
    assert_eq!(
        page(5, &q(t, None, None, 0)).len(),
        1,
        "a zero limit reads one"
    );
}

#[test]
fn sessions_expire_at_their_instant() {
    let (mut b, w) = world();
    b.create_session(w.ann, "tok", t0() + Duration::seconds(10), t0())
        .unwrap();
    let session = Credential::Session("tok".into());
    let before = t0() + Duration::seconds(9);
    assert_eq!(
        b.authenticate(&session, w.ws, before).unwrap().user.id,
        w.ann
    );
    let at = t0() + Duration::seconds(10);
    assert_eq!(
        b.authenticate(&session, w.ws, at).unwrap_err().status(),
        403
    );
}

#[test]
fn a_batch_sequences_in_order_and_dedupes_within_itself() {
    let (mut b, w) = world();
    let general = Target::Channel(w.general);
    let mut keyed = new_message(w.ann, w.ws, general, "a");
    keyed.client_msg_id = Some("k".into());
    let batch = vec![
        keyed.clone(),
        new_message(w.bob, w.ws, general, "b"),
        keyed,
        new_message(w.carl, w.ws, general, "c"),
        new_message(w.bob, w.ws, Target::Dm(w.dm), "d"),
    ];
    let results = b.send_batch(batch, t0());
    assert_eq!(results.len(), 5);
    let first = results[0].as_ref().unwrap();
    assert_eq!((first.message.sequence, first.created), (1, true));
    assert_eq!(first.message.created_at, t0());
    assert_eq!(results[1].as_ref().unwrap().message.sequence, 2);
    let retry = results[2].as_ref().unwrap();
    assert_eq!((retry.message.id, retry.created), (first.message.id, false));
    assert_eq!(results[3].as_ref().unwrap_err().status(), 403);
    assert_eq!(results[4].as_ref().unwrap().message.sequence, 1);

    // The same key from another author is another message.
    let mut other = new_message(w.bob, w.ws, general, "e");
    other.client_msg_id = Some("k".into());
    let results = b.send_batch(vec![other], t0());
    assert_eq!(results[0].as_ref().unwrap().message.sequence, 3);
}

#[test]
fn unknown_author_is_named() {
    let (mut b, w) = world();
    let ghost = UserId::random();
    let mut m = new_message(ghost, w.ws, Target::Channel(w.general), "boo");
    m.workspace = None;
    let results = b.send_batch(vec![m], t0());
    assert_eq!(
        results[0].as_ref().unwrap_err(),
        &StoreError::NotFound(format!("user {ghost} does not exist"))
    );
}

#[test]
fn delete_sets_deleted_at_once_and_checks_the_workspace() {
    let (mut b, w) = world();
    let elsewhere = new_message(w.ann, w.ws2, Target::Channel(w.elsewhere), "x");
    let m = b
        .send_batch(vec![elsewhere], t0())
        .remove(0)
        .unwrap()
        .message;
    let err = b.delete(w.ann, w.ws, m.id, t0()).unwrap_err();
    assert!(err.message().contains("another workspace"), "{err}");

    let later = t0() + Duration::seconds(5);
    let first = b.delete(w.ann, w.ws2, m.id, later).unwrap();
    assert!(first.first);
    assert_eq!(first.message.deleted_at, Some(later));
    assert_eq!(first.message.content, "", "a tombstone keeps no text");
    let again = b
        .delete(w.ann, w.ws2, m.id, later + Duration::seconds(1))
        .unwrap();
    assert!(!again.first);
    assert_eq!(
        again.message.deleted_at,
        Some(later),
        "the first time stays"
    );
}

#[test]
fn removing_a_member_drops_the_room_from_the_next_grant() {
    let (mut b, w) = world();
    let jwt = Credential::Jwt {
        user: w.ann,
        name: None,
    };
    let change = b.remove_channel_member(w.quiet, w.ann).unwrap();
    assert_eq!(change.room, Room::Channel(w.quiet));
    assert!(!change.joined);
    let rooms = b.authenticate(&jwt, w.ws, t0()).unwrap().rooms;
    assert!(!rooms.contains(&Room::Channel(w.quiet)));
    assert!(b.add_channel_member(w.quiet, w.ann).unwrap().is_some());
    assert!(
        b.add_channel_member(w.quiet, w.ann).unwrap().is_none(),
        "already a member: nothing to announce"
    );
    assert_eq!(
        b.check_member(w.ann, w.ws, Target::Channel(w.quiet)),
        Ok(())
    );
}

#[test]
fn conversations_need_participants_in_the_workspace() {
    let (mut b, w) = world();
    let err = b.create_conversation(w.ws, &[], t0()).unwrap_err();
    assert_eq!(err.status(), 400);
    let err = b
        .create_conversation(w.ws, &[w.ann, w.dave], t0())
        .unwrap_err();
    assert_eq!(err.status(), 409);
    assert!(err.message().contains(&w.dave.to_string()), "{err}");
    let err = b
        .create_conversation(WorkspaceId::random(), &[w.ann], t0())
        .unwrap_err();
    assert_eq!(err.status(), 404);
    let err = b
        .create_conversation(w.ws, &[UserId::random()], t0())
        .unwrap_err();
    assert_eq!(err.status(), 404);
}

#[test]
fn channel_slugs_are_unique_per_workspace_only() {
    let (mut b, w) = world();
    // `general` exists in both workspaces already (see `world`); a third is refused.
    let err = b
        .create_channel(w.ws2, "general", "Again", false, t0())
        .unwrap_err();
    assert_eq!(err.status(), 409);
    assert!(err.message().contains("\"general\""), "{err}");
    let err = b
        .create_channel(WorkspaceId::random(), "x", "X", false, t0())
        .unwrap_err();
    assert_eq!(err.status(), 404);
}
