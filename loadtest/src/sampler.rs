//! The timeline sampler: every interval it reads the run's live counters, the server processes and
//! the harness itself, keeps the point for the report, and redraws the live progress line.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::proc_stats;
use crate::report::Sample;

/// Live counters a scenario exposes to the sampler.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    pub connections: u64,
    pub failures: u64,
    pub published: u64,
    pub delivered: u64,
    /// Extra CPU time of helper processes (connection workers), microseconds.
    pub helper_cpu_us: u64,
}

pub type Probe = Arc<dyn Fn() -> Counters + Send + Sync>;

/// A running sampler; [`Sampler::finish`] stops it and returns the timeline.
pub struct Sampler {
    stop: watch::Sender<bool>,
    task: JoinHandle<Vec<Sample>>,
    phase: Arc<Mutex<String>>,
    bar: ProgressBar,
}

impl Sampler {
    pub fn start(
        interval: Duration,
        server_pids: Vec<u32>,
        probe: Probe,
        progress: bool,
    ) -> Sampler {
        let bar = if progress {
            ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                .expect("valid template"),
        );
        let phase = Arc::new(Mutex::new(String::from("starting")));
        let (stop, mut stopped) = watch::channel(false);
        let task = {
            let bar = bar.clone();
            let phase = phase.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                let mut timeline: Vec<Sample> = Vec::new();
                let mut ticker = tokio::time::interval(interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                loop {
                    tokio::select! {
                        _ = ticker.tick() => {}
                        _ = stopped.changed() => break,
                    }
                    let c = probe();
                    let server = proc_stats::sample_all(&server_pids).ok().flatten();
                    let sample = Sample {
                        t: start.elapsed().as_secs_f64(),
                        connections: c.connections,
                        published: c.published,
                        delivered: c.delivered,
                        harness_cpu_us: proc_stats::sample_self().cpu_us + c.helper_cpu_us,
                        server_cpu_us: server.map(|s| s.cpu_us),
                        server_rss_kib: server.map(|s| s.rss_kib),
                    };
                    let phase = phase.lock().map(|p| p.clone()).unwrap_or_default();
                    bar.set_message(progress_line(&phase, &c, timeline.last(), &sample));
                    bar.tick();
                    timeline.push(sample);
                }
                timeline
            })
        };
        Sampler {
            stop,
            task,
            phase,
            bar,
        }
    }

    /// Names the current phase on the progress line.
    pub fn set_phase(&self, phase: &str) {
        if let Ok(mut p) = self.phase.lock() {
            *p = phase.to_owned();
        }
    }

    /// Prints a line above the progress line (or to stderr when there is none).
    pub fn println(&self, line: &str) {
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    pub async fn finish(self) -> Vec<Sample> {
        let _ = self.stop.send(true);
        let timeline = self.task.await.unwrap_or_default();
        self.bar.finish_and_clear();
        timeline
    }
}

fn rate(now: u64, before: u64, dt: f64) -> f64 {
    if dt > 0.0 {
        now.saturating_sub(before) as f64 / dt
    } else {
        0.0
    }
}

fn progress_line(phase: &str, c: &Counters, prev: Option<&Sample>, now: &Sample) -> String {
    let mut line = format!("{phase:<10} conns {}", c.connections);
    if c.failures > 0 {
        line += &format!(" (failed {})", c.failures);
    }
    let Some(prev) = prev else {
        return line;
    };
    let dt = now.t - prev.t;
    if c.published > 0 {
        line += &format!(
            " | pub {} ({:.0}/s) | dlv {} ({:.0}/s)",
            c.published,
            rate(now.published, prev.published, dt),
            c.delivered,
            rate(now.delivered, prev.delivered, dt)
        );
    }
    if let (Some(cpu), Some(prev_cpu), Some(rss)) =
        (now.server_cpu_us, prev.server_cpu_us, now.server_rss_kib)
    {
        line += &format!(
            " | server {:.0}% {} MiB",
            rate(cpu, prev_cpu, dt) / 10_000.0,
            rss / 1024
        );
    }
    line += &format!(
        " | harness {:.0}%",
        rate(now.harness_cpu_us, prev.harness_cpu_us, dt) / 10_000.0
    );
    line
}
