//! `presence`: members join and leave presence channels at a given rate while observers subscribed
//! to the same channels check the events: every join must reach every observer as exactly one
//! `pusher_internal:member_added`, every leave as exactly one `member_removed`, and nothing else.
//!
//! Each join uses a fresh user id, so each crosses the user's connection count from zero and
//! must be announced. Members leave by unsubscribing (or, with `--leave-by-disconnect`, by closing).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{CommonArgs, Target};
use crate::deliveries::new_histogram;
use crate::error::{Error, Result};
use crate::pusher::frame::{self, Frame, Kind};
use crate::pusher::rest::Rest;
use crate::pusher::signing::presence_channel_auth;
use crate::pusher::ws::{self, Ws};
use crate::report::{LatencySummary, PresenceStats, Report};
use crate::sampler::{Counters, Sampler};
use crate::scenario::Window;

#[derive(Debug, Clone, Args)]
pub struct PresenceArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Presence channels.
    #[arg(long, default_value_t = 5)]
    pub channels: usize,
    /// Observers per channel (they stay subscribed and check the events).
    #[arg(long, default_value_t = 2)]
    pub observers: usize,
    /// Member connections cycling join / hold / leave (member i uses channel i mod C).
    #[arg(long, default_value_t = 50)]
    pub members: usize,
    /// Joins per second, in total.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// How long a member stays before leaving.
    #[arg(long, default_value_t = 500)]
    pub hold_ms: u64,
    /// Leave by closing the connection (and reconnecting for the next join) instead of unsubscribing.
    #[arg(long)]
    pub leave_by_disconnect: bool,
    /// After the last leave, wait at most this long for the observers to see it.
    #[arg(long, default_value_t = 5)]
    pub drain_secs: u64,
}

/// User ids of observers start with this; members' with `m-`.
const OBSERVER_PREFIX: &str = "obs-";

/// Joins and leaves that the server accepted, per channel, and when each join was sent.
#[derive(Default)]
struct Ledger {
    joined: HashMap<usize, Vec<String>>,
    left: HashMap<usize, Vec<String>>,
    join_sent: HashMap<String, Instant>,
    join_us: Option<Histogram<u64>>,
    failures: BTreeMap<String, u64>,
    last_error: Option<String>,
    short_counts: u64,
}

/// What one observer saw.
#[derive(Default)]
struct Seen {
    added: HashMap<String, u32>,
    removed: HashMap<String, u32>,
    added_us: Option<Histogram<u64>>,
    ended_early: Option<Error>,
}

#[derive(Default)]
struct PresenceLive {
    connections: AtomicU64,
    joins: AtomicU64,
    events: AtomicU64,
}

fn channel_data(user_id: &str, slot: usize) -> String {
    json!({ "user_id": user_id, "user_info": { "slot": slot } }).to_string()
}

async fn join(
    target: &Target,
    ws: &mut Ws,
    socket_id: &str,
    channel: &str,
    user_id: &str,
    slot: usize,
    timeout: Duration,
) -> Result<Frame> {
    let data = channel_data(user_id, slot);
    let auth = presence_channel_auth(
        &target.creds.key,
        &target.creds.secret,
        socket_id,
        channel,
        &data,
    );
    ws::subscribe(ws, channel, Some(&auth), Some(&data), timeout).await
}

pub async fn run(args: &PresenceArgs) -> Result<Report> {
    let common = &args.common;
    if args.channels == 0 || args.members == 0 || args.rate <= 0.0 {
        return Err(Error::Args(
            "--channels, --members and --rate must be positive".into(),
        ));
    }
    let total = (args.channels * args.observers + args.members) as u64;
    crate::limits::check_fits(total, 0)?;
    let started_unix_ms = crate::payload::now_us() / 1000;
    let target = Arc::new(Target::resolve(common, total).await?);
    let base = format!("presence-{}", common.channel_base());
    let channels: Arc<Vec<String>> =
        Arc::new((0..args.channels).map(|c| format!("{base}-{c}")).collect());
    let timeout = common.setup_timeout();
    let live = Arc::new(PresenceLive::default());
    let sampler = {
        let live = live.clone();
        Sampler::start(
            Duration::from_millis(500),
            common.server_pids.clone(),
            Arc::new(move || Counters {
                connections: live.connections.load(Ordering::Relaxed),
                failures: 0,
                published: live.joins.load(Ordering::Relaxed),
                delivered: live.events.load(Ordering::Relaxed),
                helper_cpu_us: 0,
            }),
            !common.no_progress,
        )
    };
    let ledger = Arc::new(Mutex::new(Ledger {
        join_us: Some(new_histogram()),
        ..Ledger::default()
    }));

    // Observers.
    sampler.set_phase("observers");
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut observers = Vec::new();
    for c in 0..args.channels {
        for j in 0..args.observers {
            let index = c * args.observers + j;
            let mut conn = ws::connect(&target, index, timeout).await?;
            let user = format!("{OBSERVER_PREFIX}{c}-{j}");
            join(
                &target,
                &mut conn.ws,
                &conn.socket_id,
                &channels[c],
                &user,
                index,
                timeout,
            )
            .await?;
            live.connections.fetch_add(1, Ordering::Relaxed);
            observers.push((
                c,
                tokio::spawn(observe(
                    conn.ws,
                    ledger.clone(),
                    live.clone(),
                    stop_rx.clone(),
                )),
            ));
        }
    }

    // Members.
    sampler.set_phase("churning");
    let window = Window::open(&common.server_pids);
    let start = Instant::now();
    let deadline = start + common.duration();
    let tickets = Arc::new(AtomicU64::new(0));
    let mut members = Vec::new();
    for slot in 0..args.members {
        let ctx = MemberCtx {
            target: target.clone(),
            channel: slot % args.channels,
            channels: channels.clone(),
            slot,
            index: args.channels * args.observers + slot,
            observers: args.observers,
            tickets: tickets.clone(),
            rate: args.rate,
            start,
            deadline,
            hold: Duration::from_millis(args.hold_ms),
            leave_by_disconnect: args.leave_by_disconnect,
            timeout,
            ledger: ledger.clone(),
            live: live.clone(),
        };
        members.push(tokio::spawn(member(ctx)));
    }
    for m in members {
        let _ = m.await;
    }
    let churn_secs = start.elapsed().as_secs_f64();

    // Drain: wait until the observers have seen every leave, or time runs out.
    sampler.set_phase("draining");
    let (expected_added, expected_removed) = {
        let l = ledger.lock().unwrap_or_else(|e| e.into_inner());
        (
            l.joined.values().map(Vec::len).sum::<usize>() as u64 * args.observers as u64,
            l.left.values().map(Vec::len).sum::<usize>() as u64 * args.observers as u64,
        )
    };
    let drain_deadline = Instant::now() + Duration::from_secs(args.drain_secs);
    while live.events.load(Ordering::Relaxed) < expected_added + expected_removed
        && Instant::now() < drain_deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let figures = window.close(&common.server_pids, Instant::now(), 0);

    // The server's member list must now hold the observers only.
    let rest = Rest::new(target.clone(), 4)?;
    let mut members_left_over = 0;
    for (c, name) in channels.iter().enumerate() {
        match rest.get(c, &format!("channels/{name}/users"), &[]).await {
            Ok(v) => {
                let users = v
                    .get("users")
                    .and_then(|u| u.as_array())
                    .map_or(0, Vec::len);
                members_left_over += (users as u64).saturating_sub(args.observers as u64);
            }
            Err(e) => {
                sampler.println(&format!("GET users of {name}: {e}"));
            }
        }
    }
    let _ = stop_tx.send(true);

    let ledger = std::mem::take(&mut *ledger.lock().unwrap_or_else(|e| e.into_inner()));
    let mut stats = PresenceStats {
        joins: ledger.joined.values().map(Vec::len).sum::<usize>() as u64,
        leaves: ledger.left.values().map(Vec::len).sum::<usize>() as u64,
        join_failures: ledger.failures.values().sum(),
        members_left_over,
        short_member_counts: ledger.short_counts,
        member_added_expected: expected_added,
        member_removed_expected: expected_removed,
        join_ms: ledger
            .join_us
            .as_ref()
            .map(LatencySummary::from_us)
            .unwrap_or_default(),
        ..PresenceStats::default()
    };
    let mut added_us = new_histogram();
    let mut disconnects = 0;
    let mut errors: BTreeMap<String, u64> = ledger
        .failures
        .iter()
        .map(|(k, v)| (format!("join_{k}"), *v))
        .collect();
    let mut last_error = ledger.last_error.clone();
    let empty = Vec::new();
    for (c, handle) in observers {
        let Ok(seen) = handle.await else {
            *errors.entry("observer_panic".into()).or_default() += 1;
            continue;
        };
        if let Some(e) = &seen.ended_early {
            disconnects += 1;
            *errors.entry(format!("observer_{}", e.kind())).or_default() += 1;
            last_error = Some(e.to_string());
        }
        if let Some(h) = &seen.added_us {
            added_us.add(h).ok();
        }
        let joined = ledger.joined.get(&c).unwrap_or(&empty);
        let left = ledger.left.get(&c).unwrap_or(&empty);
        for u in joined {
            let n = seen.added.get(u).copied().unwrap_or(0);
            stats.member_added_seen += u64::from(n.min(1));
            stats.unexpected_events += u64::from(n.saturating_sub(1));
        }
        for u in left {
            let n = seen.removed.get(u).copied().unwrap_or(0);
            stats.member_removed_seen += u64::from(n.min(1));
            stats.unexpected_events += u64::from(n.saturating_sub(1));
        }
        stats.unexpected_events += seen.added.keys().filter(|u| !joined.contains(u)).count() as u64
            + seen.removed.keys().filter(|u| !left.contains(u)).count() as u64;
    }
    stats.member_added_ms = LatencySummary::from_us(&added_us);
    let timeline = sampler.finish().await;
    let delivered = stats.member_added_seen + stats.member_removed_seen;
    let expected = expected_added + expected_removed;
    Ok(Report {
        scenario: "presence".into(),
        targets: common.targets.clone(),
        started_unix_ms,
        window_secs: figures.secs,
        connections: total,
        channels: args.channels as u64,
        payload_bytes: 0,
        published: stats.joins + stats.leaves,
        publish_refused: stats.join_failures,
        publish_requests: stats.joins + stats.join_failures,
        publishes_per_sec: stats.joins as f64 / churn_secs.max(1e-3),
        publish_rtt_ms: stats.join_ms.clone(),
        delivered,
        expected,
        lost: expected.saturating_sub(delivered),
        duplicates: stats.unexpected_events,
        out_of_order: 0,
        deliveries_per_sec: delivered as f64 / figures.secs,
        latency_ms: stats.member_added_ms.clone(),
        server_cpu_us_per_delivery: crate::scenario::per(figures.server_cpu_us, delivered),
        server_cpu_percent: figures.server_cpu_percent(),
        server_rss_kib: figures.server_rss_kib,
        harness_cpu_percent: figures.harness_cpu_percent(),
        harness_cpu_us_per_delivery: crate::scenario::per(Some(figures.harness_cpu_us), delivered),
        disconnects,
        pusher_errors: 0,
        errors,
        last_error,
        presence: Some(stats),
        latency_distribution: crate::report::latency_distribution(&added_us),
        timeline,
        ..Report::default()
    })
}

/// An observer: records member_added / member_removed by user id until stopped.
async fn observe(
    mut ws: Ws,
    ledger: Arc<Mutex<Ledger>>,
    live: Arc<PresenceLive>,
    mut stop: watch::Receiver<bool>,
) -> Seen {
    let mut seen = Seen {
        added_us: Some(new_histogram()),
        ..Seen::default()
    };
    loop {
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    if frame::classify(text.as_bytes()) == Kind::Ping {
                        if let Err(e) = ws.send(Message::text(frame::pong())).await {
                            seen.ended_early = Some(e.into());
                            break;
                        }
                        continue;
                    }
                    let Ok(f) = Frame::parse(&text) else { continue };
                    let Some(user) = f.member_user_id() else { continue };
                    // Observers joining one another are not part of the churn being checked.
                    if user.starts_with(OBSERVER_PREFIX) {
                        continue;
                    }
                    match f.event.as_str() {
                        "pusher_internal:member_added" => {
                            live.events.fetch_add(1, Ordering::Relaxed);
                            let sent = ledger.lock().ok().and_then(|l| l.join_sent.get(&user).copied());
                            if let (Some(sent), Some(h)) = (sent, seen.added_us.as_mut()) {
                                h.saturating_record((sent.elapsed().as_micros() as u64).max(1));
                            }
                            *seen.added.entry(user).or_default() += 1;
                        }
                        "pusher_internal:member_removed" => {
                            live.events.fetch_add(1, Ordering::Relaxed);
                            *seen.removed.entry(user).or_default() += 1;
                        }
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(close))) => {
                    seen.ended_early = Some(Error::Closed { code: close.map(|c| u16::from(c.code)) });
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    seen.ended_early = Some(e.into());
                    break;
                }
                None => {
                    seen.ended_early = Some(Error::Closed { code: None });
                    break;
                }
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    seen
}

struct MemberCtx {
    target: Arc<Target>,
    channel: usize,
    channels: Arc<Vec<String>>,
    slot: usize,
    index: usize,
    observers: usize,
    tickets: Arc<AtomicU64>,
    rate: f64,
    start: Instant,
    deadline: Instant,
    hold: Duration,
    leave_by_disconnect: bool,
    timeout: Duration,
    ledger: Arc<Mutex<Ledger>>,
    live: Arc<PresenceLive>,
}

impl MemberCtx {
    fn fail(&self, e: &Error) {
        if let Ok(mut l) = self.ledger.lock() {
            *l.failures.entry(e.kind().to_owned()).or_default() += 1;
            l.last_error = Some(e.to_string());
        }
    }
}

/// A member slot: join / hold / leave, once per ticket, until the deadline.
async fn member(ctx: MemberCtx) {
    let channel = &ctx.channels[ctx.channel];
    let mut conn: Option<ws::Connection> = None;
    loop {
        let ticket = ctx.tickets.fetch_add(1, Ordering::Relaxed);
        let at = ctx.start + Duration::from_secs_f64(ticket as f64 / ctx.rate);
        if at >= ctx.deadline {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        if conn.is_none() {
            match ws::connect(&ctx.target, ctx.index, ctx.timeout).await {
                Ok(c) => {
                    ctx.live.connections.fetch_add(1, Ordering::Relaxed);
                    conn = Some(c);
                }
                Err(e) => {
                    ctx.fail(&e);
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let user = format!("m-{}-{ticket}", ctx.slot);
        let sent = Instant::now();
        if let Ok(mut l) = ctx.ledger.lock() {
            l.join_sent.insert(user.clone(), sent);
        }
        match join(
            &ctx.target,
            &mut c.ws,
            &c.socket_id,
            channel,
            &user,
            ctx.slot,
            ctx.timeout,
        )
        .await
        {
            Ok(succeeded) => {
                ctx.live.joins.fetch_add(1, Ordering::Relaxed);
                let short = succeeded
                    .presence_count()
                    .is_none_or(|n| n < ctx.observers as u64 + 1);
                if let Ok(mut l) = ctx.ledger.lock() {
                    l.short_counts += u64::from(short);
                    l.joined.entry(ctx.channel).or_default().push(user.clone());
                    if let Some(h) = l.join_us.as_mut() {
                        h.saturating_record((sent.elapsed().as_micros() as u64).max(1));
                    }
                }
            }
            Err(e) => {
                ctx.fail(&e);
                conn = None;
                ctx.live.connections.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
        }
        tokio::time::sleep(ctx.hold).await;
        let left = if ctx.leave_by_disconnect {
            let mut c = conn.take().expect("connected above");
            ctx.live.connections.fetch_sub(1, Ordering::Relaxed);
            tokio::time::timeout(ctx.timeout, c.ws.close(None))
                .await
                .map_err(|_| Error::Timeout("closing"))
                .and_then(|r| r.map_err(Error::from))
        } else {
            c.ws.send(Message::text(frame::unsubscribe(channel)))
                .await
                .map_err(Error::from)
        };
        match left {
            Ok(()) => {
                if let Ok(mut l) = ctx.ledger.lock() {
                    l.left.entry(ctx.channel).or_default().push(user);
                }
            }
            Err(e) => {
                ctx.fail(&e);
                if conn.take().is_some() {
                    ctx.live.connections.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
    }
    if let Some(mut c) = conn {
        let _ = tokio::time::timeout(Duration::from_secs(2), c.ws.close(None)).await;
    }
}
