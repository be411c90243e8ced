//! A private `redis-server` for tests: on a free port, in a temporary directory, never
//! persisting, stopped and removed when the value is dropped (even when the test fails). Tests
//! never touch the shared Redis on 6379, so they never need FLUSHALL.
//!
//! It can also be stopped and started again on the same port (an outage), paused with SIGSTOP
//! (a stalled server), started with a password, with TLS (certificates made with `openssl`),
//! or as a one-node Redis Cluster that owns every slot.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::{Duration, Instant};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// How the server is started.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// `requirepass`.
    pub password: Option<String>,
    /// Serve TLS only (a CA and a certificate for 127.0.0.1 are made in the directory).
    pub tls: bool,
    /// A Redis Cluster of this one node, owning all 16384 slots.
    pub cluster: bool,
}

/// A running `redis-server` of this test.
pub struct TestRedis {
    options: Options,
    port: u16,
    /// The cluster bus's port (cluster mode).
    bus_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// A free TCP port on 127.0.0.1 (taken from the kernel, then released for the server), never
/// one this process handed out before: tests run side by side, and a port released here may
/// be the next one the kernel offers (two servers, or one's cluster bus and another's
/// clients, would then share it).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("no free port on 127.0.0.1: {e}"));
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1/localhost signed by it, in `dir`.
fn make_certificates(dir: &Path) {
    let p = |name: &str| dir.join(name).display().to_string();
    run(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=ocomms test CA",
        "-keyout",
        &p("ca.key"),
        "-out",
        &p("ca.pem"),
    ]));
    run(Command::new("openssl").args([
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &p("server.key"),
        "-out",
        &p("server.csr"),
    ]));
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap_or_else(|e| panic!("cannot write san.ext: {e}"));
    run(Command::new("openssl").args([
        "x509",
        "-req",
        "-in",
        &p("server.csr"),
        "-CA",
        &p("ca.pem"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &p("san.ext"),
        "-out",
        &p("server.pem"),
    ]));
}

impl TestRedis {
    /// A plain server without a password.
    pub fn start() -> TestRedis {
        TestRedis::start_with(Options::default())
    }

    /// A server as `options` say.
    ///
    /// # Panics
    /// When `redis-server` (or, for TLS, `openssl`) is missing or does not come up within 10 s.
    pub fn start_with(options: Options) -> TestRedis {
        let dir = std::env::temp_dir().join(format!(
            "ocomms-redis-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Relaxed)
        ));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        if options.tls {
            make_certificates(&dir);
        }
        let mut redis = TestRedis {
            options,
            port: free_port(),
            bus_port: free_port(),
            dir,
            child: None,
        };
        redis.spawn();
        // A port free a moment ago may be taken meanwhile (any process's outgoing connection
        // can be given it): the server then exits at start, a cluster node after its client
        // port already listened (its bus binds later). Start it again on new ports.
        let mut attempts = 1;
        while !redis.options.tls && !redis.answers() {
            assert!(
                attempts < 5,
                "redis-server did not answer a PING on port {} after {attempts} starts",
                redis.port
            );
            redis.stop();
            redis.port = free_port();
            redis.bus_port = free_port();
            redis.spawn();
            attempts += 1;
        }
        if redis.options.cluster {
            redis.command(&["CLUSTER", "ADDSLOTSRANGE", "0", "16383"]);
            let deadline = Instant::now() + Duration::from_secs(10);
            while !redis
                .command(&["CLUSTER", "INFO"])
                .contains("cluster_state:ok")
            {
                assert!(
                    Instant::now() < deadline,
                    "the test cluster never became ok"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        redis
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let mut cmd = Command::new("redis-server");
        cmd.current_dir(&self.dir)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dir", &self.dir.display().to_string()]);
        if self.options.tls {
            let p = |name: &str| self.dir.join(name).display().to_string();
            cmd.args(["--port", "0", "--tls-port", &port])
                .args(["--tls-cert-file", &p("server.pem")])
                .args(["--tls-key-file", &p("server.key")])
                .args(["--tls-ca-cert-file", &p("ca.pem")])
                .args(["--tls-auth-clients", "no"]);
        } else {
            cmd.args(["--port", &port]);
        }
        if let Some(password) = &self.options.password {
            cmd.args(["--requirepass", password]);
        }
        if self.options.cluster {
            cmd.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ]);
            // By default the bus listens 10,000 ports above the client port, which is past
            // 65,535 (and refused) for about a fifth of the ephemeral ports: name one.
            cmd.args(["--cluster-port", &self.bus_port.to_string()]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server (is it installed?): {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {} within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://` (or `rediss://` with TLS) URL, with the password when there is one.
    pub fn url(&self) -> String {
        let scheme = if self.options.tls { "rediss" } else { "redis" };
        match &self.options.password {
            Some(pw) => format!("{scheme}://:{pw}@127.0.0.1:{}", self.port),
            None => format!("{scheme}://127.0.0.1:{}", self.port),
        }
    }

    /// The CA that signed the server's certificate (TLS only).
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The server's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the server at once (SIGKILL): every connection drops and its data is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether this server answers a PING (over plain TCP) and is still running after it.
    fn answers(&mut self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        s.set_read_timeout(Some(Duration::from_secs(2))).ok();
        let mut req = String::new();
        if let Some(pw) = &self.options.password {
            req.push_str(&format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{pw}\r\n", pw.len()));
        }
        req.push_str("*1\r\n$4\r\nPING\r\n");
        if s.write_all(req.as_bytes()).is_err() {
            return false;
        }
        let mut r = BufReader::new(s);
        let mut line = String::new();
        for _ in 0..2 {
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return false;
            }
            if line.starts_with("+PONG") {
                let exited = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                return exited.is_none();
            }
        }
        false
    }

    /// Starts the server again on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`): a server that stops answering without closing
    /// its connections.
    pub fn pause(&self, paused: bool) {
        if let Some(pid) = self.pid() {
            let signal = if paused { "-STOP" } else { "-CONT" };
            run(Command::new("kill").args([signal, &pid.to_string()]));
        }
    }

    /// Runs one command over a plain RESP connection and returns the reply as text (for
    /// setting the server up; TLS servers are set up through their clients instead).
    pub fn command(&self, args: &[&str]) -> String {
        assert!(
            !self.options.tls,
            "TestRedis::command speaks plain TCP only"
        );
        let mut s = TcpStream::connect(("127.0.0.1", self.port))
            .unwrap_or_else(|e| panic!("cannot reach the test redis: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        let mut req = Vec::new();
        let mut push = |parts: &[&str]| {
            req.extend_from_slice(format!("*{}\r\n", parts.len()).as_bytes());
            for a in parts {
                req.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
            }
        };
        if let Some(pw) = &self.options.password {
            push(&["AUTH", pw]);
        }
        push(args);
        s.write_all(&req)
            .unwrap_or_else(|e| panic!("test redis write: {e}"));
        let mut r = BufReader::new(s);
        if self.options.password.is_some() {
            read_reply(&mut r);
        }
        read_reply(&mut r)
    }
}

/// Reads one RESP2 reply and flattens it into text (enough for set-up commands).
fn read_reply(r: &mut impl BufRead) -> String {
    let mut line = String::new();
    r.read_line(&mut line)
        .unwrap_or_else(|e| panic!("test redis read: {e}"));
    let body = line.trim_end().to_owned();
    match body.as_bytes().first() {
        Some(b'$') => {
            let len: i64 = body[1..].parse().unwrap_or(-1);
            if len < 0 {
                return String::new();
            }
            let mut buf = vec![0; len as usize + 2];
            r.read_exact(&mut buf)
                .unwrap_or_else(|e| panic!("test redis read: {e}"));
            String::from_utf8_lossy(&buf[..len as usize]).into_owned()
        }
        Some(b'*') => {
            let n: i64 = body[1..].parse().unwrap_or(0);
            (0..n.max(0))
                .map(|_| read_reply(r))
                .collect::<Vec<_>>()
                .join("\n")
        }
        _ => body,
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.pause(false);
        }
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
