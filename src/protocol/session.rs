//! [`Session`]: one socket's Engine.IO v4 and Socket.IO v5 state, sans-IO in the style of
//! quinn-proto. The shard feeds it received texts and the time (`handle_*`), then drains
//! what to send, what happened and when to wake it next (`poll_*`). Only the main namespace
//! `/` is served.
//!
//! The session moves `Handshake` → `Pending` → `Connected` → `Closed`. In `Handshake` the
//! client must send a CONNECT, which makes it `Pending` until the application accepts it or
//! refuses it (back to `Handshake`, where the client may try again). "If the server does not
//! receive a `CONNECT` packet first, then it MUST close the connection immediately", so an
//! EVENT before acceptance is an error. Independently, the heartbeat alternates between
//! waiting to ping and waiting for the pong.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::config::EngineLimits;

use super::engine::{self, EnginePacket};
use super::error::ProtocolError;
use super::packet::{self, Packet, MAIN_NAMESPACE};

/// What the client did, for the application to act on (see [`Session::poll_event`]).
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    /// CONNECT to the main namespace `/`; answer with [`Session::accept`] or
    /// [`Session::refuse`]. `auth` is the payload as sent, e.g.
    /// `{"token":…,"workspaceId":…}`. socket.io-client attempting connection state recovery
    /// adds `"pid"` and `"offset"` to that payload; they are copied out here as well.
    Connect {
        /// The CONNECT payload, unchanged.
        auth: Option<Value>,
        /// `auth.pid` when it is a string: the private id of the session to recover.
        pid: Option<String>,
        /// `auth.offset` when it is a string: the last event offset the client received.
        offset: Option<String>,
    },
    /// An EVENT on `/` after the CONNECT was accepted.
    Event {
        /// Event name (the array's first element).
        name: String,
        /// The arguments after the name.
        args: Vec<Value>,
        /// Ack id when the client passed a callback; answer with [`Session::ack`].
        ack: Option<u64>,
    },
    /// The client ended the socket: a Socket.IO DISCONNECT on `/` or an Engine.IO close.
    Closed {
        /// Which of the two.
        reason: CloseReason,
    },
}

/// How the client ended its socket, with the Socket.IO disconnect reason of each
/// (`socket.on("disconnect", (reason) => …)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// A Socket.IO DISCONNECT on `/`: the client said goodbye (`"client namespace disconnect"`).
    ClientDisconnect,
    /// An Engine.IO close: the transport ended, and a reconnect may follow (`"transport close"`).
    TransportClose,
}

impl CloseReason {
    /// The Socket.IO name of the reason.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ClientDisconnect => "client namespace disconnect",
            CloseReason::TransportClose => "transport close",
        }
    }
}

/// One socket's Engine.IO + Socket.IO state. Kept small (128 bytes on 64-bit targets), as
/// hundreds of thousands live at once: the queues are empty `VecDeque`s (no allocation)
/// between bursts, and the limits are stored as 32-bit numbers.
#[derive(Debug)]
pub struct Session {
    sid: Box<str>,
    transmit: VecDeque<String>,
    events: VecDeque<SessionEvent>,
    /// When the next ping is due or, while `awaiting_pong`, when the pong is overdue.
    heartbeat: Instant,
    /// The CONNECT deadline, in force during [`Phase::Handshake`] and [`Phase::Pending`].
    connect_by: Instant,
    ping_interval_ms: u32,
    ping_timeout_ms: u32,
    max_payload: u32,
    phase: Phase,
    /// A ping was sent and its pong has not come back.
    awaiting_pong: bool,
    /// Budget of packets that carry no event (pongs, pings, noops, upgrades, client acks,
    /// repeated CONNECTs; `EngineLimits::idle_packets`): an honest client sends one pong per
    /// `pingInterval` and a probe or two at an upgrade; a client streaming them costs the
    /// shard its reading and decoding for nothing, and is closed.
    idle: IdleBudget,
}

/// A token bucket of packets that carry no event.
#[derive(Debug)]
struct IdleBudget {
    tokens: f32,
    /// The rate's burst, and its period in milliseconds (kept small: a session per socket).
    burst: u32,
    per_ms: u32,
    at: Instant,
}

impl IdleBudget {
    fn rate(&self) -> crate::limits::Rate {
        crate::limits::Rate {
            burst: self.burst,
            per: Duration::from_millis(self.per_ms.into()),
        }
    }
}

/// Where the socket is in the Socket.IO handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a CONNECT to `/`.
    Handshake,
    /// A CONNECT was handed to the application, which has not answered yet.
    Pending,
    /// The CONNECT was accepted: events flow.
    Connected,
    /// Ended by either side or by an error; further input is ignored.
    Closed,
}

impl Session {
    /// Starts a session: queues the open packet (no upgrades: this is already WebSocket) and
    /// schedules the first ping at `now + pingInterval`.
    ///
    /// A CONNECT must be accepted by `now + pingInterval + pingTimeout` (45 s by default,
    /// the reference server's `connectTimeout`), or [`Session::handle_timeout`] fails with
    /// [`ProtocolError::ConnectTimeout`]. Limits beyond 32 bits (49 days, 4 GiB) saturate.
    pub fn new(now: Instant, sid: String, limits: EngineLimits) -> Session {
        Session::with_upgrades(now, sid, limits, &[])
    }

    /// Like [`Session::new`], for a session opened over HTTP long-polling: the open packet
    /// lists `upgrades` (`["websocket"]`) the client may probe.
    pub fn with_upgrades(
        now: Instant,
        sid: String,
        limits: EngineLimits,
        upgrades: &[&str],
    ) -> Session {
        let mut transmit = VecDeque::with_capacity(1);
        transmit.push_back(engine::open_packet(&sid, &limits, upgrades));
        let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        let (ping_interval_ms, ping_timeout_ms) =
            (ms(limits.ping_interval), ms(limits.ping_timeout));
        let interval = Duration::from_millis(ping_interval_ms.into());
        let timeout = Duration::from_millis(ping_timeout_ms.into());
        Session {
            sid: sid.into_boxed_str(),
            transmit,
            events: VecDeque::new(),
            heartbeat: now + interval,
            connect_by: now + interval + timeout,
            ping_interval_ms,
            ping_timeout_ms,
            max_payload: u32::try_from(limits.max_payload).unwrap_or(u32::MAX),
            phase: Phase::Handshake,
            awaiting_pong: false,
            idle: IdleBudget {
                tokens: limits.idle_packets.burst as f32,
                burst: limits.idle_packets.burst,
                per_ms: u32::try_from(limits.idle_packets.per.as_millis()).unwrap_or(u32::MAX),
                at: now,
            },
        }
    }

    /// The Engine.IO session id sent in the open packet.
    pub fn sid(&self) -> &str {
        &self.sid
    }

    /// True once [`Session::accept`] ran and until the socket ends.
    pub fn is_connected(&self) -> bool {
        self.phase == Phase::Connected
    }

    /// Handles one WebSocket text message, which carries one Engine.IO packet.
    ///
    /// Input after the session closed is ignored.
    ///
    /// # Errors
    /// Any [`ProtocolError`]: the packet broke the protocol, and the session is now closed
    /// (no [`SessionEvent::Closed`] follows); close the socket with the error's text as reason.
    pub fn handle_text(&mut self, now: Instant, text: &str) -> Result<(), ProtocolError> {
        if self.phase == Phase::Closed {
            return Ok(());
        }
        let result = self.receive(now, text);
        if result.is_err() {
            self.phase = Phase::Closed;
        }
        result
    }

    /// Handles one WebSocket binary message: always refused, as this server takes no binary
    /// attachments. The session is closed.
    ///
    /// # Errors
    /// [`ProtocolError::BinaryUnsupported`], or [`ProtocolError::PayloadTooLarge`] first when
    /// the frame is over `maxPayload`.
    pub fn handle_binary(&mut self, _now: Instant, data: &[u8]) -> Result<(), ProtocolError> {
        if self.phase == Phase::Closed {
            return Ok(());
        }
        self.phase = Phase::Closed;
        self.check_size(data.len())?;
        Err(ProtocolError::BinaryUnsupported)
    }

    /// Acts on deadlines due at `now`: sends the ping when due, fails when a pong or the
    /// CONNECT is overdue. Call it at [`Session::poll_timeout`]; early calls do nothing.
    ///
    /// # Errors
    /// [`ProtocolError::PingTimeout`] or [`ProtocolError::ConnectTimeout`]; the session is
    /// then closed.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), ProtocolError> {
        if self.phase == Phase::Closed {
            return Ok(());
        }
        if matches!(self.phase, Phase::Handshake | Phase::Pending) && now >= self.connect_by {
            self.phase = Phase::Closed;
            return Err(ProtocolError::ConnectTimeout);
        }
        if now < self.heartbeat {
            return Ok(());
        }
        if self.awaiting_pong {
            self.phase = Phase::Closed;
            return Err(ProtocolError::PingTimeout);
        }
        // "At a given interval (the pingInterval value sent in the handshake) the server
        // sends a ping packet and the client has a few seconds (the pingTimeout value) to
        // send a pong packet back."
        self.transmit.push_back("2".to_owned());
        self.heartbeat = now + self.ping_timeout();
        self.awaiting_pong = true;
        Ok(())
    }

    /// The next Engine.IO packet text to send, oldest first (`"2"`, `"40{\"sid\":…}"`,
    /// `"431[…]"`). Changes after every `handle_*` call and every `accept`, `refuse`, `ack`,
    /// `emit` or `disconnect`; drain it after each.
    pub fn poll_transmit(&mut self) -> Option<String> {
        let next = self.transmit.pop_front();
        if self.transmit.is_empty() && self.transmit.capacity() > 8 {
            // A burst grew the queue; give the memory back while idle.
            self.transmit = VecDeque::new();
        }
        next
    }

    /// The next thing the client did, oldest first. Changes only after `handle_text`.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// When to call [`Session::handle_timeout`] next: the ping due time, the pong deadline,
    /// or the CONNECT deadline, whichever is first. `None` once closed. Changes after
    /// `handle_text` (a pong), `handle_timeout` and `accept`.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Closed => None,
            Phase::Connected => Some(self.heartbeat),
            Phase::Handshake | Phase::Pending => Some(self.heartbeat.min(self.connect_by)),
        }
    }

    /// Accepts the pending CONNECT: queues `40{"sid":…}` (with `"pid"` when connection state
    /// recovery is on) and lets events flow. Does nothing once connected or closed.
    pub fn accept(&mut self, socket_sid: &str, pid: Option<&str>) {
        if !matches!(self.phase, Phase::Handshake | Phase::Pending) {
            return;
        }
        self.push(packet::connect(socket_sid, pid));
        self.phase = Phase::Connected;
    }

    /// Refuses the pending CONNECT: queues `44{"message":…}` (socket.io-client raises it as
    /// `connect_error` with that message). The client may send another CONNECT.
    pub fn refuse(&mut self, message: &str) {
        if !matches!(self.phase, Phase::Handshake | Phase::Pending) {
            return;
        }
        self.push(packet::connect_error(MAIN_NAMESPACE, message));
        self.phase = Phase::Handshake;
    }

    /// Answers the client's event `id`: queues `43<id>[data]`, so the client's callback
    /// receives `data` as its one argument. Dropped once closed.
    pub fn ack(&mut self, id: u64, data: &impl Serialize) {
        if self.phase == Phase::Closed {
            return;
        }
        self.push(packet::ack(id, data));
    }

    /// Sends an event to this socket: queues `42["event",data]`. Dropped once closed.
    /// (Broadcasts are encoded once with [`packet::event`] and framed by each shard.)
    pub fn emit(&mut self, event: &str, data: &impl Serialize) {
        if self.phase == Phase::Closed {
            return;
        }
        self.push(packet::event(event, data, None));
    }

    /// Ends the socket from the server side: queues `41` (Socket.IO DISCONNECT, which
    /// socket.io-client reports as "io server disconnect" and does not retry). The session
    /// is closed; flush [`Session::poll_transmit`], then close the WebSocket.
    pub fn disconnect(&mut self) {
        if self.phase == Phase::Closed {
            return;
        }
        self.transmit.push_back("41".to_owned());
        self.phase = Phase::Closed;
    }

    /// Queues a packet built by [`packet`].
    fn push(&mut self, out: Vec<u8>) {
        self.transmit.push_back(packet::into_text(out));
    }

    fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms.into())
    }

    fn ping_timeout(&self) -> Duration {
        Duration::from_millis(self.ping_timeout_ms.into())
    }

    fn check_size(&self, len: usize) -> Result<(), ProtocolError> {
        let max = self.max_payload as usize;
        if len > max {
            return Err(ProtocolError::PayloadTooLarge { len, max });
        }
        Ok(())
    }

    /// Takes one token of the idle-packet budget, or fails.
    fn idle(&mut self, now: Instant) -> Result<(), ProtocolError> {
        let b = &mut self.idle;
        let elapsed = now.saturating_duration_since(b.at).as_secs_f32();
        let per_second = b.burst as f32 * 1000.0 / b.per_ms.max(1) as f32;
        b.tokens = (b.tokens + elapsed * per_second).min(b.burst as f32);
        b.at = now;
        if b.tokens < 1.0 {
            return Err(ProtocolError::Idle(b.rate()));
        }
        b.tokens -= 1.0;
        Ok(())
    }

    fn receive(&mut self, now: Instant, text: &str) -> Result<(), ProtocolError> {
        self.check_size(text.len())?;
        // Only an EVENT, the first CONNECT or a goodbye is work for the application; every
        // other packet takes a token of the idle budget first.
        match engine::decode(text)? {
            EnginePacket::Message(message) => self.receive_message(now, message),
            EnginePacket::Ping(data) => {
                self.idle(now)?;
                // A client ping (the upgrade's `2probe`) is answered with the same payload.
                let mut pong = String::with_capacity(1 + data.len());
                pong.push('3');
                pong.push_str(data);
                self.transmit.push_back(pong);
                Ok(())
            }
            EnginePacket::Pong(_) => {
                self.idle(now)?;
                // An unsolicited pong is harmless; only one answering a ping moves the clock.
                if self.awaiting_pong {
                    self.awaiting_pong = false;
                    self.heartbeat = now + self.ping_interval();
                }
                Ok(())
            }
            EnginePacket::Close => {
                self.close(CloseReason::TransportClose);
                Ok(())
            }
            EnginePacket::Open => Err(ProtocolError::Malformed(
                "an open packet (0) is sent only by the server".into(),
            )),
            // The upgrade completes a move from polling; on WebSocket there is nothing to do.
            EnginePacket::Upgrade(_) | EnginePacket::Noop => self.idle(now),
        }
    }

    fn receive_message(&mut self, now: Instant, message: &str) -> Result<(), ProtocolError> {
        match packet::decode(message)? {
            Packet::Connect { nsp, .. } if nsp != MAIN_NAMESPACE => {
                self.idle(now)?;
                // What the reference server answers for a namespace it does not have.
                self.push(packet::connect_error(&nsp, "Invalid namespace"));
                Ok(())
            }
            Packet::Connect { data, .. } => {
                // A repeated CONNECT while one is pending or after acceptance is ignored: the
                // application answers each socket's CONNECT once.
                if self.phase == Phase::Handshake {
                    self.phase = Phase::Pending;
                    let pid = string_field(&data, "pid");
                    let offset = string_field(&data, "offset");
                    self.events.push_back(SessionEvent::Connect {
                        auth: data,
                        pid,
                        offset,
                    });
                    Ok(())
                } else {
                    self.idle(now)
                }
            }
            Packet::Disconnect { nsp } => {
                // "No response is expected from the other side." One for a namespace this
                // socket never joined changes nothing.
                if nsp == MAIN_NAMESPACE {
                    self.close(CloseReason::ClientDisconnect);
                    Ok(())
                } else {
                    self.idle(now)
                }
            }
            Packet::Event { nsp, mut data, id } => {
                if nsp != MAIN_NAMESPACE {
                    return Err(ProtocolError::UnknownNamespace(nsp.into_owned()));
                }
                if self.phase != Phase::Connected {
                    return Err(ProtocolError::NotConnected);
                }
                // `packet::decode` guarantees a non-empty array whose first element is a
                // string; the fallback only keeps this total.
                let name = match data.first_mut() {
                    Some(Value::String(name)) => std::mem::take(name),
                    _ => return Err(ProtocolError::Malformed("EVENT without a name".into())),
                };
                data.remove(0);
                self.events.push_back(SessionEvent::Event {
                    name,
                    args: data,
                    ack: id,
                });
                Ok(())
            }
            // The server never asks the client for acks, so a client ACK answers nothing.
            Packet::Ack { .. } => self.idle(now),
            Packet::ConnectError { .. } => Err(ProtocolError::Malformed(
                "CONNECT_ERROR (4) is sent only by the server".into(),
            )),
            Packet::BinaryEvent { .. } | Packet::BinaryAck { .. } => {
                Err(ProtocolError::BinaryUnsupported)
            }
        }
    }

    fn close(&mut self, reason: CloseReason) {
        self.phase = Phase::Closed;
        self.events.push_back(SessionEvent::Closed { reason });
    }
}

/// `data[key]` when `data` is an object holding a string there.
fn string_field(data: &Option<Value>, key: &str) -> Option<String> {
    match data.as_ref()?.get(key)? {
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
