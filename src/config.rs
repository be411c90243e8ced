//! Settings, parsed once at start from flags and environment variables (contract §8).
//!
//! Every setting is a flag and an environment variable of the same name (`--shards` and
//! `CHAT_SHARDS`). A bad value stops the start with a [`ConfigError`] that names the variable.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::broker::config::{RawCluster, RedisConfig};

/// Raw flags and variables as clap reads them; [`Config::load`] turns them into a [`Config`].
#[derive(Parser, Debug)]
#[command(
    name = "ocomms-rt",
    version,
    about = "Realtime core of OComms (Socket.IO over WebSocket)"
)]
pub struct Args {
    /// Subcommand; none runs the server.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address to listen on (HTTP, WebSocket and, with a certificate, TLS).
    #[arg(long = "listen", env = "CHAT_LISTEN", default_value = "0.0.0.0:3000")]
    listen: String,
    /// PostgreSQL URL; absent: the embedded in-memory store.
    #[arg(long = "database-url", env = "DATABASE_URL")]
    database_url: Option<String>,
    /// PostgreSQL connections that store send batches at once (writer lanes; each room
    /// always on the same one).
    #[arg(long = "db-writers", env = "CHAT_DB_WRITERS", default_value = "2")]
    db_writers: String,
    /// Redis URL (redis:// or rediss://); absent: a single node.
    #[arg(long = "redis-url", env = "REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
    /// Prefix of every Redis key and channel of this cluster.
    #[arg(
        long = "redis-prefix",
        env = "CHAT_REDIS_PREFIX",
        default_value = "ocomms"
    )]
    redis_prefix: String,
    /// PEM file of the CAs to trust for rediss:// (default: the system's store).
    #[arg(long = "redis-tls-ca", env = "CHAT_REDIS_TLS_CA")]
    redis_tls_ca: Option<String>,
    /// Presence heartbeat period of a node in milliseconds.
    #[arg(
        long = "heartbeat-ms",
        env = "CHAT_HEARTBEAT_MS",
        default_value = "30000"
    )]
    heartbeat_ms: String,
    /// Milliseconds a node counts as alive after its last heartbeat.
    #[arg(
        long = "heartbeat-ttl-ms",
        env = "CHAT_HEARTBEAT_TTL_MS",
        default_value = "90000"
    )]
    heartbeat_ttl_ms: String,
    /// Milliseconds an out-of-order arrival waits before the gap is read from PostgreSQL.
    #[arg(long = "gap-fill-ms", env = "CHAT_GAP_FILL_MS", default_value = "200")]
    gap_fill_ms: String,
    /// Period in milliseconds of the sweep that compares every subscribed room with PostgreSQL.
    #[arg(long = "sweep-ms", env = "CHAT_SWEEP_MS", default_value = "30000")]
    sweep_ms: String,
    /// HS256 secret for JWTs; absent: JWTs are refused (session tokens still work).
    #[arg(long = "jwt-secret", env = "CHAT_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Bearer token of the admin API; absent: the admin API answers 503.
    #[arg(long = "admin-token", env = "CHAT_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// PEM certificate chain; with `CHAT_TLS_KEY`, serve TLS.
    #[arg(long = "tls-cert", env = "CHAT_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key.
    #[arg(long = "tls-key", env = "CHAT_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Shard threads (default: one per core).
    #[arg(long = "shards", env = "CHAT_SHARDS")]
    shards: Option<String>,
    /// Packets that carry no event (pongs, pings, noops, acks, repeated CONNECTs) one socket
    /// may send (N/T); past it the connection is closed (1008). An honest client sends one
    /// pong per pingInterval.
    #[arg(
        long = "limit-idle-packets",
        env = "CHAT_LIMIT_IDLE_PACKETS",
        default_value = "100/10s"
    )]
    idle_packets: String,
    /// Engine.IO pingInterval in milliseconds.
    #[arg(
        long = "ping-interval-ms",
        env = "CHAT_PING_INTERVAL_MS",
        default_value = "25000"
    )]
    ping_interval_ms: String,
    /// Engine.IO pingTimeout in milliseconds.
    #[arg(
        long = "ping-timeout-ms",
        env = "CHAT_PING_TIMEOUT_MS",
        default_value = "20000"
    )]
    ping_timeout_ms: String,
    /// Engine.IO maxPayload in bytes (largest packet a client may send).
    #[arg(
        long = "max-payload",
        env = "CHAT_MAX_PAYLOAD",
        default_value = "1000000"
    )]
    max_payload: String,
    /// Longest message content, in Unicode scalar values.
    #[arg(
        long = "max-message-chars",
        env = "CHAT_MAX_MESSAGE_CHARS",
        default_value = "4000"
    )]
    max_message_chars: String,
    /// Bytes queued for one client before it is dropped as a slow consumer.
    #[arg(
        long = "max-outbound-bytes",
        env = "CHAT_MAX_OUTBOUND_BYTES",
        default_value = "1048576"
    )]
    max_outbound_bytes: String,
    /// Milliseconds a client's queue may stay over CHAT_MAX_OUTBOUND_BYTES with nothing
    /// written before it is dropped as a slow consumer (over 4x the bound: at once).
    #[arg(
        long = "slow-consumer-grace-ms",
        env = "CHAT_SLOW_CONSUMER_GRACE_MS",
        default_value = "10000"
    )]
    slow_consumer_grace_ms: String,
    /// Bytes of durable events each shard keeps for connection state recovery.
    #[arg(
        long = "recovery-log-bytes",
        env = "CHAT_RECOVERY_LOG_BYTES",
        default_value = "67108864"
    )]
    recovery_log_bytes: String,
    /// Longest HTTP request head in bytes.
    #[arg(
        long = "max-header-bytes",
        env = "CHAT_MAX_HEADER_BYTES",
        default_value = "8192"
    )]
    max_header_bytes: String,
    /// Milliseconds a client has to send a whole HTTP request head.
    #[arg(
        long = "request-timeout-ms",
        env = "CHAT_REQUEST_TIMEOUT_MS",
        default_value = "10000"
    )]
    request_timeout_ms: String,
    /// Connection state recovery window in milliseconds (0 turns recovery off).
    #[arg(
        long = "recovery-window-ms",
        env = "CHAT_RECOVERY_WINDOW_MS",
        default_value = "120000"
    )]
    recovery_window_ms: String,
    /// Milliseconds granted at shutdown to flush queued writes.
    #[arg(
        long = "shutdown-grace-ms",
        env = "CHAT_SHUTDOWN_GRACE_MS",
        default_value = "5000"
    )]
    shutdown_grace_ms: String,
    /// Browser origins allowed to call `/socket.io/` over long-polling with credentials,
    /// comma-separated (e.g. `https://app.example.com,http://localhost:5173`); empty: none.
    #[arg(long = "cors-origins", env = "CHAT_CORS_ORIGINS", default_value = "")]
    cors_origins: String,
    /// Demo mode: seed the embedded store with a demo workspace and serve the demo chat page
    /// and its sign-in (`--demo`, or CHAT_DEMO=1). Refused with DATABASE_URL.
    #[arg(
        long = "demo",
        env = "CHAT_DEMO",
        num_args = 0..=1,
        default_missing_value = "1",
        default_value = "0"
    )]
    demo: String,
    /// Event budgets and connection limits (`crate::limits`).
    #[command(flatten)]
    limits: crate::limits::LimitArgs,
}

/// Subcommands.
#[derive(clap::Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Apply the database migrations and exit.
    Migrate,
}

/// Parsed settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Listen address.
    pub listen: SocketAddr,
    /// PostgreSQL URL.
    pub database_url: Option<String>,
    /// Writer lanes (PostgreSQL connections storing send batches).
    pub db_writers: usize,
    /// `REDIS_URL` and the cluster's settings, checked (the password is never printed).
    pub redis_url: Option<RedisConfig>,
    /// JWT secret.
    pub jwt_secret: Option<String>,
    /// Admin API token.
    pub admin_token: Option<String>,
    /// Certificate and key, both or neither.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Number of shard threads.
    pub shards: usize,
    /// Engine.IO settings.
    pub engine: EngineLimits,
    /// Longest message content in scalar values.
    pub max_message_chars: usize,
    /// Outbound queue bound per connection.
    pub max_outbound_bytes: usize,
    /// How long a queue may stay over `max_outbound_bytes` with nothing written.
    pub slow_consumer_grace: Duration,
    /// Bytes of durable events a shard keeps for recovery.
    pub recovery_log_bytes: usize,
    /// HTTP head bound.
    pub max_header_bytes: usize,
    /// Time to send an HTTP head.
    pub request_timeout: Duration,
    /// Connection state recovery window; zero is off.
    pub recovery_window: Duration,
    /// Shutdown flush deadline.
    pub shutdown_grace: Duration,
    /// Origins answered with CORS headers (exact `scheme://host[:port]` matches).
    pub cors_origins: Vec<String>,
    /// Demo mode (only with the embedded store).
    pub demo: bool,
    /// Event budgets and connection limits.
    pub limits: crate::limits::Limits,
}

/// Engine.IO timing and size settings, sent to clients in the open packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineLimits {
    /// Server ping period.
    pub ping_interval: Duration,
    /// Time to answer a ping.
    pub ping_timeout: Duration,
    /// Largest packet a client may send, in bytes.
    pub max_payload: usize,
    /// Packets that carry no event a socket may send.
    pub idle_packets: crate::limits::Rate,
}

impl Default for EngineLimits {
    fn default() -> Self {
        EngineLimits {
            ping_interval: Duration::from_millis(25_000),
            ping_timeout: Duration::from_millis(20_000),
            max_payload: 1_000_000,
            idle_packets: crate::limits::Rate {
                burst: 100,
                per: Duration::from_secs(10),
            },
        }
    }
}

/// A setting that could not be used; names the variable and says what would fix it.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The environment variable (the flag has the same name in kebab case).
    pub variable: &'static str,
    /// The bad value (never a secret).
    pub value: String,
    /// What is wrong and what would fix it.
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={:?}: {}", self.variable, self.value, self.problem)
    }
}

impl std::error::Error for ConfigError {}

/// Parses a whole number in `min..=max`; the error names the variable and the range.
pub(crate) fn number<T>(
    variable: &'static str,
    value: &str,
    min: T,
    max: T,
) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
{
    let bad = |problem: String| ConfigError {
        variable,
        value: value.to_string(),
        problem,
    };
    let n: T = value
        .trim()
        .parse()
        .map_err(|_| bad(format!("not a whole number; use one from {min} to {max}")))?;
    if n < min || n > max {
        return Err(bad(format!("out of range; use one from {min} to {max}")));
    }
    Ok(n)
}

/// A yes/no setting: `1`, `true`, `yes`, `on` or `0`, `false`, `no`, `off` (any case).
pub(crate) fn switch(variable: &'static str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err(ConfigError {
            variable,
            value: value.to_string(),
            problem: "not a yes/no value; use 1 or 0 (true/false, yes/no, on/off)".into(),
        }),
    }
}

fn millis(variable: &'static str, value: &str, min: u64) -> Result<Duration, ConfigError> {
    number(variable, value, min, 24 * 3600 * 1000).map(Duration::from_millis)
}

impl Config {
    /// Parses the process's flags and environment.
    pub fn load() -> Result<(Option<Command>, Config), ConfigError> {
        let args = Args::parse();
        let command = args.command.clone();
        Config::from_args(args).map(|c| (command, c))
    }

    /// Validates raw arguments.
    pub fn from_args(args: Args) -> Result<Config, ConfigError> {
        let listen = args.listen.parse().map_err(|_| ConfigError {
            variable: "CHAT_LISTEN",
            value: args.listen.clone(),
            problem: "not a socket address; use HOST:PORT such as 0.0.0.0:3000".into(),
        })?;
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let shards = match &args.shards {
            Some(s) => number("CHAT_SHARDS", s, 1usize, 1024)?,
            None => cores,
        };
        let tls = match (args.tls_cert, args.tls_key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(c), None) => {
                return Err(ConfigError {
                    variable: "CHAT_TLS_KEY",
                    value: String::new(),
                    problem: format!(
                        "missing while CHAT_TLS_CERT is set ({}); set both or neither",
                        c.display()
                    ),
                })
            }
            (None, Some(k)) => {
                return Err(ConfigError {
                    variable: "CHAT_TLS_CERT",
                    value: String::new(),
                    problem: format!(
                        "missing while CHAT_TLS_KEY is set ({}); set both or neither",
                        k.display()
                    ),
                })
            }
        };
        let non_empty = |variable: &'static str, v: Option<String>| match v {
            Some(s) if s.trim().is_empty() => Err(ConfigError {
                variable,
                value: String::new(),
                problem: "set but empty; give a value or unset it".into(),
            }),
            other => Ok(other),
        };
        let jwt_secret = non_empty("CHAT_JWT_SECRET", args.jwt_secret)?;
        if let Some(secret) = &jwt_secret {
            if secret.len() < 16 {
                return Err(ConfigError {
                    variable: "CHAT_JWT_SECRET",
                    value: "(hidden)".into(),
                    problem: format!(
                        "{} bytes is too short for HS256; use at least 16 (32 random bytes is best)",
                        secret.len()
                    ),
                });
            }
        }
        let engine = EngineLimits {
            ping_interval: millis("CHAT_PING_INTERVAL_MS", &args.ping_interval_ms, 50)?,
            ping_timeout: millis("CHAT_PING_TIMEOUT_MS", &args.ping_timeout_ms, 50)?,
            max_payload: number("CHAT_MAX_PAYLOAD", &args.max_payload, 64usize, 64 << 20)?,
            idle_packets: crate::limits::Rate::parse(
                "CHAT_LIMIT_IDLE_PACKETS",
                &args.idle_packets,
            )?,
        };
        // Every client answers each ping with a pong: a budget that a heartbeat alone would
        // use up closes honest clients.
        let pongs = 1000.0 / engine.ping_interval.as_millis().max(1) as f64;
        if engine.idle_packets.per_second() < 2.0 * pongs {
            return Err(ConfigError {
                variable: "CHAT_LIMIT_IDLE_PACKETS",
                value: args.idle_packets,
                problem: format!(
                    "allows {:.1} packets a second, but with CHAT_PING_INTERVAL_MS={} every \
                     client sends {pongs:.1} pongs a second; allow at least twice that, or \
                     lengthen the ping interval",
                    engine.idle_packets.per_second(),
                    engine.ping_interval.as_millis()
                ),
            });
        }
        let database_url = non_empty("DATABASE_URL", args.database_url)?;
        let demo = switch("CHAT_DEMO", &args.demo)?;
        if demo && database_url.is_some() {
            // The demo seeds made-up users and signs anyone in as them: never into a real
            // database, and never silently off when it was asked for.
            return Err(ConfigError {
                variable: "CHAT_DEMO",
                value: args.demo,
                problem: "demo mode runs on the embedded store only, and DATABASE_URL is set; \
                          unset DATABASE_URL to run the demo, or unset CHAT_DEMO (drop --demo)"
                    .into(),
            });
        }
        let redis_url = match non_empty("REDIS_URL", args.redis_url)? {
            None => None,
            Some(url) => Some(RedisConfig::parse(
                &RawCluster {
                    url,
                    prefix: args.redis_prefix,
                    tls_ca: args.redis_tls_ca,
                    heartbeat_ms: args.heartbeat_ms,
                    heartbeat_ttl_ms: args.heartbeat_ttl_ms,
                    gap_fill_ms: args.gap_fill_ms,
                    sweep_ms: args.sweep_ms,
                },
                database_url.is_some(),
            )?),
        };
        Ok(Config {
            listen,
            database_url,
            db_writers: number("CHAT_DB_WRITERS", &args.db_writers, 1usize, 16)?,
            redis_url,
            jwt_secret,
            admin_token: non_empty("CHAT_ADMIN_TOKEN", args.admin_token)?,
            tls,
            shards,
            engine,
            max_message_chars: number(
                "CHAT_MAX_MESSAGE_CHARS",
                &args.max_message_chars,
                1usize,
                1 << 20,
            )?,
            max_outbound_bytes: number(
                "CHAT_MAX_OUTBOUND_BYTES",
                &args.max_outbound_bytes,
                4096usize,
                1 << 30,
            )?,
            slow_consumer_grace: millis(
                "CHAT_SLOW_CONSUMER_GRACE_MS",
                &args.slow_consumer_grace_ms,
                0,
            )?,
            recovery_log_bytes: number(
                "CHAT_RECOVERY_LOG_BYTES",
                &args.recovery_log_bytes,
                1usize << 20,
                1 << 40,
            )?,
            max_header_bytes: number(
                "CHAT_MAX_HEADER_BYTES",
                &args.max_header_bytes,
                512usize,
                1 << 20,
            )?,
            request_timeout: millis("CHAT_REQUEST_TIMEOUT_MS", &args.request_timeout_ms, 10)?,
            recovery_window: millis("CHAT_RECOVERY_WINDOW_MS", &args.recovery_window_ms, 0)?,
            shutdown_grace: millis("CHAT_SHUTDOWN_GRACE_MS", &args.shutdown_grace_ms, 0)?,
            cors_origins: args
                .cors_origins
                .split(',')
                .map(|o| o.trim().trim_end_matches('/').to_owned())
                .filter(|o| !o.is_empty())
                .collect(),
            demo,
            limits: crate::limits::Limits::from_args(&args.limits)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["ocomms-rt"];
        argv.extend_from_slice(extra);
        Config::from_args(Args::try_parse_from(argv).expect("clap accepts the flags"))
    }

    #[test]
    fn bad_values_name_their_variable() {
        assert_eq!(
            parse(&["--shards", "0"]).unwrap_err().variable,
            "CHAT_SHARDS"
        );
        assert_eq!(
            parse(&["--shards", "two"]).unwrap_err().variable,
            "CHAT_SHARDS"
        );
        assert_eq!(
            parse(&["--listen", "localhost"]).unwrap_err().variable,
            "CHAT_LISTEN"
        );
        assert_eq!(
            parse(&["--tls-cert", "a.pem"]).unwrap_err().variable,
            "CHAT_TLS_KEY"
        );
        let short = parse(&["--jwt-secret", "short"]).unwrap_err();
        assert_eq!(short.variable, "CHAT_JWT_SECRET");
        assert!(
            !short.to_string().contains("short\""),
            "the secret is never printed"
        );
    }

    #[test]
    fn an_idle_packet_budget_the_heartbeat_would_use_up_is_refused() {
        let e = parse(&["--ping-interval-ms", "100", "--limit-idle-packets", "10/1s"]).unwrap_err();
        assert_eq!(e.variable, "CHAT_LIMIT_IDLE_PACKETS");
        assert!(e.to_string().contains("CHAT_PING_INTERVAL_MS=100"), "{e}");
        assert!(parse(&["--ping-interval-ms", "100", "--limit-idle-packets", "20/1s"]).is_ok());
        assert!(
            parse(&["--ping-interval-ms", "300"]).is_ok(),
            "the tests' shortest heartbeat"
        );
    }

    #[test]
    fn demo_is_off_unless_asked_and_never_with_a_database() {
        assert!(!parse(&[]).unwrap().demo);
        assert!(parse(&["--demo"]).unwrap().demo);
        assert!(parse(&["--demo", "yes"]).unwrap().demo);
        assert!(!parse(&["--demo", "0"]).unwrap().demo);
        assert_eq!(
            parse(&["--demo", "maybe"]).unwrap_err().variable,
            "CHAT_DEMO"
        );
        let db = parse(&["--demo", "--database-url", "postgres://db/x"]).unwrap_err();
        assert_eq!(db.variable, "CHAT_DEMO");
        assert!(db.problem.contains("DATABASE_URL"), "{db}");
        assert!(!parse(&["--database-url", "postgres://db/x"]).unwrap().demo);
    }

    #[test]
    fn redis_without_postgres_stops_the_start_and_hides_the_password() {
        let e = parse(&["--redis-url", "redis://:hunter2@127.0.0.1:6379"]).unwrap_err();
        assert_eq!(e.variable, "REDIS_URL");
        let text = e.to_string();
        assert!(text.contains("shared PostgreSQL store"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        let c = parse(&[
            "--redis-url",
            "redis://:hunter2@127.0.0.1:6379",
            "--database-url",
            "postgres://postgres@127.0.0.1/x",
        ])
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn defaults_follow_the_contract() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:3000");
        assert_eq!(c.engine, EngineLimits::default());
        assert_eq!(c.max_message_chars, 4000);
        assert_eq!(c.limits, crate::limits::Limits::default());
        assert!(c.shards >= 1);
    }
}
