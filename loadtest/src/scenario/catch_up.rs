//! `catch-up`: how fast a history channel replays a large backlog to a recovering client.
//!
//! A probe subscribes to a fresh history channel (a server without offsets is detected there and
//! the scenario is skipped, exit 0). N events are published to it over the signed HTTP API in
//! batches, `--window` requests in flight: acknowledged events/s and request latency. A second
//! probe then reads the channel's epoch and last offset from its `subscription_succeeded`. Then
//! `--subscribers` clients connect and, all at once, subscribe with Chorus's `since` extension from
//! offset 0 of that epoch; each is timed from sending the subscribe to receiving the last offset,
//! and checked to see every offset 1..N exactly once, in order ([`OffsetTracker`]). A close (4100:
//! slow reader), a `pusher:error`, a refused recovery or a timeout fails that subscriber.

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::{stream, SinkExt, StreamExt};
use serde::Deserialize;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{CommonArgs, Target};
use crate::deliveries::Deliveries;
use crate::error::{Error, Result};
use crate::offsets::{OffsetTracker, Seen};
use crate::publisher::{self, Live, Plan};
use crate::pusher::frame::{self, Frame, Kind};
use crate::pusher::rest::Rest;
use crate::pusher::ws::{self, Ws};
use crate::recovering::RecoveringLive;
use crate::report::{CatchUpStats, LatencySummary, Report, SubscriberReplay};
use crate::scenario::history::SKIPPED;
use crate::scenario::{per, Window};

#[derive(Debug, Clone, Args)]
pub struct CatchUpArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Events published to the channel before the subscribers catch up.
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    /// Events per publish request (`POST /batch_events`; 1 uses `/events`). Chorus refuses
    /// batches over its `max_batch_size` (default 10).
    #[arg(long, default_value_t = 10)]
    pub batch: usize,
    /// Publish requests in flight at once.
    #[arg(long, default_value_t = 8)]
    pub window: usize,
    /// Clients that catch up at the same time, each from offset 0.
    #[arg(long, default_value_t = 1)]
    pub subscribers: usize,
    /// Start of the channel name: must match one of the server's history rules (Chorus:
    /// `[[apps.history]] channels = "history-*"`); a run id is appended.
    #[arg(long, default_value = "history-")]
    pub history_prefix: String,
    /// Give up publishing after this long.
    #[arg(long, default_value_t = 600)]
    pub publish_timeout_secs: u64,
    /// A subscriber that has not received the last offset this long after subscribing fails.
    #[arg(long, default_value_t = 300)]
    pub replay_timeout_secs: u64,
}

/// The fields of an event frame the replay loop needs; `data` is skipped, not copied.
#[derive(Deserialize)]
struct Light<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(borrow, default)]
    epoch: Option<Cow<'a, str>>,
}

/// One subscriber's catch-up.
pub struct Replay {
    pub tracker: OffsetTracker,
    pub recovered: Option<bool>,
    pub confirm_ms: Option<f64>,
    /// Subscribe to last offset.
    pub secs: Option<f64>,
    /// When the last offset arrived.
    pub done_at: Option<Instant>,
    pub frame_bytes: u64,
    pub pusher_errors: u64,
    pub without_offset: u64,
    /// Error kind and message of a subscriber that did not finish.
    pub failure: Option<(String, String)>,
}

pub async fn run(args: &CatchUpArgs) -> Result<Report> {
    let common = &args.common;
    if args.events == 0 || args.batch == 0 || args.window == 0 || args.subscribers == 0 {
        return Err(Error::Args(
            "--events, --batch, --window and --subscribers must be positive".into(),
        ));
    }
    crate::limits::check_fits(args.subscribers as u64 + 1, args.window as u64)?;
    let started_unix_ms = crate::payload::now_us() / 1000;
    let target = Arc::new(Target::resolve(common, args.subscribers as u64 + 1).await?);
    let channel = format!("{}{}", args.history_prefix, common.channel_base());
    let timeout = common.setup_timeout();
    let rest = Rest::new(target.clone(), args.window)?;
    let mut report = Report {
        scenario: "catch-up".into(),
        targets: common.targets.clone(),
        started_unix_ms,
        channels: 1,
        payload_bytes: common.payload_bytes as u64,
        ..Report::default()
    };

    if let Some(reason) = without_history(&target, &channel, &args.history_prefix, timeout).await? {
        report.skipped = Some(reason);
        return Ok(report);
    }

    let live = Arc::new(RecoveringLive::default());
    let pub_live = Arc::new(Live::default());
    let sampler = live.sampler(&pub_live, Duration::from_millis(250), common);

    // Phase 1: the backlog, published as fast as the window allows.
    sampler.set_phase("publishing");
    let publish_window = Window::open(&common.server_pids);
    let plan = Plan {
        channels: Arc::new(vec![channel.clone()]),
        receivers_per_channel: Arc::new(vec![0]),
        streams: args.window,
        batch: args.batch,
        rate: None,
        max_events: args.events,
        duration: Duration::from_secs(args.publish_timeout_secs),
        payload_bytes: common.payload_bytes,
        max_pending_deliveries: None,
        keys: None,
    };
    let published = publisher::run(plan, rest, pub_live.clone(), Arc::new(Deliveries::new())).await;
    let publish_figures = publish_window.close(&common.server_pids, Instant::now(), 0);
    let accepted = pub_live.accepted.load(Ordering::Relaxed);

    // The channel's epoch and last offset, as a recovering client would know them.
    let position = match probe(&target, &channel, timeout).await {
        Ok(p) => p,
        Err(e) => {
            sampler.finish().await;
            return Err(e.during("reading the channel's epoch and last offset after publishing"));
        }
    };
    let (Some(epoch), Some(last)) = (position.epoch, position.offset) else {
        sampler.finish().await;
        return Err(Error::Protocol(format!(
            "after publishing, the subscription_succeeded of {channel} has no epoch or offset ({} events acknowledged)",
            accepted
        )));
    };

    // Phase 2: every subscriber connected first, then all catch up from offset 0 at once.
    sampler.set_phase("connecting");
    let connected: Vec<Result<Ws>> = stream::iter(0..args.subscribers)
        .map(|i| {
            let target = target.clone();
            async move { Ok(ws::connect(&target, i + 1, timeout).await?.ws) }
        })
        .buffer_unordered(common.connect_concurrency.max(1))
        .collect()
        .await;
    let mut conns = Vec::with_capacity(args.subscribers);
    for c in connected {
        match c {
            Ok(ws) => {
                live.connected.fetch_add(1, Ordering::Relaxed);
                conns.push(ws);
            }
            Err(e) => {
                sampler.finish().await;
                return Err(e.during("connecting the subscribers"));
            }
        }
    }
    sampler.set_phase("catching up");
    let replay_window = Window::open(&common.server_pids);
    let deadline = Instant::now() + Duration::from_secs(args.replay_timeout_secs);
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|ws| {
            let (channel, epoch, live) = (channel.clone(), epoch.clone(), live.clone());
            tokio::spawn(replay(ws, channel, epoch, last, deadline, live))
        })
        .collect();
    let mut replays = Vec::with_capacity(tasks.len());
    let mut open = Vec::new();
    for t in tasks {
        match t.await {
            Ok((r, ws)) => {
                replays.push(r);
                open.extend(ws);
            }
            Err(e) => {
                sampler.finish().await;
                return Err(Error::Worker(format!(
                    "a catch-up subscriber panicked: {e}"
                )));
            }
        }
    }
    let end = replays
        .iter()
        .filter_map(|r| r.done_at)
        .max()
        .unwrap_or_else(Instant::now);
    let figures = replay_window.close(&common.server_pids, end, 0);
    for mut ws in open {
        live.connected.fetch_sub(1, Ordering::Relaxed);
        let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    }
    let timeline = sampler.finish().await;

    let mut stats = CatchUpStats {
        events: args.events,
        stored: last,
        epoch: Some(epoch),
        subscribers: replays.len() as u64,
        replay_secs: figures.secs,
        publish_secs: published.elapsed.as_secs_f64(),
        publish_server_cpu_us_per_event: per(publish_figures.server_cpu_us, accepted),
        ..CatchUpStats::default()
    };
    let mut errors = published.errors.clone();
    let mut last_error = published.last_error.clone();
    if last < accepted {
        *errors.entry("acknowledged_not_stored".into()).or_default() += accepted - last;
    }
    for (i, r) in replays.iter().enumerate() {
        let delivered = r.tracker.delivered();
        report.expected += r.tracker.expected(last);
        report.delivered += delivered;
        report.lost += r.tracker.lost(last);
        report.duplicates += r.tracker.duplicates();
        report.out_of_order += r.tracker.out_of_order();
        report.pusher_errors += r.pusher_errors;
        stats.frame_bytes += r.frame_bytes;
        stats.gaps += r.tracker.gaps;
        stats.other_epoch += r.tracker.other_epoch;
        stats.without_offset += r.without_offset;
        match r.recovered {
            Some(true) => stats.recovered_true += 1,
            Some(false) => stats.recovered_false += 1,
            None => stats.recovered_unknown += 1,
        }
        if r.secs.is_some() && r.failure.is_none() {
            stats.completed += 1;
        }
        if let Some((kind, message)) = &r.failure {
            *errors.entry(format!("catch_up_{kind}")).or_default() += 1;
            let line = format!("subscriber {}: {message}", i + 1);
            last_error = Some(line.clone());
            stats.failures.push(line);
        }
        let secs = r.secs.unwrap_or(figures.secs).max(1e-6);
        stats.per_subscriber.push(SubscriberReplay {
            subscriber: i as u64 + 1,
            delivered,
            frame_bytes: r.frame_bytes,
            secs: r.secs,
            events_per_sec: delivered as f64 / secs,
            mb_per_sec: r.frame_bytes as f64 / 1e6 / secs,
            confirm_ms: r.confirm_ms,
            recovered: r.recovered,
            failure: r.failure.as_ref().map(|(_, m)| m.clone()),
        });
    }
    report.disconnects = stats.failures.len() as u64;
    stats.replay_events_per_sec = report.delivered as f64 / figures.secs;
    stats.replay_mb_per_sec = stats.frame_bytes as f64 / 1e6 / figures.secs;

    report.window_secs = figures.secs;
    report.connections = stats.subscribers;
    report.published = accepted;
    report.publish_refused = pub_live.refused.load(Ordering::Relaxed);
    report.publish_requests = published.requests;
    report.publishes_per_sec = accepted as f64 / published.elapsed.as_secs_f64().max(1e-3);
    report.publish_rtt_ms = LatencySummary::from_us(&published.rtt);
    report.deliveries_per_sec = stats.replay_events_per_sec;
    report.server_cpu_us_per_delivery = per(figures.server_cpu_us, report.delivered);
    report.server_cpu_percent = figures.server_cpu_percent();
    report.server_rss_kib = figures.server_rss_kib;
    report.harness_cpu_percent = figures.harness_cpu_percent();
    report.harness_cpu_us_per_delivery = per(Some(figures.harness_cpu_us), report.delivered);
    report.replay_events_per_sec = Some(stats.replay_events_per_sec);
    report.publish_events_per_sec = Some(report.publishes_per_sec);
    report.publish_latency_ms = Some(report.publish_rtt_ms.clone());
    report.server_cpu_us_per_event = report.server_cpu_us_per_delivery;
    report.errors = errors;
    report.last_error = last_error;
    report.catch_up = Some(stats);
    report.timeline = timeline;
    Ok(report)
}

/// Why a scenario on history channels cannot run, if it cannot: a history channel's
/// `subscription_succeeded` carries `{"epoch", "offset"}`, even when empty, and a probe
/// subscription to `channel` shows whether it does.
pub async fn without_history(
    target: &Target,
    channel: &str,
    history_prefix: &str,
    timeout: Duration,
) -> Result<Option<String>> {
    let position = probe(target, channel, timeout)
        .await
        .map_err(|e| e.during("probing the history channel"))?;
    Ok(position.offset.is_none().then(|| {
        format!(
            "{SKIPPED} (no \"offset\" in the subscription_succeeded of {channel}: is there a history rule for {history_prefix}*?)"
        )
    }))
}

/// The position a fresh subscription to `channel` is confirmed at.
pub async fn probe(target: &Target, channel: &str, timeout: Duration) -> Result<frame::Position> {
    let mut probe = ws::connect(target, 0, timeout).await?;
    let ok: Frame = ws::subscribe(&mut probe.ws, channel, None, None, timeout).await?;
    let _ = tokio::time::timeout(Duration::from_secs(2), probe.ws.close(None)).await;
    Ok(ok.position())
}

/// Subscribes `ws` to `channel` with `since` offset 0 of `epoch` and reads until offset `last`
/// arrived, the connection fails or `deadline` passes. The connection comes back unless it failed.
pub async fn replay(
    mut ws: Ws,
    channel: String,
    epoch: String,
    last: u64,
    deadline: Instant,
    live: Arc<RecoveringLive>,
) -> (Replay, Option<Ws>) {
    let mut r = Replay {
        tracker: OffsetTracker::new(Some(epoch.clone()), 0),
        recovered: None,
        confirm_ms: None,
        secs: None,
        done_at: None,
        frame_bytes: 0,
        pusher_errors: 0,
        without_offset: 0,
        failure: None,
    };
    let started = Instant::now();
    if let Err(e) = ws
        .send(Message::text(frame::subscribe_since(&channel, &epoch, 0)))
        .await
    {
        r.failure = Some(("send".into(), format!("sending the subscribe: {e}")));
        return (r, None);
    }
    let failure = loop {
        if r.tracker.last() >= last {
            let now = Instant::now();
            r.done_at = Some(now);
            r.secs = Some(now.duration_since(started).as_secs_f64());
            return (r, Some(ws));
        }
        let msg = match tokio::time::timeout_at(deadline.into(), ws.next()).await {
            Ok(msg) => msg,
            Err(_) => {
                break (
                    "timeout",
                    format!(
                        "no offset {last} within the replay timeout: reached {} ({} distinct)",
                        r.tracker.last(),
                        r.tracker.delivered()
                    ),
                )
            }
        };
        let text = match msg {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(close))) => {
                let code = close.map(|c| u16::from(c.code));
                let why = if code == Some(4100) {
                    " (slow reader: over max_outbound_bytes)"
                } else {
                    ""
                };
                break (
                    "closed",
                    format!(
                        "closed by the server with code {}{why} at offset {} of {last}",
                        code.map_or("none".into(), |c| c.to_string()),
                        r.tracker.last()
                    ),
                );
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                let e = Error::from(e);
                break (
                    e.kind(),
                    format!(
                        "connection lost at offset {} of {last}: {e}",
                        r.tracker.last()
                    ),
                );
            }
            None => {
                break (
                    "closed",
                    format!(
                        "connection ended without a close at offset {} of {last}",
                        r.tracker.last()
                    ),
                )
            }
        };
        r.frame_bytes += text.len() as u64;
        if frame::classify(text.as_bytes()) == Kind::Ping {
            if let Err(e) = ws.send(Message::text(frame::pong())).await {
                break ("send", format!("answering a ping: {e}"));
            }
            continue;
        }
        let Ok(f) = serde_json::from_str::<Light>(&text) else {
            break ("unparsable", format!("unparsable frame: {}", text.as_str()));
        };
        if f.event == "pusher:error" {
            r.pusher_errors += 1;
            let message = Frame::parse(&text)
                .map(|f| f.unexpected("an event").to_string())
                .unwrap_or_else(|_| text.as_str().to_owned());
            break (
                "pusher_error",
                format!(
                    "pusher:error at offset {} of {last}: {message}",
                    r.tracker.last()
                ),
            );
        }
        if f.channel.as_deref() != Some(channel.as_str()) {
            continue;
        }
        if f.event == "pusher_internal:subscription_succeeded" {
            let position = Frame::parse(&text).map(|f| f.position()).ok();
            r.recovered = position.as_ref().and_then(|p| p.recovered);
            r.confirm_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
            if r.recovered == Some(false) {
                break (
                    "refused",
                    format!("recovery refused (recovered: false) from offset 0 of epoch {epoch}"),
                );
            }
            continue;
        }
        if f.event == "pusher:subscription_error" {
            break (
                "subscription_error",
                format!("subscription_error: {}", text.as_str()),
            );
        }
        if f.event.starts_with("pusher") {
            continue;
        }
        let Some(offset) = f.offset else {
            r.without_offset += 1;
            continue;
        };
        let seen = r.tracker.observe(f.epoch.as_deref(), offset);
        if matches!(seen, Seen::Next | Seen::AfterGap | Seen::Late) {
            live.delivered.fetch_add(1, Ordering::Relaxed);
        }
    };
    r.failure = Some((failure.0.to_owned(), failure.1));
    live.connected.fetch_sub(1, Ordering::Relaxed);
    (r, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pusher::ws::{fake_history_event, fake_succeeded};
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;

    const CHANNEL: &str = "history-c";

    /// Two connections in turn: the first gets offsets 1..=5 (3 twice, a ping in between), the
    /// second offsets 1 and 2, then a 4100 close. Returns the subscribe frames.
    async fn fake_server(listener: TcpListener) -> Vec<serde_json::Value> {
        let mut subscribes = Vec::new();
        for cut_off in [false, true] {
            let mut ws = ws::accept_fake(&listener).await;
            let sub = ws.next().await.unwrap().unwrap();
            subscribes.push(serde_json::from_str(sub.to_text().unwrap()).unwrap());
            let ok = r#"{"epoch":"e","offset":5,"recovered":true}"#;
            ws.send(Message::text(fake_succeeded(CHANNEL, ok)))
                .await
                .unwrap();
            let offsets: &[u64] = if cut_off {
                &[1, 2]
            } else {
                &[1, 2, 3, 3, 4, 5]
            };
            for &o in offsets {
                ws.send(Message::text(fake_history_event(CHANNEL, o)))
                    .await
                    .unwrap();
                if o == 2 && !cut_off {
                    ws.send(Message::text(r#"{"event":"pusher:ping","data":{}}"#))
                        .await
                        .unwrap();
                }
            }
            if cut_off {
                let close = CloseFrame {
                    code: CloseCode::from(4100),
                    reason: "slow".into(),
                };
                let _ = ws.send(Message::Close(Some(close))).await;
            }
            while let Some(Ok(_)) = ws.next().await {}
        }
        subscribes
    }

    #[tokio::test]
    async fn times_a_replay_and_reports_a_cut_off_one() {
        let (listener, target) = ws::fake_endpoint().await;
        let server = tokio::spawn(fake_server(listener));
        let timeout = Duration::from_secs(5);
        let live = Arc::new(RecoveringLive::default());
        let deadline = Instant::now() + timeout;
        let mut runs = Vec::new();
        for _ in 0..2 {
            let conn = ws::connect(&target, 0, timeout).await.unwrap();
            let (r, ws) = replay(
                conn.ws,
                CHANNEL.into(),
                "e".into(),
                5,
                deadline,
                live.clone(),
            )
            .await;
            if let Some(mut ws) = ws {
                ws.close(None).await.unwrap();
            }
            runs.push(r);
        }

        let r = &runs[0];
        assert!(r.failure.is_none(), "{:?}", r.failure);
        assert_eq!(r.recovered, Some(true));
        assert!(r.secs.is_some() && r.confirm_ms.is_some());
        assert_eq!(r.tracker.delivered(), 5);
        assert_eq!(r.tracker.duplicates(), 1);
        assert_eq!(r.tracker.lost(5), 0);
        assert!(r.frame_bytes > 6 * fake_history_event(CHANNEL, 1).len() as u64);

        let r = &runs[1];
        let (kind, message) = r
            .failure
            .clone()
            .expect("a 4100 close fails the subscriber");
        assert_eq!(kind, "closed");
        assert!(
            message.contains("4100") && message.contains("slow reader"),
            "{message}"
        );
        assert!(r.secs.is_none());
        assert_eq!((r.tracker.delivered(), r.tracker.lost(5)), (2, 3));
        assert_eq!(live.delivered.load(Ordering::Relaxed), 7);

        let subscribes = server.await.unwrap();
        for s in subscribes {
            assert_eq!(s["data"]["since"]["epoch"], "e");
            assert_eq!(s["data"]["since"]["offset"], 0);
            assert_eq!(s["data"]["channel"], CHANNEL);
        }
    }
}
