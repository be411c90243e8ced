//! Throw-away databases for tests and benchmarks: each [`TestDb`] is a fresh database
//! `ocomms_test_<pid>_<n>` on the server named by `OCOMMS_TEST_PG` (default
//! `postgres://postgres@127.0.0.1:5432`), dropped again when the value is dropped, so runs
//! never collide.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

use postgres::{Client, NoTls};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A database that exists while this value lives.
pub struct TestDb {
    server: String,
    name: String,
}

/// The server tests use: `OCOMMS_TEST_PG`, or the local default.
pub fn server_url() -> String {
    std::env::var("OCOMMS_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

impl TestDb {
    /// Creates a fresh, empty database (no migrations applied yet).
    ///
    /// # Panics
    /// When the server cannot be reached: these tests need a running PostgreSQL.
    pub fn create() -> TestDb {
        let server = server_url();
        let name = format!(
            "ocomms_test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Relaxed)
        );
        let mut admin = Client::connect(&format!("{server}/postgres"), NoTls).unwrap_or_else(|e| {
            panic!("these tests need PostgreSQL at {server} (set OCOMMS_TEST_PG to another server): {e}")
        });
        // Two statements: CREATE DATABASE cannot run inside the implicit transaction of a
        // multi-statement batch.
        for sql in [
            format!("DROP DATABASE IF EXISTS {name}"),
            format!("CREATE DATABASE {name}"),
        ] {
            admin
                .batch_execute(&sql)
                .unwrap_or_else(|e| panic!("cannot create test database {name}: {e:?}"));
        }
        TestDb { server, name }
    }

    /// The database's URL, for `DATABASE_URL`.
    pub fn url(&self) -> String {
        format!("{}/{}", self.server, self.name)
    }

    /// A plain connection to the database, for checks.
    pub fn client(&self) -> Client {
        Client::connect(&self.url(), NoTls)
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.url()))
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // FORCE ends connections still open (a killed server's, a leaked thread's).
        if let Ok(mut admin) = Client::connect(&format!("{}/postgres", self.server), NoTls) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}
