//! PostgreSQL's CPU per stored message of the send statement (`src/store/pg/batch.rs`), by
//! batch size, on a `messages` table that already holds rows: the cost that bounds durable
//! sends on a machine whose database shares its cores with the server.
//!
//! The rooms scenario's shape (as `tools/bench-durable`): 2,000 users, 200 channels of 10,
//! random senders, a random clientMsgId per message. Each batch goes through the real
//! backend (`PgBackend::send_batch`); the figure is the CPU time of the backend's PostgreSQL
//! process (read from `/proc`, so PostgreSQL must run on this machine), divided by the rows,
//! and the WAL written meanwhile (the whole server's: run it while nothing else writes).
//!
//! `cargo bench --bench send_statement` (needs PostgreSQL; `OCOMMS_TEST_PG` names another
//! server). Environment: `SEND_PREFILL` rows in `messages` first (default 200,000),
//! `SEND_SIZES` batch sizes (default `54,512`: the batches of 5,000/s and of saturation in
//! the rooms scenario), `SEND_ROWS` rows per size (default 20,000). Compare two commits by
//! running it on each, one after the other: the figures move by 10% from run to run. Under
//! `cargo test` (no `--bench` argument) it is a smoke test: 1,000 prefilled rows and one
//! batch per size.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use ocomms_rt::ids::{ChannelId, Target, UserId, WorkspaceId};
use ocomms_rt::metrics::Metrics;
use ocomms_rt::store::pg::testing::TestDb;
use ocomms_rt::store::pg::{migrate, InsertMethod, PgBackend};
use ocomms_rt::store::{Backend, NewMessage};
use uuid::Uuid;

const USERS: u32 = 2000;
const CHANNELS: u32 = 200;

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        Err(_) => default,
    }
}

fn user(i: u32) -> Uuid {
    Uuid::from_u128(2 << 48 | u128::from(i))
}

fn channel(i: u32) -> Uuid {
    Uuid::from_u128(3 << 48 | u128::from(i))
}

const WORKSPACE: Uuid = Uuid::from_u128(0xaaaa);

/// The schema, the prefilled messages (in channels of their own) and the rooms.
fn prepare(db: &TestDb, prefill: usize) {
    migrate(&db.url()).unwrap();
    let mut c = db.client();
    c.batch_execute(&format!(
        "INSERT INTO workspaces (id, slug, name) VALUES ('{WORKSPACE}', 'bench', 'Bench');
         INSERT INTO users (id, name)
         SELECT ('00000000-0000-0000-0002-' || lpad(to_hex(g), 12, '0'))::uuid, 'user ' || g
         FROM generate_series(0, {users} - 1) g;
         INSERT INTO workspace_members (workspace_id, user_id) SELECT '{WORKSPACE}', id FROM users;
         INSERT INTO channels (id, workspace_id, slug, name)
         SELECT ('00000000-0000-0000-0003-' || lpad(to_hex(g), 12, '0'))::uuid, '{WORKSPACE}',
                'c' || g, 'c' || g
         FROM generate_series(0, {channels} + 99) g;
         INSERT INTO channel_members (channel_id, user_id)
         SELECT ('00000000-0000-0000-0003-' || lpad(to_hex(g / 10), 12, '0'))::uuid,
                ('00000000-0000-0000-0002-' || lpad(to_hex(g), 12, '0'))::uuid
         FROM generate_series(0, {users} - 1) g;
         INSERT INTO messages (id, content, author_id, channel_id, sequence, client_msg_id,
                               created_at, updated_at)
         SELECT gen_random_uuid(), 'prefilled message ' || g || ' ' || repeat('x', 64),
                '00000000-0000-0000-0002-000000000000',
                ('00000000-0000-0000-0003-' || lpad(to_hex({channels} + g % 100), 12, '0'))::uuid,
                g / 100 + 1, 'prefill-' || g, now(), now()
         FROM generate_series(0, {prefill} - 1) g;",
        users = USERS,
        channels = CHANNELS,
    ))
    .unwrap();
    // As a table that has lived a while (a statement of its own: not in a transaction block).
    c.batch_execute("VACUUM (FREEZE, ANALYZE) messages")
        .unwrap();
}

/// CPU time (user + system) of a process on this machine, in seconds.
fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_else(|e| {
        panic!("cannot read /proc/{pid}/stat ({e}): PostgreSQL must run on this machine")
    });
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads a constant of the running system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ticks as f64 / hz as f64
}

/// The server's WAL insert position, in bytes (all databases: run it on a quiet server).
fn wal_position(db: &TestDb) -> i64 {
    db.client()
        .query_one(
            "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::int8",
            &[],
        )
        .unwrap()
        .get(0)
}

/// One batch of `n` messages from random members to their channels.
fn batch(n: usize, rng: &mut u64) -> Vec<NewMessage> {
    (0..n)
        .map(|_| {
            // xorshift: reproducible and free of a dependency.
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            let sender = (*rng % u64::from(USERS)) as u32;
            NewMessage {
                author: UserId(user(sender)),
                workspace: Some(WorkspaceId(WORKSPACE)),
                target: Target::Channel(ChannelId(channel(sender / 10))),
                content: format!("hello from the send statement bench {}", *rng),
                client_msg_id: Some(Uuid::new_v4().to_string()),
            }
        })
        .collect()
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let prefill = env_usize("SEND_PREFILL", if quick { 1_000 } else { 200_000 });
    let rows = env_usize("SEND_ROWS", if quick { 1 } else { 20_000 });
    let sizes: Vec<usize> = std::env::var("SEND_SIZES")
        .unwrap_or_else(|_| "54,512".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("SEND_SIZES: {s:?} is not a batch size"))
        })
        .collect();
    let db = TestDb::create();
    let t = Instant::now();
    prepare(&db, prefill);
    eprintln!(
        "== {prefill} prefilled messages in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let mut backend = PgBackend::new(&db.url(), InsertMethod::Unnest, Arc::new(Metrics::new(1)));
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    // The first batch opens the backend's connection and prepares its statement.
    for r in backend.send_batch(batch(8, &mut rng), Utc::now()) {
        r.expect("the warm-up batch is stored");
    }
    let pid: i32 = db
        .client()
        .query_one(
            "SELECT pid FROM pg_stat_activity
             WHERE datname = current_database() AND application_name LIKE 'ocomms-rt%'",
            &[],
        )
        .expect("one connection of the backend")
        .get(0);
    for &size in &sizes {
        let batches: Vec<Vec<NewMessage>> = (0..rows.div_ceil(size))
            .map(|_| batch(size, &mut rng))
            .collect();
        let wal0 = wal_position(&db);
        let (cpu0, wall0) = (cpu_seconds(pid), Instant::now());
        let mut stored = 0usize;
        for b in batches.iter().cloned() {
            stored += backend
                .send_batch(b, Utc::now())
                .into_iter()
                .filter(|r| r.as_ref().is_ok_and(|s| s.created))
                .count();
        }
        let (cpu, wall) = (cpu_seconds(pid) - cpu0, wall0.elapsed().as_secs_f64());
        let wal = wal_position(&db) - wal0;
        assert_eq!(stored, batches.len() * size, "every message is stored");
        println!(
            "send_statement batch={size}: PostgreSQL CPU {:.1} us/message, {:.2} ms/batch; wall {:.2} ms/batch; WAL {:.0} B/message ({} batches)",
            cpu * 1e6 / stored as f64,
            cpu * 1e3 / batches.len() as f64,
            wall * 1e3 / batches.len() as f64,
            wal as f64 / stored as f64,
            batches.len()
        );
    }
}
