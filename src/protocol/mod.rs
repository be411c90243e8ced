//! Wire formats and the per-socket state machine, free of IO: Engine.IO v4, Socket.IO v5,
//! long-polling payloads and the HTTP request head. (WebSocket framing is
//! `transport::websocket`.)

pub mod engine;
pub mod error;
pub mod http;
pub mod packet;
pub mod polling;
pub mod session;

pub use error::ProtocolError;
pub use session::{CloseReason, Session, SessionEvent};
