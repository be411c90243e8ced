//! Blocking socket plumbing for the attackers of `soak` (see `attack.rs`): a TCP connection
//! from a chosen loopback address, writes that never split a frame when they time out, a
//! frame reader, the Socket.IO handshake, and a wait for the server to hang up on a
//! connection whose bytes we do not read.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::scan::{classify, Inbound};
use crate::ws::{self, XorShift};

/// How one attack connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The server refused it (an HTTP error status, a CONNECT_ERROR, a refused TCP connect).
    Refused(String),
    /// The server ended it after letting it in.
    Cut(String),
    /// We ended it: its hold time passed, or the attack phase ended.
    Held,
    /// Something the attack did not expect (named).
    Error(String),
}

/// Read and write timeout of attack sockets: how often a blocked attacker looks at the stop flag.
pub const IO_TICK: Duration = Duration::from_millis(500);

/// Opens a blocking TCP connection to `server` from `source` (port chosen at connect time).
pub fn connect(server: SocketAddr, source: Ipv4Addr) -> io::Result<TcpStream> {
    let sock = Socket::new(
        Domain::for_address(server),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    if matches!(server.ip(), IpAddr::V4(ip) if ip.is_loopback()) {
        crate::net::set_bind_no_port(&sock)?;
        sock.bind(&SocketAddr::new(IpAddr::V4(source), 0).into())?;
    }
    sock.connect_timeout(&server.into(), Duration::from_secs(5))?;
    sock.set_tcp_nodelay(true)?;
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(IO_TICK))?;
    s.set_write_timeout(Some(IO_TICK))?;
    Ok(s)
}

/// Whether an I/O error is a timeout of a blocking socket.
pub fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Writes all of `buf`, resuming after timeouts so a frame is never cut in half. Gives up
/// when `stop` is set or nothing could be written for `stall` (`Ok(false)`: the server stopped
/// reading); `Ok(true)` when everything went out. `sent` counts the bytes written.
pub fn write_fully(
    s: &mut TcpStream,
    buf: &[u8],
    stop: &AtomicBool,
    stall: Duration,
    sent: &mut u64,
) -> io::Result<bool> {
    let mut off = 0;
    let mut progress = Instant::now();
    while off < buf.len() {
        match s.write(&buf[off..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                off += n;
                *sent += n as u64;
                progress = Instant::now();
            }
            Err(e) if timed_out(&e) => {
                if stop.load(Relaxed) || progress.elapsed() >= stall {
                    return Ok(false);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Waits, without reading, until the server hangs up on `s` (`true`) or `limit` passes or
/// `stop` is set (`false`).
pub fn wait_hangup(s: &TcpStream, limit: Duration, stop: &AtomicBool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end && !stop.load(Relaxed) {
        let mut p = libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd for a socket we own, for the call's duration.
        let n = unsafe { libc::poll(&mut p, 1, IO_TICK.as_millis() as libc::c_int) };
        if n > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
            return true;
        }
    }
    false
}

/// Reads WebSocket frames from a server and yields their text payloads.
#[derive(Default)]
pub struct FrameReader {
    buf: Vec<u8>,
}

/// What [`FrameReader::next`] found.
pub enum Frame {
    /// A text message (whole; fragments are joined by no server we test, so none are expected).
    Text(Vec<u8>),
    /// A ping, pong or binary frame.
    Other,
    /// A close frame, with its code and reason.
    Close(String),
}

impl FrameReader {
    /// Takes the bytes that came after an HTTP head.
    pub fn with(rest: &[u8]) -> Self {
        FrameReader { buf: rest.to_vec() }
    }

    /// The next frame, reading as needed. `Ok(None)`: nothing whole yet within one read
    /// timeout. A closed connection is an error.
    pub fn next(&mut self, s: &mut TcpStream) -> Result<Option<Frame>, String> {
        loop {
            match ws::parse_frame(&self.buf, 8 << 20) {
                Ok(Some(h)) => {
                    let payload = self.buf[h.header_len..h.total_len()].to_vec();
                    self.buf.drain(..h.total_len());
                    return Ok(Some(match h.opcode {
                        ws::OP_TEXT | ws::OP_CONT => Frame::Text(payload),
                        ws::OP_CLOSE => {
                            let code = (payload.len() >= 2)
                                .then(|| u16::from_be_bytes([payload[0], payload[1]]));
                            let why = String::from_utf8_lossy(payload.get(2..).unwrap_or_default())
                                .into_owned();
                            Frame::Close(format!("close frame {code:?} {why}"))
                        }
                        _ => Frame::Other,
                    }));
                }
                Ok(None) => {}
                Err(e) => return Err(format!("bad frame from the server: {e}")),
            }
            let mut chunk = [0u8; 64 * 1024];
            match s.read(&mut chunk) {
                Ok(0) => return Err("the server closed the connection".into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if timed_out(&e) => return Ok(None),
                Err(e) => return Err(format!("read: {}", e.kind())),
            }
        }
    }
}

/// Reads an HTTP response head; returns its status line and the bytes after it.
pub fn read_head(s: &mut TcpStream, limit: Duration) -> Result<(String, Vec<u8>), String> {
    let end = Instant::now() + limit;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(i) = memchr::memmem::find(&buf, b"\r\n\r\n") {
            let line_end = memchr::memmem::find(&buf, b"\r\n").unwrap_or(i);
            let line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
            return Ok((line, buf[i + 4..].to_vec()));
        }
        if Instant::now() >= end {
            return Err(format!("no HTTP answer within {limit:?}"));
        }
        match s.read(&mut chunk) {
            Ok(0) => return Err("the server closed the connection before answering".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if timed_out(&e) => {}
            Err(e) => return Err(format!("read: {}", e.kind())),
        }
    }
}

/// The WebSocket upgrade request with `extra` header lines (each ending in `\r\n`).
pub fn upgrade(host: &str, rng: &mut XorShift, extra: &str) -> Vec<u8> {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&rng.next_u64().to_ne_bytes());
    key[8..].copy_from_slice(&rng.next_u64().to_ne_bytes());
    let mut req = ws::upgrade_request(host, key);
    req.truncate(req.len() - 2);
    req.extend_from_slice(extra.as_bytes());
    req.extend_from_slice(b"\r\n");
    req
}

/// Upgrades `s` to a WebSocket; a non-101 answer is a refusal.
pub fn ws_upgrade(
    s: &mut TcpStream,
    host: &str,
    rng: &mut XorShift,
    extra: &str,
) -> Result<FrameReader, Outcome> {
    s.write_all(&upgrade(host, rng, extra))
        .map_err(|e| Outcome::Refused(format!("upgrade write: {}", e.kind())))?;
    let (line, rest) = read_head(s, Duration::from_secs(10)).map_err(Outcome::Refused)?;
    if !line.contains(" 101") {
        return Err(Outcome::Refused(line));
    }
    Ok(FrameReader::with(&rest))
}

/// Sends one masked client text frame.
pub fn send_text(s: &mut TcpStream, rng: &mut XorShift, text: &[u8]) -> io::Result<()> {
    let mut out = Vec::with_capacity(text.len() + 14);
    ws::encode_client(ws::OP_TEXT, text, rng.mask_key(), &mut out);
    s.write_all(&out)
}

/// Engine.IO open, then Socket.IO CONNECT with `connect_packet`; `Ok` once `40{"sid"}` came.
/// A CONNECT_ERROR is a refusal carrying the server's words.
pub fn socketio_connect(
    s: &mut TcpStream,
    r: &mut FrameReader,
    rng: &mut XorShift,
    connect_packet: &str,
) -> Result<(), Outcome> {
    let end = Instant::now() + Duration::from_secs(10);
    let mut sent = false;
    while Instant::now() < end {
        let frame = r.next(s).map_err(Outcome::Cut)?;
        let Some(Frame::Text(p)) = frame else {
            if let Some(Frame::Close(why)) = frame {
                return Err(Outcome::Cut(why));
            }
            continue;
        };
        match classify(&p) {
            Inbound::Open if !sent => {
                send_text(s, rng, connect_packet.as_bytes())
                    .map_err(|e| Outcome::Cut(format!("CONNECT write: {}", e.kind())))?;
                sent = true;
            }
            Inbound::Connected => return Ok(()),
            Inbound::ConnectError(why) => {
                return Err(Outcome::Refused(format!(
                    "CONNECT_ERROR {}",
                    String::from_utf8_lossy(why)
                )))
            }
            Inbound::Ping => send_text(s, rng, b"3")
                .map_err(|e| Outcome::Cut(format!("pong write: {}", e.kind())))?,
            _ => {}
        }
    }
    Err(Outcome::Error("no CONNECT answer within 10 s".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_carries_the_extra_headers_before_the_blank_line() {
        let mut rng = XorShift::new(1);
        let r = String::from_utf8(upgrade("h:1", &mut rng, "Origin: https://evil.example\r\n"))
            .unwrap();
        assert!(r.starts_with("GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"));
        assert!(r.ends_with("Sec-WebSocket-Version: 13\r\nOrigin: https://evil.example\r\n\r\n"));
    }

    #[test]
    fn a_server_that_never_reads_stalls_the_writer_and_a_close_is_seen_without_reading() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut c = connect(addr, Ipv4Addr::new(127, 0, 0, 1)).unwrap();
        let (server, _) = l.accept().unwrap();
        let stop = AtomicBool::new(false);
        let mut sent = 0;
        let chunk = vec![b'x'; 1 << 20];
        let mut done = true;
        for _ in 0..64 {
            done =
                write_fully(&mut c, &chunk, &stop, Duration::from_millis(600), &mut sent).unwrap();
            if !done {
                break;
            }
        }
        assert!(
            !done,
            "the writer gave up when the server stopped reading ({sent} bytes)"
        );
        assert!(!wait_hangup(&c, Duration::from_millis(100), &stop));
        drop(server);
        assert!(wait_hangup(&c, Duration::from_secs(5), &stop));
    }
}
