//! `broker-sub` and its readers: the subscribe connections.
//!
//! The supervisor keeps the set of wanted channels and the topology; each primary gets a
//! reader thread that owns one RESP3 connection (in RESP3 a subscribed connection receives
//! messages and confirmations as pushes and may still send commands). A reader reads with a
//! short timeout so it can apply new (un)subscriptions between reads; it sends every message
//! and confirmation straight to the broker. When any reader loses its connection, or the
//! probe stops coming back, the supervisor closes them all, reports
//! [`Event::SubscriberDown`], and after a backoff rediscovers the topology and subscribes to
//! everything wanted again. A reader that heard nothing for [`PING_EVERY`] pings by
//! subscribing again to one of its channels: Redis confirms a repeated subscription too, so a
//! connection that stays open but stopped answering (a stalled server, a half-open link) is
//! found within [`PING_LOST`].

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{select, Receiver, SendTimeoutError, Sender, TryRecvError};
use redis::{Connection, ProtocolVersion, PushKind, Value};
use rustc_hash::{FxHashMap, FxHashSet};

use super::topology::{Mode, Topology, CONNECT_TIMEOUT};
use super::{state, Backoff, Event, LinkStatus, SubCommand};
use crate::broker::config::RedisConfig;
use crate::broker::metrics::BrokerMetrics;
use crate::broker::names::slot;

/// How long a reader blocks in a read before it looks at its commands again.
const READ_TICK: Duration = Duration::from_millis(20);

/// Channels per SUBSCRIBE command.
const SUBSCRIBE_CHUNK: usize = 512;

/// A reader that heard nothing from Redis for this long pings it.
pub const PING_EVERY: Duration = Duration::from_secs(1);

/// A ping unanswered this long means the connection is dead even if its socket is open.
pub const PING_LOST: Duration = Duration::from_secs(3);

enum ReaderCommand {
    Subscribe(Vec<String>),
    Unsubscribe(Vec<String>),
}

/// What a reader tells the supervisor.
struct Lost {
    generation: u64,
    error: String,
}

struct Reader {
    commands: Sender<ReaderCommand>,
    thread: JoinHandle<()>,
}

struct Supervisor {
    config: RedisConfig,
    node_channel: String,
    events: Sender<Event>,
    status: Arc<LinkStatus>,
    metrics: Arc<BrokerMetrics>,
    wanted: FxHashSet<String>,
    topology: Option<Topology>,
    readers: Vec<Reader>,
    generation: u64,
    lost: (Sender<Lost>, Receiver<Lost>),
    backoff: Backoff,
    connected_before: bool,
}

pub(super) fn spawn(
    config: RedisConfig,
    node_channel: String,
    inbox: Receiver<SubCommand>,
    events: Sender<Event>,
    status: Arc<LinkStatus>,
    metrics: Arc<BrokerMetrics>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("broker-sub".into())
        .spawn(move || {
            let mut wanted = FxHashSet::default();
            wanted.insert(node_channel.clone());
            let mut s = Supervisor {
                config,
                node_channel,
                events,
                status,
                metrics,
                wanted,
                topology: None,
                readers: Vec::new(),
                generation: 0,
                lost: crossbeam_channel::unbounded(),
                backoff: Backoff::new(),
                connected_before: false,
            };
            s.run(&inbox);
            s.close();
        })
}

/// The subscribe commands for `channels`: chunks of one SUBSCRIBE, or one SSUBSCRIBE per slot
/// (a sharded command's channels must share a slot), packed into one write.
fn packed(mode: Mode, subscribe: bool, channels: &[String]) -> Vec<u8> {
    let name = if subscribe {
        mode.subscribe()
    } else {
        mode.unsubscribe()
    };
    let mut out = Vec::new();
    match mode {
        Mode::Standalone => {
            for chunk in channels.chunks(SUBSCRIBE_CHUNK) {
                out.extend(redis::cmd(name).arg(chunk).get_packed_command());
            }
        }
        Mode::Cluster => {
            let mut by_slot: FxHashMap<u16, Vec<&String>> = FxHashMap::default();
            for c in channels {
                by_slot.entry(slot(c.as_bytes())).or_default().push(c);
            }
            for group in by_slot.values() {
                out.extend(redis::cmd(name).arg(group).get_packed_command());
            }
        }
    }
    out
}

impl Supervisor {
    fn run(&mut self, inbox: &Receiver<SubCommand>) {
        loop {
            let now = Instant::now();
            if self.readers.is_empty() && self.backoff.ready(now) {
                self.connect(now);
            }
            let wait = if self.readers.is_empty() {
                self.backoff.wait(now).max(Duration::from_millis(1))
            } else {
                Duration::from_millis(100)
            };
            let lost = self.lost.1.clone();
            select! {
                recv(inbox) -> command => match command {
                    Ok(SubCommand::Subscribe(channels)) => self.change(channels, true),
                    Ok(SubCommand::Unsubscribe(channels)) => self.change(channels, false),
                    Err(_) => return,
                },
                recv(lost) -> report => {
                    if let Ok(report) = report {
                        if report.generation == self.generation && !self.readers.is_empty() {
                            self.down(&report.error);
                        }
                    }
                }
                default(wait) => {}
            }
        }
    }

    fn change(&mut self, channels: Vec<String>, subscribe: bool) {
        let channels: Vec<String> = channels
            .into_iter()
            .filter(|c| *c != self.node_channel)
            .filter(|c| {
                if subscribe {
                    self.wanted.insert(c.clone())
                } else {
                    self.wanted.remove(c)
                }
            })
            .collect();
        let Some(topology) = &self.topology else {
            return;
        };
        if self.readers.is_empty() {
            return;
        }
        let mut per: Vec<Vec<String>> = vec![Vec::new(); self.readers.len()];
        for c in channels {
            per[topology.primary_of(c.as_bytes())].push(c);
        }
        for (reader, channels) in self.readers.iter().zip(per) {
            if !channels.is_empty() {
                let command = if subscribe {
                    ReaderCommand::Subscribe(channels)
                } else {
                    ReaderCommand::Unsubscribe(channels)
                };
                let _ = reader.commands.send(command);
            }
        }
    }

    fn connect(&mut self, now: Instant) {
        self.status.subscribe.store(state::CONNECTING, Relaxed);
        let opened = Topology::discover(&self.config).and_then(|topology| {
            let mut conns = Vec::with_capacity(topology.primaries.len());
            for addr in &topology.primaries {
                let con = self
                    .config
                    .client_at(addr.clone(), ProtocolVersion::RESP3)?
                    .get_connection_with_timeout(CONNECT_TIMEOUT)?;
                con.set_read_timeout(Some(READ_TICK))?;
                con.set_write_timeout(Some(CONNECT_TIMEOUT))?;
                conns.push(con);
            }
            Ok((topology, conns))
        });
        let (topology, conns) = match opened {
            Ok(x) => x,
            Err(e) => {
                self.status.down(&self.status.subscribe, &e.to_string());
                self.backoff.failed(now);
                return;
            }
        };
        self.generation += 1;
        let mut per: Vec<Vec<String>> = vec![Vec::new(); conns.len()];
        for c in &self.wanted {
            per[topology.primary_of(c.as_bytes())].push(c.clone());
        }
        for (i, (con, initial)) in conns.into_iter().zip(per).enumerate() {
            let (tx, rx) = crossbeam_channel::unbounded();
            let ctx = ReaderContext {
                generation: self.generation,
                mode: topology.mode,
                node_channel: self.node_channel.clone(),
                events: self.events.clone(),
                lost: self.lost.0.clone(),
                metrics: Arc::clone(&self.metrics),
            };
            let spawned = std::thread::Builder::new()
                .name(format!("broker-sub-{i}"))
                .spawn(move || ctx.run(con, initial, &rx));
            match spawned {
                Ok(thread) => self.readers.push(Reader {
                    commands: tx,
                    thread,
                }),
                Err(e) => {
                    self.down(&format!("cannot start a reader thread: {e}"));
                    return;
                }
            }
        }
        if self.connected_before {
            self.metrics.reconnects.fetch_add(1, Relaxed);
        }
        self.connected_before = true;
        tracing::info!(redis = %self.config, mode = topology.mode.as_str(), channels = self.wanted.len(), "subscribed to Redis");
        self.status.set_mode(topology.mode);
        self.topology = Some(topology);
        self.backoff.reset();
        self.status.up(&self.status.subscribe);
    }

    fn down(&mut self, error: &str) {
        tracing::warn!(redis = %self.config, error, "Redis subscribe link lost; reconnecting");
        self.close();
        self.status.down(&self.status.subscribe, error);
        self.backoff.failed(Instant::now());
        let _ = self.events.send(Event::SubscriberDown);
    }

    fn close(&mut self) {
        // Readers notice their closed command channel within one read tick.
        for reader in self.readers.drain(..) {
            drop(reader.commands);
            let _ = reader.thread.join();
        }
        self.metrics.subscriptions.store(0, Relaxed);
    }
}

/// One reader's subscriptions.
#[derive(Default)]
struct ReaderState {
    /// Channels asked for.
    mine: FxHashSet<String>,
    /// Channels Redis confirmed.
    confirmed: FxHashSet<String>,
    /// A ping out: the channel subscribed again, and when.
    ping: Option<(String, Instant)>,
}

struct ReaderContext {
    generation: u64,
    mode: Mode,
    node_channel: String,
    events: Sender<Event>,
    lost: Sender<Lost>,
    metrics: Arc<BrokerMetrics>,
}

fn bytes_of(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

impl ReaderContext {
    fn run(self, mut con: Connection, initial: Vec<String>, commands: &Receiver<ReaderCommand>) {
        let mut state = ReaderState::default();
        let result = self.serve(&mut con, initial, commands, &mut state);
        self.metrics
            .subscriptions
            .fetch_sub(state.confirmed.len() as i64, Relaxed);
        if let Err(error) = result {
            let _ = self.lost.send(Lost {
                generation: self.generation,
                error,
            });
        }
    }

    /// Runs until the supervisor lets go (`Ok`) or the connection fails (`Err`).
    fn serve(
        &self,
        con: &mut Connection,
        initial: Vec<String>,
        commands: &Receiver<ReaderCommand>,
        state: &mut ReaderState,
    ) -> Result<(), String> {
        self.send(con, true, initial, &mut state.mine)?;
        let mut heard = Instant::now();
        loop {
            loop {
                match commands.try_recv() {
                    Ok(ReaderCommand::Subscribe(c)) => self.send(con, true, c, &mut state.mine)?,
                    Ok(ReaderCommand::Unsubscribe(c)) => {
                        self.send(con, false, c, &mut state.mine)?
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return Ok(()),
                }
            }
            match con.recv_response() {
                Ok(Value::Push { kind, data }) => {
                    heard = Instant::now();
                    state.ping = None;
                    if !self.push(kind, data, state, commands)? {
                        return Ok(());
                    }
                }
                Ok(_) => heard = Instant::now(),
                Err(e) if e.is_timeout() => match state.ping {
                    Some((_, at)) if at.elapsed() > PING_LOST => {
                        return Err(format!(
                            "Redis did not answer a ping within {} s",
                            PING_LOST.as_secs()
                        ))
                    }
                    None if heard.elapsed() >= PING_EVERY => {
                        // A channel still wanted: one being unsubscribed must not come back.
                        let wanted = state.confirmed.iter().find(|c| state.mine.contains(*c));
                        if let Some(channel) = wanted.cloned() {
                            let bytes = packed(self.mode, true, std::slice::from_ref(&channel));
                            con.send_packed_command(&bytes).map_err(|e| e.to_string())?;
                            state.ping = Some((channel, Instant::now()));
                        }
                    }
                    _ => {}
                },
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    fn send(
        &self,
        con: &mut Connection,
        subscribe: bool,
        channels: Vec<String>,
        mine: &mut FxHashSet<String>,
    ) -> Result<(), String> {
        if channels.is_empty() {
            return Ok(());
        }
        let bytes = packed(self.mode, subscribe, &channels);
        for c in channels {
            if subscribe {
                mine.insert(c);
            } else {
                mine.remove(&c);
            }
        }
        con.send_packed_command(&bytes).map_err(|e| e.to_string())
    }

    /// Handles one push; `Ok(false)` when the broker has gone away.
    fn push(
        &self,
        kind: PushKind,
        data: Vec<Value>,
        state: &mut ReaderState,
        commands: &Receiver<ReaderCommand>,
    ) -> Result<bool, String> {
        let mut data = data.into_iter();
        let channel = data
            .next()
            .and_then(bytes_of)
            .and_then(|c| String::from_utf8(c).ok());
        let Some(channel) = channel else {
            return Ok(true);
        };
        match kind {
            PushKind::Message | PushKind::SMessage => {
                let payload = data.next().and_then(bytes_of).unwrap_or_default();
                self.metrics.receipts.fetch_add(1, Relaxed);
                self.metrics
                    .receipt_bytes
                    .fetch_add(payload.len() as u64, Relaxed);
                let event = Event::Message {
                    channel,
                    payload: Bytes::from(payload),
                };
                Ok(self.deliver(event, commands))
            }
            PushKind::Subscribe | PushKind::SSubscribe => {
                // A repeated confirmation answers a ping; the node's own channel is the
                // link's, not a room the broker asked for.
                if !state.confirmed.insert(channel.clone()) {
                    return Ok(true);
                }
                self.metrics.subscriptions.fetch_add(1, Relaxed);
                if channel == self.node_channel {
                    return Ok(true);
                }
                Ok(self.deliver(Event::Subscribed(channel), commands))
            }
            PushKind::Unsubscribe | PushKind::SUnsubscribe => {
                if state.confirmed.remove(&channel) {
                    self.metrics.subscriptions.fetch_sub(1, Relaxed);
                }
                if state.mine.contains(&channel) {
                    // Redis dropped a channel this reader still wants (its slot moved to
                    // another primary): start over with a fresh topology.
                    return Err(format!("Redis unsubscribed {channel} (slot moved?)"));
                }
                Ok(true)
            }
            PushKind::Disconnection => Err("connection closed".into()),
            _ => Ok(true),
        }
    }

    /// Hands an event to the broker, waiting while its channel is full (that back-pressure
    /// reaches Redis, which drops a subscriber too far behind); `false` once the broker or the
    /// supervisor has gone away.
    fn deliver(&self, mut event: Event, commands: &Receiver<ReaderCommand>) -> bool {
        loop {
            match self.events.send_timeout(event, Duration::from_millis(100)) {
                Ok(()) => return true,
                Err(SendTimeoutError::Disconnected(_)) => return false,
                Err(SendTimeoutError::Timeout(e)) => {
                    if matches!(commands.try_recv(), Err(TryRecvError::Disconnected)) {
                        return false;
                    }
                    event = e;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharded_subscriptions_group_channels_by_slot() {
        let channels: Vec<String> = ["{a}x", "{a}y", "{b}z"].map(String::from).to_vec();
        let text = String::from_utf8(packed(Mode::Cluster, true, &channels)).unwrap();
        assert_eq!(text.matches("SSUBSCRIBE").count(), 2, "{text}");
        let text = String::from_utf8(packed(Mode::Standalone, false, &channels)).unwrap();
        assert_eq!(text.matches("UNSUBSCRIBE").count(), 1, "{text}");
        let many: Vec<String> = (0..1100).map(|i| format!("c{i}")).collect();
        let text = String::from_utf8(packed(Mode::Standalone, true, &many)).unwrap();
        assert_eq!(text.matches("SUBSCRIBE").count(), 3, "chunks of 512");
    }
}
