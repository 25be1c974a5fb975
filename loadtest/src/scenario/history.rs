//! `history`: events published over the signed HTTP API to history channels (Chorus: channels
//! matching an `[[apps.history]]` rule) while subscribers go through disconnect storms and come
//! back with the `since` extension. Checks that each subscriber sees every offset after its first
//! subscription exactly once, in order, with no gap; reports reconnects, recovered true/false,
//! time to recover, acknowledged publishes per second and publish latency.
//!
//! Before measuring, a probe subscribes to every channel and one event is published to each: the
//! channels then have an epoch, and a server that sends no offsets is detected and the scenario is
//! skipped (exit 0).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::{stream, StreamExt};
use tokio::sync::watch;

use crate::common::{CommonArgs, Target};
use crate::deliveries::{new_histogram, Deliveries};
use crate::error::{Error, Result};
use crate::offsets::OffsetTracker;
use crate::publisher::{self, Live, Plan};
use crate::pusher::frame::Frame;
use crate::pusher::rest::{Event, Rest};
use crate::pusher::ws::{self, Ws};
use crate::recovering::{self, Finish, RecoveringLive};
use crate::report::{latency_distribution, HistoryStats, LatencySummary, Report};
use crate::scenario::{per, Window};

/// What the scenario says when the server has no offsets on its events.
pub const SKIPPED: &str = "server does not send offsets";

#[derive(Debug, Clone, Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// History channels (subscriber i follows channel i mod C).
    #[arg(long, default_value_t = 2)]
    pub channels: usize,
    /// Start of the channel names: must match one of the server's history rules (Chorus:
    /// `[[apps.history]] channels = "history-*"`).
    #[arg(long, default_value = "history-")]
    pub history_prefix: String,
    /// Subscribed connections.
    #[arg(long, default_value_t = 20)]
    pub subscribers: usize,
    /// Events per second, in total (round-robin over the channels).
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Publish requests allowed in flight at once.
    #[arg(long, default_value_t = 8)]
    pub window: usize,
    /// A disconnect storm every this many milliseconds while publishing.
    #[arg(long, default_value_t = 1000)]
    pub storm_every_ms: u64,
    /// Fraction of the subscribers each storm disconnects (0 to 1).
    #[arg(long, default_value_t = 0.5)]
    pub storm_fraction: f64,
    /// How long a disconnected subscriber stays away before reconnecting.
    #[arg(long, default_value_t = 200)]
    pub offline_ms: u64,
    /// After publishing, wait at most this long for every subscriber to catch up.
    #[arg(long, default_value_t = 10)]
    pub drain_secs: u64,
}

/// Name of the event that gives each channel its epoch before the run.
const PRIMER_EVENT: &str = "lt-primer";

pub async fn run(args: &HistoryArgs) -> Result<Report> {
    let common = &args.common;
    if args.channels == 0 || args.subscribers == 0 || args.window == 0 || args.rate <= 0.0 {
        return Err(Error::Args(
            "--channels, --subscribers, --window and --rate must be positive".into(),
        ));
    }
    if !(0.0..=1.0).contains(&args.storm_fraction) || args.storm_every_ms == 0 {
        return Err(Error::Args(
            "--storm-fraction must be within 0..=1 and --storm-every-ms positive".into(),
        ));
    }
    crate::limits::check_fits(args.subscribers as u64 + 1, args.window as u64)?;
    let started_unix_ms = crate::payload::now_us() / 1000;
    let target = Arc::new(Target::resolve(common, args.subscribers as u64 + 1).await?);
    let base = format!("{}{}", args.history_prefix, common.channel_base());
    let channels: Arc<Vec<String>> =
        Arc::new((0..args.channels).map(|c| format!("{base}-{c}")).collect());
    let timeout = common.setup_timeout();
    let rest = Rest::new(target.clone(), args.window)?;
    let mut report = Report {
        scenario: "history".into(),
        targets: common.targets.clone(),
        started_unix_ms,
        channels: args.channels as u64,
        payload_bytes: common.payload_bytes as u64,
        ..Report::default()
    };

    // Probe: one event per channel; its offset tells whether the server keeps history.
    let primed = prime(&target, &rest, &channels, timeout)
        .await
        .map_err(|e| e.during("priming the history channels"))?;
    let first_offsets = match primed {
        Some(offsets) => offsets,
        None => {
            report.skipped = Some(format!(
                "{SKIPPED} (no \"offset\" on events of {}: is there a history rule for {}*?)",
                channels[0], args.history_prefix
            ));
            return Ok(report);
        }
    };

    let live = Arc::new(RecoveringLive::default());
    let pub_live = Arc::new(Live::default());
    let sampler = live.sampler(&pub_live, Duration::from_millis(500), common);

    // Subscribers: connected and subscribed before publishing starts.
    sampler.set_phase("subscribing");
    let subscribed: Vec<Result<(usize, Ws, OffsetTracker)>> = stream::iter(0..args.subscribers)
        .map(|i| {
            let (target, channels) = (target.clone(), channels.clone());
            async move {
                let channel = &channels[i % channels.len()];
                let mut conn = ws::connect(&target, i + 1, timeout).await?;
                let ok = ws::subscribe(&mut conn.ws, channel, None, None, timeout).await?;
                let pos = ok.position();
                Ok((
                    i,
                    conn.ws,
                    OffsetTracker::new(pos.epoch, pos.offset.unwrap_or(0)),
                ))
            }
        })
        .buffer_unordered(common.connect_concurrency.max(1))
        .collect()
        .await;
    let (storms_tx, storms_rx) = watch::channel(0u64);
    let (finish_tx, finish_rx) = watch::channel(None::<Finish>);
    let mut subscribers = Vec::with_capacity(args.subscribers);
    for s in subscribed {
        let (i, ws, tracker) = match s {
            Ok(s) => s,
            Err(e) => {
                sampler.finish().await;
                return Err(e.during("subscribing the subscribers"));
            }
        };
        live.connected.fetch_add(1, Ordering::Relaxed);
        let ctx = recovering::Ctx {
            target: target.clone(),
            index: i + 1,
            channel: channels[i % channels.len()].clone(),
            channel_index: i % channels.len(),
            storms: storms_rx.clone(),
            finish: finish_rx.clone(),
            fraction: args.storm_fraction,
            offline: Duration::from_millis(args.offline_ms),
            timeout,
            live: live.clone(),
        };
        subscribers.push((i, tokio::spawn(recovering::run(ctx, ws, tracker))));
    }
    drop(storms_rx);
    let mut per_channel = vec![0u64; args.channels];
    for (i, _) in &subscribers {
        per_channel[i % args.channels] += 1;
    }

    // The measured window: publishing at a fixed rate, storms on the side.
    sampler.set_phase("publishing");
    let window = Window::open(&common.server_pids);
    let publish_end = window.start + common.duration();
    let storms = {
        let every = Duration::from_millis(args.storm_every_ms);
        tokio::spawn(async move {
            let mut storm = 0;
            let mut tick = tokio::time::interval_at((Instant::now() + every).into(), every);
            loop {
                tick.tick().await;
                if Instant::now() >= publish_end {
                    return storm;
                }
                storm += 1;
                if storms_tx.send(storm).is_err() {
                    return storm;
                }
            }
        })
    };
    let plan = Plan {
        channels: channels.clone(),
        receivers_per_channel: Arc::new(per_channel),
        streams: args.window,
        batch: 1,
        rate: Some(args.rate),
        max_events: u64::MAX,
        duration: common.duration(),
        payload_bytes: common.payload_bytes,
        max_pending_deliveries: None,
        keys: None,
    };
    let published = publisher::run(plan, rest, pub_live.clone(), Arc::new(Deliveries::new())).await;
    let storm_count = storms.await.unwrap_or(0);

    // Drain: every subscriber must reach its channel's last offset.
    sampler.set_phase("catching up");
    let last_offsets = match last_offsets(&target, &channels, timeout).await {
        Ok(offsets) => Arc::new(offsets),
        Err(e) => {
            sampler.finish().await;
            return Err(e.during(
                "reading each channel's last offset after publishing (is the server stuck?)",
            ));
        }
    };
    let _ = finish_tx.send(Some(Finish {
        last_offsets: last_offsets.clone(),
        deadline: Instant::now() + Duration::from_secs(args.drain_secs),
    }));
    let mut stats = HistoryStats {
        subscribers: subscribers.len() as u64,
        storms: storm_count,
        stored: last_offsets
            .iter()
            .zip(&first_offsets)
            .map(|(last, first)| last.saturating_sub(*first))
            .sum(),
        last_offsets: last_offsets.to_vec(),
        ..HistoryStats::default()
    };
    let mut recover_us = new_histogram();
    let mut latency_us = new_histogram();
    let mut errors: BTreeMap<String, u64> = published.errors.clone();
    let mut last_error = published.last_error.clone();
    for (i, handle) in subscribers {
        let rec = match handle.await {
            Ok(r) => r,
            Err(e) => {
                *errors.entry("subscriber_panic".into()).or_default() += 1;
                last_error = Some(e.to_string());
                continue;
            }
        };
        let last = last_offsets[i % args.channels];
        report.expected += rec.tracker.expected(last);
        report.delivered += rec.tracker.delivered();
        report.lost += rec.tracker.lost(last);
        report.duplicates += rec.tracker.duplicates();
        report.out_of_order += rec.tracker.out_of_order();
        report.pusher_errors += rec.pusher_errors;
        report.disconnects += rec.counts.unexpected_disconnects + u64::from(rec.gave_up);
        stats.add_counts(&HistoryStats {
            gaps: rec.tracker.gaps,
            other_epoch: rec.tracker.other_epoch,
            ..rec.counts
        });
        recover_us.add(&rec.recover_us).ok();
        latency_us.add(&rec.latency_us).ok();
        for (k, v) in rec.errors {
            *errors.entry(k).or_default() += v;
        }
        if rec.last_error.is_some() {
            last_error = rec.last_error;
        }
    }
    stats.recover_ms = LatencySummary::from_us(&recover_us);
    stats.recover_distribution = latency_distribution(&recover_us);
    let figures = window.close(&common.server_pids, Instant::now(), 0);
    let timeline = sampler.finish().await;

    let accepted = pub_live.accepted.load(Ordering::Relaxed);
    if stats.stored < accepted {
        *errors.entry("acknowledged_not_stored".into()).or_default() += accepted - stats.stored;
    }
    report.window_secs = figures.secs;
    report.connections = stats.subscribers;
    report.published = accepted;
    report.publish_refused = pub_live.refused.load(Ordering::Relaxed);
    report.publish_requests = published.requests;
    report.publishes_per_sec = accepted as f64 / published.elapsed.as_secs_f64().max(1e-3);
    report.publish_rtt_ms = LatencySummary::from_us(&published.rtt);
    report.deliveries_per_sec = report.delivered as f64 / figures.secs;
    report.latency_ms = LatencySummary::from_us(&latency_us);
    report.latency_distribution = latency_distribution(&latency_us);
    report.server_cpu_us_per_delivery = per(figures.server_cpu_us, report.delivered);
    report.server_cpu_percent = figures.server_cpu_percent();
    report.server_rss_kib = figures.server_rss_kib;
    report.harness_cpu_percent = figures.harness_cpu_percent();
    report.harness_cpu_us_per_delivery = per(Some(figures.harness_cpu_us), report.delivered);
    report.errors = errors;
    report.last_error = last_error;
    report.history = Some(stats);
    report.timeline = timeline;
    Ok(report)
}

/// Subscribes a probe to every channel, publishes one event to each and waits for them: each
/// channel's offset after it, or `None` when the events carry no offset.
async fn prime(
    target: &Target,
    rest: &Rest,
    channels: &[String],
    timeout: Duration,
) -> Result<Option<Vec<u64>>> {
    let mut probe = ws::connect(target, 0, timeout).await?;
    for channel in channels {
        ws::subscribe(&mut probe.ws, channel, None, None, timeout).await?;
    }
    for (c, channel) in channels.iter().enumerate() {
        let body = Rest::events_body(&Event {
            name: PRIMER_EVENT,
            channel,
            data: "primer",
            key: None,
        });
        rest.post(c, "events", body).await?;
    }
    let mut offsets: Vec<Option<Option<u64>>> = vec![None; channels.len()];
    tokio::time::timeout(timeout, async {
        while offsets.iter().any(Option::is_none) {
            let f = ws::next_frame(&mut probe.ws).await?;
            if f.event != PRIMER_EVENT {
                continue;
            }
            if let Some(c) = channels.iter().position(|n| Some(n) == f.channel.as_ref()) {
                offsets[c] = Some(f.offset);
            }
        }
        Ok::<_, Error>(())
    })
    .await
    .map_err(|_| Error::Timeout("waiting for the primer events"))??;
    let _ = tokio::time::timeout(Duration::from_secs(2), probe.ws.close(None)).await;
    Ok(offsets.into_iter().map(Option::flatten).collect())
}

/// Each channel's last offset, from the confirmation of a fresh subscription.
async fn last_offsets(target: &Target, channels: &[String], timeout: Duration) -> Result<Vec<u64>> {
    let mut probe = ws::connect(target, 0, timeout).await?;
    let mut offsets = Vec::with_capacity(channels.len());
    for channel in channels {
        let ok: Frame = ws::subscribe(&mut probe.ws, channel, None, None, timeout).await?;
        offsets.push(ok.position().offset.ok_or_else(|| {
            Error::Protocol(format!(
                "subscription_succeeded of {channel} carries no offset"
            ))
        })?);
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), probe.ws.close(None)).await;
    Ok(offsets)
}
