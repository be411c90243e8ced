//! Bytes on a non-blocking socket. [`Stream`] is plain TCP or TLS, and is the only place
//! where TLS is optional: everything above reads plaintext, writes plaintext, and treats
//! `WouldBlock` as "no more for now".

#[cfg(test)]
pub mod memory;
pub mod tls;
pub mod websocket;

use std::io::{self, IoSlice, Read, Write};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

/// Pending TLS output above which plaintext writes wait for the socket to drain, so rustls'
/// own buffer cannot grow without bound behind our outbound queue.
const TLS_PENDING_LIMIT: usize = 64 * 1024;

/// A connection's byte stream.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP (rustls).
    Tls(Box<TlsStream>),
    /// Bytes in memory, for tests that drive a shard without sockets.
    #[cfg(test)]
    Memory(memory::Pipe),
}

/// TCP with a rustls server session on top.
#[derive(Debug)]
pub struct TlsStream {
    tcp: TcpStream,
    tls: rustls::ServerConnection,
}

impl Stream {
    /// Wraps an accepted socket, in TLS when a server config is given.
    pub fn new(
        tcp: TcpStream,
        tls: Option<&std::sync::Arc<rustls::ServerConfig>>,
    ) -> io::Result<Stream> {
        match tls {
            None => Ok(Stream::Plain(tcp)),
            Some(config) => {
                let mut tls = rustls::ServerConnection::new(std::sync::Arc::clone(config))
                    .map_err(io::Error::other)?;
                tls.set_buffer_limit(Some(TLS_PENDING_LIMIT * 4));
                Ok(Stream::Tls(Box::new(TlsStream { tcp, tls })))
            }
        }
    }

    /// The socket, for registration with `Poll` (none for a stream in memory).
    fn source(&mut self) -> Option<&mut TcpStream> {
        match self {
            Stream::Plain(tcp) => Some(tcp),
            Stream::Tls(s) => Some(&mut s.tcp),
            #[cfg(test)]
            Stream::Memory(_) => None,
        }
    }

    /// Registers the socket with a `Poll`.
    pub fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        match self.source() {
            Some(tcp) => registry.register(tcp, token, interest),
            None => Ok(()),
        }
    }

    /// Changes the socket's interest.
    pub fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        match self.source() {
            Some(tcp) => registry.reregister(tcp, token, interest),
            None => Ok(()),
        }
    }

    /// Takes the socket out of a `Poll`.
    pub fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        match self.source() {
            Some(tcp) => registry.deregister(tcp),
            None => Ok(()),
        }
    }

    /// Reads plaintext. `Ok(0)` is the end of the stream; `WouldBlock` means try again on
    /// the next readable event.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.read(buf),
            Stream::Tls(s) => s.read(buf),
            #[cfg(test)]
            Stream::Memory(pipe) => pipe.read(buf),
        }
    }

    /// Writes plaintext from `bufs`; returns how many bytes were taken.
    pub fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.write_vectored(bufs),
            Stream::Tls(s) => s.write_vectored(bufs),
            #[cfg(test)]
            Stream::Memory(pipe) => pipe.write_vectored(bufs),
        }
    }

    /// Sends TLS records rustls has ready (handshake, alerts, encrypted data).
    pub fn flush_tls(&mut self) -> io::Result<()> {
        match self {
            Stream::Tls(s) => s.flush_records(),
            _ => Ok(()),
        }
    }

    /// Whether TLS records wait to be written (the connection then wants WRITABLE).
    pub fn wants_write(&self) -> bool {
        match self {
            Stream::Tls(s) => s.tls.wants_write(),
            _ => false,
        }
    }

    /// Ends our direction of the TCP stream (a FIN after the last byte), while the peer's
    /// bytes can still be read: the peer reads everything we sent, then sees the end.
    pub fn shutdown_write(&mut self) {
        if let Some(tcp) = self.source() {
            let _ = tcp.shutdown(std::net::Shutdown::Write);
        }
    }

    /// Starts an orderly TLS close (close_notify); nothing for plain TCP.
    pub fn close_notify(&mut self) {
        if let Stream::Tls(s) = self {
            s.tls.send_close_notify();
        }
    }
}

impl TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                // No plaintext buffered: read more records below.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            match self.tls.read_tls(&mut self.tcp) {
                Ok(0) => return Ok(0),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
            if let Err(e) = self.tls.process_new_packets() {
                // Tell the peer why (the alert is queued by rustls) before giving up.
                let _ = self.flush_records();
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            if self.tls.wants_write() {
                // Handshake replies go out at once; WouldBlock leaves them for WRITABLE.
                match self.flush_records() {
                    Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
                    _ => {}
                }
            }
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if self.tls.is_handshaking() {
            // Plaintext waits for the handshake; rustls would buffer it, but keeping it in
            // our queue keeps the outbound bound honest.
            self.flush_records()?;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut taken = 0;
        for buf in bufs {
            let n = self.tls.writer().write(buf)?;
            taken += n;
            if n < buf.len() {
                break;
            }
        }
        match self.flush_records() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && taken > 0 => Ok(taken),
            Err(e) => Err(e),
            Ok(()) => Ok(taken),
        }
    }

    fn flush_records(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.tcp) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
