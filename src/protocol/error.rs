//! [`ProtocolError`]: bytes or timing the peer should not have produced. Each one ends the
//! socket; its [`Display`](std::fmt::Display) text is the reason given in the close, so it
//! names the bad value and says what a well-behaved client does instead.

use std::fmt;

/// The peer's fault: a packet that breaks Engine.IO v4 / Socket.IO v5, or a deadline it
/// missed. The shard answers every variant by closing the socket with this text as reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// The text is not a valid packet; the string says which part and why.
    Malformed(String),
    /// A packet longer than the `maxPayload` announced in the open packet.
    PayloadTooLarge {
        /// Bytes received.
        len: usize,
        /// The announced `maxPayload`.
        max: usize,
    },
    /// Binary frames and BINARY_EVENT / BINARY_ACK packets, which this server does not take.
    BinaryUnsupported,
    /// A packet (other than CONNECT) for a namespace this server does not serve.
    UnknownNamespace(String),
    /// No pong (`3`) arrived within `pingTimeout` of a ping (`2`).
    PingTimeout,
    /// No CONNECT was accepted within `pingInterval + pingTimeout` of the open packet.
    ConnectTimeout,
    /// An EVENT before the server accepted the client's CONNECT.
    NotConnected,
    /// More packets that carry no event (pongs, pings, noops, acks, repeated CONNECTs) than
    /// an honest client sends.
    Idle(crate::limits::Rate),
}

impl ProtocolError {
    /// The Socket.IO disconnect reason matching this error, as the reference server names
    /// it (`socket.on("disconnect", (reason) => …)`): `"ping timeout"` or `"parse error"`.
    pub fn disconnect_reason(&self) -> &'static str {
        match self {
            ProtocolError::PingTimeout | ProtocolError::ConnectTimeout => "ping timeout",
            _ => "parse error",
        }
    }

    /// The WebSocket close code for this error (RFC 6455 §7.4.1): 1009 "message that is
    /// too big", 1003 "type of data it cannot accept", 1008 "violates its policy" for a
    /// missed deadline, 1002 "protocol error" otherwise.
    pub fn close_code(&self) -> u16 {
        match self {
            ProtocolError::PayloadTooLarge { .. } => 1009,
            ProtocolError::BinaryUnsupported => 1003,
            ProtocolError::PingTimeout | ProtocolError::ConnectTimeout | ProtocolError::Idle(_) => {
                1008
            }
            _ => 1002,
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::Malformed(what) => write!(f, "malformed packet: {what}"),
            ProtocolError::PayloadTooLarge { len, max } => write!(
                f,
                "packet of {len} bytes is over maxPayload ({max} bytes); send smaller packets"
            ),
            ProtocolError::BinaryUnsupported => f.write_str(
                "binary data is not supported; send events as JSON text (no Buffer, Blob or ArrayBuffer)",
            ),
            ProtocolError::UnknownNamespace(nsp) => write!(
                f,
                "namespace {nsp:?} is not served; connect to the main namespace \"/\""
            ),
            ProtocolError::PingTimeout => f.write_str(
                "no pong within pingTimeout after the server's ping; the client must answer each \"2\" with \"3\"",
            ),
            ProtocolError::ConnectTimeout => f.write_str(
                "no Socket.IO CONNECT was accepted within pingInterval + pingTimeout of the open packet; send \"40\" (with auth) first",
            ),
            ProtocolError::NotConnected => f.write_str(
                "event sent before the server accepted the CONNECT; wait for \"40{\\\"sid\\\":…}\" before emitting",
            ),
            ProtocolError::Idle(rate) => write!(
                f,
                "more packets that carry no event (pongs, pings, noops, acks) than {rate} \
                 (CHAT_LIMIT_IDLE_PACKETS); answer each ping with one pong"
            ),
        }
    }
}

impl std::error::Error for ProtocolError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_name_the_bad_value() {
        let e = ProtocolError::PayloadTooLarge {
            len: 2000,
            max: 1000,
        };
        assert!(e.to_string().contains("2000"), "{e}");
        assert!(e.to_string().contains("1000"), "{e}");
        assert_eq!(e.close_code(), 1009);
        let e = ProtocolError::UnknownNamespace("/admin".into());
        assert!(e.to_string().contains("\"/admin\""), "{e}");
        assert_eq!(
            ProtocolError::PingTimeout.disconnect_reason(),
            "ping timeout"
        );
        assert_eq!(
            ProtocolError::NotConnected.disconnect_reason(),
            "parse error"
        );
    }
}
