//! Wire formats and the per-socket state machine, free of IO: Engine.IO v4, Socket.IO v5,
//! WebSocket frame encoding and the HTTP request head.

pub mod engine;
pub mod error;
pub mod frame;
pub mod http;
pub mod packet;
pub mod polling;
pub mod session;

pub use error::ProtocolError;
pub use session::{Session, SessionEvent};
