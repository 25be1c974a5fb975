//! CPU time and resident memory of processes, read from /proc (Linux).

use std::fs;
use std::io;
use std::sync::OnceLock;

/// One reading of a process (or the sum over several).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcSample {
    /// User + system CPU time, microseconds.
    pub cpu_us: u64,
    /// Resident set size, KiB.
    pub rss_kib: u64,
}

impl ProcSample {
    /// CPU time spent between `earlier` and `self`.
    pub fn cpu_since(&self, earlier: &ProcSample) -> u64 {
        self.cpu_us.saturating_sub(earlier.cpu_us)
    }
}

fn clock_ticks_per_sec() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if t > 0 {
            t as u64
        } else {
            100
        }
    })
}

/// utime + stime in clock ticks from the text of /proc/PID/stat.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may contain spaces and parentheses: fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': field 3 (state) is index 0, so utime (14) is index 11 and stime (15) index 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// VmRSS in KiB from the text of /proc/PID/status (0 for a zombie, which has none).
pub fn parse_status_rss_kib(status: &str) -> Option<u64> {
    for line in status.lines() {
        if let Some(v) = line.strip_prefix("VmRSS:") {
            return v.trim().trim_end_matches("kB").trim().parse().ok();
        }
    }
    status.contains("State:").then_some(0)
}

fn bad(what: &str, pid: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("cannot parse /proc/{pid}/{what}"),
    )
}

fn sample_path(pid: &str) -> io::Result<ProcSample> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let ticks = parse_stat_cpu_ticks(&stat).ok_or_else(|| bad("stat", pid))?;
    let rss_kib = parse_status_rss_kib(&status).ok_or_else(|| bad("status", pid))?;
    Ok(ProcSample {
        cpu_us: ticks * 1_000_000 / clock_ticks_per_sec(),
        rss_kib,
    })
}

/// Reads process `pid`.
pub fn sample(pid: u32) -> io::Result<ProcSample> {
    sample_path(&pid.to_string())
}

/// Sum over `pids`; `None` when there are none.
pub fn sample_all(pids: &[u32]) -> io::Result<Option<ProcSample>> {
    if pids.is_empty() {
        return Ok(None);
    }
    let mut total = ProcSample::default();
    for &pid in pids {
        let s = sample(pid)?;
        total.cpu_us += s.cpu_us;
        total.rss_kib += s.rss_kib;
    }
    Ok(Some(total))
}

/// This process.
pub fn sample_self() -> ProcSample {
    sample_path("self").unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_command_name() {
        let stat = "1234 (my (odd) cmd) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 4 0 100 1000 200";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(325));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn parses_status_rss() {
        let status =
            "Name:\tchorus\nState:\tS (sleeping)\nVmPeak:\t  20000 kB\nVmRSS:\t   12345 kB\n";
        assert_eq!(parse_status_rss_kib(status), Some(12345));
        assert_eq!(
            parse_status_rss_kib("Name:\tz\nState:\tZ (zombie)\n"),
            Some(0)
        );
        assert_eq!(parse_status_rss_kib(""), None);
    }

    #[test]
    fn samples_this_process() {
        let me = sample(std::process::id()).unwrap();
        assert!(me.rss_kib > 0);
        // Burn a little CPU and see it counted (10 ms tick resolution).
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(60) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(sample_self().cpu_us > me.cpu_us);
        assert_eq!(sample_all(&[]).unwrap(), None);
    }
}
