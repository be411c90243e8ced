//! `broker-pub`: the publish connections. Each turn takes what is queued (up to
//! [`MAX_BATCH`]), sends the publications as one pipeline per primary and runs the jobs in
//! order with them. While Redis is down nothing waits: publications are handed back as
//! [`Event::Unpublished`] and jobs run with no connection.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use redis::{Connection, ProtocolVersion};

use super::topology::{Mode, Topology, CONNECT_TIMEOUT};
use super::{Backoff, Event, LinkStatus, PubCommand};
use crate::broker::config::RedisConfig;
use crate::broker::metrics::BrokerMetrics;

/// Most commands taken from the queue in one turn.
pub const MAX_BATCH: usize = 512;

/// Longest a pipeline's write or reply may take before the connection counts as lost.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// The publish connections, one per primary, as jobs see them.
pub struct Conns {
    topology: Topology,
    conns: Vec<Connection>,
}

impl Conns {
    fn open(config: &RedisConfig) -> redis::RedisResult<Conns> {
        let topology = Topology::discover(config)?;
        let mut conns = Vec::with_capacity(topology.primaries.len());
        for addr in &topology.primaries {
            let con = config
                .client_at(addr.clone(), ProtocolVersion::RESP2)?
                .get_connection_with_timeout(CONNECT_TIMEOUT)?;
            con.set_read_timeout(Some(IO_TIMEOUT))?;
            con.set_write_timeout(Some(IO_TIMEOUT))?;
            conns.push(con);
        }
        Ok(Conns { topology, conns })
    }

    /// Standalone or cluster.
    pub fn mode(&self) -> Mode {
        self.topology.mode
    }

    /// The connection to the primary that owns `name` (a key or a channel).
    pub fn for_name(&mut self, name: &str) -> &mut Connection {
        let i = self.topology.primary_of(name.as_bytes());
        &mut self.conns[i]
    }

    fn broken(&self) -> bool {
        self.conns
            .iter()
            .any(|c| !redis::ConnectionLike::is_open(c))
    }
}

struct Publisher {
    config: RedisConfig,
    events: Sender<Event>,
    status: Arc<LinkStatus>,
    metrics: Arc<BrokerMetrics>,
    conns: Option<Conns>,
    backoff: Backoff,
    connected_before: bool,
}

pub(super) fn spawn(
    config: RedisConfig,
    inbox: Receiver<PubCommand>,
    events: Sender<Event>,
    status: Arc<LinkStatus>,
    metrics: Arc<BrokerMetrics>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("broker-pub".into())
        .spawn(move || {
            let mut p = Publisher {
                config,
                events,
                status,
                metrics,
                conns: None,
                backoff: Backoff::new(),
                connected_before: false,
            };
            p.run(&inbox);
        })
}

impl Publisher {
    fn run(&mut self, inbox: &Receiver<PubCommand>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            let now = Instant::now();
            if self.conns.is_none() && self.backoff.ready(now) {
                self.connect(now);
            }
            let wait = match &self.conns {
                Some(_) => Duration::from_secs(1),
                None => self.backoff.wait(now).max(Duration::from_millis(1)),
            };
            match inbox.recv_timeout(wait) {
                Ok(first) => batch.push(first),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            }
            while batch.len() < MAX_BATCH {
                match inbox.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            self.turn(&mut batch);
        }
    }

    fn connect(&mut self, now: Instant) {
        self.status.publish.store(super::state::CONNECTING, Relaxed);
        match Conns::open(&self.config) {
            Ok(conns) => {
                self.status.set_mode(conns.mode());
                self.status
                    .primaries
                    .store(conns.conns.len() as i64, Relaxed);
                if self.connected_before {
                    self.metrics.reconnects.fetch_add(1, Relaxed);
                }
                self.connected_before = true;
                tracing::info!(redis = %self.config, mode = conns.mode().as_str(), "publishing to Redis");
                self.conns = Some(conns);
                self.backoff.reset();
                self.status.up(&self.status.publish);
            }
            Err(e) => self.lost(now, &e.to_string()),
        }
    }

    fn lost(&mut self, now: Instant, error: &str) {
        if self.conns.take().is_some() || self.status.publish.load(Relaxed) != super::state::DOWN {
            tracing::warn!(redis = %self.config, error, "Redis publish link lost; reconnecting");
        }
        self.status.down(&self.status.publish, error);
        self.backoff.failed(now);
    }

    /// One turn: publications in one pipeline per primary, jobs in order with them.
    fn turn(&mut self, batch: &mut Vec<PubCommand>) {
        let primaries = self.conns.as_ref().map_or(1, |c| c.conns.len());
        let mut pending: Vec<Vec<(String, Vec<u8>)>> = vec![Vec::new(); primaries];
        for command in batch.drain(..) {
            match command {
                PubCommand::Publish { channel, payload } => {
                    let i = self
                        .conns
                        .as_ref()
                        .map_or(0, |c| c.topology.primary_of(channel.as_bytes()));
                    pending[i].push((channel, payload));
                }
                PubCommand::Run(job) => {
                    self.flush(std::mem::replace(&mut pending, vec![Vec::new(); primaries]));
                    job(self.conns.as_mut());
                    if self.conns.as_ref().is_some_and(Conns::broken) {
                        self.lost(Instant::now(), "connection closed during a job");
                    }
                }
            }
        }
        self.flush(pending);
    }

    /// Sends each primary's publications as one pipeline. On a failure the connections are
    /// dropped and every publication not known to be sent is handed back.
    fn flush(&mut self, pending: Vec<Vec<(String, Vec<u8>)>>) {
        if pending.iter().all(Vec::is_empty) {
            return;
        }
        let mut failed: Vec<Vec<u8>> = Vec::new();
        let mut error = None;
        for (i, entries) in pending.into_iter().enumerate() {
            if entries.is_empty() {
                continue;
            }
            let Some(conns) = self.conns.as_mut().filter(|_| error.is_none()) else {
                failed.extend(entries.into_iter().map(|(_, p)| p));
                continue;
            };
            let mode = conns.mode();
            let mut pipe = redis::pipe();
            let mut bytes = 0;
            for (channel, payload) in &entries {
                bytes += payload.len();
                pipe.cmd(mode.publish()).arg(channel).arg(payload).ignore();
            }
            match pipe.exec(&mut conns.conns[i]) {
                Ok(()) => {
                    self.metrics
                        .publishes
                        .fetch_add(entries.len() as u64, Relaxed);
                    self.metrics.publish_bytes.fetch_add(bytes as u64, Relaxed);
                }
                Err(e) => {
                    error = Some(e.to_string());
                    failed.extend(entries.into_iter().map(|(_, p)| p));
                }
            }
        }
        if let Some(e) = error {
            self.lost(Instant::now(), &e);
        }
        if !failed.is_empty() {
            self.metrics
                .unpublished
                .fetch_add(failed.len() as u64, Relaxed);
            let _ = self.events.send(Event::Unpublished(failed));
        }
    }
}
