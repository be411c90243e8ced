//! The process: binds the listeners, builds the mesh, starts the store and the shards, and
//! stops them in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use mio::{Poll, Waker};
use socket2::{Domain, Protocol, Socket, Type};

use crate::chat::auth::JwtVerifier;
use crate::config::Config;
use crate::ids::ShardId;
use crate::mesh::{
    BrokerHandle, Mesh, PresenceCommand, ShardCommand, ShardHandle, StoreCommand, StoreHandle,
};
use crate::metrics::Metrics;
use crate::shard::{Shard, Shared, WAKER};

/// Reader threads (each with its own PostgreSQL connection) for CONNECT, history and checks.
const READERS: usize = 2;

/// Pending connections the kernel keeps per listener.
const BACKLOG: i32 = 4096;

/// A running node.
pub struct Node {
    local_addr: SocketAddr,
    mesh: Mesh,
    shards: Vec<JoinHandle<()>>,
    store: JoinHandle<()>,
    presence: (crossbeam_channel::Sender<PresenceCommand>, JoinHandle<()>),
    cluster: Option<crate::broker::cluster::Cluster>,
    grace: std::time::Duration,
    /// Held while the node runs (see [`lock_port`]).
    _port_lock: std::os::unix::net::UnixListener,
}

/// Refuses a port another process listens on. `SO_REUSEPORT` would let a second process
/// of the same user join this one's listeners (and the kernel split connections between two
/// servers with different state), so first a plain bind, without it, must succeed; then,
/// once the shards' listeners are bound, an abstract Unix socket named after the address is
/// held for the life of the process, so two servers starting at the same instant cannot
/// both pass the first check.
fn claim_port(addr: SocketAddr) -> Result<(), String> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| format!("cannot create a socket: {e}"))?;
    // Connections in TIME_WAIT from an earlier run do not count.
    let _ = probe.set_reuse_address(true);
    match probe.bind(&addr.into()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(in_use(addr)),
        Err(e) => Err(format!("cannot listen on {addr} (CHAT_LISTEN): {e}")),
    }
}

fn in_use(addr: SocketAddr) -> String {
    format!(
        "cannot listen on {addr} (CHAT_LISTEN): another process listens on that port \
         (another ocomms-rt?); stop it, or set CHAT_LISTEN to a free port"
    )
}

/// Holds the abstract socket that says this process serves `addr` (see [`claim_port`]).
fn lock_port(addr: SocketAddr) -> Result<std::os::unix::net::UnixListener, String> {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("ocomms-rt/{addr}");
    let lock = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        .map_err(|e| format!("cannot name the port lock {name}: {e}"))?;
    std::os::unix::net::UnixListener::bind_addr(&lock).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => in_use(addr),
        _ => format!("cannot take the port lock {name}: {e}"),
    })
}

/// Binds one `SO_REUSEPORT` listener; the kernel spreads new connections over the shards'
/// listeners, so no thread hands sockets to another.
fn listener(addr: SocketAddr) -> std::io::Result<mio::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(mio::net::TcpListener::from_std(socket.into()))
}

impl Node {
    /// Starts every thread. The error says what could not be set up.
    pub fn start(config: Config) -> Result<Node, String> {
        let shards = config.shards;
        let tls = match &config.tls {
            Some((cert, key)) => Some(crate::transport::tls::server_config(cert, key)?),
            None => None,
        };
        claim_port(config.listen)?;
        let first = listener(config.listen)
            .map_err(|e| format!("cannot listen on {} (CHAT_LISTEN): {e}", config.listen))?;
        let local_addr = first.local_addr().map_err(|e| e.to_string())?;
        let mut listeners = vec![first];
        for _ in 1..shards {
            // Port 0 was resolved by the first bind; the others join that port.
            listeners.push(
                listener(local_addr).map_err(|e| format!("cannot listen on {local_addr}: {e}"))?,
            );
        }
        let port_lock = lock_port(local_addr)?;

        let metrics = Arc::new(Metrics::new(shards));
        let mut polls = Vec::with_capacity(shards);
        let mut handles = Vec::with_capacity(shards);
        let mut inboxes = Vec::with_capacity(shards);
        for i in 0..shards {
            let poll = Poll::new().map_err(|e| format!("cannot create poll: {e}"))?;
            let waker = Waker::new(poll.registry(), WAKER)
                .map_err(|e| format!("cannot create waker: {e}"))?;
            let (tx, rx) = crossbeam_channel::unbounded();
            handles.push(
                ShardHandle::new(ShardId(i as u16), tx, Arc::new(waker))
                    .with_metrics(Arc::clone(&metrics)),
            );
            inboxes.push(rx);
            polls.push(poll);
        }
        let (store_tx, store_rx) = crossbeam_channel::unbounded();
        let (presence_tx, presence_rx) = crossbeam_channel::unbounded();
        let mut broker = BrokerHandle::local(handles.clone()).with_presence(presence_tx.clone());
        if !config.recovery_window.is_zero() {
            broker = broker.with_recovery();
        }
        // A cluster node: a fresh id (a node that comes back is a new node), its PostgreSQL
        // connections named after it, and every publication through the `broker` thread.
        let node_id = crate::broker::names::NodeId::random();
        let cluster_inbox = config.redis_url.as_ref().map(|_| {
            crate::store::pg::set_node(node_id);
            crossbeam_channel::unbounded()
        });
        if let Some((tx, _)) = &cluster_inbox {
            broker = broker.with_cluster(tx.clone(), node_id);
        }
        let mesh = Mesh {
            shards: handles,
            store: StoreHandle::new(store_tx)
                .with_max_wait(config.limits.store_wait)
                .with_metrics(&metrics),
            broker,
        };
        let mut demo = None;
        let (store, store_kind) = match &config.database_url {
            Some(url) => (
                crate::store::pg::spawn_postgres(
                    url,
                    config.db_writers,
                    config.limits.batch_window,
                    READERS,
                    store_rx,
                    mesh.clone(),
                    Arc::clone(&metrics),
                )
                .map_err(|e| format!("PostgreSQL (DATABASE_URL): {e}"))?,
                "postgres",
            ),
            None => {
                let mut backend = crate::store::MemoryBackend::new();
                if config.demo {
                    demo = Some(
                        crate::web::demo::seed(&mut backend, chrono::Utc::now())
                            .map_err(|e| format!("cannot seed the demo workspace: {e}"))?,
                    );
                }
                (
                    crate::store::spawn_with(backend, store_rx, mesh.clone(), Arc::clone(&metrics))
                        .map_err(|e| format!("cannot start the store thread: {e}"))?,
                    "memory",
                )
            }
        };
        let mut cluster = None;
        let presence = match (&config.redis_url, cluster_inbox, &config.database_url) {
            (Some(redis), Some(inbox), Some(database)) => {
                let (started, view) = crate::broker::cluster::Cluster::start(
                    redis,
                    database,
                    node_id,
                    inbox,
                    mesh.broker.clone(),
                    config.recovery_window,
                )?;
                let settings = crate::broker::presence::thread::Settings {
                    node: node_id,
                    names: crate::broker::names::Names::new(&redis.prefix),
                    heartbeat: redis.heartbeat,
                    ttl: redis.heartbeat_ttl,
                };
                let presence = crate::broker::presence::thread::spawn(
                    presence_rx,
                    mesh.clone(),
                    Arc::clone(&started.link),
                    settings,
                );
                // Give the link a moment to connect, so the node's first sockets already
                // cross nodes; a Redis that is down does not hold the start (the link keeps
                // retrying, and local service needs no Redis).
                let deadline = Instant::now() + std::time::Duration::from_secs(3);
                while !started.link.is_up_now() && Instant::now() < deadline {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                let _ = metrics.cluster.set(view);
                cluster = Some(started);
                presence
            }
            _ => crate::presence::spawn(presence_rx, mesh.clone()),
        }
        .map_err(|e| format!("cannot start the presence thread: {e}"))?;

        let tls_on = tls.is_some();
        let shared = Arc::new(Shared {
            jwt: JwtVerifier::new(config.jwt_secret.as_deref()),
            tls,
            metrics,
            store_kind,
            started: Instant::now(),
            gate: crate::gate::Gate::new(config.limits.connections),
            config: config.clone(),
            demo,
        });
        let mut threads = Vec::with_capacity(shards);
        for (i, ((poll, listener), inbox)) in
            polls.into_iter().zip(listeners).zip(inboxes).enumerate()
        {
            let shard = Shard::new(
                ShardId(i as u16),
                poll,
                Some(listener),
                inbox,
                mesh.clone(),
                Arc::clone(&shared),
            )
            .map_err(|e| format!("cannot set up shard {i}: {e}"))?;
            let thread = std::thread::Builder::new()
                .name(format!("shard-{i}"))
                .spawn(move || {
                    if let Err(e) = shard.run() {
                        tracing::error!(shard = i, error = %e, "shard stopped on an error");
                    }
                })
                .map_err(|e| format!("cannot start shard {i}: {e}"))?;
            threads.push(thread);
        }
        tracing::info!(
            listen = %local_addr,
            store = store_kind,
            shards,
            single_node = config.redis_url.is_none(),
            node = %node_id,
            redis = config.redis_url.as_ref().map(ToString::to_string),
            tls = tls_on,
            jwt = config.jwt_secret.is_some(),
            admin_api = config.admin_token.is_some(),
            demo = config.demo,
            "ocomms-rt started"
        );
        if config.demo {
            let port = local_addr.port();
            tracing::warn!(
                "demo mode: open http://localhost:{port}/ in two browser tabs and sign in as two \
                 demo users; anyone who can reach this port may sign in as a demo user, and the \
                 data lives in memory only"
            );
        }
        Ok(Node {
            local_addr,
            mesh,
            shards: threads,
            store,
            presence: (presence_tx, presence),
            cluster,
            grace: config.shutdown_grace,
            _port_lock: port_lock,
        })
    }

    /// Where the node listens (the real port when `CHAT_LISTEN` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, closes every socket with a close frame, flushes within the grace
    /// period, then stops the store once nothing can ask it anything.
    pub fn shutdown(self) {
        let deadline = Instant::now() + self.grace;
        for shard in &self.mesh.shards {
            shard.send(ShardCommand::Shutdown { deadline });
        }
        for thread in self.shards {
            let _ = thread.join();
        }
        self.mesh.store.send(StoreCommand::Shutdown);
        let _ = self.store.join();
        let (presence, thread) = self.presence;
        let _ = presence.send(PresenceCommand::Shutdown);
        let _ = thread.join();
        if let Some(cluster) = self.cluster {
            cluster.shutdown();
        }
        tracing::info!("ocomms-rt stopped");
    }
}
