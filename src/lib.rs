//! ocomms-rt: the realtime core of OComms, a Socket.IO server for chat.
//!
//! # Brief overview
//!
//! ```text
//!                   ┌──────────── shard thread (one per core) ─────────────┐
//!  TCP (SO_REUSEPORT)│ transport::Stream ─► protocol::http ─► transport::websocket
//!  plain or rustls   │          ─► protocol::Session (Engine.IO + Socket.IO)  │
//!                    │          ─► chat (event rules) ─► Effects              │
//!                    └───────────────────────────────────────────────────────┘
//!  store        : StoreCommand ─► batch ─► memory or PostgreSQL ─► StoreReply + Broadcast
//!  presence     : PresenceCommand ─► per-user socket counts ─► presence:update
//!  broker       : Broadcast ─► ShardCommand::Deliver on every shard (other nodes: docs/cluster.md)
//! ```
//!
//! Each shard owns its sockets in a slab and its room index ([`hub::Hub`]); nothing on the
//! hot path is shared or locked. Threads talk only through the typed commands of [`mesh`].
//! [`protocol`], [`chat`] and [`hub`] do no IO and read no clock: they take input and `now`
//! and return output, so they are tested with strings.
//!
//! Modules, from the bottom up: [`ids`], [`model`], [`config`], [`metrics`], [`protocol`],
//! [`transport`], [`hub`], [`mesh`], [`chat`], [`api`], [`store`], [`presence`], [`shard`],
//! [`node`]. [`broker`] holds the parts of the cluster over Redis that stand alone (its
//! design is `docs/cluster.md`); the node does not start it yet. A long-polling session lives in its shard like a WebSocket connection does, and
//! moves to the WebSocket's shard at the upgrade; connections never move.
#![warn(missing_docs)]

pub mod api;
pub mod broker;
pub mod chat;
pub mod config;
pub mod hub;
pub mod ids;
pub mod mesh;
pub mod metrics;
pub mod model;
pub mod node;
pub mod presence;
pub mod protocol;
pub mod shard;
pub mod store;
pub mod transport;
