//! The node's gate: connections held by the node and by each client address, and how often
//! one address opens a socket or tries a CONNECT ([`crate::limits::ConnectionLimits`]).
//! Shared by every shard; an address's entry sits behind one of a few locks chosen by its
//! hash, taken once per accept, close, new socket or CONNECT (never per event).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

use rustc_hash::FxBuildHasher;

use crate::chat::budget::Bucket;
use crate::limits::{ConnectionLimits, Rate};

/// Locks over the address table.
const STRIPES: usize = 16;
/// Entries a stripe holds before idle ones are swept.
const SWEEP_AT: usize = 4096;

#[derive(Debug)]
struct Entry {
    connections: u32,
    sockets: Bucket,
    connects: Bucket,
    /// Milliseconds (from the gate's epoch) of its last use.
    used_ms: u32,
}

/// Why a connection or socket was refused; the text names the limit and its setting.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal(pub String);

/// Connection counts and per-address buckets.
#[derive(Debug)]
pub struct Gate {
    limits: ConnectionLimits,
    epoch: Instant,
    total: AtomicU32,
    stripes: Vec<Mutex<HashMap<IpAddr, Entry, FxBuildHasher>>>,
}

impl Gate {
    /// A gate with nobody in.
    pub fn new(limits: ConnectionLimits) -> Self {
        Gate {
            limits,
            epoch: Instant::now(),
            total: AtomicU32::new(0),
            stripes: (0..STRIPES).map(|_| Mutex::default()).collect(),
        }
    }

    fn ms(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.epoch).as_millis() as u32
    }

    /// Runs `f` on the entry of `ip`, made if need be; sweeps idle entries when the stripe
    /// is large.
    fn with<R>(&self, ip: IpAddr, now: Instant, f: impl FnOnce(&mut Entry, u32) -> R) -> R {
        let stripe = &self.stripes[FxBuildHasher.hash_one(ip) as usize % STRIPES];
        let mut table = stripe.lock().unwrap_or_else(|e| e.into_inner());
        let ms = self.ms(now);
        if table.len() >= SWEEP_AT && !table.contains_key(&ip) {
            // An entry with no connection whose buckets have refilled is as good as none.
            let idle = |r: Rate| r.per.as_millis() as u32;
            let keep = idle(self.limits.address_sockets).max(idle(self.limits.address_connects));
            table.retain(|_, e| e.connections > 0 || ms.saturating_sub(e.used_ms) < keep);
        }
        let entry = table.entry(ip).or_insert(Entry {
            connections: 0,
            sockets: Bucket::FULL,
            connects: Bucket::FULL,
            used_ms: ms,
        });
        entry.used_ms = ms;
        f(entry, ms)
    }

    /// A connection from `ip` was accepted: counts it, or refuses it over the node's or the
    /// address's limit. Every `Ok` is paired with one [`Gate::close`].
    pub fn open(&self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        let max = self.limits.connections;
        if self.total.fetch_add(1, Relaxed) >= max && max > 0 {
            self.total.fetch_sub(1, Relaxed);
            return Err(Refusal(format!(
                "this server holds its limit of {max} connections \
                 (CHAT_MAX_CONNECTIONS); try again later"
            )));
        }
        let per = self.limits.per_address;
        if per == 0 || !self.limits.applies_to(ip) {
            return Ok(());
        }
        let result = self.with(ip, now, |e, _| {
            if e.connections >= per {
                return Err(Refusal(format!(
                    "{ip} holds {per} connections, the most one address may \
                     (CHAT_MAX_CONNECTIONS_PER_ADDRESS); close some first"
                )));
            }
            e.connections += 1;
            Ok(())
        });
        if result.is_err() {
            self.total.fetch_sub(1, Relaxed);
        }
        result
    }

    /// A connection counted by [`Gate::open`] closed.
    pub fn close(&self, ip: IpAddr, now: Instant) {
        self.total.fetch_sub(1, Relaxed);
        if self.limits.per_address == 0 || !self.limits.applies_to(ip) {
            return;
        }
        self.with(ip, now, |e, _| {
            e.connections = e.connections.saturating_sub(1)
        });
    }

    /// `ip` opens a socket (a WebSocket handshake or a polling session).
    pub fn new_socket(&self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        let rate = self.limits.address_sockets;
        self.take(ip, now, rate, |e| &mut e.sockets).map_err(|()| {
            Refusal(format!(
                "{ip} opened more than {rate} sockets (CHAT_LIMIT_ADDRESS_SOCKETS); \
                 try again later"
            ))
        })
    }

    /// `ip` tries a CONNECT.
    pub fn connect_attempt(&self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        let rate = self.limits.address_connects;
        self.take(ip, now, rate, |e| &mut e.connects).map_err(|()| {
            Refusal(format!(
                "{ip} tried more than {rate} CONNECTs (CHAT_LIMIT_ADDRESS_CONNECTS); \
                 try again later"
            ))
        })
    }

    fn take(
        &self,
        ip: IpAddr,
        now: Instant,
        rate: Rate,
        bucket: impl FnOnce(&mut Entry) -> &mut Bucket,
    ) -> Result<(), ()> {
        if !self.limits.applies_to(ip) {
            return Ok(());
        }
        self.with(ip, now, |e, ms| {
            if bucket(e).take(rate, ms) {
                Ok(())
            } else {
                Err(())
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::limits::Limits;

    fn limits() -> ConnectionLimits {
        ConnectionLimits {
            connections: 3,
            per_address: 2,
            address_sockets: Rate {
                burst: 2,
                per: Duration::from_secs(1),
            },
            ..Limits::default().connections
        }
    }

    #[test]
    fn connections_are_limited_per_address_and_per_node() {
        let gate = Gate::new(limits());
        let now = Instant::now();
        let a: IpAddr = "203.0.113.1".parse().unwrap();
        let b: IpAddr = "203.0.113.2".parse().unwrap();
        assert!(gate.open(a, now).is_ok());
        assert!(gate.open(a, now).is_ok());
        let e = gate.open(a, now).unwrap_err();
        assert!(e.0.contains("CHAT_MAX_CONNECTIONS_PER_ADDRESS"), "{e:?}");
        assert!(gate.open(b, now).is_ok());
        let e = gate.open(b, now).unwrap_err();
        assert!(e.0.contains("CHAT_MAX_CONNECTIONS)"), "{e:?}");
        gate.close(a, now);
        assert!(gate.open(b, now).is_ok());
        // Loopback is exempt from the per-address limits, not from the node's.
        gate.close(b, now);
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(gate.open(lo, now).is_ok());
        assert!(gate.open(lo, now).is_err());
    }

    #[test]
    fn new_sockets_per_address_refill_over_time() {
        let gate = Gate::new(limits());
        let now = Instant::now();
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        assert!(gate.new_socket(a, now).is_ok());
        assert!(gate.new_socket(a, now).is_ok());
        let e = gate.new_socket(a, now).unwrap_err();
        assert!(e.0.contains("2 per 1 s"), "{e:?}");
        assert!(gate.new_socket(a, now + Duration::from_millis(600)).is_ok());
    }
}
