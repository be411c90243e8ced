//! ocomms-rt: the realtime core of OComms, a Socket.IO server for chat.
//!
//! # Brief overview
//!
//! ```text
//!                   ┌──────────── shard thread (one per core) ──────────────┐
//!  TCP (SO_REUSEPORT)│ transport::Stream ─► protocol::http ─► transport::websocket
//!  plain or rustls   │      ─► protocol::Session (Engine.IO + Socket.IO)      │
//!                    │      ─► chat (event and CONNECT rules) ─► Effects       │
//!                    │      ─► shard carries them out, packets leave by Outlet │
//!                    └────────────────────────────────────────────────────────┘
//!  store    : StoreCommand ─► batch ─► memory or PostgreSQL ─► StoreReply + durable Broadcast
//!  presence : PresenceCommand ─► per-user socket counts ─► presence:update
//!  broker   : Publication ─► Broadcast (id, offset, packet) ─► ShardCommand::Deliver
//!             on every shard (mesh::BrokerHandle; the seam for several nodes)
//! ```
//!
//! # The threads and what crosses between them
//!
//! Each shard thread owns its connections and polling sessions, its room index
//! ([`hub::Hub`]) and its log of durable broadcasts; nothing on the hot path is shared or
//! locked. Threads talk only through the typed commands of [`mesh`]: shards send
//! [`mesh::StoreCommand`]s to the store thread, which answers the asking shard
//! ([`mesh::ShardCommand::Reply`]) and publishes what it committed through its
//! [`mesh::DurablePublisher`] (the one owner of recovery offsets); the [`mesh::BrokerHandle`]
//! hands every shard the same [`mesh::Broadcast`] ([`mesh::ShardCommand::Deliver`]). Shards
//! talk to each other for long-polling sessions ([`mesh::PollCommand`]) and connection state
//! recovery. The presence thread counts sockets per user ([`mesh::PresenceCommand`]).
//!
//! # The path of one `message:send`
//!
//! `shard/mod.rs` `Shard::on_readable` reads the bytes → `shard/ws.rs` `ws::input`
//! (`transport/websocket.rs` `decode`) → `protocol/session.rs` `Session::handle_text` →
//! `shard/sockets.rs` `Sockets::drive` → `shard/socket.rs` `Socket::drive` →
//! `chat/mod.rs` `handle_event` returns `Effect::Store` → `Socket::apply` →
//! `mesh.rs` `StoreHandle::send` → `store/mod.rs` `Store::flush` (one batch, one commit) →
//! `Store::publish_new` → `mesh.rs` `DurablePublisher::publish` → every shard's
//! `shard/socket.rs` `deliver`; then `Mesh::reply` → `shard/sockets.rs` `Sockets::reply` →
//! `chat::handle_reply` acks the sender. Each shard writes its queues at the end of its loop
//! turn (`Shard::flush`).
//!
//! # The path of one broadcast
//!
//! A [`mesh::Publication`] (room, except rule, the Socket.IO packet encoded once) →
//! `BrokerHandle` gives it a [`mesh::BroadcastId`] → `ShardCommand::Deliver` to every shard →
//! `shard/socket.rs` `deliver` walks the room's local members: each WebSocket gets the frame
//! its shard makes once (`transport/websocket.rs` `text`), each polling session the packet;
//! `Shard::flush` writes every connection once (`writev`) and answers held polling GETs.
//!
//! # Where each rule lives
//!
//! - [`protocol`]: Engine.IO and Socket.IO packets and every text the server writes, the
//!   per-socket state machine (`Session`), long-polling payloads, HTTP heads. Sans-IO.
//! - [`transport`]: bytes on a socket, TLS, and the WebSocket codec (both directions).
//! - [`chat`]: what each client event means, CONNECT (token, JWT, the store's check),
//!   admission (presence, pid, replay), and what ends with a socket. Returns effects.
//! - [`shard`]: sockets, bytes and time; carries out chat's effects; fan-out, polling
//!   sessions, the upgrade handover, the recovery log.
//! - [`store`]: batching, ordering and the backends; the admin API's answers.
//! - [`mesh`] (broker): commands, handles, broadcast ids and durable offsets.
//! - [`web`]: the demo chat page and the dashboard, compiled into the binary.
//! - [`api`] (admin routes), [`presence`] (presence per user), [`json`] (reading client
//!   JSON), [`hub`] (room index), [`ids`] and [`model`] (identifiers and records).
//!
//! [`protocol`], [`chat`], [`json`] and [`hub`] do no IO and read no clock: they take input
//! and `now` and return output, so they are tested with strings. `docs/architecture.md` has
//! the long version of all this, file by file.
//!
//! Modules, from the bottom up: [`ids`], [`model`], [`config`], [`metrics`], [`json`],
//! [`protocol`], [`transport`], [`hub`], [`mesh`], [`chat`], [`api`], [`web`], [`store`],
//! [`presence`], [`shard`], [`node`]. [`broker`] joins a node to a cluster over Redis
//! (`REDIS_URL`; design in `docs/cluster.md`). A
//! long-polling session lives in its shard like a WebSocket connection does, and moves to the
//! WebSocket's shard at the upgrade; connections never move.
#![warn(missing_docs)]

pub mod api;
pub mod broker;
pub mod chat;
pub mod config;
pub mod gate;
pub mod hub;
pub mod ids;
pub mod json;
pub mod limits;
pub mod mesh;
pub mod metrics;
pub mod model;
pub mod node;
pub mod presence;
pub mod protocol;
pub mod shard;
pub mod store;
pub mod transport;
pub mod web;
