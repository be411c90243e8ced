//! `floor`: what one small write on loopback costs this machine's kernel, the floor under any
//! server's per-delivery cost when every delivery is its own `write`. N connected socket pairs
//! on 127.0.0.1; this thread writes `size`-byte frames round-robin over the N server-side
//! sockets while a second thread drains the client sides with one `epoll`. Reports CPU and
//! wall time per write, and the floor of a fan-out to 1,000 recipients built from it.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use serde_json::json;

fn thread_cpu() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct; RUSAGE_THREAD is valid on Linux.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Pins the calling thread to `cpu`; a failure is reported and the run goes on unpinned.
fn pin(cpu: Option<usize>) {
    let Some(cpu) = cpu else { return };
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity(0, ...)
    // act on the calling thread with a set we own.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        eprintln!(
            "warning: cannot pin to CPU {cpu} ({}); running unpinned",
            io::Error::last_os_error()
        );
    }
}

/// Runs the measurement and prints a summary line and a JSON line.
pub fn run(
    sockets: usize,
    writes: u64,
    size: usize,
    writer_cpu: Option<usize>,
    reader_cpu: Option<usize>,
) -> Result<(), String> {
    if sockets == 0 || writes == 0 {
        return Err("--sockets and --writes must be at least 1".into());
    }
    crate::sys::raise_fd_limit();
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    let mut writers = Vec::with_capacity(sockets);
    let mut readers = Vec::with_capacity(sockets);
    for i in 0..sockets {
        let c = TcpStream::connect(addr).map_err(|e| {
            format!("socket pair {i}: connect: {e} (each pair needs 2 file descriptors; lower --sockets or raise `ulimit -n`)")
        })?;
        let (s, _) = l
            .accept()
            .map_err(|e| format!("socket pair {i}: accept: {e}"))?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        c.set_nonblocking(true).map_err(|e| e.to_string())?;
        writers.push(s);
        readers.push(mio::net::TcpStream::from_std(c));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let reader = std::thread::spawn(move || -> io::Result<u64> {
        pin(reader_cpu);
        let mut poll = Poll::new()?;
        for (i, r) in readers.iter_mut().enumerate() {
            poll.registry().register(r, Token(i), Interest::READABLE)?;
        }
        let mut events = Events::with_capacity(1024);
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        while !stop2.load(Relaxed) {
            poll.poll(&mut events, Some(Duration::from_millis(20)))?;
            for ev in events.iter() {
                let r = &mut readers[ev.token().0];
                loop {
                    match r.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => total += n as u64,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(total)
    });
    pin(writer_cpu);
    // A server frame: 2-byte WebSocket header and a small text payload.
    let mut frame = vec![b'x'; size.max(2)];
    frame[0] = 0x81;
    frame[1] = (size.saturating_sub(2)).min(125) as u8;
    let mut write_round = |count: u64| -> Result<(), String> {
        for i in 0..count {
            writers[(i % sockets as u64) as usize]
                .write_all(&frame)
                .map_err(|e| format!("write: {e}"))?;
        }
        Ok(())
    };
    write_round(sockets as u64)?; // warm-up: every socket once
    let (w0, c0) = (Instant::now(), thread_cpu());
    write_round(writes)?;
    let (wall, cpu) = (w0.elapsed(), thread_cpu().saturating_sub(c0));
    stop.store(true, Relaxed);
    let read = reader
        .join()
        .map_err(|_| "reader thread panicked".to_string())?
        .map_err(|e| format!("reader: {e}"))?;
    let cpu_ns = cpu.as_nanos() as f64 / writes as f64;
    let wall_ns = wall.as_nanos() as f64 / writes as f64;
    println!(
        "== floor: {writes} writes of {size} B round-robin over {sockets} loopback sockets: {:.2} µs CPU and {:.2} µs wall per write ({:.0} writes per CPU-second); fan-out to 1,000 recipients costs at least {:.2} ms",
        cpu_ns / 1e3,
        wall_ns / 1e3,
        1e9 / cpu_ns.max(1e-9),
        cpu_ns * 1000.0 / 1e6
    );
    let j = json!({
        "scenario": "floor",
        "sockets": sockets,
        "writes": writes,
        "size": size,
        "cpu_ns_per_write": cpu_ns,
        "wall_ns_per_write": wall_ns,
        "writes_per_cpu_s": 1e9 / cpu_ns.max(1e-9),
        "fanout_1000_floor_ms": cpu_ns * 1000.0 / 1e6,
        "bytes_read": read,
    });
    println!("{j}");
    Ok(())
}
