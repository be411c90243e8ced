//! Throw-away databases for tests and benchmarks: each [`TestDb`] is a fresh database
//! `ocomms_test_<pid>_<n>` on the server named by `OCOMMS_TEST_PG` (default
//! `postgres://postgres@127.0.0.1:5432`), dropped again when the value is dropped, so runs
//! never collide. A test that stops PostgreSQL runs its own [`PrivateCluster`].

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
        TestDb::create_on(&server_url())
    }

    /// [`TestDb::create`] on the server at `server` (`postgres://user@host:port`).
    pub fn create_on(server: &str) -> TestDb {
        let server = server.to_owned();
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

/// A PostgreSQL cluster of a test's own (initdb + pg_ctl of `OCOMMS_PG_BIN`, default
/// `/usr/lib/postgresql/15/bin`), on a free port with its data in a temporary directory: a test
/// that stops PostgreSQL stops this one, never a shared server. Stopped and removed on drop.
pub struct PrivateCluster {
    bin: std::path::PathBuf,
    dir: std::path::PathBuf,
    port: u16,
}

impl PrivateCluster {
    /// Creates and starts the cluster.
    ///
    /// # Panics
    /// When initdb or pg_ctl fail (their output is shown).
    pub fn start() -> PrivateCluster {
        let bin = std::path::PathBuf::from(
            std::env::var("OCOMMS_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into()),
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let dir = std::env::temp_dir().join(format!(
            "ocomms-pg-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let out = as_postgres(&bin.join("initdb"))
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-D"])
            .arg(&dir)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}/initdb: {e}", bin.display()));
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = PrivateCluster { bin, dir, port };
        assert!(cluster.pg_ctl("start"), "the private cluster starts");
        cluster
    }

    /// `postgres://postgres@127.0.0.1:<port>`, for [`TestDb::create_on`].
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    /// Stops the cluster (fast shutdown); `true` when pg_ctl says it worked.
    pub fn stop(&self) -> bool {
        self.pg_ctl("stop")
    }

    /// Starts it again.
    pub fn restart(&self) -> bool {
        self.pg_ctl("start")
    }

    fn pg_ctl(&self, action: &str) -> bool {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off",
            self.port,
            self.dir.display()
        );
        let mut cmd = as_postgres(&self.bin.join("pg_ctl"));
        cmd.arg("-D").arg(&self.dir).args(["-w", "-s", action]);
        if action == "start" {
            cmd.args(["-o", &options, "-l"]).arg(self.dir.join("log"));
        } else {
            cmd.args(["-m", "fast"]);
        }
        cmd.status().is_ok_and(|s| s.success())
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        self.pg_ctl("stop");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A command for `program`, run as the `postgres` system user when this process is root
/// (initdb and the server refuse to run as root).
fn as_postgres(program: &std::path::Path) -> std::process::Command {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    if root {
        let mut cmd = std::process::Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        std::process::Command::new(program)
    }
}
