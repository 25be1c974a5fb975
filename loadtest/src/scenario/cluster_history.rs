//! `cluster-history`: committed history publishes on a cluster, and a leader's failover.
//!
//! A probe subscribes to a fresh history channel (a server without offsets is detected there and
//! the scenario is skipped, exit 0). With `--cluster-node`s given, the run first waits for a
//! leader. Then `--window` workers publish batches of `--batch` events to the channel over every
//! `--target` node (worker i starts on node i mod N), closed loop, for `--duration-secs` or
//! `--max-events`: acknowledged events/s and request latency, which on a history channel is the
//! time to commit to a majority as a client sees it. A request that fails for want of a node
//! (connection error, 502/503/504) is sent again to the next node.
//!
//! With `--kill-leader-after-secs S`, the leader (asked of the nodes' cluster ports) is killed
//! with SIGKILL S seconds in (its process from `--pid ID=PID`), and the run reports the time from
//! the kill to a surviving node naming a new leader and to the acknowledgment of the first
//! publish request sent after the kill. Publishing then goes on past `--duration-secs` until that
//! acknowledgment (at most `--failover-timeout-secs` more).
//!
//! Afterwards one subscriber per reachable node subscribes with `since` offset 0 and must receive
//! every offset up to the channel's last exactly once, in order: every node holds the whole
//! history, whichever node each event was published to.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;

use crate::cluster_admin::{self, ClusterAdmin};
use crate::common::{CommonArgs, Target};
use crate::error::{Error, Result};
use crate::pusher::rest::Rest;
use crate::pusher::ws;
use crate::report::{ClusterHistoryStats, LatencySummary, Report};
use crate::retrying_publisher::{self, Progress, RetryPlan};
use crate::scenario::catch_up::{probe, replay, without_history, Replay};
use crate::scenario::{per, Window};

#[derive(Debug, Clone, Args)]
pub struct ClusterHistoryArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Events per publish request (`POST /batch_events`; 1 uses `/events`). Chorus refuses
    /// batches over its `max_batch_size` (default 10).
    #[arg(long, default_value_t = 10)]
    pub batch: usize,
    /// Publish requests in flight at once.
    #[arg(long, default_value_t = 8)]
    pub window: usize,
    /// Stop publishing after this many events (default: only `--duration-secs` bounds it).
    #[arg(long, default_value_t = u64::MAX)]
    pub max_events: u64,
    /// Start of the channel name: must match one of the server's history rules (Chorus:
    /// `[[apps.history]] channels = "history-*"`); a run id is appended.
    #[arg(long, default_value = "history-")]
    pub history_prefix: String,
    /// A node's cluster port, `ID=HOST:PORT` (repeatable): where to ask who leads.
    #[arg(long = "cluster-node", value_parser = cluster_admin::parse_id_pair)]
    pub cluster_nodes: Vec<(u64, String)>,
    /// The cluster secret (`CHORUS_CLUSTER_SECRET` of the nodes).
    #[arg(long, env = "LOADTEST_CLUSTER_SECRET", default_value = "")]
    pub cluster_secret: String,
    /// A node's process, `ID=PID` (repeatable): the process killed when that node leads.
    #[arg(long = "pid", value_parser = cluster_admin::parse_id_pair)]
    pub pids: Vec<(u64, String)>,
    /// Kill the leader (SIGKILL) this many seconds into publishing.
    #[arg(long)]
    pub kill_leader_after_secs: Option<f64>,
    /// With `--kill-leader-after-secs`: publish at most this much longer than `--duration-secs`
    /// while no request sent after the kill has been acknowledged.
    #[arg(long, default_value_t = 30)]
    pub failover_timeout_secs: u64,
    /// A node's subscriber that has not received the last offset this long after subscribing
    /// fails.
    #[arg(long, default_value_t = 120)]
    pub replay_timeout_secs: u64,
    /// Give every event an idempotency key (`idempotency_key`), so that a request retried on
    /// another node after its first answer was lost stores nothing twice (`false`: no keys, as
    /// a server without idempotent publishing needs, or to measure what keys cost).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub idempotency_keys: bool,
}

/// What the failover task saw.
#[derive(Default)]
struct Failover {
    leader_before: Option<u64>,
    killed_node: Option<u64>,
    killed_pid: Option<u32>,
    killed_after: Option<Duration>,
    new_leader: Option<u64>,
    kill_to_new_leader: Option<Duration>,
    error: Option<String>,
}

pub async fn run(args: &ClusterHistoryArgs) -> Result<Report> {
    let common = &args.common;
    if args.batch == 0 || args.window == 0 || args.max_events == 0 {
        return Err(Error::Args(
            "--batch, --window and --max-events must be positive".into(),
        ));
    }
    let pids: BTreeMap<u64, u32> = args
        .pids
        .iter()
        .map(|(id, pid)| {
            pid.parse()
                .map(|p| (*id, p))
                .map_err(|_| Error::Args(format!("--pid {id}={pid}: not a process id")))
        })
        .collect::<Result<_>>()?;
    let admin = if args.cluster_nodes.is_empty() {
        None
    } else {
        Some(ClusterAdmin::new(
            args.cluster_nodes.iter().cloned().collect(),
            args.cluster_secret.clone(),
        )?)
    };
    if args
        .kill_leader_after_secs
        .is_some_and(|s| !s.is_finite() || s < 0.0)
    {
        return Err(Error::Args(
            "--kill-leader-after-secs must be a number of seconds, 0 or more".into(),
        ));
    }
    if args.kill_leader_after_secs.is_some() && (admin.is_none() || pids.is_empty()) {
        return Err(Error::Args(
            "--kill-leader-after-secs needs --cluster-node ID=HOST:PORT and --pid ID=PID for the nodes".into(),
        ));
    }
    let nodes = common.targets.len() as u64;
    crate::limits::check_fits(nodes + 1, args.window as u64)?;
    let started_unix_ms = crate::payload::now_us() / 1000;
    let target = Arc::new(Target::resolve(common, nodes + 1).await?);
    let channel = format!("{}{}", args.history_prefix, common.channel_base());
    let timeout = common.setup_timeout();
    let mut report = Report {
        scenario: "cluster-history".into(),
        targets: common.targets.clone(),
        started_unix_ms,
        channels: 1,
        payload_bytes: common.payload_bytes as u64,
        ..Report::default()
    };

    if let Some(admin) = &admin {
        let until = Instant::now() + timeout;
        if admin
            .wait_for_leader(&[], Duration::from_millis(50), until)
            .await
            .is_none()
        {
            return Err(Error::Timeout("waiting for the cluster to elect a leader"));
        }
    }
    if let Some(reason) = without_history(&target, &channel, &args.history_prefix, timeout).await? {
        report.skipped = Some(reason);
        return Ok(report);
    }

    let rest = Rest::new(target.clone(), args.window)?;
    let progress = Arc::new(Progress::new());
    let publish_window = Window::open(&common.server_pids);
    let publish_deadline = Instant::now() + common.duration();
    let failover = match (args.kill_leader_after_secs, &admin) {
        (Some(after), Some(admin)) => Some(tokio::spawn(kill_leader(
            admin.clone(),
            pids.clone(),
            Duration::from_secs_f64(after),
            progress.clone(),
            publish_deadline + Duration::from_secs(args.failover_timeout_secs),
        ))),
        _ => None,
    };
    let plan = RetryPlan {
        channel: channel.clone(),
        streams: args.window,
        batch: args.batch,
        max_events: args.max_events,
        duration: common.duration(),
        payload_bytes: common.payload_bytes,
        until_ack_after_marker: args
            .kill_leader_after_secs
            .map(|_| Duration::from_secs(args.failover_timeout_secs)),
        keys: args
            .idempotency_keys
            .then(|| format!("{:x}", crate::payload::now_us())),
    };
    let published = retrying_publisher::run(plan, rest.clone(), progress.clone()).await;
    let publish_end = Instant::now();
    let failover = match failover {
        Some(task) => task
            .await
            .map_err(|e| Error::Worker(format!("the failover task panicked: {e}")))?,
        None => Failover::default(),
    };
    let killed_pids: Vec<u32> = failover.killed_pid.into_iter().collect();
    let surviving_pids: Vec<u32> = common
        .server_pids
        .iter()
        .copied()
        .filter(|p| !killed_pids.contains(p))
        .collect();
    // A killed process has no /proc entry: its CPU is counted only when none was killed.
    let publish_figures = publish_window.close(
        if killed_pids.is_empty() {
            &common.server_pids
        } else {
            &surviving_pids
        },
        publish_end,
        0,
    );

    let mut stats = ClusterHistoryStats {
        nodes,
        batch: args.batch as u64,
        window: args.window as u64,
        retries: published.retries,
        publish_server_cpu_us_per_event: if killed_pids.is_empty() {
            per(publish_figures.server_cpu_us, published.accepted)
        } else {
            None
        },
        leader_before: failover.leader_before,
        killed_node: failover.killed_node,
        killed_pid: failover.killed_pid,
        killed_after_secs: failover.killed_after.map(|d| d.as_secs_f64()),
        new_leader: failover.new_leader,
        kill_to_new_leader_ms: failover.kill_to_new_leader.map(|d| d.as_secs_f64() * 1e3),
        kill_to_first_ack_ms: progress
            .marker_to_first_ack()
            .map(|d| d.as_secs_f64() * 1e3),
        ..ClusterHistoryStats::default()
    };
    let mut errors = published.errors.clone();
    let mut last_error = published.last_error.clone();
    if let Some(e) = &failover.error {
        *errors.entry("failover".into()).or_default() += 1;
        last_error = Some(e.clone());
    }

    // Every reachable node replays the whole channel.
    let replays = verify_replicas(&target, &channel, timeout, args, &mut stats).await?;
    for (node, r) in &replays {
        report.expected += r.tracker.expected(stats.stored);
        report.delivered += r.tracker.delivered();
        report.lost += r.tracker.lost(stats.stored);
        report.duplicates += r.tracker.duplicates();
        report.out_of_order += r.tracker.out_of_order();
        report.pusher_errors += r.pusher_errors;
        stats.gaps += r.tracker.gaps;
        stats.other_epoch += r.tracker.other_epoch;
        match &r.failure {
            Some((kind, message)) => {
                *errors.entry(format!("replay_{kind}")).or_default() += 1;
                let line = format!("node {node}: {message}");
                last_error = Some(line.clone());
                stats.failures.push(line);
            }
            None if r.secs.is_some() => stats.replicas_complete += 1,
            None => {}
        }
    }
    // An event stored at two offsets: a request retried after its first attempt was committed.
    let stored_twice = stored_twice(&rest, &channel, stats.stored).await?;
    if stored_twice > 0 {
        report.duplicates += stored_twice;
        *errors.entry("stored_twice".into()).or_default() += stored_twice;
    }
    if stats.stored < published.accepted {
        *errors.entry("acknowledged_not_stored".into()).or_default() +=
            published.accepted - stats.stored;
    }

    report.window_secs = publish_figures.secs;
    report.connections = replays.len() as u64;
    report.published = published.accepted;
    report.publish_refused = published.refused;
    report.publish_requests = published.requests;
    report.publishes_per_sec =
        published.accepted as f64 / published.elapsed.as_secs_f64().max(1e-3);
    report.publish_rtt_ms = LatencySummary::from_us(&published.rtt);
    report.publish_events_per_sec = Some(report.publishes_per_sec);
    report.publish_latency_ms = Some(report.publish_rtt_ms.clone());
    report.server_cpu_percent = publish_figures.server_cpu_percent();
    report.server_rss_kib = publish_figures.server_rss_kib;
    report.server_cpu_us_per_event = stats.publish_server_cpu_us_per_event;
    report.harness_cpu_percent = publish_figures.harness_cpu_percent();
    report.disconnects = stats.failures.len() as u64;
    report.errors = errors;
    report.last_error = last_error;
    report.cluster_history = Some(stats);
    Ok(report)
}

/// Waits `after`, kills the leader's process, marks the kill for the publishers and polls the
/// surviving nodes until one names a new leader (or `until`).
async fn kill_leader(
    admin: ClusterAdmin,
    pids: BTreeMap<u64, u32>,
    after: Duration,
    progress: Arc<Progress>,
    until: Instant,
) -> Failover {
    let mut f = Failover::default();
    let start = Instant::now();
    tokio::time::sleep(after).await;
    let Some(leader) = admin.leader(&[]).await else {
        f.error = Some("no node named a leader at the time of the kill".into());
        return f;
    };
    f.leader_before = Some(leader);
    let Some(&pid) = pids.get(&leader) else {
        f.error = Some(format!(
            "node {leader} leads but no --pid {leader}=PID was given"
        ));
        return f;
    };
    if let Err(e) = cluster_admin::kill_process(pid) {
        f.error = Some(format!("killing node {leader} (pid {pid}): {e}"));
        return f;
    }
    let killed_at = Instant::now();
    progress.set_marker(killed_at);
    f.killed_node = Some(leader);
    f.killed_pid = Some(pid);
    f.killed_after = Some(killed_at.duration_since(start));
    match admin
        .wait_for_leader(&[leader], Duration::from_millis(10), until)
        .await
    {
        Some((new_leader, at)) => {
            f.new_leader = Some(new_leader);
            f.kill_to_new_leader = Some(at.duration_since(killed_at));
        }
        None => f.error = Some(format!("no new leader named after killing node {leader}")),
    }
    f
}

/// One subscriber per reachable `--target` node replays the channel from offset 0; fills in the
/// channel's last offset and epoch and the unreachable nodes. Returns each node's replay.
/// How many of the channel's `stored` events are stored again at a later offset (the same
/// stamp, stream and sequence number), read over the REST history endpoint of the first node
/// that answers.
async fn stored_twice(rest: &Rest, channel: &str, stored: u64) -> Result<u64> {
    let route = format!("channels/{channel}/history");
    let mut last_error = None;
    for node in 0..rest.nodes() {
        let mut seen = std::collections::HashSet::new();
        let mut twice = 0;
        let mut after = 0u64;
        let read = loop {
            let after_s = after.to_string();
            let page = match rest
                .get(node, &route, &[("after", &after_s), ("limit", "1000")])
                .await
            {
                Ok(page) => page,
                Err(e) => break Err(e),
            };
            let events = page["events"].as_array().cloned().unwrap_or_default();
            if events.is_empty() || after >= stored {
                break Ok(());
            }
            for e in &events {
                after = e["offset"].as_u64().unwrap_or(after + 1);
                let data = e["data"].as_str().unwrap_or_default();
                if let Some(stamp) = crate::payload::find(data.as_bytes()) {
                    if !seen.insert((stamp.stream, stamp.seq)) {
                        twice += 1;
                    }
                }
            }
        };
        match read {
            Ok(()) => return Ok(twice),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error
        .unwrap_or_else(|| Error::Protocol("no node to read the history from".into()))
        .during("reading the stored history back"))
}

async fn verify_replicas(
    target: &Target,
    channel: &str,
    timeout: Duration,
    args: &ClusterHistoryArgs,
    stats: &mut ClusterHistoryStats,
) -> Result<Vec<(String, Replay)>> {
    let mut conns = Vec::new();
    for i in 0..target.ws_nodes.len() {
        match ws::connect(target, i, timeout.min(Duration::from_secs(5))).await {
            Ok(c) => conns.push((i, c.ws)),
            Err(e) if stats.killed_node.is_some() && retrying_publisher::is_node_failure(&e) => {
                stats.replicas_unreachable += 1;
            }
            Err(e) => return Err(e.during("connecting a subscriber to every node")),
        }
    }
    let Some(&(first, _)) = conns.first() else {
        return Err(Error::Protocol(
            "no node is reachable after publishing".into(),
        ));
    };
    let reachable = Target {
        ws_nodes: vec![target.ws_nodes[first].clone()],
        ..target.clone()
    };
    let position = probe(&reachable, channel, timeout)
        .await
        .map_err(|e| e.during("reading the channel's epoch and last offset after publishing"))?;
    let (Some(epoch), Some(last)) = (position.epoch, position.offset) else {
        return Err(Error::Protocol(format!(
            "after publishing, the subscription_succeeded of {channel} has no epoch or offset"
        )));
    };
    stats.stored = last;
    stats.epoch = Some(epoch.clone());
    let deadline = Instant::now() + Duration::from_secs(args.replay_timeout_secs);
    let live = Arc::new(crate::recovering::RecoveringLive::default());
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|(i, ws)| {
            let (channel, epoch, live) = (channel.to_owned(), epoch.clone(), live.clone());
            let name = target.ws_nodes[i].base.clone();
            (
                name,
                tokio::spawn(replay(ws, channel, epoch, last, deadline, live)),
            )
        })
        .collect();
    let mut replays = Vec::new();
    for (name, task) in tasks {
        let (r, ws) = task
            .await
            .map_err(|e| Error::Worker(format!("a replaying subscriber panicked: {e}")))?;
        if let Some(mut ws) = ws {
            let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
        }
        replays.push((name, r));
    }
    Ok(replays)
}
