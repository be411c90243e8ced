//! The scenarios: provisioning, spreading connections over worker threads, steering the phases,
//! and turning merged results into the summary and the final JSON line.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::admin::{self, Admin, Provisioned};
use crate::chatload::{self, BroadcastParams};
use crate::client::Mode;
use crate::client::{
    self, ConnPlan, Shared, WorkerConfig, WorkerResult, PH_DRAIN, PH_PUBLISH, PH_STOP,
};
use crate::fanout::{fanout, FanoutParams};
use crate::report::{self, fmt_bytes, merge, snap};
use crate::stats::percentiles_line;
use crate::{net, sys, Cli, Scenario};

/// Splits `http://host:port[/...]` into a socket address and the `Host` header value.
pub fn parse_url(url: &str) -> Result<(SocketAddr, String), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!("--url {url:?}: only http:// URLs are supported (e.g. http://127.0.0.1:3000)")
    })?;
    let host = rest.split('/').next().unwrap_or(rest);
    let with_port = if host
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        host.to_string()
    } else {
        format!("{host}:80")
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| format!("--url {url:?}: cannot resolve {with_port} ({e})"))?
        .next()
        .ok_or_else(|| format!("--url {url:?}: {with_port} resolves to no address"))?;
    Ok((addr, host.to_string()))
}

/// The Socket.IO CONNECT packet with auth (contract §2).
pub fn connect_packet(token: &str, workspace_id: &str) -> String {
    format!("40{{\"token\":\"{token}\",\"workspaceId\":\"{workspace_id}\"}}")
}

/// One socket plan per provisioned user, each in channel group `i % channels`, with a token
/// valid for a day; `publisher(i)` says which of them send.
pub fn room_plans(
    cli: &Cli,
    prov: &Provisioned,
    publisher: impl Fn(usize) -> bool,
) -> Result<Vec<ConnPlan>, String> {
    let ttl = Duration::from_secs(24 * 3600);
    let nch = prov.channels.len();
    prov.users
        .iter()
        .enumerate()
        .map(|(i, (id, name))| {
            admin::mint_jwt(&cli.jwt_secret, id, name, ttl).map(|tok| ConnPlan {
                index: i,
                connect_packet: connect_packet(&tok, &prov.workspace_id).into(),
                publisher: publisher(i),
                group: (i % nch) as u32,
            })
        })
        .collect()
}

/// Runs the scenario the command line names.
pub fn run(cli: &Cli) -> Result<(), String> {
    if cli.threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    if let Scenario::Floor {
        sockets,
        writes,
        size,
        writer_cpu,
        reader_cpu,
    } = &cli.scenario
    {
        return crate::floor::run(*sockets, *writes, *size, *writer_cpu, *reader_cpu);
    }
    if cli.admin_token.is_empty() || cli.jwt_secret.is_empty() {
        return Err(
            "--admin-token (CHAT_ADMIN_TOKEN) and --jwt-secret (CHAT_JWT_SECRET) are required"
                .into(),
        );
    }
    let (addr, host) = parse_url(&cli.url)?;
    let fd_limit = sys::raise_fd_limit();
    let needed = match &cli.scenario {
        Scenario::Idle { connections, .. } => *connections,
        Scenario::Fanout { members, .. } | Scenario::Typing { members, .. } => *members,
        Scenario::Rooms { users, .. } => *users,
        Scenario::Connect { concurrency, .. } => *concurrency,
        Scenario::Soak { users, .. } => *users + 16,
        Scenario::Floor { .. } => 0,
    };
    if (needed as u64) + 64 > fd_limit {
        eprintln!(
            "warning: {needed} connections need about {} file descriptors but the limit is {fd_limit}; \
             connections past it will fail (raise `ulimit -n` for the loadgen and the server)",
            needed + 64
        );
    }
    let run_tag = format!(
        "{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    let mut admin = Admin::new(addr, host.clone(), cli.admin_token.clone());
    match &cli.scenario {
        Scenario::Idle {
            connections,
            ramp,
            hold,
            users,
        } => {
            let users = users
                .unwrap_or(*connections)
                .clamp(1, (*connections).max(1));
            idle(
                cli,
                addr,
                host,
                &mut admin,
                &run_tag,
                *connections,
                *ramp,
                *hold,
                users,
            )
        }
        Scenario::Fanout {
            members,
            publishers,
            rate,
            duration,
            drain,
            size,
        } => {
            if *publishers == 0 || publishers > members {
                return Err(format!(
                    "--publishers {publishers} must be between 1 and --members {members}"
                ));
            }
            if *rate <= 0.0 {
                return Err(format!("--rate {rate} must be positive"));
            }
            let p = FanoutParams {
                members: *members,
                publishers: *publishers,
                rate: *rate,
                duration: *duration,
                drain: *drain,
                size: *size,
            };
            fanout(cli, addr, host, &mut admin, &run_tag, p)
        }
        Scenario::Rooms {
            users,
            channels,
            rate,
            duration,
            drain,
            size,
        } => {
            if *channels == 0 || channels > users {
                return Err(format!(
                    "--channels {channels} must be between 1 and --users {users}"
                ));
            }
            if *rate <= 0.0 {
                return Err(format!("--rate {rate} must be positive"));
            }
            let p = BroadcastParams {
                users: *users,
                channels: *channels,
                publishers: *users,
                rate: *rate,
                duration: *duration,
                drain: *drain,
                size: *size,
            };
            chatload::broadcast(cli, addr, host, &mut admin, &run_tag, p, Mode::Messages)
        }
        Scenario::Typing {
            members,
            publishers,
            rate,
            duration,
            drain,
        } => {
            if *publishers == 0 || publishers > members {
                return Err(format!(
                    "--publishers {publishers} must be between 1 and --members {members}"
                ));
            }
            if *rate <= 0.0 {
                return Err(format!("--rate {rate} must be positive"));
            }
            let p = BroadcastParams {
                users: *members,
                channels: 1,
                publishers: *publishers,
                rate: *rate,
                duration: *duration,
                drain: *drain,
                size: 0,
            };
            chatload::broadcast(cli, addr, host, &mut admin, &run_tag, p, Mode::Typing)
        }
        Scenario::Connect {
            concurrency,
            duration,
        } => {
            if *concurrency == 0 {
                return Err("--concurrency must be at least 1".into());
            }
            chatload::connect(
                cli,
                addr,
                host,
                &mut admin,
                &run_tag,
                *concurrency,
                *duration,
            )
        }
        Scenario::Soak { .. } => crate::soak::run(cli, addr, host, &mut admin, &run_tag),
        Scenario::Floor { .. } => Ok(()),
    }
}

/// Provisions and prints how long it took.
pub fn provision(
    cli: &Cli,
    admin: &mut Admin,
    run_tag: &str,
    users: usize,
) -> Result<(Provisioned, Vec<String>), String> {
    let t = Instant::now();
    eprintln!("provisioning {users} users...");
    let p = admin::provision(admin, run_tag, users)?;
    let ttl = Duration::from_secs(24 * 3600);
    let tokens = p
        .users
        .iter()
        .map(|(id, name)| admin::mint_jwt(&cli.jwt_secret, id, name, ttl))
        .collect::<Result<Vec<_>, _>>()?;
    eprintln!(
        "provisioned in {:.1}s ({} admin requests)",
        t.elapsed().as_secs_f64(),
        admin.requests
    );
    Ok((p, tokens))
}

/// A running worker thread.
pub type Worker = JoinHandle<std::io::Result<WorkerResult>>;

/// How the workers of one run behave.
#[derive(Debug, Clone)]
pub struct SpawnOpts {
    /// The run's channels (a plan's `group` indexes them).
    pub channels: Arc<Vec<String>>,
    /// Events per second over all publishers.
    pub total_rate: f64,
    /// Publishing connections in all.
    pub publishers: usize,
    /// Connections started per second in total (0: unpaced).
    pub ramp: f64,
    /// Keep a member record per connection.
    pub track_members: bool,
    /// Content padding of messages.
    pub pad: usize,
    /// What connections do.
    pub mode: Mode,
    /// Random instead of round-robin publisher choice.
    pub random_senders: bool,
    /// Typing publishers (sizes the shared stamp table).
    pub typing_publishers: usize,
    /// At least this many loopback source addresses.
    pub min_sources: usize,
    /// `soak` runs: what publishers do besides sending.
    pub soak: Option<client::SoakMix>,
}

impl SpawnOpts {
    /// Options for a run on `channels` with everything else off.
    pub fn new(channels: Vec<String>) -> Self {
        SpawnOpts {
            channels: Arc::new(channels),
            total_rate: 0.0,
            publishers: 0,
            ramp: 0.0,
            track_members: false,
            pad: 0,
            mode: Mode::Messages,
            random_senders: false,
            typing_publishers: 0,
            min_sources: 0,
            soak: None,
        }
    }
}

/// What the publishing phase leaves for the drain and the report.
pub struct Published {
    /// Counters shared with the workers.
    pub shared: Arc<Shared>,
    /// The workers, to join after the drain.
    pub handles: Vec<Worker>,
    /// Time until every planned socket connected (or gave up).
    pub connect_time: Duration,
    /// Sockets that connected.
    pub connected: usize,
    /// Server and loadgen resources when publishing began.
    pub before: report::Snap,
}

/// Starts the workers, waits for the `expected` sockets (`who` in messages), publishes for
/// `duration` seconds, then switches the workers to draining. Fails when nobody connected.
#[allow(clippy::too_many_arguments)]
pub fn connect_and_publish(
    cli: &Cli,
    addr: SocketAddr,
    host: String,
    plans: Vec<ConnPlan>,
    opts: &SpawnOpts,
    expected: usize,
    who: &str,
    unit: &str,
    duration: f64,
) -> Result<Published, String> {
    let (shared, handles) = spawn(cli, addr, host, plans, opts)?;
    let connect_time = wait_connected(cli, &shared, expected);
    let connected = shared.established.load(Relaxed);
    if connected == 0 {
        shared.phase.store(PH_STOP, Relaxed);
        let m = merge(join(handles)?);
        report::print_reasons(&m);
        return Err(format!("no {who} connected; nothing to measure"));
    }
    settle();
    let before = snap(cli);
    shared.phase.store(PH_PUBLISH, Relaxed);
    eprintln!(
        "publishing {} {unit} from {} publishers for {duration}s...",
        opts.total_rate, opts.publishers
    );
    std::thread::sleep(Duration::from_secs_f64(duration));
    shared.phase.store(PH_DRAIN, Relaxed);
    Ok(Published {
        shared,
        handles,
        connect_time,
        connected,
        before,
    })
}

/// Starts `cli.threads` workers; plan `i` goes to thread `i % threads`.
pub fn spawn(
    cli: &Cli,
    addr: SocketAddr,
    host: String,
    plans: Vec<ConnPlan>,
    o: &SpawnOpts,
) -> Result<(Arc<Shared>, Vec<Worker>), String> {
    let (total_rate, publishers, ramp, track_members, pad) =
        (o.total_rate, o.publishers, o.ramp, o.track_members, o.pad);
    let shared = Arc::new(Shared::with_typing(o.typing_publishers));
    let mut nodes = Vec::new();
    if !cli.nodes.is_empty() {
        nodes.push((addr, host.clone()));
        for url in &cli.nodes {
            nodes.push(parse_url(url)?);
        }
    }
    let nodes = Arc::new(nodes);
    let t = cli.threads;
    let sources = net::sources_needed(plans.len()).max(o.min_sources);
    let mut per: Vec<Vec<ConnPlan>> = vec![Vec::new(); t];
    for p in plans {
        per[p.index % t].push(p);
    }
    let mut handles = Vec::new();
    for (id, plans) in per.into_iter().enumerate() {
        let pubs = plans.iter().filter(|p| p.publisher).count();
        let cfg = WorkerConfig {
            id,
            server: addr,
            host: host.clone(),
            nodes: Arc::clone(&nodes),
            spread_publishers: cli.spread_publishers,
            channels: o.channels.clone(),
            mode: o.mode,
            random_senders: o.random_senders,
            sources,
            ramp_per_sec: ramp / t as f64,
            max_inflight: cli.max_inflight.max(1),
            publish_rate: if publishers > 0 {
                total_rate * pubs as f64 / publishers as f64
            } else {
                0.0
            },
            content_pad: pad,
            track_members,
            soak: o.soak,
        };
        let sh = shared.clone();
        let h = std::thread::Builder::new()
            .name(format!("loadgen-{id}"))
            .spawn(move || client::run(cfg, plans, sh))
            .map_err(|e| format!("cannot start worker thread: {e}"))?;
        handles.push(h);
    }
    Ok((shared, handles))
}

/// Gives the server a moment after the last CONNECT reply: a server may send `40{"sid"}`
/// before its connection handler has joined the socket's rooms (socket.io does).
pub fn settle() {
    std::thread::sleep(Duration::from_millis(500));
}

/// Waits until every connection is established or failed, or the connect timeout; returns the
/// time it took.
pub fn wait_connected(cli: &Cli, shared: &Shared, n: usize) -> Duration {
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(cli.connect_timeout);
    let mut last_print = start;
    loop {
        let est = shared.established.load(Relaxed);
        let failed = shared.failed.load(Relaxed);
        if est + failed >= n || Instant::now() >= deadline {
            eprintln!(
                "connect phase: {est} established, {failed} failed in {:.2}s",
                start.elapsed().as_secs_f64()
            );
            return start.elapsed();
        }
        if last_print.elapsed() >= Duration::from_secs(2) {
            eprintln!("  connecting: {est} established, {failed} failed");
            last_print = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn join(
    handles: Vec<JoinHandle<std::io::Result<WorkerResult>>>,
) -> Result<Vec<WorkerResult>, String> {
    handles
        .into_iter()
        .map(|h| match h.join() {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(format!("worker failed: {e}")),
            Err(_) => Err("worker thread panicked".into()),
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn idle(
    cli: &Cli,
    addr: SocketAddr,
    host: String,
    admin: &mut Admin,
    run_tag: &str,
    n: usize,
    ramp: f64,
    hold: f64,
    users: usize,
) -> Result<(), String> {
    let (prov, tokens) = provision(cli, admin, run_tag, users)?;
    let packets: Vec<Arc<str>> = tokens
        .iter()
        .map(|t| connect_packet(t, &prov.workspace_id).into())
        .collect();
    let plans = (0..n)
        .map(|i| ConnPlan {
            index: i,
            connect_packet: packets[i % users].clone(),
            publisher: false,
            group: 0,
        })
        .collect();
    let before = snap(cli);
    let opts = SpawnOpts {
        ramp,
        ..SpawnOpts::new(vec![prov.channel_id.clone()])
    };
    let (shared, handles) = spawn(cli, addr, host, plans, &opts)?;
    let connect_time = wait_connected(cli, &shared, n);
    eprintln!("holding for {hold}s...");
    std::thread::sleep(Duration::from_secs_f64(hold));
    let open = shared.established.load(Relaxed) - shared.dropped.load(Relaxed);
    let after = snap(cli);
    shared.phase.store(PH_STOP, Relaxed);
    let m = merge(join(handles)?);

    let (window, warn) = report::window_json(&before, &after, cli.threads, open as u64);
    let per_conn = match (before.server, after.server) {
        (Some(b), Some(a)) if open > 0 => Some((a.rss as f64 - b.rss as f64) / open as f64),
        _ => None,
    };
    println!(
        "== idle: {n} connections, {users} users, {} thread(s)",
        cli.threads
    );
    println!(
        "established {} / failed {} / dropped {} ; open at measurement {open} ; time to connect {:.2}s",
        m.established,
        m.failed,
        m.dropped,
        connect_time.as_secs_f64()
    );
    println!("connect latency: {}", percentiles_line(&m.connect));
    println!("pings answered: {}", m.pings);
    if let (Some(b), Some(a)) = (before.server, after.server) {
        println!(
            "server RSS {} -> {} (peak {}), per connection {}",
            fmt_bytes(b.rss as f64),
            fmt_bytes(a.rss as f64),
            fmt_bytes(a.hwm as f64),
            per_conn.map(fmt_bytes).unwrap_or_else(|| "n/a".into())
        );
    }
    report::print_reasons(&m);
    if let Some(w) = &warn {
        println!("WARNING: {w}");
    }
    let j = json!({
        "scenario": "idle",
        "connections": n,
        "users": users,
        "open_at_measure": open,
        "time_to_connect_s": connect_time.as_secs_f64(),
        "bytes_per_connection": per_conn,
        "pings": m.pings,
        "conn": report::connections_json(&m),
        "window": window,
        "max_thread_busy": m.max_thread_busy,
        "cluster": report::cluster_json(&m),
    });
    report::print_cluster(&j);
    println!("{j}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_or_say_what_to_write() {
        let (a, h) = parse_url("http://127.0.0.1:3000").unwrap();
        assert_eq!(a, "127.0.0.1:3000".parse::<SocketAddr>().unwrap());
        assert_eq!(h, "127.0.0.1:3000");
        let (a, _) = parse_url("http://127.0.0.1/x").unwrap();
        assert_eq!(a.port(), 80);
        assert!(parse_url("https://x:1")
            .unwrap_err()
            .contains("only http://"));
    }

    #[test]
    fn connect_packet_shape() {
        assert_eq!(
            connect_packet("a.b.c", "w"),
            r#"40{"token":"a.b.c","workspaceId":"w"}"#
        );
    }
}
