//! The broker: what joins the nodes of a cluster over Redis or Valkey (`REDIS_URL`).
//!
//! The design, decided and explained, is `docs/cluster.md`. A node in a cluster runs
//! [`cluster::Cluster`]: the link, the `broker` thread ([`node`]) and `broker-pg` ([`pg`]),
//! and the cluster's presence thread ([`presence::thread`]). The parts:
//!
//! - [`config`]: `REDIS_URL` (`redis://`, `rediss://`, password) and the broker's timings;
//! - [`names`]: node identity, key and channel names under the cluster's prefix, hash slots;
//! - [`codec`]: the publication wire format;
//! - [`sequencer`]: the per-room sequencer that delivers every room's durable events in
//!   position order, holding back early arrivals and filling gaps from PostgreSQL;
//! - [`handover`]: connection state recovery across nodes (the release log, the control
//!   messages on node channels);
//! - [`interest`]: which rooms the node subscribes to, refcounted over its shards;
//! - [`typing`]: other nodes' typers as this node showed them, with their own timers (a typer
//!   whose node died stops showing);
//! - [`node`]'s admissions (`node/admit.rs`): membership reads carried to their sockets in
//!   line with their rooms' events;
//! - [`link`]: the threads that own the Redis connections (publish, subscribe, reconnect with
//!   backoff, link status, cluster-mode detection);
//! - [`presence`]: presence per (workspace, user) over every node, decided by Lua scripts in
//!   Redis, with heartbeats and the sweep of dead nodes;
//! - [`metrics`]: the broker's counters for `/metrics`;
//! - [`testing`]: a private `redis-server` for tests.
//!
//! Only the broker's own threads talk to Redis; shards never wait on it.

pub mod cluster;
pub mod codec;
pub mod config;
pub mod deletions;
pub mod handover;
pub mod input;
pub mod interest;
pub mod link;
pub mod metrics;
pub mod names;
pub mod node;
pub mod pg;
pub mod presence;
pub mod sequencer;
pub mod testing;
pub mod typing;

/// Microseconds since the Unix epoch on this node's clock (publication send times, for the
/// lag metric only: nothing orders by it).
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}
