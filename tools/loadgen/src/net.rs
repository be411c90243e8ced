//! Opening client sockets. One source address gives at most one connection per ephemeral port
//! to a given server address and port (about 28,000 with Linux's default range), so to go past
//! that on loopback we rotate the source address over 127.0.0.0/8, every address of which
//! Linux routes to `lo`.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};

/// Connections we plan per source address: below the default ephemeral range (32768-60999)
/// with room for the loadgen's admin connections and TIME_WAIT leftovers.
pub const CONNS_PER_SOURCE: usize = 20_000;

/// How many loopback source addresses `n` connections need (at least one).
pub fn sources_needed(n: usize) -> usize {
    n.div_ceil(CONNS_PER_SOURCE).max(1)
}

/// The source address for connection `i` when rotating over `count` addresses: 127.0.0.2,
/// 127.0.0.3, ... (127.0.0.1 is left to everything else on the machine). Rotation is
/// round-robin so every address is used evenly however far the run gets.
pub fn source_addr(i: usize, count: usize) -> Ipv4Addr {
    let k = (i % count.max(1)) as u32 + 2;
    // 127.0.0.0/8 has 2^24 addresses; wrap inside it rather than leave it.
    let host = k & 0x00FF_FFFF;
    Ipv4Addr::from(0x7F00_0000 | host)
}

/// Opens a non-blocking TCP socket to `server`, bound first to `source` (port chosen at
/// connect time), and starts the connect. The connect completes later; mio reports it as
/// writable.
pub fn start_connect(
    server: SocketAddr,
    source: Option<Ipv4Addr>,
) -> io::Result<mio::net::TcpStream> {
    let domain = Domain::for_address(server);
    let sock = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    sock.set_nonblocking(true)?;
    sock.set_tcp_nodelay(true)?;
    if let (Some(src), IpAddr::V4(dst)) = (source, server.ip()) {
        if dst.is_loopback() {
            // IP_BIND_ADDRESS_NO_PORT defers the port choice to connect(), which then only
            // needs the 4-tuple to be unique instead of the (address, port) pair.
            set_bind_no_port(&sock)?;
            sock.bind(&SocketAddr::new(IpAddr::V4(src), 0).into())?;
        }
    }
    match sock.connect(&server.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(mio::net::TcpStream::from_std(sock.into()))
}

pub(crate) fn set_bind_no_port(sock: &Socket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: a valid fd, a valid option pointer and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_stays_in_loopback_and_skips_127_0_0_1() {
        assert_eq!(source_addr(0, 1), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_addr(5, 1), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_addr(0, 3), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_addr(1, 3), Ipv4Addr::new(127, 0, 0, 3));
        assert_eq!(source_addr(2, 3), Ipv4Addr::new(127, 0, 0, 4));
        assert_eq!(source_addr(3, 3), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_addr(300, 1000), Ipv4Addr::new(127, 0, 1, 46));
        for i in 0..5000 {
            let a = source_addr(i, 4000);
            assert!(a.is_loopback());
            assert_ne!(a, Ipv4Addr::new(127, 0, 0, 1));
        }
    }

    #[test]
    fn enough_sources_for_the_count() {
        assert_eq!(sources_needed(0), 1);
        assert_eq!(sources_needed(20_000), 1);
        assert_eq!(sources_needed(20_001), 2);
        assert_eq!(sources_needed(100_000), 5);
    }

    #[test]
    fn connects_from_a_rotated_source_on_loopback() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap();
        let _s = start_connect(server, Some(source_addr(1, 2))).unwrap();
        let (_conn, peer) = listener.accept().unwrap();
        assert_eq!(peer.ip(), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));
    }
}
