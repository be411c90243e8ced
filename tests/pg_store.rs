//! The PostgreSQL backend's send batch, called directly on a fresh database per test: one bad
//! row does not fail the others, a message the web app inserted at the next sequence does
//! not block the channel, and a clientMsgId another writer stores meanwhile is answered with
//! that writer's message. Needs PostgreSQL (see `ocomms_rt::store::pg::testing`).

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use chrono::Utc;
use ocomms_rt::ids::{ChannelId, Target, UserId, WorkspaceId};
use ocomms_rt::metrics::Metrics;
use ocomms_rt::store::pg::testing::TestDb;
use ocomms_rt::store::pg::{autovacuum, connect, migrate, InsertMethod, PgBackend};
use ocomms_rt::store::{Backend, NewMessage, StoreError};

struct Setup {
    db: TestDb,
    backend: PgBackend,
    ann: UserId,
    ws: WorkspaceId,
    general: ChannelId,
}

fn setup() -> Setup {
    let db = TestDb::create();
    migrate(&db.url()).unwrap();
    let mut backend = PgBackend::new(&db.url(), InsertMethod::Unnest, Arc::new(Metrics::new(1)));
    let now = Utc::now();
    let ann = backend.create_user("Ann", None, now).unwrap();
    let ws = backend.create_workspace("acme", "Acme", now).unwrap();
    backend.add_workspace_member(ws, ann, None).unwrap();
    let general = backend
        .create_channel(ws, "general", "General", false, now)
        .unwrap();
    backend.add_channel_member(general, ann).unwrap();
    Setup {
        db,
        backend,
        ann,
        ws,
        general,
    }
}

impl Setup {
    fn message(&self, content: &str, cmid: Option<&str>) -> NewMessage {
        NewMessage {
            author: self.ann,
            workspace: Some(self.ws),
            target: Target::Channel(self.general),
            content: content.into(),
            client_msg_id: cmid.map(str::to_owned),
        }
    }

    /// Sequences of the batch's messages (panics on a refusal).
    fn send(&mut self, contents: &[&str]) -> Vec<i64> {
        let batch = contents.iter().map(|c| self.message(c, None)).collect();
        self.backend
            .send_batch(batch, Utc::now())
            .into_iter()
            .map(|r| r.expect("stored").message.sequence)
            .collect()
    }

    /// The web app's own insert, at `sequence` of `general`.
    fn foreign_insert(&self, client: &mut postgres::Client, sequence: i64) {
        client
            .execute(
                "INSERT INTO messages (id, content, author_id, channel_id, sequence, created_at, updated_at)
                 VALUES (gen_random_uuid(), 'from the web app', $1, $2, $3, now(), now())",
                &[&self.ann.0, &self.general.0, &sequence],
            )
            .unwrap();
    }
}

#[test]
fn a_row_postgres_cannot_store_is_refused_alone_and_the_rest_of_its_batch_commits() {
    let mut s = setup();
    // Validation refuses a NUL before a batch is formed; this one comes straight to the
    // backend, as a row PostgreSQL refuses would.
    let batch = vec![
        s.message("first", Some("a")),
        s.message("bad \0 row", Some("b")),
        s.message("third", Some("c")),
        s.message("fourth", None),
    ];
    let results = s.backend.send_batch(batch, Utc::now());
    let sequences: Vec<Option<i64>> = results
        .iter()
        .map(|r| r.as_ref().ok().map(|s| s.message.sequence))
        .collect();
    assert_eq!(sequences, [Some(1), None, Some(2), Some(3)]);
    let Err(StoreError::Invalid(why)) = &results[1] else {
        panic!("the NUL row is refused as invalid: {:?}", results[1]);
    };
    assert!(
        why.contains("PostgreSQL cannot store this message"),
        "{why}"
    );
    assert_eq!(count_messages(&s.db), 3, "the three honest rows are stored");
}

#[test]
fn a_foreign_insert_at_the_next_sequence_is_stepped_over() {
    let mut s = setup();
    assert_eq!(s.send(&["one"]), [1]);
    let mut web = s.db.client();
    s.foreign_insert(&mut web, 2);
    assert_eq!(s.send(&["two", "three"]), [3, 4]);
    assert_eq!(s.send(&["four"]), [5], "the channel stays open");
}

#[test]
fn a_channel_the_web_app_wrote_first_goes_on_past_its_messages() {
    let mut s = setup();
    // The web app writes the first messages of a channel: no counter exists for it yet, so
    // the first batch reserves 1..=2, fails on the unique index and heals.
    let mut web = s.db.client();
    for sequence in 1..=3 {
        s.foreign_insert(&mut web, sequence);
    }
    assert_eq!(s.send(&["four", "five"]), [4, 5]);
    assert_eq!(s.send(&["six"]), [6], "the channel stays open");
}

#[test]
fn a_foreign_insert_racing_the_batch_fails_it_once_and_the_retry_heals() {
    let mut s = setup();
    assert_eq!(s.send(&["one"]), [1]);
    // The web app inserts sequence 2 in a transaction still open when the batch runs: the
    // batch cannot see it, reserves 2 too, and waits on the unique index until it commits.
    let mut web = s.db.client();
    let mut tx = web.transaction().unwrap();
    tx.execute(
        "INSERT INTO messages (id, content, author_id, channel_id, sequence, created_at, updated_at)
         VALUES (gen_random_uuid(), 'from the web app', $1, $2, 2, now(), now())",
        &[&s.ann.0, &s.general.0],
    )
    .unwrap();
    let batch = vec![s.message("two", None), s.message("three", None)];
    let mut backend = s.backend;
    let sender = thread::spawn(move || backend.send_batch(batch, Utc::now()));
    wait_for_lock(&s.db);
    tx.commit().unwrap();
    let sequences: Vec<i64> = sender
        .join()
        .unwrap()
        .into_iter()
        .map(|r| r.expect("stored after the retry").message.sequence)
        .collect();
    assert_eq!(sequences, [3, 4]);
}

#[test]
fn a_client_msg_id_another_writer_commits_meanwhile_is_answered_with_its_message() {
    let s = setup();
    // Another writer (a lane of another room, another node) stores Ann's clientMsgId "dup" in
    // a transaction still open when the batch runs: the batch cannot see it, inserts "dup"
    // too, and waits on the unique index until that commits. (Its sequence is far from the
    // one the batch reserves, so only the clientMsgId collides.)
    let mut other = s.db.client();
    let mut tx = other.transaction().unwrap();
    let theirs: uuid::Uuid = tx
        .query_one(
            "INSERT INTO messages (id, content, author_id, channel_id, sequence, client_msg_id,
                                   created_at, updated_at)
             VALUES (gen_random_uuid(), 'stored by the other writer', $1, $2, 1000, 'dup', now(), now())
             RETURNING id",
            &[&s.ann.0, &s.general.0],
        )
        .unwrap()
        .get(0);
    // Alone in its batch: no split in halves retries it by chance.
    let batch = vec![s.message("mine", Some("dup"))];
    let mut backend = s.backend;
    let sender = thread::spawn(move || backend.send_batch(batch, Utc::now()));
    wait_for_lock(&s.db);
    tx.commit().unwrap();
    let results = sender.join().unwrap();
    let dup = results[0]
        .as_ref()
        .expect("answered with the stored message");
    assert_eq!(
        dup.message.id.0, theirs,
        "the other writer's message is the answer"
    );
    assert_eq!(dup.message.content, "stored by the other writer");
    assert!(!dup.created, "nothing new was stored for it");
    assert_eq!(count_messages(&s.db), 1, "one row for the clientMsgId");
}

/// Returns once a connection of the store waits on a lock (a row of another open transaction).
fn wait_for_lock(db: &TestDb) {
    let mut watcher = db.client();
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let waiting: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND application_name = 'ocomms-rt'
                   AND wait_event_type = 'Lock'",
                &[],
            )
            .unwrap()
            .get(0);
        if waiting > 0 {
            return;
        }
        assert!(
            Instant::now() < end,
            "the batch never waited on the other row"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn metrics_show_whether_autovacuum_works() {
    let db = TestDb::create();
    // track_counts may be switched per session (as a superuser, as these tests connect):
    // without it autovacuum has nothing to start from, whatever `autovacuum` says.
    let off = format!("{}?options=-c%20track_counts%3Doff", db.url());
    let mut client = connect(&off).unwrap();
    assert!(!autovacuum::works(&mut client).unwrap());
    let gauge = |url: &str| {
        let metrics = Arc::new(Metrics::new(1));
        assert!(
            !metrics.render().contains("ocomms_store_pg_autovacuum"),
            "not shown before the store has connected"
        );
        let mut backend = PgBackend::new(url, InsertMethod::Unnest, Arc::clone(&metrics));
        backend.check().unwrap();
        metrics
            .render()
            .lines()
            .find_map(|l| {
                l.strip_prefix("ocomms_store_pg_autovacuum ")
                    .map(str::to_owned)
            })
            .expect("the gauge once connected")
    };
    assert_eq!(gauge(&off), "0");
    // With the server's own settings, the gauge says what a plain session sees.
    let plain = autovacuum::works(&mut connect(&db.url()).unwrap()).unwrap();
    assert_eq!(gauge(&db.url()), if plain { "1" } else { "0" });
}

fn count_messages(db: &TestDb) -> i64 {
    db.client()
        .query_one("SELECT count(*) FROM messages", &[])
        .unwrap()
        .get(0)
}
