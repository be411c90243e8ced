//! What the operating system tells about the server under test (`/proc/<pid>`) and about the
//! loadgen itself (`getrusage`), so a report shows where CPU and memory went.

use std::time::Duration;

/// A snapshot of the server process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// Resident set size, bytes (`VmRSS`).
    pub rss: u64,
    /// Peak resident set size, bytes (`VmHWM`).
    pub hwm: u64,
    /// User + system CPU time.
    pub cpu: Duration,
}

/// Reads `/proc/<pid>/status` and `/proc/<pid>/stat`.
pub fn sample(pid: u32) -> Result<ProcSample, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| {
        format!("cannot read /proc/{pid}/status ({e}); is --server-pid {pid} a live process?")
    })?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("cannot read /proc/{pid}/stat ({e})"))?;
    let ticks = cpu_ticks(&stat).ok_or_else(|| format!("unexpected /proc/{pid}/stat format"))?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(ProcSample {
        rss: status_kb(&status, "VmRSS:").unwrap_or(0) * 1024,
        hwm: status_kb(&status, "VmHWM:").unwrap_or(0) * 1024,
        cpu: Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / hz),
    })
}

/// A `kB` field of `/proc/<pid>/status`.
pub fn status_kb(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}

/// utime + stime (fields 14 and 15) from `/proc/<pid>/stat`. The command name (field 2) may
/// contain spaces and parentheses, so fields are counted after its last `)`.
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    // After ")" comes field 3 (state); utime is field 14, i.e. the 12th from here.
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// User + system CPU time of this process so far.
pub fn self_cpu() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we pass; RUSAGE_SELF is always valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Raises this process's open-file soft limit to its hard limit; returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: get/setrlimit with a valid resource and a struct we own.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 0;
        }
        if r.rlim_cur < r.rlim_max {
            let want = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return want.rlim_cur as u64;
            }
        }
        r.rlim_cur as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_stat_fields() {
        let status = "Name:\tocomms-rt\nVmHWM:\t  20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(status_kb(status, "VmRSS:"), Some(10240));
        assert_eq!(status_kb(status, "VmHWM:"), Some(20480));
        assert_eq!(status_kb(status, "VmSwap:"), None);
        let stat = "1234 (we ird) name) S 1 2 3 4 5 6 7 8 9 10 70 30 0 0 20 0";
        assert_eq!(cpu_ticks(stat), Some(100));
    }

    #[test]
    fn samples_this_process() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss > 0 && s.hwm >= s.rss);
        assert!(sample(u32::MAX).is_err());
    }
}
