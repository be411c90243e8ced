//! Bytes on a non-blocking socket. [`Stream`] is plain TCP or TLS, and is the only place
//! where TLS is optional: everything above reads plaintext, writes plaintext, and treats
//! `WouldBlock` as "no more for now".

pub mod tls;
pub mod websocket;

use std::io::{self, IoSlice, Read, Write};

use mio::net::TcpStream;

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

    /// The socket, for registration with `Poll`.
    pub fn tcp(&mut self) -> &mut TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(s) => &mut s.tcp,
        }
    }

    /// Reads plaintext. `Ok(0)` is the end of the stream; `WouldBlock` means try again on
    /// the next readable event.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }

    /// Writes plaintext from `bufs`; returns how many bytes were taken.
    pub fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.write_vectored(bufs),
            Stream::Tls(s) => s.write_vectored(bufs),
        }
    }

    /// Sends TLS records rustls has ready (handshake, alerts, encrypted data).
    pub fn flush_tls(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(_) => Ok(()),
            Stream::Tls(s) => s.flush_records(),
        }
    }

    /// Whether TLS records wait to be written (the connection then wants WRITABLE).
    pub fn wants_write(&self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(s) => s.tls.wants_write(),
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
