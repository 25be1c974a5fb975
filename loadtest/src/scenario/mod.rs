//! The scenarios (one per subcommand) and the measurement bookkeeping they share.

pub mod catch_up;
pub mod cluster_history;
pub mod compare;
pub mod connections;
pub mod cross_node;
pub mod fanout;
pub mod history;
pub mod latency;
pub mod presence;
pub mod sweep;

use std::time::{Duration, Instant};

use crate::proc_stats::{self, ProcSample};

/// CPU and memory readings at the edges of a measured window.
pub struct Window {
    pub start: Instant,
    pub server: Option<ProcSample>,
    pub harness: ProcSample,
}

/// What happened to the server and the harness over a window.
pub struct WindowFigures {
    pub secs: f64,
    pub server_cpu_us: Option<u64>,
    pub server_rss_kib: Option<u64>,
    pub harness_cpu_us: u64,
}

impl Window {
    pub fn open(server_pids: &[u32]) -> Window {
        Window {
            start: Instant::now(),
            server: proc_stats::sample_all(server_pids).ok().flatten(),
            harness: proc_stats::sample_self(),
        }
    }

    /// Closes the window at `end` (the time the last measured event happened), sampling now.
    pub fn close(&self, server_pids: &[u32], end: Instant, helper_cpu_us: u64) -> WindowFigures {
        let server = proc_stats::sample_all(server_pids).ok().flatten();
        let harness = proc_stats::sample_self();
        let secs = end
            .saturating_duration_since(self.start)
            .max(Duration::from_millis(1))
            .as_secs_f64();
        WindowFigures {
            secs,
            server_cpu_us: match (self.server, server) {
                (Some(a), Some(b)) => Some(b.cpu_since(&a)),
                _ => None,
            },
            server_rss_kib: server.map(|s| s.rss_kib),
            harness_cpu_us: harness.cpu_since(&self.harness) + helper_cpu_us,
        }
    }
}

impl WindowFigures {
    pub fn server_cpu_percent(&self) -> Option<f64> {
        self.server_cpu_us
            .map(|us| us as f64 / (self.secs * 1e6) * 100.0)
    }

    pub fn harness_cpu_percent(&self) -> f64 {
        self.harness_cpu_us as f64 / (self.secs * 1e6) * 100.0
    }
}

/// Server memory per connection: RSS growth over the connection ramp divided by the connections.
/// `None` when it shrank (the allocator gave back memory of an earlier run: not measurable).
pub fn rss_per_conn(before: Option<u64>, after: Option<u64>, connections: u64) -> Option<f64> {
    match (before, after) {
        (Some(b), Some(a)) if a >= b && connections > 0 => {
            Some((a - b) as f64 / connections as f64)
        }
        _ => None,
    }
}

/// `numerator / denominator` when the denominator is not zero.
pub fn per(numerator: Option<u64>, denominator: u64) -> Option<f64> {
    match (numerator, denominator) {
        (Some(n), d) if d > 0 => Some(n as f64 / d as f64),
        _ => None,
    }
}
