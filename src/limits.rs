//! Budgets and connection limits (contract §3 "Every client event has a budget"): how many
//! events of each kind one socket may send, how many requests it may have in flight, how
//! many connections the node and one address may hold, and how often one address may open
//! a socket. Every one is a setting (flag and variable, as in [`crate::config`]); the
//! defaults are far above what one person's app sends.
//!
//! A rate is written `N/T`: at most `N` at once, refilled at `N` per `T` (`600/10s` is a
//! burst of 600, then 60 a second). `T` is in `s` or `ms`.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use clap::Args;

use crate::config::{number, ConfigError};

/// A token bucket's shape: `burst` events at once, refilled at `burst` per `per`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Most events at once.
    pub burst: u32,
    /// Time to refill the whole burst.
    pub per: Duration,
}

impl Rate {
    /// Events per second, on average.
    pub fn per_second(self) -> f64 {
        f64::from(self.burst) / self.per.as_secs_f64()
    }

    /// Parses `N/T` (`600/10s`, `5/1000ms`); the error names the variable.
    pub fn parse(variable: &'static str, value: &str) -> Result<Rate, ConfigError> {
        let bad = |problem: &str| ConfigError {
            variable,
            value: value.to_string(),
            problem: format!("{problem}; write N/T such as 600/10s or 50/500ms"),
        };
        let (n, t) = value.trim().split_once('/').ok_or_else(|| bad("no '/'"))?;
        let burst = number(variable, n, 1u32, 10_000_000)?;
        let t = t.trim();
        let per = if let Some(ms) = t.strip_suffix("ms") {
            number(variable, ms, 1u64, 3_600_000).map(Duration::from_millis)?
        } else if let Some(s) = t.strip_suffix('s') {
            number(variable, s, 1u64, 3_600).map(Duration::from_secs)?
        } else {
            return Err(bad("the time has no unit (s or ms)"));
        };
        Ok(Rate { burst, per })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.per.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{} per {} s", self.burst, ms / 1000)
        } else {
            write!(f, "{} per {ms} ms", self.burst)
        }
    }
}

/// Raw flags and variables, flattened into [`crate::config::Args`].
#[derive(Args, Debug)]
pub struct LimitArgs {
    /// `message:send` budget of one socket (N/T).
    #[arg(
        long = "limit-sends",
        env = "CHAT_LIMIT_SENDS",
        default_value = "600/10s"
    )]
    sends: String,
    /// `message:delete` budget of one socket.
    #[arg(
        long = "limit-deletes",
        env = "CHAT_LIMIT_DELETES",
        default_value = "300/10s"
    )]
    deletes: String,
    /// `message:history` budget of one socket.
    #[arg(
        long = "limit-history",
        env = "CHAT_LIMIT_HISTORY",
        default_value = "300/10s"
    )]
    history: String,
    /// `room:join` / `room:leave` budget of one socket.
    #[arg(
        long = "limit-joins",
        env = "CHAT_LIMIT_JOINS",
        default_value = "600/10s"
    )]
    joins: String,
    /// `presence:setAway` / `setActive` changes one socket announces; extra ones are merged
    /// and the last word is announced when the budget allows.
    #[arg(
        long = "limit-presence",
        env = "CHAT_LIMIT_PRESENCE",
        default_value = "20/10s"
    )]
    presence: String,
    /// `presence:query` budget of one socket.
    #[arg(
        long = "limit-queries",
        env = "CHAT_LIMIT_QUERIES",
        default_value = "100/10s"
    )]
    queries: String,
    /// `typing:start` / `typing:stop` budget of one socket.
    #[arg(
        long = "limit-typing",
        env = "CHAT_LIMIT_TYPING",
        default_value = "10/2s"
    )]
    typing: String,
    /// Budget of every other event (unknown names) of one socket.
    #[arg(
        long = "limit-other",
        env = "CHAT_LIMIT_OTHER",
        default_value = "100/10s"
    )]
    other: String,
    /// Refused events a socket may send before it is disconnected (N/T: it is cut once more
    /// than N are refused faster than N per T).
    #[arg(
        long = "limit-refused",
        env = "CHAT_LIMIT_REFUSED",
        default_value = "2000/20s"
    )]
    refused: String,
    /// Requests (sends, deletes, history, joins, queries) one socket may have unanswered.
    #[arg(
        long = "max-in-flight",
        env = "CHAT_MAX_IN_FLIGHT",
        default_value = "256"
    )]
    in_flight: String,
    /// CONNECT attempts one socket may make.
    #[arg(
        long = "max-connect-attempts",
        env = "CHAT_MAX_CONNECT_ATTEMPTS",
        default_value = "10"
    )]
    connect_attempts: String,
    /// Connections the node holds at once (0: no limit).
    #[arg(
        long = "max-connections",
        env = "CHAT_MAX_CONNECTIONS",
        default_value = "100000"
    )]
    connections: String,
    /// Connections one client address holds at once (0: no limit).
    #[arg(
        long = "max-connections-per-address",
        env = "CHAT_MAX_CONNECTIONS_PER_ADDRESS",
        default_value = "1000"
    )]
    connections_per_address: String,
    /// New sockets (WebSocket handshakes and polling sessions) one address may open (N/T).
    #[arg(
        long = "limit-address-sockets",
        env = "CHAT_LIMIT_ADDRESS_SOCKETS",
        default_value = "600/60s"
    )]
    address_sockets: String,
    /// CONNECT attempts one address may make (N/T).
    #[arg(
        long = "limit-address-connects",
        env = "CHAT_LIMIT_ADDRESS_CONNECTS",
        default_value = "1200/60s"
    )]
    address_connects: String,
    /// Apply the per-address limits to loopback clients too (by default they are exempt: a
    /// reverse proxy or a load generator on the same host connects from there).
    #[arg(
        long = "limit-loopback",
        env = "CHAT_LIMIT_LOOPBACK",
        num_args = 0..=1,
        default_missing_value = "1",
        default_value = "0"
    )]
    loopback: String,
    /// Milliseconds the oldest send waiting for the store may have waited before requests
    /// are refused as busy (0: refused only past the store's 8,192 queued requests).
    #[arg(
        long = "max-store-wait-ms",
        env = "CHAT_MAX_STORE_WAIT_MS",
        default_value = "200"
    )]
    store_wait: String,
    /// Shortest time in milliseconds between the starts of two send batches on one writer
    /// lane (PostgreSQL; 0: a lane starts its next batch as soon as it is free).
    #[arg(
        long = "db-batch-window-ms",
        env = "CHAT_DB_BATCH_WINDOW_MS",
        default_value = "3"
    )]
    batch_window: String,
}

/// Per-socket event budgets, by kind.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EventBudgets {
    /// `message:send`.
    pub sends: Rate,
    /// `message:delete`.
    pub deletes: Rate,
    /// `message:history`.
    pub history: Rate,
    /// `room:join`, `room:leave`.
    pub joins: Rate,
    /// Presence changes announced.
    pub presence: Rate,
    /// `presence:query`.
    pub queries: Rate,
    /// `typing:start`, `typing:stop`.
    pub typing: Rate,
    /// Anything else.
    pub other: Rate,
    /// Refused events before the socket is cut.
    pub refused: Rate,
    /// Requests unanswered at once.
    pub in_flight: u32,
    /// CONNECT attempts of one socket.
    pub connect_attempts: u32,
}

impl Default for EventBudgets {
    fn default() -> Self {
        let rate = |burst, secs| Rate {
            burst,
            per: Duration::from_secs(secs),
        };
        EventBudgets {
            sends: rate(600, 10),
            deletes: rate(300, 10),
            history: rate(300, 10),
            joins: rate(600, 10),
            presence: rate(20, 10),
            queries: rate(100, 10),
            typing: rate(10, 2),
            other: rate(100, 10),
            refused: rate(2000, 20),
            in_flight: 256,
            connect_attempts: 10,
        }
    }
}

/// Limits on connections and new sockets, per node and per client address.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConnectionLimits {
    /// Connections of the node (0: none).
    pub connections: u32,
    /// Connections of one address (0: none).
    pub per_address: u32,
    /// New sockets of one address.
    pub address_sockets: Rate,
    /// CONNECT attempts of one address.
    pub address_connects: Rate,
    /// Whether loopback addresses are limited per address too.
    pub loopback: bool,
}

impl ConnectionLimits {
    /// Whether the per-address limits apply to `ip`.
    pub fn applies_to(&self, ip: IpAddr) -> bool {
        self.loopback || !ip.is_loopback()
    }
}

/// Every budget and limit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Per socket.
    pub events: EventBudgets,
    /// Per node and address.
    pub connections: ConnectionLimits,
    /// Longest wait of a send for its batch before requests are refused (zero: no bound).
    pub store_wait: Duration,
    /// Shortest time between the starts of two send batches on one writer lane.
    pub batch_window: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            events: EventBudgets::default(),
            connections: ConnectionLimits {
                connections: 100_000,
                per_address: 1000,
                address_sockets: Rate {
                    burst: 600,
                    per: Duration::from_secs(60),
                },
                address_connects: Rate {
                    burst: 1200,
                    per: Duration::from_secs(60),
                },
                loopback: false,
            },
            store_wait: Duration::from_millis(200),
            batch_window: Duration::from_millis(3),
        }
    }
}

impl Limits {
    /// Validates the raw settings.
    pub fn from_args(a: &LimitArgs) -> Result<Limits, ConfigError> {
        let events = EventBudgets {
            sends: Rate::parse("CHAT_LIMIT_SENDS", &a.sends)?,
            deletes: Rate::parse("CHAT_LIMIT_DELETES", &a.deletes)?,
            history: Rate::parse("CHAT_LIMIT_HISTORY", &a.history)?,
            joins: Rate::parse("CHAT_LIMIT_JOINS", &a.joins)?,
            presence: Rate::parse("CHAT_LIMIT_PRESENCE", &a.presence)?,
            queries: Rate::parse("CHAT_LIMIT_QUERIES", &a.queries)?,
            typing: Rate::parse("CHAT_LIMIT_TYPING", &a.typing)?,
            other: Rate::parse("CHAT_LIMIT_OTHER", &a.other)?,
            refused: Rate::parse("CHAT_LIMIT_REFUSED", &a.refused)?,
            in_flight: number("CHAT_MAX_IN_FLIGHT", &a.in_flight, 1u32, 1 << 20)?,
            connect_attempts: number("CHAT_MAX_CONNECT_ATTEMPTS", &a.connect_attempts, 1u32, 1000)?,
        };
        let connections = ConnectionLimits {
            connections: number("CHAT_MAX_CONNECTIONS", &a.connections, 0u32, 10_000_000)?,
            per_address: number(
                "CHAT_MAX_CONNECTIONS_PER_ADDRESS",
                &a.connections_per_address,
                0u32,
                10_000_000,
            )?,
            address_sockets: Rate::parse("CHAT_LIMIT_ADDRESS_SOCKETS", &a.address_sockets)?,
            address_connects: Rate::parse("CHAT_LIMIT_ADDRESS_CONNECTS", &a.address_connects)?,
            loopback: crate::config::switch("CHAT_LIMIT_LOOPBACK", &a.loopback)?,
        };
        Ok(Limits {
            events,
            connections,
            store_wait: Duration::from_millis(number(
                "CHAT_MAX_STORE_WAIT_MS",
                &a.store_wait,
                0u64,
                3_600_000,
            )?),
            batch_window: Duration::from_millis(number(
                "CHAT_DB_BATCH_WINDOW_MS",
                &a.batch_window,
                0u64,
                1_000,
            )?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_units_and_name_their_variable() {
        let r = Rate::parse("CHAT_LIMIT_SENDS", "600/10s").unwrap();
        assert_eq!((r.burst, r.per), (600, Duration::from_secs(10)));
        assert_eq!(r.per_second(), 60.0);
        assert_eq!(r.to_string(), "600 per 10 s");
        let r = Rate::parse("X", " 5 / 250ms ").unwrap();
        assert_eq!((r.burst, r.per), (5, Duration::from_millis(250)));
        for bad in ["600", "600/10", "0/1s", "x/1s", "5/0s", "5/-1s"] {
            let e = Rate::parse("CHAT_LIMIT_SENDS", bad).unwrap_err();
            assert_eq!(e.variable, "CHAT_LIMIT_SENDS", "{bad}");
        }
    }

    #[test]
    fn loopback_is_exempt_unless_asked() {
        let mut c = Limits::default().connections;
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "203.0.113.9".parse().unwrap();
        assert!(!c.applies_to(lo));
        assert!(c.applies_to(other));
        c.loopback = true;
        assert!(c.applies_to(lo));
    }
}
