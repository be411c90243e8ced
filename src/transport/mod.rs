//! Bytes on a non-blocking socket.
