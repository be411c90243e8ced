//! A node's part of the cluster, started and stopped as one: the Redis link, the `broker`
//! thread and `broker-pg` (the `presence` thread is started by the node with the link).

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use super::config::RedisConfig;
use super::link::{Link, LinkStatus};
use super::metrics::BrokerMetrics;
use super::names::{Names, NodeId};
use super::node::{Broker, Input};
use crate::mesh::BrokerHandle;

/// Most link events waiting for the `broker` thread (a reader blocks beyond it; Redis then
/// buffers, and drops a subscriber past its output limit: the rooms are caught up after).
const EVENTS: usize = 65_536;

/// What `/healthz` and `/metrics` show of the cluster.
#[derive(Debug)]
pub struct View {
    /// This node.
    pub node: NodeId,
    /// The link's state.
    pub link: Arc<LinkStatus>,
    /// The broker's counters.
    pub metrics: Arc<BrokerMetrics>,
}

/// The running cluster threads of a node.
pub struct Cluster {
    /// The link (shared with the `presence` thread).
    pub link: Arc<Link>,
    /// The `broker` thread's inbox.
    inbox: Sender<Input>,
    broker: JoinHandle<()>,
    pg: JoinHandle<()>,
}

impl Cluster {
    /// Starts the link, `broker-pg` and the `broker` thread reading `inbox`. `broker` is the
    /// node's broker handle (its shards, ids and recovery setting); rooms stay subscribed for
    /// `recovery_window` after their last member left.
    pub fn start(
        config: &RedisConfig,
        database_url: &str,
        node: NodeId,
        inbox: (Sender<Input>, Receiver<Input>),
        broker: BrokerHandle,
        recovery_window: std::time::Duration,
    ) -> Result<(Cluster, View), String> {
        let metrics = Arc::new(BrokerMetrics::default());
        let (events_tx, events) = crossbeam_channel::bounded(EVENTS);
        let link = Arc::new(
            Link::start(config, node, events_tx, Arc::clone(&metrics))
                .map_err(|e| format!("cannot start the Redis link threads: {e}"))?,
        );
        let (asks_tx, asks) = crossbeam_channel::unbounded();
        let pg = super::pg::spawn(database_url.to_owned(), asks, inbox.0.clone())
            .map_err(|e| format!("cannot start broker-pg: {e}"))?;
        let state = Broker::new(
            node,
            Names::new(&config.prefix),
            Arc::clone(&link),
            broker,
            Arc::clone(&metrics),
            asks_tx,
            config.gap_fill,
            config.sweep,
            recovery_window,
        );
        let receiver = inbox.1;
        let thread = std::thread::Builder::new()
            .name("broker".into())
            .spawn(move || state.run(&receiver, &events))
            .map_err(|e| format!("cannot start the broker thread: {e}"))?;
        let view = View {
            node,
            link: Arc::clone(link.status()),
            metrics,
        };
        Ok((
            Cluster {
                link,
                inbox: inbox.0,
                broker: thread,
                pg,
            },
            view,
        ))
    }

    /// Stops the `broker` thread, `broker-pg` and the link (call after the presence thread
    /// has left and exited, so the link is no longer shared).
    pub fn shutdown(self) {
        let _ = self.inbox.send(Input::Shutdown);
        let _ = self.broker.join();
        let _ = self.pg.join();
        match Arc::try_unwrap(self.link) {
            Ok(link) => link.shutdown(),
            Err(_) => tracing::warn!("the Redis link is still in use at shutdown"),
        }
    }
}
