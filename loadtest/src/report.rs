//! The figures of a run: one serializable [`Report`] written as JSON (`--json`), printed as a human
//! summary, and plotted by [`crate::html`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Percentiles of a latency histogram recorded in microseconds, reported in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl LatencySummary {
    pub fn from_us(h: &Histogram<u64>) -> LatencySummary {
        if h.is_empty() {
            return LatencySummary::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        LatencySummary {
            count: h.len(),
            mean: h.mean() / 1000.0,
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// `(percentile, milliseconds)` points of a latency histogram, for plotting.
pub fn latency_distribution(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    [
        0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999, 100.0,
    ]
    .iter()
    .map(|&p| (p, h.value_at_percentile(p) as f64 / 1000.0))
    .collect()
}

/// One point of the timeline sampled during a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the scenario started.
    pub t: f64,
    pub connections: u64,
    pub published: u64,
    pub delivered: u64,
    pub harness_cpu_us: u64,
    pub server_cpu_us: Option<u64>,
    pub server_rss_kib: Option<u64>,
}

/// The `connections` scenario's own figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConnectStats {
    pub requested: u64,
    pub established: u64,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    pub ramp_secs: f64,
    pub connects_per_sec: f64,
    pub setup_ms: LatencySummary,
    /// Connections that closed during the hold.
    pub dropped_while_idle: u64,
    pub worker_processes: u64,
    pub source_ips: u64,
    pub server_rss_kib_before: Option<u64>,
    pub server_rss_kib_after: Option<u64>,
}

/// The `presence` scenario's own figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PresenceStats {
    pub joins: u64,
    pub leaves: u64,
    pub join_failures: u64,
    pub member_added_expected: u64,
    pub member_added_seen: u64,
    pub member_removed_expected: u64,
    pub member_removed_seen: u64,
    /// Events that did not fit the membership (removed before added, added twice, own user).
    pub unexpected_events: u64,
    /// Members still listed by `GET /channels/{name}/users` after everyone left (besides observers).
    pub members_left_over: u64,
    /// Joins whose subscription_succeeded counted fewer members than the observers plus itself.
    pub short_member_counts: u64,
    pub join_ms: LatencySummary,
    pub member_added_ms: LatencySummary,
}

/// The `history` scenario's own figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HistoryStats {
    pub subscribers: u64,
    pub storms: u64,
    /// Reconnections (storms and unexpected drops), each a resubscription with `since`.
    pub reconnects: u64,
    /// Reconnections that did not succeed within the setup timeout.
    pub reconnect_failures: u64,
    /// Connections the server closed without being asked to.
    pub unexpected_disconnects: u64,
    pub recovered_true: u64,
    pub recovered_false: u64,
    /// Resubscriptions whose confirmation said nothing about recovery.
    pub recovered_unknown: u64,
    /// Times a subscriber's offsets jumped (missed events, or a refused recovery).
    pub gaps: u64,
    /// Events received from another epoch than the subscriber's.
    pub other_epoch: u64,
    /// Events of the history channels without an offset.
    pub without_offset: u64,
    /// Events received while catching up after a resubscription.
    pub replayed: u64,
    /// Events the channels stored during the run (their last offset minus their first).
    pub stored: u64,
    /// From starting to reconnect to having every event published before the resubscription.
    pub recover_ms: LatencySummary,
    /// `(percentile, milliseconds)` points of the time to recover, for plotting.
    pub recover_distribution: Vec<(f64, f64)>,
    /// Each channel's last offset at the end.
    pub last_offsets: Vec<u64>,
}

impl HistoryStats {
    /// Adds one subscriber's counters (its reconnects, recoveries, replayed and offset-less events).
    pub fn add_counts(&mut self, other: &HistoryStats) {
        self.reconnects += other.reconnects;
        self.reconnect_failures += other.reconnect_failures;
        self.unexpected_disconnects += other.unexpected_disconnects;
        self.recovered_true += other.recovered_true;
        self.recovered_false += other.recovered_false;
        self.recovered_unknown += other.recovered_unknown;
        self.gaps += other.gaps;
        self.other_epoch += other.other_epoch;
        self.without_offset += other.without_offset;
        self.replayed += other.replayed;
    }
}

/// One subscriber's catch-up in the `catch-up` scenario.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SubscriberReplay {
    pub subscriber: u64,
    /// Distinct offsets received.
    pub delivered: u64,
    /// Bytes of the text frames received from the subscribe to the last offset.
    pub frame_bytes: u64,
    /// From sending the subscribe to receiving the last offset; null when it never came.
    pub secs: Option<f64>,
    pub events_per_sec: f64,
    /// Frame megabytes (10^6 bytes) per second.
    pub mb_per_sec: f64,
    /// From sending the subscribe to its subscription_succeeded.
    pub confirm_ms: Option<f64>,
    pub recovered: Option<bool>,
    /// Why it did not finish (a close such as 4100, a pusher:error, a refused recovery, a timeout).
    pub failure: Option<String>,
}

/// The `catch-up` scenario's own figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CatchUpStats {
    /// Events asked for (`--events`).
    pub events: u64,
    /// The channel's last offset after publishing: what every subscriber must receive.
    pub stored: u64,
    pub epoch: Option<String>,
    pub subscribers: u64,
    /// Subscribers that received the last offset.
    pub completed: u64,
    pub recovered_true: u64,
    pub recovered_false: u64,
    pub recovered_unknown: u64,
    pub gaps: u64,
    pub other_epoch: u64,
    pub without_offset: u64,
    /// From the subscribes to the last subscriber's last offset.
    pub replay_secs: f64,
    /// Distinct offsets received by all subscribers per second of `replay_secs`.
    pub replay_events_per_sec: f64,
    /// Frame megabytes (10^6 bytes) received by all subscribers per second of `replay_secs`.
    pub replay_mb_per_sec: f64,
    pub frame_bytes: u64,
    pub per_subscriber: Vec<SubscriberReplay>,
    pub publish_secs: f64,
    /// Server CPU per acknowledged event while publishing.
    pub publish_server_cpu_us_per_event: Option<f64>,
    /// One line per subscriber that did not finish.
    pub failures: Vec<String>,
}

/// The `cluster-history` scenario's own figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClusterHistoryStats {
    /// HTTP nodes published to.
    pub nodes: u64,
    pub batch: u64,
    pub window: u64,
    /// Requests sent again to another node (after a connection error or 502/503/504).
    pub retries: u64,
    /// Server CPU (all `--server-pid`s) per acknowledged event while publishing.
    pub publish_server_cpu_us_per_event: Option<f64>,
    /// The leader before the kill, and the node killed (the same, unless it changed meanwhile).
    pub leader_before: Option<u64>,
    pub killed_node: Option<u64>,
    pub killed_pid: Option<u32>,
    /// Seconds into publishing the leader was killed.
    pub killed_after_secs: Option<f64>,
    /// The leader a surviving node named first after the kill.
    pub new_leader: Option<u64>,
    /// From the kill to a surviving node naming a new leader (polled every 10 ms).
    pub kill_to_new_leader_ms: Option<f64>,
    /// From the kill to the acknowledgment of the first publish request sent after it.
    pub kill_to_first_ack_ms: Option<f64>,
    /// The channel's last offset after publishing (read from a surviving node).
    pub stored: u64,
    pub epoch: Option<String>,
    /// Nodes that replayed offsets 1..stored exactly once, in order, and those not reachable.
    pub replicas_complete: u64,
    pub replicas_unreachable: u64,
    pub gaps: u64,
    pub other_epoch: u64,
    /// One line per node whose replay did not finish.
    pub failures: Vec<String>,
}

/// Every figure of a run. Fields that a scenario does not measure stay at zero / null.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub targets: Vec<String>,
    pub started_unix_ms: u64,
    /// Length of the measured phase, seconds.
    pub window_secs: f64,
    pub connections: u64,
    pub channels: u64,
    pub payload_bytes: u64,
    pub published: u64,
    pub publish_refused: u64,
    pub publish_requests: u64,
    pub publishes_per_sec: f64,
    pub publish_rtt_ms: LatencySummary,
    pub delivered: u64,
    pub expected: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub deliveries_per_sec: f64,
    pub latency_ms: LatencySummary,
    pub server_cpu_us_per_delivery: Option<f64>,
    /// Server CPU over the measured phase, percent of one core.
    pub server_cpu_percent: Option<f64>,
    pub server_rss_kib: Option<u64>,
    pub server_rss_kib_per_conn: Option<f64>,
    pub harness_cpu_percent: f64,
    pub harness_cpu_us_per_delivery: Option<f64>,
    /// Connections that ended before the run told them to.
    pub disconnects: u64,
    pub pusher_errors: u64,
    pub errors: BTreeMap<String, u64>,
    pub last_error: Option<String>,
    pub connect: Option<ConnectStats>,
    pub presence: Option<PresenceStats>,
    pub history: Option<HistoryStats>,
    #[serde(default)]
    pub catch_up: Option<CatchUpStats>,
    #[serde(default)]
    pub cluster_history: Option<ClusterHistoryStats>,
    /// `catch-up`: replayed events per second, all subscribers together.
    #[serde(default)]
    pub replay_events_per_sec: Option<f64>,
    /// `catch-up`: acknowledged events per second while publishing the backlog.
    #[serde(default)]
    pub publish_events_per_sec: Option<f64>,
    /// `catch-up`: latency of the backlog's publish requests.
    #[serde(default)]
    pub publish_latency_ms: Option<LatencySummary>,
    /// `catch-up`: server CPU per replayed event.
    #[serde(default)]
    pub server_cpu_us_per_event: Option<f64>,
    /// Why the scenario did not run (the server lacks what it measures); the figures are empty.
    pub skipped: Option<String>,
    pub latency_distribution: Vec<(f64, f64)>,
    pub timeline: Vec<Sample>,
}

impl Report {
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n")
            .map_err(|e| Error::Report(format!("writing {}: {e}", path.display())))
    }

    pub fn read_json(path: &Path) -> Result<Report> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Report(format!("reading {}: {e}", path.display())))?;
        Ok(serde_json::from_str(&text)?)
    }

    /// The human summary printed at the end of a run.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "== {} against {}",
            self.scenario,
            self.targets.join(", ")
        );
        if let Some(reason) = &self.skipped {
            let _ = writeln!(s, "skipped: {reason}");
            return s;
        }
        let _ = writeln!(
            s,
            "window        {:.2} s, {} connections, {} channels, payload {} B",
            self.window_secs, self.connections, self.channels, self.payload_bytes
        );
        if let Some(c) = &self.connect {
            let _ = writeln!(
                s,
                "connections   {} of {} established in {:.2} s ({:.0}/s), {} failed {:?}, {} dropped while idle; {} process(es), {} source address(es)",
                c.established, c.requested, c.ramp_secs, c.connects_per_sec, c.failed, c.failures,
                c.dropped_while_idle, c.worker_processes, c.source_ips
            );
            let _ = writeln!(
                s,
                "setup ms      p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
                c.setup_ms.p50, c.setup_ms.p90, c.setup_ms.p99, c.setup_ms.max
            );
        }
        if self.published > 0
            || self.publish_requests > 0
            || self.expected > 0
            || self.delivered > 0
        {
            let _ = write!(
                s,
                "published     {} events in {} requests ({:.0} events/s), {} refused",
                self.published, self.publish_requests, self.publishes_per_sec, self.publish_refused,
            );
            if self.publish_rtt_ms.count > 0 {
                let _ = write!(
                    s,
                    "; request RTT ms p50 {:.2} p99 {:.2}",
                    self.publish_rtt_ms.p50, self.publish_rtt_ms.p99
                );
            }
            s.push('\n');
            let _ = writeln!(
                s,
                "delivered     {} of {} expected ({:.0}/s); lost {}, duplicates {}, out of order {}",
                self.delivered,
                self.expected,
                self.deliveries_per_sec,
                self.lost,
                self.duplicates,
                self.out_of_order
            );
            let l = &self.latency_ms;
            if l.count > 0 || (self.catch_up.is_none() && self.cluster_history.is_none()) {
                let _ = writeln!(
                    s,
                    "latency ms    p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  (mean {:.2}, n {})",
                    l.p50, l.p90, l.p99, l.p999, l.max, l.mean, l.count
                );
            }
        }
        if let Some(c) = &self.catch_up {
            let _ = writeln!(
                s,
                "catch-up      {} of {} subscribers replayed offsets 1..{} of epoch {} in {:.3} s: {:.0} events/s, {:.1} MB/s of frames in total; recovered true {} false {} unknown {}; {} gaps, {} from another epoch, {} without offset",
                c.completed, c.subscribers, c.stored, c.epoch.as_deref().unwrap_or("-"),
                c.replay_secs, c.replay_events_per_sec, c.replay_mb_per_sec, c.recovered_true,
                c.recovered_false, c.recovered_unknown, c.gaps, c.other_epoch, c.without_offset
            );
            for p in c.per_subscriber.iter().take(10) {
                let _ = writeln!(
                    s,
                    "  subscriber {:<3} {} events in {} s: {:.0} events/s, {:.1} MB/s, confirmed after {} ms",
                    p.subscriber,
                    p.delivered,
                    p.secs.map_or("-".into(), |v| format!("{v:.3}")),
                    p.events_per_sec,
                    p.mb_per_sec,
                    p.confirm_ms.map_or("-".into(), |v| format!("{v:.1}")),
                );
            }
            if c.per_subscriber.len() > 10 {
                let _ = writeln!(s, "  ... {} more in the JSON", c.per_subscriber.len() - 10);
            }
            if let Some(us) = c.publish_server_cpu_us_per_event {
                let _ = writeln!(s, "publish CPU   server {us:.2} us per published event");
            }
            for f in &c.failures {
                let _ = writeln!(s, "FAILED        {f}");
            }
        }
        if let Some(c) = &self.cluster_history {
            let _ = writeln!(
                s,
                "cluster       {} nodes, batch {}, window {}; {} retries on another node; {} nodes replayed offsets 1..{} of epoch {} exactly once in order, {} unreachable; {} gaps, {} from another epoch",
                c.nodes, c.batch, c.window, c.retries, c.replicas_complete, c.stored,
                c.epoch.as_deref().unwrap_or("-"), c.replicas_unreachable, c.gaps, c.other_epoch
            );
            if let Some(node) = c.killed_node {
                let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0} ms"));
                let _ = writeln!(
                    s,
                    "failover      leader {} killed (pid {}) {:.2} s in; new leader {} named after {}; first publish sent after the kill acknowledged after {}",
                    node,
                    c.killed_pid.map_or("-".into(), |p| p.to_string()),
                    c.killed_after_secs.unwrap_or(0.0),
                    c.new_leader.map_or("-".into(), |l| l.to_string()),
                    ms(c.kill_to_new_leader_ms),
                    ms(c.kill_to_first_ack_ms)
                );
            }
            if let Some(us) = c.publish_server_cpu_us_per_event {
                let _ = writeln!(s, "publish CPU   servers {us:.2} us per acknowledged event");
            }
            for f in &c.failures {
                let _ = writeln!(s, "FAILED        {f}");
            }
        }
        if let Some(p) = &self.presence {
            let _ = writeln!(
                s,
                "presence      {} joins ({} failed), {} leaves; member_added {}/{} member_removed {}/{}; {} unexpected, {} short member counts, {} members left over",
                p.joins, p.join_failures, p.leaves, p.member_added_seen, p.member_added_expected,
                p.member_removed_seen, p.member_removed_expected, p.unexpected_events,
                p.short_member_counts, p.members_left_over
            );
            let _ = writeln!(
                s,
                "presence ms   join p50 {:.2} p99 {:.2}; member_added p50 {:.2} p99 {:.2}",
                p.join_ms.p50, p.join_ms.p99, p.member_added_ms.p50, p.member_added_ms.p99
            );
        }
        if let Some(h) = &self.history {
            let _ = writeln!(
                s,
                "history       {} subscribers, {} storms, {} reconnects ({} failed, {} unexpected drops); recovered true {} false {} unknown {}; {} gaps, {} replayed, {} from another epoch, {} without offset; {} stored for {} acknowledged",
                h.subscribers, h.storms, h.reconnects, h.reconnect_failures, h.unexpected_disconnects,
                h.recovered_true, h.recovered_false, h.recovered_unknown, h.gaps, h.replayed,
                h.other_epoch, h.without_offset, h.stored, self.published
            );
            let r = &h.recover_ms;
            let _ = writeln!(
                s,
                "recover ms    p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}  (n {})",
                r.p50, r.p90, r.p99, r.max, r.count
            );
        }
        match (self.server_cpu_percent, self.server_cpu_us_per_delivery) {
            (Some(pct), per) => {
                let _ = writeln!(
                    s,
                    "server        CPU {:.1}% of a core, {} us/delivery, RSS {} KiB{}",
                    pct,
                    per.map_or("-".into(), |v| format!("{v:.3}")),
                    self.server_rss_kib.unwrap_or(0),
                    self.server_rss_kib_per_conn
                        .map_or(String::new(), |v| format!(" ({v:.2} KiB/connection)"))
                );
            }
            (None, _) => {
                let _ = writeln!(s, "server        not sampled (give --server-pid)");
            }
        }
        let _ = writeln!(
            s,
            "harness       CPU {:.1}% of a core{}",
            self.harness_cpu_percent,
            self.harness_cpu_us_per_delivery
                .map_or(String::new(), |v| format!(", {v:.3} us/delivery"))
        );
        if self.disconnects > 0 || self.pusher_errors > 0 || !self.errors.is_empty() {
            let _ = writeln!(
                s,
                "problems      {} early disconnects, {} pusher:error frames, errors {:?}",
                self.disconnects, self.pusher_errors, self.errors
            );
            if let Some(e) = &self.last_error {
                let _ = writeln!(s, "last error    {e}");
            }
        }
        s
    }

    /// Writes whatever outputs were asked for and prints the summary.
    pub fn emit(&self, json: Option<&Path>, html: Option<&Path>) -> Result<()> {
        println!("{}", self.human());
        if let Some(path) = json {
            self.write_json(path)?;
        }
        if let Some(path) = html {
            crate::html::write(self, path)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliveries::new_histogram;

    #[test]
    fn latency_summary_in_milliseconds() {
        let mut h = new_histogram();
        for us in 1..=1000u64 {
            h.record(us * 10).unwrap();
        }
        let s = LatencySummary::from_us(&h);
        assert_eq!(s.count, 1000);
        assert!((s.p50 - 5.0).abs() < 0.01, "{}", s.p50);
        assert!((s.p90 - 9.0).abs() < 0.01, "{}", s.p90);
        assert!((s.p99 - 9.9).abs() < 0.01, "{}", s.p99);
        assert!((s.max - 10.0).abs() < 0.01, "{}", s.max);
        assert_eq!(
            LatencySummary::from_us(&new_histogram()),
            LatencySummary::default()
        );
        let d = latency_distribution(&h);
        assert_eq!(d.first().unwrap().0, 0.0);
        assert!(d.windows(2).all(|w| w[0].1 <= w[1].1));
    }

    #[test]
    fn json_has_the_documented_fields() {
        let r = Report {
            scenario: "fanout".into(),
            delivered: 10,
            expected: 12,
            lost: 2,
            server_cpu_us_per_delivery: Some(1.5),
            ..Report::default()
        };
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        for key in [
            "delivered",
            "expected",
            "lost",
            "duplicates",
            "deliveries_per_sec",
            "server_cpu_us_per_delivery",
            "server_rss_kib_per_conn",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        for key in ["p50", "p90", "p99", "max"] {
            assert!(
                v["latency_ms"].get(key).is_some(),
                "missing latency_ms.{key}"
            );
        }
        assert_eq!(v["lost"], 2);
        assert_eq!(v["server_cpu_us_per_delivery"], 1.5);
        assert!(v["server_rss_kib_per_conn"].is_null());
        // And it reads back.
        let dir = std::env::temp_dir().join(format!("lt-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("r.json");
        r.write_json(&path).unwrap();
        let back = Report::read_json(&path).unwrap();
        assert_eq!(back.delivered, 10);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(r.human().contains("lost 2"));
    }

    #[test]
    fn a_skipped_run_says_why_and_nothing_else() {
        let r = Report {
            scenario: "history".into(),
            targets: vec!["http://127.0.0.1:1".into()],
            skipped: Some("server does not send offsets".into()),
            ..Report::default()
        };
        let human = r.human();
        assert!(human.contains("skipped: server does not send offsets"));
        assert!(!human.contains("delivered"));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["skipped"], "server does not send offsets");
        assert!(v["history"].is_null());
    }
}
