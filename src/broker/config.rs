//! The cluster's settings: `REDIS_URL` and the timings of the broker (contract §8).
//!
//! [`RedisConfig::parse`] checks everything once at start, so a bad value stops the start with
//! a [`ConfigError`] that names the variable. The Redis password is kept only inside the
//! connection info the `redis` crate opens connections with: [`RedisConfig`]'s `Debug` and
//! `Display` show the URL with the password replaced by `***`, and no error here prints it.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use redis::{ConnectionInfo, IntoConnectionInfo, ProtocolVersion};

use crate::config::{number, ConfigError};

/// Default prefix of every Redis key and channel.
pub const DEFAULT_PREFIX: &str = "ocomms";

/// The raw values, as flags and environment variables hold them (see [`crate::config::Args`]).
#[derive(Clone, Debug, Default)]
pub struct RawCluster {
    /// `REDIS_URL`
    pub url: String,
    /// `CHAT_REDIS_PREFIX`
    pub prefix: String,
    /// `CHAT_REDIS_TLS_CA`
    pub tls_ca: Option<String>,
    /// `CHAT_HEARTBEAT_MS`
    pub heartbeat_ms: String,
    /// `CHAT_HEARTBEAT_TTL_MS`
    pub heartbeat_ttl_ms: String,
    /// `CHAT_GAP_FILL_MS`
    pub gap_fill_ms: String,
    /// `CHAT_SWEEP_MS`
    pub sweep_ms: String,
}

/// How the broker reaches Redis and paces itself. Built only by [`RedisConfig::parse`].
#[derive(Clone)]
pub struct RedisConfig {
    /// Where and how to connect (address, TLS, user, password, database).
    info: ConnectionInfo,
    /// PEM of the CAs trusted for `rediss://` instead of the system's store.
    ca: Option<Vec<u8>>,
    /// The URL with its password masked, for logs and errors.
    shown: String,
    /// Prefix of every key and channel (`CHAT_REDIS_PREFIX`).
    pub prefix: String,
    /// A node's presence heartbeat period (`CHAT_HEARTBEAT_MS`, contract §5: 30 s).
    pub heartbeat: Duration,
    /// How long a node counts as alive after its last beat (`CHAT_HEARTBEAT_TTL_MS`, 90 s).
    pub heartbeat_ttl: Duration,
    /// How long an arrival ahead of its room's next position waits for the missing ones
    /// before they are read from PostgreSQL (`CHAT_GAP_FILL_MS`).
    pub gap_fill: Duration,
    /// Period of the full watermark sweep that finds publications lost at a room's tail
    /// (`CHAT_SWEEP_MS`).
    pub sweep: Duration,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.shown)
            .field("tls_ca", &self.ca.is_some())
            .field("prefix", &self.prefix)
            .field("heartbeat", &self.heartbeat)
            .field("heartbeat_ttl", &self.heartbeat_ttl)
            .field("gap_fill", &self.gap_fill)
            .field("sweep", &self.sweep)
            .finish()
    }
}

impl fmt::Display for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

/// `redis://` and `valkey://` (plain), `rediss://` and `valkeys://` (TLS).
fn scheme_tls(url: &str) -> Option<bool> {
    let (scheme, _) = url.split_once("://")?;
    match scheme.to_ascii_lowercase().as_str() {
        "redis" | "valkey" => Some(false),
        "rediss" | "valkeys" => Some(true),
        _ => None,
    }
}

/// The URL with any password replaced by `***` (and unchanged when it does not parse).
pub fn mask(url: &str) -> String {
    match redis::parse_redis_url(url) {
        Some(mut parsed) if parsed.password().is_some() => {
            // Fails only for URLs that cannot have a password, which this one has.
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Some(parsed) => parsed.to_string(),
        // Unparseable: show no more than the scheme, in case a password sits in it.
        None => match url.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://…"),
            None => "(not a URL)".into(),
        },
    }
}

fn millis(
    variable: &'static str,
    value: &str,
    min: u64,
    max: u64,
) -> Result<Duration, ConfigError> {
    number(variable, value, min, max).map(Duration::from_millis)
}

impl RedisConfig {
    /// Checks the cluster's settings. `database` says whether `DATABASE_URL` is set: a cluster
    /// needs the shared PostgreSQL store, since every node must read what every other node
    /// committed (history, gap fills, recovery).
    pub fn parse(raw: &RawCluster, database: bool) -> Result<RedisConfig, ConfigError> {
        let url = raw.url.trim();
        let shown = mask(url);
        let bad = |problem: String| ConfigError {
            variable: "REDIS_URL",
            value: shown.clone(),
            problem,
        };
        if !database {
            return Err(bad(
                "a cluster needs the shared PostgreSQL store: set DATABASE_URL to the database \
                 every node uses (the embedded store lives inside one process), or unset \
                 REDIS_URL to run a single node"
                    .into(),
            ));
        }
        let tls = scheme_tls(url).ok_or_else(|| {
            bad(
                "use redis://[:PASSWORD@]HOST[:PORT][/DB] or rediss://… for TLS \
                 (valkey:// and valkeys:// work too)"
                    .into(),
            )
        })?;
        let info = url
            .into_connection_info()
            .map_err(|_| bad("cannot be read; use redis://[:PASSWORD@]HOST[:PORT][/DB]".into()))?;
        let ca = match raw
            .tls_ca
            .as_deref()
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            None => None,
            Some(path) if !tls => {
                return Err(ConfigError {
                    variable: "CHAT_REDIS_TLS_CA",
                    value: path.into(),
                    problem:
                        "set while REDIS_URL is not rediss://; use a rediss:// URL or unset it"
                            .into(),
                })
            }
            Some(path) => Some(read_ca(Path::new(path))?),
        };
        let prefix = raw.prefix.trim();
        let prefix = if prefix.is_empty() {
            DEFAULT_PREFIX
        } else {
            prefix
        };
        let prefix_ok = prefix.len() <= 64
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b));
        if !prefix_ok {
            return Err(ConfigError {
                variable: "CHAT_REDIS_PREFIX",
                value: prefix.into(),
                problem: "use 1 to 64 letters, digits, '_', '-', '.' or ':' (no braces: they \
                          would change which Redis Cluster slot a key hashes to)"
                    .into(),
            });
        }
        let heartbeat = millis("CHAT_HEARTBEAT_MS", &raw.heartbeat_ms, 100, 3_600_000)?;
        let heartbeat_ttl = millis(
            "CHAT_HEARTBEAT_TTL_MS",
            &raw.heartbeat_ttl_ms,
            300,
            10_800_000,
        )?;
        if heartbeat_ttl < heartbeat * 2 {
            return Err(ConfigError {
                variable: "CHAT_HEARTBEAT_TTL_MS",
                value: raw.heartbeat_ttl_ms.clone(),
                problem: format!(
                    "must be at least twice CHAT_HEARTBEAT_MS ({} ms), or one late beat would \
                     take a live node's users offline",
                    heartbeat.as_millis()
                ),
            });
        }
        Ok(RedisConfig {
            info,
            ca,
            shown,
            prefix: prefix.to_owned(),
            heartbeat,
            heartbeat_ttl,
            gap_fill: millis("CHAT_GAP_FILL_MS", &raw.gap_fill_ms, 1, 60_000)?,
            sweep: millis("CHAT_SWEEP_MS", &raw.sweep_ms, 100, 3_600_000)?,
        })
    }

    /// Whether connections use TLS.
    pub fn tls(&self) -> bool {
        matches!(self.info.addr(), redis::ConnectionAddr::TcpTls { .. })
    }

    /// The address of the URL, as `host:port` (no credentials).
    pub fn address(&self) -> String {
        self.info.addr().to_string()
    }

    /// A client for the URL's server, speaking `protocol`.
    pub fn client(&self, protocol: ProtocolVersion) -> redis::RedisResult<redis::Client> {
        self.client_at(self.info.addr().clone(), protocol)
    }

    /// A client for another server of the same deployment (a Redis Cluster primary), with
    /// the URL's TLS setting, credentials and CA.
    pub fn client_at(
        &self,
        addr: redis::ConnectionAddr,
        protocol: ProtocolVersion,
    ) -> redis::RedisResult<redis::Client> {
        let settings = self.info.redis_settings().clone().set_protocol(protocol);
        // No Nagle delay: a publication is a small write that must leave at once (the
        // crate's default keeps Nagle's algorithm on).
        let tcp = redis::io::tcp::TcpSettings::default().set_nodelay(true);
        let info = self
            .info
            .clone()
            .set_addr(addr)
            .set_redis_settings(settings)
            .set_tcp_settings(tcp);
        match &self.ca {
            Some(ca) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            ),
            None => redis::Client::open(info),
        }
    }

    /// A host and port in the same deployment (TLS as the URL says).
    pub fn addr(&self, host: &str, port: u16) -> redis::ConnectionAddr {
        match self.info.addr() {
            redis::ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => redis::ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => redis::ConnectionAddr::Tcp(host.to_owned(), port),
        }
    }
}

/// Reads and checks a PEM bundle of CA certificates.
fn read_ca(path: &Path) -> Result<Vec<u8>, ConfigError> {
    let bad = |problem: String| ConfigError {
        variable: "CHAT_REDIS_TLS_CA",
        value: path.display().to_string(),
        problem,
    };
    let pem = std::fs::read(path).map_err(|e| {
        bad(format!(
            "cannot be read ({e}); give a PEM file of CA certificates"
        ))
    })?;
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            bad(format!(
                "is not PEM ({e}); give a PEM file of CA certificates"
            ))
        })?;
    if certs.is_empty() {
        return Err(bad(
            "holds no certificate; give a PEM file of CA certificates".into(),
        ));
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(url: &str) -> RawCluster {
        RawCluster {
            url: url.into(),
            prefix: String::new(),
            tls_ca: None,
            heartbeat_ms: "30000".into(),
            heartbeat_ttl_ms: "90000".into(),
            gap_fill_ms: "200".into(),
            sweep_ms: "30000".into(),
        }
    }

    #[test]
    fn a_cluster_without_postgres_is_refused_with_the_reason() {
        let e = RedisConfig::parse(&raw("redis://127.0.0.1:6379"), false).unwrap_err();
        assert_eq!(e.variable, "REDIS_URL");
        assert!(e.problem.contains("shared PostgreSQL store"), "{e}");
        assert!(e.problem.contains("DATABASE_URL"), "{e}");
    }

    #[test]
    fn the_password_is_never_shown() {
        let secret = "s3cr3t-pa55";
        let url = format!("redis://:{secret}@127.0.0.1:6379/2");
        let c = RedisConfig::parse(&raw(&url), true).unwrap();
        for text in [format!("{c:?}"), c.to_string()] {
            assert!(!text.contains(secret), "{text}");
            assert!(text.contains("***"), "{text}");
        }
        // Errors show the masked URL too.
        let e = RedisConfig::parse(&raw(&url), false).unwrap_err();
        assert!(!e.to_string().contains(secret), "{e}");
        let e = RedisConfig::parse(&raw(&format!("http://:{secret}@h")), true).unwrap_err();
        assert!(!e.to_string().contains(secret), "{e}");
        assert!(e.problem.contains("rediss://"), "{e}");
    }

    #[test]
    fn schemes_choose_tls() {
        assert!(!RedisConfig::parse(&raw("redis://h:1"), true).unwrap().tls());
        assert!(RedisConfig::parse(&raw("rediss://h:1"), true)
            .unwrap()
            .tls());
        assert!(RedisConfig::parse(&raw("valkeys://h:1"), true)
            .unwrap()
            .tls());
        let plain = RedisConfig::parse(&raw("redis://h:7001"), true).unwrap();
        assert_eq!(plain.address(), "h:7001");
    }

    #[test]
    fn bad_values_name_their_variable() {
        let mut r = raw("redis://h");
        r.prefix = "a{b}".into();
        assert_eq!(
            RedisConfig::parse(&r, true).unwrap_err().variable,
            "CHAT_REDIS_PREFIX"
        );
        let mut r = raw("redis://h");
        r.heartbeat_ttl_ms = "40000".into();
        let e = RedisConfig::parse(&r, true).unwrap_err();
        assert_eq!(e.variable, "CHAT_HEARTBEAT_TTL_MS");
        assert!(e.problem.contains("twice"), "{e}");
        let mut r = raw("redis://h");
        r.tls_ca = Some("/nonexistent.pem".into());
        assert_eq!(
            RedisConfig::parse(&r, true).unwrap_err().variable,
            "CHAT_REDIS_TLS_CA"
        );
        let mut r = raw("rediss://h");
        r.tls_ca = Some("/nonexistent.pem".into());
        let e = RedisConfig::parse(&r, true).unwrap_err();
        assert_eq!(e.variable, "CHAT_REDIS_TLS_CA");
        assert!(e.problem.contains("cannot be read"), "{e}");
        let mut r = raw("redis://h");
        r.gap_fill_ms = "0".into();
        assert_eq!(
            RedisConfig::parse(&r, true).unwrap_err().variable,
            "CHAT_GAP_FILL_MS"
        );
    }

    #[test]
    fn defaults_follow_the_contract() {
        let c = RedisConfig::parse(&raw("redis://h"), true).unwrap();
        assert_eq!(c.prefix, DEFAULT_PREFIX);
        assert_eq!(c.heartbeat, Duration::from_secs(30));
        assert_eq!(c.heartbeat_ttl, Duration::from_secs(90));
    }
}
