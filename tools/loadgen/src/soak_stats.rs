//! The pure figures of a `soak` run: one report line per interval from what the honest
//! clients and the attackers did in it, and the verdict on whether the server's memory stayed
//! flat once the attackers stopped.

use std::fmt;
use std::time::Duration;

use crate::shared::Live;

const MIB: f64 = 1024.0 * 1024.0;

/// Attacker connection outcomes in one interval, over all attackers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttackDelta {
    /// Connections started.
    pub connections: u64,
    /// Ended by the server after it let them in.
    pub cut: u64,
    /// Refused by the server.
    pub refused: u64,
    /// Outcomes the attacks did not expect.
    pub errors: u64,
}

/// One interval's line.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Seconds since the honest traffic started, at the interval's end.
    pub elapsed: f64,
    /// Whether the attackers ran during (part of) the interval.
    pub attacking: bool,
    /// Successful honest acks per second.
    pub acks_per_s: f64,
    /// Honest ack latency p50 and p99, µs (0: none).
    pub ack_p50: u64,
    /// See `ack_p50`.
    pub ack_p99: u64,
    /// Honest delivery latency p99, µs.
    pub delivery_p99: u64,
    /// Honest history read p99, µs.
    pub history_p99: u64,
    /// Refused honest sends and history reads.
    pub honest_errors: u64,
    /// Honest connections lost or failed.
    pub honest_drops: u64,
    /// The attackers.
    pub attack: AttackDelta,
    /// Server RSS at the interval's end, bytes (None: no --server-pid).
    pub rss: Option<u64>,
    /// Server CPU over the interval, in cores.
    pub server_cpu: Option<f64>,
    /// The loadgen's CPU over the interval, in cores.
    pub loadgen_cpu: f64,
    /// The busiest honest worker thread's share of the interval.
    pub honest_thread_busy: f64,
}

impl Row {
    /// Builds an interval's row from its honest figures and the rest.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        elapsed: f64,
        wall: f64,
        attacking: bool,
        live: &Live,
        honest_drops: u64,
        attack: AttackDelta,
        rss: Option<u64>,
        server_cpu: Option<Duration>,
        loadgen_cpu: Duration,
        honest_thread_busy: f64,
    ) -> Row {
        let wall = wall.max(1e-9);
        let q = |h: &hdrhistogram::Histogram<u64>, p: f64| {
            if h.is_empty() {
                0
            } else {
                h.value_at_quantile(p)
            }
        };
        Row {
            elapsed,
            attacking,
            acks_per_s: live.acked_ok as f64 / wall,
            ack_p50: q(&live.ack, 0.5),
            ack_p99: q(&live.ack, 0.99),
            delivery_p99: q(&live.delivery, 0.99),
            history_p99: q(&live.history, 0.99),
            honest_errors: live.acked_err + live.history_err,
            honest_drops,
            attack,
            rss,
            server_cpu: server_cpu.map(|c| c.as_secs_f64() / wall),
            loadgen_cpu: loadgen_cpu.as_secs_f64() / wall,
            honest_thread_busy,
        }
    }

    /// The column titles [`Row`]'s `Display` lines up under.
    pub fn header() -> &'static str {
        "   t(s) phase  acks/s  ack p50  ack p99  dlv p99 hist p99 h.err h.drop | atk conn  cut  ref  err | srv RSS  srv CPU | lg CPU h.thread"
    }
}

/// Milliseconds with two decimals, or `-` for no sample.
fn ms(us: u64) -> String {
    if us == 0 {
        "-".into()
    } else {
        format!("{:.2}", us as f64 / 1e3)
    }
}

impl fmt::Display for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rss = self
            .rss
            .map(|b| format!("{:.1}M", b as f64 / MIB))
            .unwrap_or_else(|| "-".into());
        let cpu = self
            .server_cpu
            .map(|c| format!("{:.0}%", c * 100.0))
            .unwrap_or_else(|| "-".into());
        write!(
            f,
            "{:>7.0} {:<6}{:>7.0} {:>8} {:>8} {:>8} {:>8} {:>5} {:>6} | {:>8} {:>4} {:>4} {:>4} | {:>7} {:>8} | {:>5.0}% {:>7.0}%",
            self.elapsed,
            if self.attacking { "attack" } else { "calm" },
            self.acks_per_s,
            ms(self.ack_p50),
            ms(self.ack_p99),
            ms(self.delivery_p99),
            ms(self.history_p99),
            self.honest_errors,
            self.honest_drops,
            self.attack.connections,
            self.attack.cut,
            self.attack.refused,
            self.attack.errors,
            rss,
            cpu,
            self.loadgen_cpu * 100.0,
            self.honest_thread_busy * 100.0
        )
    }
}

/// Whether the server's memory stayed flat after the attackers stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct Flat {
    /// RSS at the attack's end (the first sample at or after it), bytes.
    pub at_attack_end: u64,
    /// The highest RSS after it.
    pub max_after: u64,
    /// RSS at the last sample.
    pub at_end: u64,
    /// Least-squares slope of RSS after the attack, MiB per minute.
    pub slope_mib_per_min: f64,
    /// How far above `at_attack_end` RSS may go and still be flat, bytes.
    pub tolerance: u64,
    /// `max_after <= at_attack_end + tolerance`.
    pub flat: bool,
}

/// Judges the RSS samples `(seconds, bytes)` after `attack_end`: memory is flat when no
/// sample after the attack is more than `tolerance` bytes above the RSS at its end (falling is
/// flat too). `None` when there are no samples from the attack's end on.
pub fn flat_verdict(samples: &[(f64, u64)], attack_end: f64, tolerance: u64) -> Option<Flat> {
    let after: Vec<(f64, u64)> = samples
        .iter()
        .copied()
        .filter(|&(t, _)| t >= attack_end)
        .collect();
    let &(_, at_attack_end) = after.first()?;
    let &(_, at_end) = after.last()?;
    let max_after = after.iter().map(|&(_, r)| r).max().unwrap_or(at_attack_end);
    Some(Flat {
        at_attack_end,
        max_after,
        at_end,
        slope_mib_per_min: slope(&after) * 60.0 / MIB,
        tolerance,
        flat: max_after <= at_attack_end + tolerance,
    })
}

/// Least-squares slope of `(x, y)` points, y units per x unit (0 for fewer than two x).
pub fn slope(points: &[(f64, u64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1 as f64).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 as f64 - my)).sum();
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

/// CPU time so far of this process's threads whose name starts with `prefix`
/// (from `/proc/self/task/*/stat`).
pub fn threads_cpu(prefix: &str) -> Vec<Duration> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("stat")).ok())
        .filter(|stat| {
            stat.find('(')
                .is_some_and(|i| stat[i + 1..].starts_with(prefix))
        })
        .filter_map(|stat| crate::sys::cpu_ticks(&stat))
        .map(|t| Duration::from_nanos(t.saturating_mul(1_000_000_000) / hz))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_turns_an_interval_into_rates_and_percentiles() {
        let mut live = Live::new();
        for us in 1..=100u64 {
            live.ack.record(us * 1000).unwrap();
        }
        live.delivery.record(7_000).unwrap();
        live.acked_ok = 500;
        live.acked_err = 2;
        live.history_err = 1;
        let atk = AttackDelta {
            connections: 9,
            cut: 3,
            refused: 4,
            errors: 0,
        };
        let r = Row::new(
            20.0,
            10.0,
            true,
            &live,
            1,
            atk,
            Some(64 << 20),
            Some(Duration::from_secs(5)),
            Duration::from_secs(2),
            0.3,
        );
        assert_eq!(r.acks_per_s, 50.0);
        assert!((49_900..=50_100).contains(&r.ack_p50), "{}", r.ack_p50);
        assert!((98_900..=99_100).contains(&r.ack_p99), "{}", r.ack_p99);
        assert!((6_990..=7_010).contains(&r.delivery_p99));
        assert_eq!((r.history_p99, r.honest_errors, r.honest_drops), (0, 3, 1));
        assert_eq!(r.server_cpu, Some(0.5));
        assert!((r.loadgen_cpu - 0.2).abs() < 1e-9);
        let line = r.to_string();
        assert!(
            line.contains("attack") && line.contains("64.0M") && line.contains("50%"),
            "{line}"
        );
        assert!(line.contains(" - "), "no history sample shows as -: {line}");
        assert_eq!(
            line.find('|'),
            Row::header().find('|'),
            "the columns line up under the header:\n{}\n{line}",
            Row::header()
        );
    }

    #[test]
    fn memory_is_flat_when_it_stays_within_the_tolerance_after_the_attack() {
        const M: u64 = 1 << 20;
        // Grows during the attack (t < 60), then wobbles within 10 MiB: flat with 16 MiB.
        let s: Vec<(f64, u64)> = vec![
            (0.0, 50 * M),
            (30.0, 400 * M),
            (60.0, 300 * M),
            (70.0, 305 * M),
            (80.0, 310 * M),
            (90.0, 302 * M),
        ];
        let f = flat_verdict(&s, 60.0, 16 * M).unwrap();
        assert_eq!(
            (f.at_attack_end, f.max_after, f.at_end),
            (300 * M, 310 * M, 302 * M)
        );
        assert!(f.flat);
        // Climbing 20 MiB after the attack is not flat, and the slope says how fast.
        let mut climbing = s.clone();
        climbing.push((120.0, 320 * M));
        let f = flat_verdict(&climbing, 60.0, 16 * M).unwrap();
        assert!(!f.flat);
        assert!(
            f.slope_mib_per_min > 10.0 && f.slope_mib_per_min < 30.0,
            "{}",
            f.slope_mib_per_min
        );
        // Falling after the attack is flat.
        let falling = vec![(60.0, 300 * M), (90.0, 200 * M)];
        assert!(flat_verdict(&falling, 60.0, 0).unwrap().flat);
        assert!(
            flat_verdict(&s, 100.0, M).is_none(),
            "no sample after the attack"
        );
    }

    #[test]
    fn slope_of_a_line_and_of_too_few_points() {
        let pts: Vec<(f64, u64)> = (0..10).map(|i| (i as f64, 100 + 3 * i as u64)).collect();
        assert!((slope(&pts) - 3.0).abs() < 1e-9);
        assert_eq!(slope(&pts[..1]), 0.0);
        assert_eq!(slope(&[(1.0, 5), (1.0, 9)]), 0.0);
    }

    #[test]
    fn thread_cpu_is_read_by_name() {
        let t = std::thread::Builder::new()
            .name("soakstat-probe".into())
            .spawn(|| {
                let end = std::time::Instant::now() + Duration::from_millis(30);
                while std::time::Instant::now() < end {}
                threads_cpu("soakstat-probe")
            })
            .unwrap();
        assert_eq!(t.join().unwrap().len(), 1, "the named thread, alone");
        assert!(threads_cpu("no-such-thread-name").is_empty());
    }
}
