//! `connections`: ramps to N idle subscribed connections at a given rate, lets the server settle,
//! reports connect rate, failures, setup times and the server's RSS per connection, holds them for
//! `--duration-secs` (server CPU while idle), then checks that every connection still receives an
//! event published on its channel.
//!
//! Connections are spread over 127.0.0.x source addresses; when N is above `--per-process` they are
//! opened by worker processes (this binary re-executed as `connections-worker`), each under its own
//! open-file limit, driven over stdin/stdout with one JSON line per message.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::common::{CommonArgs, Target};
use crate::deliveries::new_histogram;
use crate::error::{Error, Result};
use crate::fleet::{self, channel_name, Finished, Fleet, FleetPlan, Ramped};
use crate::payload::{self, Stamp};
use crate::proc_stats;
use crate::publisher::EVENT_NAME;
use crate::pusher::rest::{Event, Rest};
use crate::ramp::RampLive;
use crate::report::{latency_distribution, ConnectStats, LatencySummary, Report};
use crate::sampler::{Counters, Sampler};
use crate::scenario::Window;

#[derive(Debug, Clone, Args)]
pub struct ConnectionsArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub params: ConnectionsParams,
}

#[derive(Debug, Clone, Args)]
pub struct ConnectionsParams {
    /// Idle subscribed connections to open.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Connections opened per second (in total).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Public channels the connections subscribe to (connection i joins channel i mod C).
    #[arg(long, default_value_t = 100)]
    pub channels: usize,
    /// Wait this long after the ramp before reading the server's memory.
    #[arg(long, default_value_t = 5)]
    pub settle_secs: u64,
    /// Most connections one process opens; above it, worker processes share the load.
    #[arg(long, default_value_t = 15_000)]
    pub per_process: usize,
    /// Skip the final check that every connection still receives.
    #[arg(long)]
    pub no_verify: bool,
    /// How long the final check waits for deliveries.
    #[arg(long, default_value_t = 10)]
    pub drain_secs: u64,
}

/// The hidden `connections-worker` subcommand: one process's share of a `connections` run.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[arg(long)]
    pub count: usize,
    #[arg(long)]
    pub first_index: usize,
    #[arg(long)]
    pub rate: f64,
    #[arg(long)]
    pub channels: usize,
    #[arg(long)]
    pub channel_base: String,
    /// Total connections of the whole run (sizes the source address set).
    #[arg(long)]
    pub total: u64,
}

/// A line a worker writes on stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum WorkerMsg {
    Progress { established: u64, failed: u64 },
    Ramped(Ramped),
    Finished(Finished),
}

/// A line the parent writes to a worker's stdin.
#[derive(Debug, Serialize, Deserialize)]
struct FinishCmd {
    verify: bool,
    failed_channels: Vec<usize>,
    drain_ms: u64,
}

fn emit(msg: &WorkerMsg) {
    use std::io::Write;
    if let Ok(line) = serde_json::to_string(msg) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// Body of the worker process.
pub async fn run_worker(args: &WorkerArgs) -> Result<()> {
    crate::limits::check_fits(args.count as u64, 0)?;
    let target = Arc::new(Target::resolve(&args.common, args.total).await?);
    let live = Arc::new(RampLive::default());
    let progress = {
        let live = live.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                emit(&WorkerMsg::Progress {
                    established: live.established.load(Ordering::Relaxed),
                    failed: live.failed.load(Ordering::Relaxed),
                });
            }
        })
    };
    let plan = FleetPlan {
        count: args.count,
        first_index: args.first_index,
        rate: Some(args.rate),
        concurrency: args.common.connect_concurrency,
        timeout: args.common.setup_timeout(),
        channel_base: args.channel_base.clone(),
        channels: args.channels,
    };
    let (fleet, ramped) = Fleet::start(target, &plan, live).await;
    progress.abort();
    emit(&WorkerMsg::Ramped(ramped));
    // Wait for the parent's command; end of input (the parent died) ends the fleet unverified.
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let cmd = match lines.next_line().await {
        Ok(Some(line)) => serde_json::from_str(&line)?,
        _ => FinishCmd {
            verify: false,
            failed_channels: Vec::new(),
            drain_ms: 0,
        },
    };
    let finished = fleet
        .finish(
            cmd.verify,
            &cmd.failed_channels,
            Duration::from_millis(cmd.drain_ms),
        )
        .await;
    emit(&WorkerMsg::Finished(finished));
    Ok(())
}

/// Messages from the worker processes, tagged with the worker's number; `None` when its output ended.
type WorkerMessages = mpsc::UnboundedReceiver<(usize, Option<WorkerMsg>)>;

/// Live per-worker counts for the progress line.
struct WorkerLive {
    established: Vec<AtomicU64>,
    failed: Vec<AtomicU64>,
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    pid: u32,
}

/// The fleets of a run: one in this process, or one per worker process.
enum Fleets {
    Local(Fleet),
    Remote {
        workers: Vec<Worker>,
        messages: WorkerMessages,
    },
}

pub async fn run(args: &ConnectionsArgs) -> Result<Report> {
    let common = &args.common;
    let p = &args.params;
    if p.connections == 0 || p.channels == 0 || p.per_process == 0 || p.rate <= 0.0 {
        return Err(Error::Args(
            "--connections, --channels, --per-process and --rate must be positive".into(),
        ));
    }
    let started_unix_ms = payload::now_us() / 1000;
    let n = p.connections;
    let target = Arc::new(Target::resolve(common, n as u64).await?);
    let base = common.channel_base();
    let processes = if n > p.per_process {
        n.div_ceil(p.per_process)
    } else {
        0
    };
    let limit = crate::limits::raise_nofile();
    if processes > 0 && p.per_process as u64 + crate::limits::RESERVED_FILES > limit {
        return Err(Error::Args(format!(
            "--per-process {} does not fit the open-file limit ({limit}) of a worker process",
            p.per_process
        )));
    }
    let slots = processes.max(1);
    let live = Arc::new(WorkerLive {
        established: (0..slots).map(|_| AtomicU64::new(0)).collect(),
        failed: (0..slots).map(|_| AtomicU64::new(0)).collect(),
    });
    let local_live = Arc::new(RampLive::default());
    let helper_pids: Arc<std::sync::Mutex<Vec<u32>>> = Arc::default();
    let sampler = {
        let (live, local_live, helper_pids) =
            (live.clone(), local_live.clone(), helper_pids.clone());
        Sampler::start(
            Duration::from_millis(500),
            common.server_pids.clone(),
            Arc::new(move || {
                let pids = helper_pids.lock().map(|p| p.clone()).unwrap_or_default();
                Counters {
                    connections: local_live.established.load(Ordering::Relaxed)
                        + live
                            .established
                            .iter()
                            .map(|a| a.load(Ordering::Relaxed))
                            .sum::<u64>(),
                    failures: local_live.failed.load(Ordering::Relaxed)
                        + live
                            .failed
                            .iter()
                            .map(|a| a.load(Ordering::Relaxed))
                            .sum::<u64>(),
                    published: 0,
                    delivered: 0,
                    helper_cpu_us: helpers_cpu(&pids),
                }
            }),
            !common.no_progress,
        )
    };
    let rss_before = proc_stats::sample_all(&common.server_pids)
        .ok()
        .flatten()
        .map(|s| s.rss_kib);

    // Ramp.
    sampler.set_phase("ramping");
    let ramp_started = Instant::now();
    let (mut fleets, ramps) = if processes == 0 {
        crate::limits::check_fits(n as u64, 0)?;
        let plan = FleetPlan {
            count: n,
            first_index: 0,
            rate: Some(p.rate),
            concurrency: common.connect_concurrency,
            timeout: common.setup_timeout(),
            channel_base: base.clone(),
            channels: p.channels,
        };
        let (fleet, ramped) = Fleet::start(target.clone(), &plan, local_live.clone()).await;
        (Fleets::Local(fleet), vec![ramped])
    } else {
        let (workers, mut messages) = spawn_workers(common, p, &base, processes, live.clone())?;
        if let Ok(mut pids) = helper_pids.lock() {
            *pids = workers.iter().map(|w| w.pid).collect();
        }
        // Bounded: the ramp itself is bounded by rate and per-connection timeouts.
        let limit = Duration::from_secs_f64(n as f64 / p.rate) + common.setup_timeout() * 2;
        let ramps = collect(&mut messages, processes, limit, |m| match m {
            WorkerMsg::Ramped(r) => Some(r),
            _ => None,
        })
        .await?;
        (Fleets::Remote { workers, messages }, ramps)
    };
    let ramp_secs = ramp_started.elapsed().as_secs_f64();
    let established: u64 = ramps.iter().map(|r| r.established).sum();
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    let mut setup_us = new_histogram();
    let mut last_error = None;
    for r in &ramps {
        for (k, v) in &r.failures {
            *failures.entry(k.clone()).or_default() += v;
        }
        setup_us.add(fleet::decode_histogram(&r.setup_us)?).ok();
        if r.last_error.is_some() {
            last_error = r.last_error.clone();
        }
    }
    let failed: u64 = failures.values().sum();
    if failed > 0 {
        sampler.println(&format!(
            "{failed} of {n} connections failed: {failures:?} (last: {})",
            last_error.clone().unwrap_or_default()
        ));
    }

    // Settle, then memory per connection.
    sampler.set_phase("settling");
    tokio::time::sleep(Duration::from_secs(p.settle_secs)).await;
    let rss_after = proc_stats::sample_all(&common.server_pids)
        .ok()
        .flatten()
        .map(|s| s.rss_kib);

    // Hold: idle cost.
    sampler.set_phase("holding");
    let pids = helper_pids.lock().map(|p| p.clone()).unwrap_or_default();
    let helpers_before = helpers_cpu(&pids);
    let window = Window::open(&common.server_pids);
    tokio::time::sleep(common.duration()).await;
    let figures = window.close(
        &common.server_pids,
        Instant::now(),
        helpers_cpu(&pids).saturating_sub(helpers_before),
    );

    // Verify: one event per occupied channel, then every fleet reports.
    sampler.set_phase("verifying");
    let verify = !p.no_verify && established > 0;
    let occupied = p.channels.min(n);
    let failed_channels = if verify {
        publish_once(target.clone(), &base, occupied).await?
    } else {
        Vec::new()
    };
    let drain = Duration::from_secs(p.drain_secs);
    let finishes = match &mut fleets {
        Fleets::Local(_) => Vec::new(),
        Fleets::Remote { workers, messages } => {
            let cmd = serde_json::to_string(&FinishCmd {
                verify,
                failed_channels: failed_channels.clone(),
                drain_ms: drain.as_millis() as u64,
            })? + "\n";
            for w in workers.iter_mut() {
                w.stdin.write_all(cmd.as_bytes()).await?;
                w.stdin.flush().await?;
            }
            collect(
                messages,
                processes,
                drain + Duration::from_secs(60),
                |m| match m {
                    WorkerMsg::Finished(f) => Some(f),
                    _ => None,
                },
            )
            .await?
        }
    };
    let finishes = match fleets {
        Fleets::Local(fleet) => vec![fleet.finish(verify, &failed_channels, drain).await],
        Fleets::Remote { workers, .. } => {
            for mut w in workers {
                drop(w.stdin);
                if tokio::time::timeout(Duration::from_secs(10), w.child.wait())
                    .await
                    .is_err()
                {
                    let _ = w.child.start_kill();
                }
            }
            finishes
        }
    };
    let timeline = sampler.finish().await;

    let mut latency = new_histogram();
    let mut errors: BTreeMap<String, u64> = failures
        .iter()
        .map(|(k, v)| (format!("connect_{k}"), *v))
        .collect();
    let (mut delivered, mut expected, mut lost, mut duplicates, mut dropped, mut pusher_errors) =
        (0, 0, 0, 0, 0, 0);
    for f in &finishes {
        delivered += f.delivered;
        expected += f.expected;
        lost += f.lost;
        duplicates += f.duplicates;
        dropped += f.dropped;
        pusher_errors += f.pusher_errors;
        for (k, v) in &f.errors {
            *errors.entry(k.clone()).or_default() += v;
        }
        if f.last_error.is_some() {
            last_error = f.last_error.clone();
        }
        latency.add(fleet::decode_histogram(&f.latency_us)?).ok();
    }
    let rss_per_conn = crate::scenario::rss_per_conn(rss_before, rss_after, established);
    Ok(Report {
        scenario: "connections".into(),
        targets: common.targets.clone(),
        started_unix_ms,
        window_secs: figures.secs,
        connections: established,
        channels: p.channels as u64,
        payload_bytes: common.payload_bytes as u64,
        published: (occupied - failed_channels.len()) as u64 * u64::from(verify),
        publish_refused: failed_channels.len() as u64,
        publish_requests: if verify { occupied as u64 } else { 0 },
        publishes_per_sec: 0.0,
        publish_rtt_ms: LatencySummary::default(),
        delivered,
        expected,
        lost,
        duplicates,
        out_of_order: 0,
        deliveries_per_sec: 0.0,
        latency_ms: LatencySummary::from_us(&latency),
        server_cpu_percent: figures.server_cpu_percent(),
        server_rss_kib: rss_after,
        server_rss_kib_per_conn: rss_per_conn,
        harness_cpu_percent: figures.harness_cpu_percent(),
        disconnects: dropped,
        pusher_errors,
        errors,
        last_error,
        connect: Some(ConnectStats {
            requested: n as u64,
            established,
            failed,
            failures,
            ramp_secs,
            connects_per_sec: established as f64 / ramp_secs.max(1e-3),
            setup_ms: LatencySummary::from_us(&setup_us),
            dropped_while_idle: dropped,
            worker_processes: processes as u64,
            source_ips: target.source_ips.len() as u64,
            server_rss_kib_before: rss_before,
            server_rss_kib_after: rss_after,
        }),
        latency_distribution: latency_distribution(&latency),
        timeline,
        ..Report::default()
    })
}

fn helpers_cpu(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|&pid| proc_stats::sample(pid).ok())
        .map(|s| s.cpu_us)
        .sum()
}

/// Starts `processes` workers sharing the connections, rate and index space.
fn spawn_workers(
    common: &CommonArgs,
    p: &ConnectionsParams,
    base: &str,
    processes: usize,
    live: Arc<WorkerLive>,
) -> Result<(Vec<Worker>, WorkerMessages)> {
    let exe = std::env::current_exe()?;
    let (tx, rx) = mpsc::unbounded_channel();
    let mut workers = Vec::with_capacity(processes);
    let mut first = 0;
    for w in 0..processes {
        let count = p.connections / processes + usize::from(w < p.connections % processes);
        let mut cmd = Command::new(&exe);
        cmd.arg("connections-worker")
            .args(common.to_args())
            .args(["--no-progress", "--count", &count.to_string()])
            .args(["--first-index", &first.to_string()])
            .args(["--rate", &(p.rate / processes as f64).to_string()])
            .args(["--channels", &p.channels.to_string()])
            .args(["--channel-base", base])
            .args(["--total", &p.connections.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd.spawn()?;
        let pid = child.id().unwrap_or(0);
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| Error::Worker("no stdin".into()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| Error::Worker("no stdout".into()))?;
        let (tx, live) = (tx.clone(), live.clone());
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<WorkerMsg>(&line) {
                    Ok(WorkerMsg::Progress {
                        established,
                        failed,
                    }) => {
                        live.established[w].store(established, Ordering::Relaxed);
                        live.failed[w].store(failed, Ordering::Relaxed);
                    }
                    Ok(msg) => {
                        if let WorkerMsg::Ramped(r) = &msg {
                            live.established[w].store(r.established, Ordering::Relaxed);
                            live.failed[w].store(r.failures.values().sum(), Ordering::Relaxed);
                        }
                        let _ = tx.send((w, Some(msg)));
                    }
                    Err(e) => eprintln!("worker {w}: unreadable line ({e}): {line}"),
                }
            }
            let _ = tx.send((w, None));
        });
        workers.push(Worker { child, stdin, pid });
        first += count;
    }
    Ok((workers, rx))
}

/// Waits for one message of a kind from each of `n` workers.
async fn collect<T>(
    messages: &mut WorkerMessages,
    n: usize,
    limit: Duration,
    pick: impl Fn(WorkerMsg) -> Option<T>,
) -> Result<Vec<T>> {
    let deadline = Instant::now() + limit;
    let mut got: Vec<Option<T>> = (0..n).map(|_| None).collect();
    while got.iter().any(Option::is_none) {
        match tokio::time::timeout_at(deadline.into(), messages.recv()).await {
            Ok(Some((w, Some(msg)))) => {
                if let Some(t) = pick(msg) {
                    got[w] = Some(t);
                }
            }
            Ok(Some((w, None))) if got[w].is_none() => {
                return Err(Error::Worker(format!(
                    "worker process {w} exited early (see its message above)"
                )))
            }
            Ok(Some((_, None))) => {}
            Ok(None) => return Err(Error::Worker("the worker processes exited early".into())),
            Err(_) => return Err(Error::Timeout("waiting for worker processes")),
        }
    }
    Ok(got.into_iter().flatten().collect())
}

/// Publishes one stamped event on channels `0..occupied`; returns the channels whose publish failed.
async fn publish_once(target: Arc<Target>, base: &str, occupied: usize) -> Result<Vec<usize>> {
    let rest = Rest::new(target, 16)?;
    let sent_us = payload::now_us();
    let results: Vec<(usize, bool)> = futures_util::stream::iter(0..occupied)
        .map(|c| {
            let rest = rest.clone();
            let channel = channel_name(base, c);
            async move {
                let data = payload::encode(
                    Stamp {
                        stream: 0,
                        seq: 0,
                        sent_us,
                    },
                    0,
                );
                let body = Rest::events_body(&Event {
                    name: EVENT_NAME,
                    channel: &channel,
                    data: &data,
                    key: None,
                });
                (c, rest.post(c, "events", body).await.is_ok())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    Ok(results
        .into_iter()
        .filter(|(_, ok)| !ok)
        .map(|(c, _)| c)
        .collect())
}
