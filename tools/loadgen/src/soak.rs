//! `soak`: honest users in channels send, type and read history at a steady rate while every
//! attacker of `attack.rs` runs at once for `--attack-for` seconds, then honest traffic goes on
//! alone to the end. Every interval prints one line (see `soak_stats::Row`); the end prints
//! honest latency over the attack and after it, what the attackers met, the server's RSS
//! (peak during the attack, at its end, at the end) and whether it stayed flat afterwards,
//! then one line of JSON for scripts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::admin::{self, Admin};
use crate::attack::{self, AttackPlan, Counters, Kind};
use crate::client::{Live, Mode, SoakMix, PH_PUBLISH, PH_STOP};
use crate::report::{self, fmt_bytes, merge, snap, Snap};
use crate::scenario::{connect_packet, join, room_plans, settle, spawn, wait_connected, SpawnOpts};
use crate::soak_stats::{flat_verdict, threads_cpu, AttackDelta, Row};
use crate::stats::{percentiles_json, percentiles_line};
use crate::{Cli, Scenario};

/// Honest connections per loopback source address, well under the per-address limits.
const PER_SOURCE: usize = 100;
/// Attacker users; user `i` is a member of attack channel `i % 3`: the senders' channel (0),
/// the channel of long messages (1), and one where nothing is sent (2).
const ATTACK_USERS: [&str; 6] = [
    "nul-send",
    "long-history",
    "tiny-frames",
    "big-sends",
    "presence-flip",
    "evil-origin",
];

struct Params {
    users: usize,
    channels: usize,
    rate: f64,
    duration: f64,
    attack_for: f64,
    interval: f64,
    mix: SoakMix,
    attacks: Vec<Kind>,
    reconnect_gap: Duration,
    flat_bytes: u64,
}

fn params(cli: &Cli) -> Result<Params, String> {
    let Scenario::Soak {
        users,
        channels,
        rate,
        duration,
        attack_for,
        interval,
        typing_every,
        history_every,
        attacks,
        reconnect_gap,
        flat_mib,
    } = &cli.scenario
    else {
        return Err("not a soak run".into());
    };
    if *channels == 0 || channels > users {
        return Err(format!(
            "--channels {channels} must be between 1 and --users {users}"
        ));
    }
    if *rate <= 0.0 || *interval <= 0.0 || *duration <= 0.0 {
        return Err("--rate, --interval and --duration must be positive".into());
    }
    if *attack_for < 0.0 || attack_for > duration {
        return Err(format!(
            "--attack-for {attack_for} must be between 0 and --duration {duration}"
        ));
    }
    Ok(Params {
        users: *users,
        channels: *channels,
        rate: *rate,
        duration: *duration,
        attack_for: *attack_for,
        interval: *interval,
        mix: SoakMix {
            typing_every: *typing_every,
            history_every: *history_every,
            history_limit: 50,
        },
        attacks: Kind::parse_list(attacks)?,
        reconnect_gap: Duration::from_secs_f64(reconnect_gap.max(0.0)),
        flat_bytes: (flat_mib.max(0.0) * 1024.0 * 1024.0) as u64,
    })
}

/// Creates the attackers' workspace (see [`ATTACK_USERS`]), 50 messages of 3,994 characters
/// in channel 1, and a session for user 5 to send as a cookie from the wrong origin.
fn provision_attackers(
    cli: &Cli,
    addr: SocketAddr,
    host: &str,
    admin: &mut Admin,
    run_tag: &str,
    gap: Duration,
) -> Result<AttackPlan, String> {
    let p = admin::provision_rooms(admin, &format!("{run_tag}-atk"), ATTACK_USERS.len(), 3)?;
    let long = "\u{1F600}".repeat(3990);
    for i in 0..50 {
        admin.post(
            "/api/v1/messages",
            &json!({"authorId": p.users[1].0, "targetId": p.channels[1],
                    "targetType": "channel", "content": format!("{i} {long}")}),
        )?;
    }
    let session = admin.post("/api/v1/sessions", &json!({"userId": p.users[5].0}))?;
    let session_token = session["token"]
        .as_str()
        .ok_or_else(|| format!("POST /api/v1/sessions: no \"token\" in {session}"))?
        .to_string();
    let ttl = Duration::from_secs(24 * 3600);
    let mut connect_packets = HashMap::new();
    for (name, (id, user)) in ATTACK_USERS.iter().zip(&p.users) {
        let token = admin::mint_jwt(&cli.jwt_secret, id, user, ttl)?;
        connect_packets.insert(*name, connect_packet(&token, &p.workspace_id));
    }
    Ok(AttackPlan {
        server: addr,
        host: host.to_string(),
        channel: p.channels[0].clone(),
        history_channel: p.channels[1].clone(),
        connect_packets,
        session_token,
        admin_token: cli.admin_token.clone(),
        reconnect_gap: gap,
    })
}

/// The attackers' counters summed.
fn attack_totals(counters: &[(Kind, Arc<Counters>)]) -> AttackDelta {
    let mut t = AttackDelta::default();
    for (_, c) in counters {
        t.connections += c.connections.load(Relaxed);
        t.cut += c.cut.load(Relaxed);
        t.refused += c.refused.load(Relaxed);
        t.errors += c.errors.load(Relaxed);
    }
    t
}

fn minus(a: AttackDelta, b: AttackDelta) -> AttackDelta {
    AttackDelta {
        connections: a.connections - b.connections,
        cut: a.cut - b.cut,
        refused: a.refused - b.refused,
        errors: a.errors - b.errors,
    }
}

/// Runs `soak`.
pub fn run(
    cli: &Cli,
    addr: SocketAddr,
    host: String,
    admin: &mut Admin,
    run_tag: &str,
) -> Result<(), String> {
    let p = params(cli)?;
    if cli.server_pid.is_none() {
        eprintln!("warning: no --server-pid: the report will have no server RSS or CPU");
    }
    let t = Instant::now();
    eprintln!(
        "provisioning {} honest users in {} channels and the attackers...",
        p.users, p.channels
    );
    let prov = admin::provision_rooms(admin, run_tag, p.users, p.channels)?;
    let plan = Arc::new(provision_attackers(
        cli,
        addr,
        &host,
        admin,
        run_tag,
        p.reconnect_gap,
    )?);
    eprintln!(
        "provisioned in {:.1}s ({} admin requests)",
        t.elapsed().as_secs_f64(),
        admin.requests
    );
    let plans = room_plans(cli, &prov, |_| true)?;
    let opts = SpawnOpts {
        total_rate: p.rate,
        publishers: p.users,
        random_senders: true,
        pad: 64,
        min_sources: p.users.div_ceil(PER_SOURCE),
        soak: Some(p.mix),
        mode: Mode::Messages,
        ..SpawnOpts::new(prov.channels.clone())
    };
    let (shared, handles) = spawn(cli, addr, host, plans, &opts)?;
    wait_connected(cli, &shared, p.users);
    let connected = shared.established.load(Relaxed);
    if connected == 0 {
        shared.phase.store(PH_STOP, Relaxed);
        let m = merge(join(handles)?);
        report::print_reasons(&m);
        return Err("no honest user connected; nothing to measure".into());
    }
    settle();

    // From here on: honest traffic, and the attackers until --attack-for.
    let start_snap = snap(cli);
    // What the workers gathered while connecting is not part of the run.
    if let Ok(mut l) = shared.live.lock() {
        *l = Live::new();
    }
    shared.phase.store(PH_PUBLISH, Relaxed);
    let stop = Arc::new(AtomicBool::new(false));
    let mut counters = Vec::new();
    let mut attackers = Vec::new();
    let attacks = if p.attack_for > 0.0 {
        &p.attacks[..]
    } else {
        &[]
    };
    for (i, &kind) in attacks.iter().enumerate() {
        let c = Arc::new(Counters::default());
        counters.push((kind, c.clone()));
        let (plan, stop) = (plan.clone(), stop.clone());
        let h = std::thread::Builder::new()
            .name(format!("attack-{}", kind.name()))
            .spawn(move || attack::run(i, kind, plan, c, stop))
            .map_err(|e| format!("cannot start an attacker thread: {e}"))?;
        attackers.push(h);
    }
    eprintln!(
        "soak: {connected} honest users, {} msg/s, {} attackers for {}s of {}s",
        p.rate,
        attackers.len(),
        p.attack_for,
        p.duration
    );
    println!("{}", Row::header());

    let began = start_snap.at;
    let mut rss_samples: Vec<(f64, u64)> = Vec::new();
    let (mut during, mut after) = (Live::new(), Live::new());
    let mut attacking = !attackers.is_empty() && p.attack_for > 0.0;
    let mut rss_peak_attack = 0u64;
    let mut attack_end_rss = None;
    let mut prev = start_snap;
    let mut prev_attack = AttackDelta::default();
    let mut prev_drops = 0usize;
    let mut prev_thread: Vec<f64> = thread_times();
    let mut next_row = p.interval;
    let mut attack_stopped = false;
    let mut max_thread_busy: f64 = 0.0;
    loop {
        let el = began.elapsed().as_secs_f64();
        let next_tick = (el.floor() + 1.0).min(p.duration);
        std::thread::sleep(Duration::from_secs_f64((next_tick - el).max(0.0)));
        let el = began.elapsed().as_secs_f64();
        let s = snap(cli);
        if let Some(sv) = s.server {
            rss_samples.push((el, sv.rss));
            if el <= p.attack_for + 1e-6 && attacking {
                rss_peak_attack = rss_peak_attack.max(sv.rss);
            }
        }
        if !attack_stopped && el >= p.attack_for - 1e-6 {
            stop.store(true, Relaxed);
            attack_stopped = true;
            attack_end_rss = s.server.map(|sv| sv.rss);
            rss_peak_attack = rss_peak_attack.max(attack_end_rss.unwrap_or(0));
            if !attackers.is_empty() {
                eprintln!("attackers told to stop at {el:.0}s");
            }
        }
        let last = el >= p.duration - 1e-6;
        if el + 1e-6 >= next_row || last {
            let mut live = shared
                .live
                .lock()
                .map(|mut l| std::mem::take(&mut *l))
                .unwrap_or_default();
            let wall = s.at.duration_since(prev.at).as_secs_f64();
            let atk = attack_totals(&counters);
            let drops = shared.dropped.load(Relaxed) + shared.failed.load(Relaxed);
            let now_thread = thread_times();
            let busy = now_thread
                .iter()
                .zip(prev_thread.iter().chain(std::iter::repeat(&0.0)))
                .map(|(a, b)| (a - b) / wall.max(1e-9))
                .fold(0.0, f64::max);
            max_thread_busy = max_thread_busy.max(busy);
            let row = Row::new(
                el,
                wall,
                attacking,
                &live,
                (drops - prev_drops) as u64,
                minus(atk, prev_attack),
                s.server.map(|sv| sv.rss),
                cpu_delta(&prev, &s),
                s.self_cpu.saturating_sub(prev.self_cpu),
                busy,
            );
            println!("{row}");
            if attacking {
                during.absorb(&mut live);
            } else {
                after.absorb(&mut live);
            }
            attacking = !stop.load(Relaxed);
            prev = s;
            prev_attack = atk;
            prev_drops = drops;
            prev_thread = now_thread;
            next_row += p.interval;
        }
        if last {
            break;
        }
    }
    let end_snap = snap(cli);
    shared.phase.store(PH_STOP, Relaxed);
    stop.store(true, Relaxed);
    let m = merge(join(handles)?);
    for h in attackers {
        let _ = h.join();
    }
    summary(
        &p,
        connected,
        &m,
        &start_snap,
        &end_snap,
        &during,
        &after,
        &counters,
        Memory {
            samples: &rss_samples,
            peak_attack: rss_peak_attack,
            attack_end: attack_end_rss,
            max_thread_busy,
        },
    )
}

/// CPU time of the honest worker threads, in seconds each (in thread order of /proc).
fn thread_times() -> Vec<f64> {
    threads_cpu("loadgen-")
        .iter()
        .map(|d| d.as_secs_f64())
        .collect()
}

fn cpu_delta(a: &Snap, b: &Snap) -> Option<Duration> {
    Some(b.server?.cpu.saturating_sub(a.server?.cpu))
}

struct Memory<'a> {
    samples: &'a [(f64, u64)],
    peak_attack: u64,
    attack_end: Option<u64>,
    max_thread_busy: f64,
}

#[allow(clippy::too_many_arguments)]
fn summary(
    p: &Params,
    connected: usize,
    m: &report::Merged,
    start: &Snap,
    end: &Snap,
    during: &Live,
    after: &Live,
    counters: &[(Kind, Arc<Counters>)],
    mem: Memory<'_>,
) -> Result<(), String> {
    println!(
        "== soak: {} honest users ({connected} connected) in {} channels, {} msg/s, typing every {} sends, history every {}; {} attackers for {}s of {}s",
        p.users, p.channels, p.rate, p.mix.typing_every, p.mix.history_every, counters.len(), p.attack_for, p.duration
    );
    for (name, l) in [("during the attack", during), ("after the attack", after)] {
        println!(
            "honest {name}: acked {} refused {} ; history refused {}",
            l.acked_ok, l.acked_err, l.history_err
        );
        println!("  ack latency:      {}", percentiles_line(&l.ack));
        println!("  delivery latency: {}", percentiles_line(&l.delivery));
        println!("  history latency:  {}", percentiles_line(&l.history));
    }
    println!(
        "honest connections: {} established, {} dropped, {} failed",
        m.established, m.dropped, m.failed
    );
    report::print_reasons(m);
    println!(
        "attackers (connections: refused / cut by the server / held to their limit / unexpected):"
    );
    let mut atk_json = serde_json::Map::new();
    for (kind, c) in counters {
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Relaxed);
        println!(
            "  {:<15} {:>6} conns: {:>6} refused {:>5} cut {:>5} held {:>4} unexpected ; acks ok {} refused {} ; {} out",
            kind.name(),
            l(&c.connections),
            l(&c.refused),
            l(&c.cut),
            l(&c.held),
            l(&c.errors),
            l(&c.acks_ok),
            l(&c.acks_refused),
            fmt_bytes(l(&c.bytes_out) as f64)
        );
        let mut reasons: Vec<(String, u64)> = c
            .reasons
            .lock()
            .map(|r| r.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default();
        reasons.sort_by_key(|r| std::cmp::Reverse(r.1));
        for (why, n) in reasons.iter().take(3) {
            println!("      x{n}: {why}");
        }
        atk_json.insert(
            kind.name().into(),
            json!({"connections": l(&c.connections), "refused": l(&c.refused), "cut": l(&c.cut),
                   "held": l(&c.held), "unexpected": l(&c.errors), "acks_ok": l(&c.acks_ok),
                   "acks_refused": l(&c.acks_refused), "bytes_out": l(&c.bytes_out),
                   "reasons": reasons.iter().take(5).cloned().collect::<HashMap<_, _>>()}),
        );
    }
    let flat = flat_verdict(mem.samples, p.attack_for, p.flat_bytes);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let mut mem_json = Value::Null;
    if let (Some(s0), Some(s1)) = (start.server, end.server) {
        println!(
            "server RSS: {:.1} MiB at the start ; peak during the attack {:.1} MiB ; at the attack's end {} ; at the end {:.1} MiB",
            mib(s0.rss),
            mib(mem.peak_attack),
            mem.attack_end.map(|r| format!("{:.1} MiB", mib(r))).unwrap_or_else(|| "-".into()),
            mib(s1.rss)
        );
        if let Some(f) = &flat {
            println!(
                "memory after the attack: {} (flat = never more than {:.0} MiB above the {:.1} MiB at the attack's end; highest {:.1} MiB, slope {:+.2} MiB/min)",
                if f.flat { "FLAT" } else { "NOT FLAT" },
                mib(f.tolerance),
                mib(f.at_attack_end),
                mib(f.max_after),
                f.slope_mib_per_min
            );
        }
        let cpu = s1.cpu.saturating_sub(s0.cpu).as_secs_f64();
        let wall = end.at.duration_since(start.at).as_secs_f64();
        println!(
            "server CPU {cpu:.1}s over {wall:.0}s ({:.0}% of one core)",
            cpu / wall * 100.0
        );
        mem_json = json!({
            "rss_start": s0.rss, "rss_peak_attack": mem.peak_attack, "rss_attack_end": mem.attack_end,
            "rss_end": s1.rss, "hwm_end": s1.hwm, "server_cpu_s": cpu,
            "flat": flat.as_ref().map(|f| json!({"flat": f.flat, "tolerance": f.tolerance,
                "max_after": f.max_after, "slope_mib_per_min": f.slope_mib_per_min})),
        });
    }
    let lg = end.self_cpu.saturating_sub(start.self_cpu).as_secs_f64();
    let wall = end.at.duration_since(start.at).as_secs_f64().max(1e-9);
    println!(
        "loadgen CPU {lg:.1}s ({:.0}% of one core, attackers included) ; busiest honest thread {:.0}% in an interval, {:.0}% over the run",
        lg / wall * 100.0,
        mem.max_thread_busy * 100.0,
        m.max_thread_busy * 100.0
    );
    if mem.max_thread_busy > 0.9 {
        println!("WARNING: an honest worker thread was over 90% busy: its latencies measure the loadgen, not the server; add --threads");
    }
    let live = |l: &Live| {
        json!({"acked": l.acked_ok, "refused": l.acked_err, "history_refused": l.history_err,
               "ack_latency": percentiles_json(&l.ack), "delivery_latency": percentiles_json(&l.delivery),
               "history_latency": percentiles_json(&l.history)})
    };
    let j = json!({
        "scenario": "soak", "users": p.users, "channels": p.channels, "rate": p.rate,
        "duration_s": p.duration, "attack_for_s": p.attack_for, "interval_s": p.interval,
        "connected": connected, "honest_during_attack": live(during), "honest_after_attack": live(after),
        "conn": report::connections_json(m), "attackers": atk_json, "server": mem_json,
        "loadgen_cpu_s": lg, "max_honest_thread_busy": mem.max_thread_busy,
    });
    println!("{j}");
    Ok(())
}
