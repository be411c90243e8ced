//! The fan-out scenario: members in one channel, publishers sending at a fixed rate, every
//! delivery timed and counted.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::admin::Admin;
use crate::client::{ConnPlan, PH_STOP};
use crate::report::{self, merge, snap};
use crate::scenario::{connect_and_publish, connect_packet, join, provision, Published, SpawnOpts};
use crate::stats::{judge, percentiles_json, percentiles_line};
use crate::Cli;

/// Fanout options.
pub struct FanoutParams {
    pub members: usize,
    pub publishers: usize,
    pub rate: f64,
    pub duration: f64,
    pub drain: f64,
    pub size: usize,
}

pub fn fanout(
    cli: &Cli,
    addr: SocketAddr,
    host: String,
    admin: &mut Admin,
    run_tag: &str,
    p: FanoutParams,
) -> Result<(), String> {
    let (prov, tokens) = provision(cli, admin, run_tag, p.members)?;
    let plans = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| ConnPlan {
            index: i,
            connect_packet: connect_packet(t, &prov.workspace_id).into(),
            publisher: i < p.publishers,
            group: 0,
        })
        .collect();
    let opts = SpawnOpts {
        total_rate: p.rate,
        publishers: p.publishers,
        track_members: true,
        pad: p.size,
        ..SpawnOpts::new(vec![prov.channel_id.clone()])
    };
    let Published {
        shared,
        handles,
        connect_time,
        connected,
        before,
    } = connect_and_publish(
        cli, addr, host, plans, &opts, p.members, "member", "msg/s", p.duration,
    )?;
    // Drain until every ack is in and deliveries have been quiet for 500 ms, or the limit.
    let drain_end = Instant::now() + Duration::from_secs_f64(p.drain);
    let (mut last_del, mut quiet_since) = (shared.deliveries.load(Relaxed), Instant::now());
    while Instant::now() < drain_end {
        std::thread::sleep(Duration::from_millis(50));
        let d = shared.deliveries.load(Relaxed);
        if d != last_del {
            last_del = d;
            quiet_since = Instant::now();
        }
        let acks_done = shared.acks.load(Relaxed) >= shared.sent.load(Relaxed);
        if acks_done && quiet_since.elapsed() >= Duration::from_millis(500) {
            break;
        }
    }
    let after = snap(cli);
    shared.phase.store(PH_STOP, Relaxed);
    let m = merge(join(handles)?);

    let c = judge(&m.members, &m.acked);
    let span = match m.first_send_nanos {
        Some(f) if m.last_delivery_nanos > f => (m.last_delivery_nanos - f) as f64 / 1e9,
        _ => p.duration,
    };
    let (window, warn) = report::window_json(&before, &after, cli.threads, m.deliveries);
    let acked_n = m.acked.first().map_or(0, |a| a.len());
    let expected = acked_n * m.members.len() as u64;
    println!(
        "== fanout: {} members ({} connected), {} publishers, {} msg/s for {}s, {} thread(s)",
        p.members, connected, p.publishers, p.rate, p.duration, cli.threads
    );
    println!(
        "connect: {:.2}s, {}",
        connect_time.as_secs_f64(),
        percentiles_line(&m.connect)
    );
    report::print_sends(&m, p.duration);
    println!(
        "deliveries {} (expected {} = acked x members) ; deliveries/s {:.0}",
        m.deliveries,
        expected,
        m.deliveries as f64 / span
    );
    println!(
        "correctness: missing {} ; publisher's own not echoed {} ; duplicates {} ; out of order {}",
        c.missing, c.missing_own, c.duplicates, c.out_of_order
    );
    report::print_cpu(&window, &m);
    if let Some(w) = &warn {
        println!("WARNING: {w}");
    }
    let j = json!({
        "scenario": "fanout",
        "members": p.members,
        "connected": connected,
        "publishers": p.publishers,
        "rate": p.rate,
        "duration_s": p.duration,
        "sent": m.sent,
        "acked": m.acked_ok,
        "ack_refused": m.acked_err,
        "acks_per_s": m.acked_ok as f64 / p.duration,
        "deliveries": m.deliveries,
        "expected_deliveries": expected,
        "deliveries_per_s": m.deliveries as f64 / span,
        "ack_latency": percentiles_json(&m.ack),
        "delivery_latency": percentiles_json(&m.delivery),
        "missing": c.missing,
        "missing_own": c.missing_own,
        "duplicates": c.duplicates,
        "out_of_order": c.out_of_order,
        "conn": report::connections_json(&m),
        "window": window,
        "max_thread_busy": m.max_thread_busy,
        "cluster": report::cluster_json(&m),
    });
    report::print_cluster(&j);
    println!("{j}");
    Ok(())
}
