//! The chat-shaped scenarios beyond `fanout`: `rooms` (many small channels, random senders,
//! per-channel exactly-once and in-order checks, nothing to non-members), `typing` (pure
//! broadcast of `typing:update`, nothing stored) and `connect` (handshake + auth cycles per
//! second). Each prints a human summary and then one line of JSON for scripts.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::admin::{self, Admin};
use crate::client::{ConnPlan, Mode, Shared, PH_DRAIN, PH_PUBLISH, PH_STOP};
use crate::report::{self, merge, snap};
use crate::scenario::{
    connect_and_publish, connect_packet, join, provision, room_plans, spawn, Published, SpawnOpts,
};
use crate::stats::{judge, judge_typing, percentiles_json, percentiles_line};
use crate::Cli;

/// Keeps receiving after publishing stops until deliveries have been quiet for 500 ms (and,
/// with `wait_acks`, every send is acked), or `limit` seconds.
fn drain(shared: &Shared, limit: f64, wait_acks: bool) {
    let end = Instant::now() + Duration::from_secs_f64(limit);
    let (mut last, mut quiet_since) = (shared.deliveries.load(Relaxed), Instant::now());
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
        let d = shared.deliveries.load(Relaxed);
        if d != last {
            last = d;
            quiet_since = Instant::now();
        }
        let acks_done = !wait_acks || shared.acks.load(Relaxed) >= shared.sent.load(Relaxed);
        if acks_done && quiet_since.elapsed() >= Duration::from_millis(500) {
            break;
        }
    }
}

/// Options shared by `rooms` and `typing`.
pub struct BroadcastParams {
    /// Users (one connection each).
    pub users: usize,
    /// Channels the users are spread over (`typing`: 1).
    pub channels: usize,
    /// Publishing connections.
    pub publishers: usize,
    /// Events per second over all publishers.
    pub rate: f64,
    /// Seconds of publishing.
    pub duration: f64,
    /// Most seconds of draining.
    pub drain: f64,
    /// Message padding.
    pub size: usize,
}

/// Runs `rooms` (`mode` = Messages) or `typing` (`mode` = Typing).
pub fn broadcast(
    cli: &Cli,
    addr: SocketAddr,
    host: String,
    admin: &mut Admin,
    run_tag: &str,
    p: BroadcastParams,
    mode: Mode,
) -> Result<(), String> {
    let t = Instant::now();
    eprintln!(
        "provisioning {} users in {} channel(s)...",
        p.users, p.channels
    );
    let prov = admin::provision_rooms(admin, run_tag, p.users, p.channels)?;
    eprintln!(
        "provisioned in {:.1}s ({} admin requests)",
        t.elapsed().as_secs_f64(),
        admin.requests
    );
    let nch = prov.channels.len();
    let plans = room_plans(cli, &prov, |i| i < p.publishers)?;
    let typing = mode == Mode::Typing;
    let opts = SpawnOpts {
        total_rate: p.rate,
        publishers: p.publishers,
        track_members: true,
        pad: p.size,
        mode,
        random_senders: !typing,
        typing_publishers: if typing { p.publishers } else { 0 },
        ..SpawnOpts::new(prov.channels.clone())
    };
    let Published {
        shared,
        handles,
        connect_time,
        connected,
        before,
    } = connect_and_publish(
        cli, addr, host, plans, &opts, p.users, "user", "events/s", p.duration,
    )?;
    drain(&shared, p.drain, !typing);
    let after = snap(cli);
    shared.phase.store(PH_STOP, Relaxed);
    let m = merge(join(handles)?);
    let span = match m.first_send_nanos {
        Some(f) if m.last_delivery_nanos > f => (m.last_delivery_nanos - f) as f64 / 1e9,
        _ => p.duration,
    };
    let (window, warn) = report::window_json(&before, &after, cli.threads, m.deliveries);
    let name = if typing { "typing" } else { "rooms" };
    println!(
        "== {name}: {} users ({connected} connected) in {nch} channel(s), {} publishers, {} events/s for {}s, {} thread(s)",
        p.users, p.publishers, p.rate, p.duration, cli.threads
    );
    println!(
        "connect: {:.2}s, {}",
        connect_time.as_secs_f64(),
        percentiles_line(&m.connect)
    );
    let mut j = json!({
        "scenario": name,
        "users": p.users,
        "channels": nch,
        "connected": connected,
        "publishers": p.publishers,
        "rate": p.rate,
        "duration_s": p.duration,
        "sent": m.sent,
        "deliveries": m.deliveries,
        "deliveries_per_s": m.deliveries as f64 / span,
        "delivery_latency": percentiles_json(&m.delivery),
        "conn": report::connections_json(&m),
        "window": window,
        "max_thread_busy": m.max_thread_busy,
        "cluster": report::cluster_json(&m),
    });
    if typing {
        let sent: Vec<u64> = shared.typing_sent.iter().map(|a| a.load(Relaxed)).collect();
        let c = judge_typing(&m.members, &sent);
        let expected: u64 = sent.iter().sum::<u64>() * (m.members.len() as u64).saturating_sub(1);
        println!("sent {} typing events", m.sent);
        println!("delivery latency: {}", percentiles_line(&m.delivery));
        println!(
            "typing:update deliveries {} (expected {expected} = sent x other members) ; deliveries/s {:.0}",
            m.deliveries,
            m.deliveries as f64 / span
        );
        println!(
            "correctness: missing {} ; extra {} ; echoed to sender {} ; out of order {}",
            c.missing, c.extra, c.echoed, c.disorder
        );
        j["expected_deliveries"] = json!(expected);
        j["missing"] = json!(c.missing);
        j["duplicates"] = json!(c.extra);
        j["echoed_to_sender"] = json!(c.echoed);
        j["out_of_order"] = json!(c.disorder);
    } else {
        let c = judge(&m.members, &m.acked);
        let per_group: Vec<u64> = (0..nch)
            .map(|g| m.members.iter().filter(|r| r.group as usize == g).count() as u64)
            .collect();
        let expected: u64 = m
            .acked
            .iter()
            .zip(&per_group)
            .map(|(a, &n)| a.len() * n)
            .sum();
        report::print_sends(&m, p.duration);
        println!(
            "deliveries {} (expected {expected} = acked x channel members) ; deliveries/s {:.0}",
            m.deliveries,
            m.deliveries as f64 / span
        );
        println!(
            "correctness: missing {} ; own not echoed {} ; duplicates {} ; out of order {} ; to non-members {}",
            c.missing, c.missing_own, c.duplicates, c.out_of_order, c.foreign
        );
        j["acked"] = json!(m.acked_ok);
        j["ack_refused"] = json!(m.acked_err);
        j["acks_per_s"] = json!(m.acked_ok as f64 / p.duration);
        j["ack_latency"] = percentiles_json(&m.ack);
        j["expected_deliveries"] = json!(expected);
        j["missing"] = json!(c.missing);
        j["missing_own"] = json!(c.missing_own);
        j["duplicates"] = json!(c.duplicates);
        j["out_of_order"] = json!(c.out_of_order);
        j["to_non_members"] = json!(c.foreign);
    }
    report::print_cpu(&j["window"], &m);
    report::print_cluster(&j);
    if let Some(w) = &warn {
        println!("WARNING: {w}");
    }
    println!("{j}");
    Ok(())
}

/// `connect`: `concurrency` users each connect, authenticate, disconnect and start over for
/// `duration` seconds; reports completed cycles per second and their connect latency.
pub fn connect(
    cli: &Cli,
    addr: SocketAddr,
    host: String,
    admin: &mut Admin,
    run_tag: &str,
    concurrency: usize,
    duration: f64,
) -> Result<(), String> {
    let (prov, tokens) = provision(cli, admin, run_tag, concurrency)?;
    let plans = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| ConnPlan {
            index: i,
            connect_packet: connect_packet(t, &prov.workspace_id).into(),
            publisher: false,
            group: 0,
        })
        .collect();
    // Every cycle leaves a TIME_WAIT socket on our side: spread them over many source
    // addresses so the ephemeral ports of one never run out.
    let opts = SpawnOpts {
        mode: Mode::Cycle,
        min_sources: 64,
        ..SpawnOpts::new(vec![prov.channel_id.clone()])
    };
    let before = snap(cli);
    let (shared, handles): (Arc<Shared>, _) = spawn(cli, addr, host, plans, &opts)?;
    shared.phase.store(PH_PUBLISH, Relaxed);
    eprintln!("cycling {concurrency} connections for {duration}s...");
    std::thread::sleep(Duration::from_secs_f64(duration));
    shared.phase.store(PH_DRAIN, Relaxed);
    let after = snap(cli);
    std::thread::sleep(Duration::from_millis(200));
    shared.phase.store(PH_STOP, Relaxed);
    let m = merge(join(handles)?);
    let wall = after.at.duration_since(before.at).as_secs_f64();
    let (window, warn) = report::window_json(&before, &after, cli.threads, m.cycles);
    let rate = m.cycles as f64 / wall.max(1e-9);
    println!(
        "== connect: {concurrency} concurrent connect/auth/disconnect cycles for {duration}s, {} thread(s)",
        cli.threads
    );
    println!(
        "cycles {} ; connects/s {rate:.0} ; failed {}",
        m.cycles, m.failed
    );
    println!("connect latency: {}", percentiles_line(&m.cycle));
    if let Some(s) = window["server"]["work_per_cpu_s"].as_f64() {
        println!(
            "server CPU {:.2}s ({s:.0} connects per CPU-second)",
            window["server"]["cpu_s"].as_f64().unwrap_or(0.0)
        );
    }
    report::print_reasons(&m);
    if let Some(w) = &warn {
        println!("WARNING: {w}");
    }
    let j = json!({
        "scenario": "connect",
        "concurrency": concurrency,
        "duration_s": duration,
        "cycles": m.cycles,
        "connects_per_s": rate,
        "connect_latency": percentiles_json(&m.cycle),
        "conn": report::connections_json(&m),
        "window": window,
        "max_thread_busy": m.max_thread_busy,
    });
    println!("{j}");
    Ok(())
}
