//! `fanout`: S subscribers over C public channels, events published over the HTTP API (closed loop
//! with a window of requests in flight, or at a fixed rate); counts delivered, lost, duplicated and
//! out-of-order events exactly, with publish-to-receive latency and server CPU per delivery. The
//! subscribers are WebSocket connections, or SSE streams with `--transport sse`.
//!
//! Only the steady window is measured: it opens once every subscriber is subscribed and closes when
//! the last expected delivery arrived (or the drain time ran out).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use tokio::sync::watch;

use crate::common::{CommonArgs, Target};
use crate::deliveries::Deliveries;
use crate::error::{Error, Result};
use crate::proc_stats;
use crate::publisher::{self, Live, Plan};
use crate::pusher::rest::Rest;
use crate::ramp::{self, RampLive, RampPlan};
use crate::report::{latency_distribution, LatencySummary, Report};
use crate::sampler::{Counters, Sampler};
use crate::scenario::{per, Window};
use crate::sse_subscriber;
use crate::subscriber::{self, Receivers};

#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub fanout: FanoutParams,
}

#[derive(Debug, Clone, Args)]
pub struct FanoutParams {
    /// Subscribed connections (subscriber i joins channel i mod C).
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Public channels.
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
    /// Concurrent publish requests (each worker is one ordered stream).
    #[arg(long, default_value_t = 4)]
    pub window: usize,
    /// Events per request (1: POST /events; more: POST /batch_events, at most the server's batch limit).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Fixed publish rate in events per second (default: closed loop).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Stop publishing after this many events.
    #[arg(long, default_value_t = 100_000_000)]
    pub max_events: u64,
    /// Closed loop: hold publishing while more than this many events per subscriber are published
    /// (or in flight) but undelivered (0: never hold; the server's queues then absorb the excess).
    #[arg(long, default_value_t = 100)]
    pub max_pending_per_subscriber: u64,
    /// After publishing, wait at most this long for outstanding deliveries.
    #[arg(long, default_value_t = 5)]
    pub drain_secs: u64,
    /// Use private channels (subscriptions signed with the app secret) instead of public ones.
    #[arg(long)]
    pub private: bool,
    /// How subscribers receive: Pusher WebSocket connections, or SSE streams (public channels).
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    pub transport: Transport,
    /// Give every event an idempotency key (`idempotency_key`), to measure what keys cost
    /// (Chorus only: other servers may refuse the field).
    #[arg(long)]
    pub idempotency_keys: bool,
}

/// How the subscribers of a fan-out receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    Ws,
    Sse,
}

pub async fn run(args: &FanoutArgs) -> Result<Report> {
    let scenario = match args.fanout.transport {
        Transport::Ws => "fanout",
        Transport::Sse => "fanout-sse",
    };
    run_with(&args.common, &args.fanout, scenario).await
}

pub async fn run_with(common: &CommonArgs, p: &FanoutParams, scenario: &str) -> Result<Report> {
    if p.subscribers == 0 || p.channels == 0 || p.window == 0 || p.batch == 0 {
        return Err(Error::Args(
            "--subscribers, --channels, --window and --batch must be at least 1".into(),
        ));
    }
    if p.private && p.transport == Transport::Sse {
        return Err(Error::Args(
            "--transport sse takes public channels only (no --private)".into(),
        ));
    }
    crate::limits::check_fits(p.subscribers as u64, p.window as u64)?;
    let started_unix_ms = crate::payload::now_us() / 1000;
    let target = Arc::new(Target::resolve(common, p.subscribers as u64).await?);
    let base = if p.private {
        format!("private-{}", common.channel_base())
    } else {
        common.channel_base()
    };
    let channels: Arc<Vec<String>> =
        Arc::new((0..p.channels).map(|c| format!("{base}-{c}")).collect());
    let deliveries = Arc::new(Deliveries::new());
    let ramp_live = Arc::new(RampLive::default());
    let pub_live = Arc::new(Live::default());
    let sampler = {
        let (ramp_live, pub_live, deliveries) =
            (ramp_live.clone(), pub_live.clone(), deliveries.clone());
        Sampler::start(
            Duration::from_millis(500),
            common.server_pids.clone(),
            Arc::new(move || Counters {
                connections: ramp_live.established.load(Ordering::Relaxed),
                failures: ramp_live.failed.load(Ordering::Relaxed),
                published: pub_live.accepted.load(Ordering::Relaxed),
                delivered: deliveries.delivered(),
                helper_cpu_us: 0,
            }),
            !common.no_progress,
        )
    };

    // Setup: connect and subscribe everyone; receivers start at once.
    sampler.set_phase("connecting");
    let rss_before = proc_stats::sample_all(&common.server_pids)
        .ok()
        .flatten()
        .map(|s| s.rss_kib);
    let (stop_tx, stop_rx) = watch::channel(false);
    let receivers: Arc<Mutex<Receivers>> = Arc::new(Mutex::new(Vec::with_capacity(p.subscribers)));
    let plan = RampPlan {
        count: p.subscribers,
        first_index: 0,
        rate: None,
        concurrency: common.connect_concurrency,
        timeout: common.setup_timeout(),
    };
    let channel_of: Arc<dyn Fn(usize) -> String + Send + Sync> = {
        let channels = channels.clone();
        Arc::new(move |i| channels[i % channels.len()].clone())
    };
    let on_ready = {
        let receivers = receivers.clone();
        move |i: usize, handle: tokio::task::JoinHandle<subscriber::Received>| {
            if let Ok(mut r) = receivers.lock() {
                r.push((i, handle));
            }
        }
    };
    let ramp_outcome = match p.transport {
        Transport::Ws => {
            let (deliveries, stop_rx) = (deliveries.clone(), stop_rx.clone());
            let on_ready = on_ready.clone();
            ramp::run(
                target.clone(),
                plan,
                channel_of,
                Arc::new(move |i, sub| {
                    let receive =
                        subscriber::receive(sub.ws, i, deliveries.clone(), stop_rx.clone());
                    on_ready(i, tokio::spawn(receive));
                }),
                ramp_live.clone(),
            )
            .await
        }
        Transport::Sse => {
            let (deliveries, stop_rx) = (deliveries.clone(), stop_rx.clone());
            ramp::run_with(
                target.clone(),
                plan,
                channel_of,
                sse_subscriber::connect,
                Arc::new(move |i, stream| {
                    let receive =
                        sse_subscriber::receive(stream, i, deliveries.clone(), stop_rx.clone());
                    on_ready(i, tokio::spawn(receive));
                }),
                ramp_live.clone(),
            )
            .await
        }
    };
    let subscribed = ramp_outcome.established;
    if subscribed == 0 {
        let _ = stop_tx.send(true);
        sampler.finish().await;
        return Err(Error::Protocol(format!(
            "no subscriber could connect and subscribe: {}",
            ramp_outcome.last_error.unwrap_or_default()
        )));
    }
    if !ramp_outcome.failures.is_empty() {
        sampler.println(&format!(
            "{} of {} subscribers failed to subscribe: {:?} (last: {})",
            p.subscribers as u64 - subscribed,
            p.subscribers,
            ramp_outcome.failures,
            ramp_outcome.last_error.clone().unwrap_or_default()
        ));
    }
    let mut receivers: Receivers =
        std::mem::take(&mut *receivers.lock().unwrap_or_else(|e| e.into_inner()));
    receivers.sort_by_key(|(i, _)| *i);
    let mut per_channel = vec![0u64; p.channels];
    for (i, _) in &receivers {
        per_channel[i % p.channels] += 1;
    }
    // Let the server settle after the connection burst, then measure its memory per connection.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The measured window.
    sampler.set_phase("publishing");
    let window = Window::open(&common.server_pids);
    let rss_after_setup = window.server.map(|s| s.rss_kib);
    let rest = Rest::new(target.clone(), p.window)?;
    let plan = Plan {
        channels: channels.clone(),
        receivers_per_channel: Arc::new(per_channel),
        streams: p.window,
        batch: p.batch,
        rate: p.rate,
        max_events: p.max_events,
        duration: common.duration(),
        payload_bytes: common.payload_bytes,
        max_pending_deliveries: (p.max_pending_per_subscriber > 0)
            .then(|| p.max_pending_per_subscriber * subscribed),
        keys: p
            .idempotency_keys
            .then(|| format!("{:x}", crate::payload::now_us())),
    };
    let published = publisher::run(plan, rest, pub_live.clone(), deliveries.clone()).await;

    sampler.set_phase("draining");
    let drain_deadline = Instant::now() + Duration::from_secs(p.drain_secs);
    let expected = pub_live.expected.load(Ordering::Relaxed);
    while deliveries.delivered() < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let end = if deliveries.delivered() >= expected {
        deliveries
            .last_delivery()
            .max(window.start + published.elapsed)
    } else {
        Instant::now()
    };
    let figures = window.close(&common.server_pids, end, 0);

    // Stop receivers and tally exactly.
    sampler.set_phase("closing");
    let _ = stop_tx.send(true);
    let mut delivered = 0;
    let mut lost = 0;
    let mut duplicates = 0;
    let mut out_of_order = 0;
    let mut disconnects = 0;
    let mut pusher_errors = 0;
    let mut errors: BTreeMap<String, u64> = published.errors.clone();
    let mut last_error = published.last_error.clone();
    for (kind, n) in &ramp_outcome.failures {
        *errors.entry(format!("connect_{kind}")).or_default() += n;
    }
    if last_error.is_none() {
        last_error = ramp_outcome.last_error.clone();
    }
    let per_channel_sent: Vec<_> = (0..p.channels).map(|c| published.for_channel(c)).collect();
    for (i, handle) in receivers {
        let received = match handle.await {
            Ok(r) => r,
            Err(e) => {
                *errors.entry("receiver_panic".into()).or_default() += 1;
                last_error = Some(e.to_string());
                continue;
            }
        };
        let (sent, failed) = &per_channel_sent[i % p.channels];
        delivered += received.tracker.unique;
        duplicates += received.tracker.duplicates;
        out_of_order += received.tracker.out_of_order;
        lost += received.tracker.lost(sent, failed);
        pusher_errors += received.pusher_errors;
        if let Some(e) = received.ended_early {
            disconnects += 1;
            *errors.entry(format!("receiver_{}", e.kind())).or_default() += 1;
            last_error = Some(e.to_string());
        }
    }
    let timeline = sampler.finish().await;

    let latency = deliveries.latency();
    let accepted = pub_live.accepted.load(Ordering::Relaxed);
    Ok(Report {
        scenario: scenario.to_owned(),
        targets: common.targets.clone(),
        started_unix_ms,
        window_secs: figures.secs,
        connections: subscribed,
        channels: p.channels as u64,
        payload_bytes: common.payload_bytes as u64,
        published: accepted,
        publish_refused: pub_live.refused.load(Ordering::Relaxed),
        publish_requests: published.requests,
        publishes_per_sec: accepted as f64 / published.elapsed.as_secs_f64().max(1e-3),
        publish_rtt_ms: LatencySummary::from_us(&published.rtt),
        delivered,
        expected,
        lost,
        duplicates,
        out_of_order,
        deliveries_per_sec: delivered as f64 / figures.secs,
        latency_ms: LatencySummary::from_us(&latency),
        server_cpu_us_per_delivery: per(figures.server_cpu_us, delivered),
        server_cpu_percent: figures.server_cpu_percent(),
        server_rss_kib: figures.server_rss_kib,
        server_rss_kib_per_conn: crate::scenario::rss_per_conn(
            rss_before,
            rss_after_setup,
            subscribed,
        ),
        harness_cpu_percent: figures.harness_cpu_percent(),
        harness_cpu_us_per_delivery: per(Some(figures.harness_cpu_us), delivered),
        disconnects,
        pusher_errors,
        errors,
        last_error,
        latency_distribution: latency_distribution(&latency),
        timeline,
        ..Report::default()
    })
}
