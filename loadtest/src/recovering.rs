//! A history subscriber that goes through disconnect storms: it follows one history channel,
//! drops its connection when a storm picks it, stays away a while, then reconnects and
//! resubscribes with Chorus's `since` extension (the epoch and the highest offset it saw), and
//! accounts every offset with an [`OffsetTracker`]. It times each recovery: from starting to
//! reconnect to having every event that was published before the resubscription.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::common::Target;
use crate::deliveries::new_histogram;
use crate::error::{Error, Result};
use crate::offsets::{OffsetTracker, Seen};
use crate::payload;
use crate::pusher::frame::{self, Frame, Kind};
use crate::pusher::ws::{self, Ws};
use crate::report::HistoryStats;
use crate::sampler::{Counters, Sampler};

/// Live counters of all subscribers, for the progress line.
#[derive(Debug, Default)]
pub struct RecoveringLive {
    pub connected: AtomicU64,
    pub delivered: AtomicU64,
}

impl RecoveringLive {
    /// Starts the timeline sampler (and progress line) over these counters and the publisher's.
    pub fn sampler(
        self: &Arc<Self>,
        publisher: &Arc<crate::publisher::Live>,
        interval: Duration,
        common: &crate::common::CommonArgs,
    ) -> Sampler {
        let (live, publisher) = (self.clone(), publisher.clone());
        Sampler::start(
            interval,
            common.server_pids.clone(),
            Arc::new(move || Counters {
                connections: live.connected.load(Ordering::Relaxed),
                failures: 0,
                published: publisher.accepted.load(Ordering::Relaxed),
                delivered: live.delivered.load(Ordering::Relaxed),
                helper_cpu_us: 0,
            }),
            !common.no_progress,
        )
    }
}

/// When to stop: each channel's last offset, and the time after which to stop anyway.
#[derive(Debug, Clone)]
pub struct Finish {
    pub last_offsets: Arc<Vec<u64>>,
    pub deadline: Instant,
}

/// What one subscriber is and listens to.
pub struct Ctx {
    pub target: Arc<Target>,
    /// Connection number (picks the node and the source address, and the storms that hit it).
    pub index: usize,
    pub channel: String,
    pub channel_index: usize,
    /// Storm numbers 1, 2, 3, ...; the sender is dropped after the last storm.
    pub storms: watch::Receiver<u64>,
    /// Set once publishing is over.
    pub finish: watch::Receiver<Option<Finish>>,
    /// Fraction of the subscribers each storm disconnects.
    pub fraction: f64,
    pub offline: Duration,
    pub timeout: Duration,
    pub live: Arc<RecoveringLive>,
}

/// What one subscriber did.
pub struct Record {
    pub tracker: OffsetTracker,
    /// This subscriber's share of the scenario's counters (reconnects, recoveries, replayed...).
    pub counts: HistoryStats,
    pub pusher_errors: u64,
    /// Recovery times, microseconds.
    pub recover_us: Histogram<u64>,
    /// Publish-to-receive latency of live (not replayed) events, microseconds.
    pub latency_us: Histogram<u64>,
    pub errors: BTreeMap<String, u64>,
    pub last_error: Option<String>,
    /// Set when the subscriber could not get back and gave up.
    pub gave_up: bool,
}

impl Record {
    fn fail(&mut self, what: &str, e: &Error) {
        *self
            .errors
            .entry(format!("{what}_{}", e.kind()))
            .or_default() += 1;
        self.last_error = Some(e.to_string());
    }
}

/// Whether storm `storm` disconnects subscriber `index` (a hash, so each storm picks another set).
pub fn hit_by(index: usize, storm: u64, fraction: f64) -> bool {
    let mut z = (index as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(storm.wrapping_mul(0xD1B5_4A32_D192_ED03));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    ((z >> 11) as f64 / (1u64 << 53) as f64) < fraction
}

/// A recovery under way: started at, and the offset that completes it.
type Recovering = Option<(Instant, u64)>;

enum Step {
    Frame(String),
    Storm(u64),
    StormsOver,
    Lost(Error),
    Check,
}

/// Runs a subscriber whose first subscription (on `ws`) was confirmed at `tracker`'s position,
/// until it has every offset of its channel (after [`Finish`]) or the deadline passes.
pub async fn run(mut ctx: Ctx, ws: Ws, tracker: OffsetTracker) -> Record {
    let mut rec = Record {
        tracker,
        counts: HistoryStats::default(),
        pusher_errors: 0,
        recover_us: new_histogram(),
        latency_us: new_histogram(),
        errors: BTreeMap::new(),
        last_error: None,
        gave_up: false,
    };
    let mut conn = Some(ws);
    let mut recovering: Recovering = None;
    let mut storms_open = true;
    loop {
        let finish = ctx.finish.borrow().clone();
        if let Some(f) = &finish {
            let last = f.last_offsets[ctx.channel_index];
            if (rec.tracker.last() >= last && recovering.is_none() && conn.is_some())
                || Instant::now() >= f.deadline
            {
                break;
            }
        }
        let Some(ws) = conn.as_mut() else {
            match reconnect(&ctx, &mut rec).await {
                Some((ws, r)) => {
                    conn = Some(ws);
                    recovering = r;
                    ctx.live.connected.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                None => {
                    rec.gave_up = true;
                    break;
                }
            }
        };
        let check_at = finish.as_ref().map_or_else(
            || Instant::now() + Duration::from_secs(3600),
            |f| f.deadline,
        );
        let step = tokio::select! {
            changed = ctx.storms.changed(), if storms_open => match changed {
                Ok(()) => Step::Storm(*ctx.storms.borrow_and_update()),
                Err(_) => Step::StormsOver,
            },
            _ = ctx.finish.changed() => Step::Check,
            _ = tokio::time::sleep_until(check_at.into()) => Step::Check,
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => Step::Frame(text.as_str().to_owned()),
                Some(Ok(Message::Close(close))) => Step::Lost(Error::Closed { code: close.map(|c| u16::from(c.code)) }),
                Some(Ok(_)) => Step::Check,
                Some(Err(e)) => Step::Lost(e.into()),
                None => Step::Lost(Error::Closed { code: None }),
            },
        };
        match step {
            Step::Frame(text) => {
                if frame::classify(text.as_bytes()) == Kind::Ping {
                    if let Err(e) = ws.send(Message::text(frame::pong())).await {
                        lost_connection(&ctx, &mut rec, &mut conn, &e.into());
                    }
                    continue;
                }
                on_frame(&ctx, &mut rec, &mut recovering, &text);
            }
            Step::Storm(storm) => {
                if hit_by(ctx.index, storm, ctx.fraction) {
                    // Dropped without a close handshake, as a lost network would.
                    conn = None;
                    recovering = None;
                    ctx.live.connected.fetch_sub(1, Ordering::Relaxed);
                    tokio::time::sleep(ctx.offline).await;
                }
            }
            Step::StormsOver => storms_open = false,
            Step::Lost(e) => {
                rec.counts.unexpected_disconnects += 1;
                recovering = None;
                lost_connection(&ctx, &mut rec, &mut conn, &e);
            }
            Step::Check => {}
        }
    }
    if let Some(mut ws) = conn {
        ctx.live.connected.fetch_sub(1, Ordering::Relaxed);
        let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    }
    rec
}

fn lost_connection(ctx: &Ctx, rec: &mut Record, conn: &mut Option<Ws>, e: &Error) {
    rec.fail("connection", e);
    if conn.take().is_some() {
        ctx.live.connected.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Handles one frame (not a ping) of the subscriber's connection.
fn on_frame(ctx: &Ctx, rec: &mut Record, recovering: &mut Recovering, text: &str) {
    let Ok(f) = Frame::parse(text) else {
        *rec.errors.entry("unparsable_frame".into()).or_default() += 1;
        return;
    };
    if f.event == "pusher:error" {
        rec.pusher_errors += 1;
        rec.last_error = Some(f.unexpected("an event").to_string());
        return;
    }
    if f.event.starts_with("pusher") || f.channel.as_deref() != Some(ctx.channel.as_str()) {
        return;
    }
    let Some(offset) = f.offset else {
        rec.counts.without_offset += 1;
        return;
    };
    let seen = rec.tracker.observe(f.epoch.as_deref(), offset);
    if matches!(seen, Seen::Next | Seen::AfterGap | Seen::Late) {
        ctx.live.delivered.fetch_add(1, Ordering::Relaxed);
    }
    match *recovering {
        Some((started, until)) => {
            rec.counts.replayed += 1;
            if rec.tracker.last() >= until {
                rec.recover_us
                    .saturating_record((started.elapsed().as_micros() as u64).max(1));
                *recovering = None;
            }
        }
        None => {
            if let Some(stamp) = payload::find(text.as_bytes()) {
                let us = payload::now_us().saturating_sub(stamp.sent_us).max(1);
                rec.latency_us.saturating_record(us);
            }
        }
    }
}

/// Reconnects and resubscribes with `since`, retrying until the setup timeout; the connection and
/// the recovery still under way (events to come before it is complete).
async fn reconnect(ctx: &Ctx, rec: &mut Record) -> Option<(Ws, Recovering)> {
    let started = Instant::now();
    let give_up = started + ctx.timeout;
    loop {
        let left = give_up.saturating_duration_since(Instant::now());
        if left.is_zero() {
            rec.counts.reconnect_failures += 1;
            return None;
        }
        match resubscribe(ctx, rec, left).await {
            Ok((ws, confirmed)) => {
                rec.counts.reconnects += 1;
                let pos = confirmed.position();
                match pos.recovered {
                    Some(true) => rec.counts.recovered_true += 1,
                    Some(false) => rec.counts.recovered_false += 1,
                    None => rec.counts.recovered_unknown += 1,
                }
                let recovered = pos.recovered == Some(true);
                rec.tracker
                    .resubscribed(recovered, pos.epoch.as_deref(), pos.offset);
                let until = pos.offset.unwrap_or(0);
                if !recovered {
                    return Some((ws, None));
                }
                if rec.tracker.last() >= until {
                    rec.recover_us
                        .saturating_record((started.elapsed().as_micros() as u64).max(1));
                    return Some((ws, None));
                }
                return Some((ws, Some((started, until))));
            }
            Err(e) => {
                rec.fail("reconnect", &e);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One attempt: connect, send the subscription (with `since` once the epoch is known), and wait
/// for its confirmation. Events of the channel arriving before it are accounted as usual.
async fn resubscribe(ctx: &Ctx, rec: &mut Record, timeout: Duration) -> Result<(Ws, Frame)> {
    let conn = ws::connect(&ctx.target, ctx.index, timeout).await?;
    let mut ws = conn.ws;
    let subscribe = match rec.tracker.since() {
        Some((epoch, offset)) => frame::subscribe_since(&ctx.channel, epoch, offset),
        None => frame::subscribe(&ctx.channel, None, None),
    };
    ws.send(Message::text(subscribe)).await?;
    let confirmed = tokio::time::timeout(timeout, async {
        loop {
            let f = ws::next_frame(&mut ws).await?;
            let ours = f.channel.as_deref() == Some(ctx.channel.as_str());
            match f.event.as_str() {
                "pusher_internal:subscription_succeeded" if ours => return Ok(f),
                "pusher:subscription_error" if ours => return Err(f.unexpected("subscribed")),
                "pusher:error" => return Err(f.unexpected("subscribed")),
                _ if ours && f.offset.is_some() => {
                    rec.tracker
                        .observe(f.epoch.as_deref(), f.offset.unwrap_or_default());
                }
                _ => {}
            }
        }
    })
    .await
    .map_err(|_| Error::Timeout("resubscribing"))??;
    Ok((ws, confirmed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    const CHANNEL: &str = "history-c";

    /// A fake history server serving three connections in turn. Each gets `pusher:connection_established`;
    /// it checks the `since` of each subscription, answers with the scripted confirmation and
    /// events, then waits for the client to go away.
    async fn fake_server(listener: TcpListener) -> Vec<serde_json::Value> {
        let scripts: [(&str, &[u64]); 3] = [
            (r#"{"epoch":"e","offset":10}"#, &[11, 12]),
            // Recovered: replays 13 and 14, then 15 live.
            (
                r#"{"epoch":"e","offset":14,"recovered":true}"#,
                &[13, 14, 15],
            ),
            // Refused: 16..=18 are skipped; then 19 twice and a gap before 21.
            (
                r#"{"epoch":"e","offset":18,"recovered":false}"#,
                &[19, 19, 21],
            ),
        ];
        let mut subscribes = Vec::new();
        for (confirmation, offsets) in scripts {
            let mut ws = ws::accept_fake(&listener).await;
            let sub = ws.next().await.unwrap().unwrap();
            subscribes.push(serde_json::from_str(sub.to_text().unwrap()).unwrap());
            ws.send(Message::text(ws::fake_succeeded(CHANNEL, confirmation)))
                .await
                .unwrap();
            for &o in offsets {
                ws.send(Message::text(ws::fake_history_event(CHANNEL, o)))
                    .await
                    .unwrap();
            }
            while let Some(Ok(_)) = ws.next().await {}
        }
        subscribes
    }

    async fn wait_for(live: &RecoveringLive, delivered: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while live.delivered.load(Ordering::Relaxed) < delivered {
            assert!(
                Instant::now() < deadline,
                "stuck before {delivered} deliveries"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    #[tokio::test]
    async fn resubscribes_with_since_and_accounts_a_refused_recovery() {
        let (listener, target) = ws::fake_endpoint().await;
        let server = tokio::spawn(fake_server(listener));
        let target = Arc::new(target);
        let timeout = Duration::from_secs(5);
        let mut conn = ws::connect(&target, 0, timeout).await.unwrap();
        let ok = ws::subscribe(&mut conn.ws, CHANNEL, None, None, timeout)
            .await
            .unwrap();
        let pos = ok.position();
        let tracker = OffsetTracker::new(pos.epoch, pos.offset.unwrap());
        let (storms_tx, storms) = watch::channel(0);
        let (finish_tx, finish) = watch::channel(None);
        let live = Arc::new(RecoveringLive::default());
        // The caller counts the connection it hands over.
        live.connected.store(1, Ordering::Relaxed);
        let ctx = Ctx {
            target,
            index: 0,
            channel: CHANNEL.into(),
            channel_index: 0,
            storms,
            finish,
            fraction: 1.0,
            offline: Duration::from_millis(10),
            timeout,
            live: live.clone(),
        };
        let subscriber = tokio::spawn(run(ctx, conn.ws, tracker));
        wait_for(&live, 2).await;
        storms_tx.send(1).unwrap();
        wait_for(&live, 5).await;
        storms_tx.send(2).unwrap();
        wait_for(&live, 7).await;
        drop(storms_tx);
        finish_tx
            .send(Some(Finish {
                last_offsets: Arc::new(vec![21]),
                deadline: Instant::now() + timeout,
            }))
            .unwrap();
        let rec = subscriber.await.unwrap();
        let subscribes = server.await.unwrap();
        assert!(subscribes[0]["data"].get("since").is_none());
        assert_eq!(subscribes[1]["data"]["since"]["epoch"], "e");
        assert_eq!(subscribes[1]["data"]["since"]["offset"], 12);
        assert_eq!(subscribes[2]["data"]["since"]["offset"], 15);
        let t = &rec.tracker;
        assert_eq!(t.expected(21), 11);
        // Seen: 11 12 13 14 15 19 21; skipped by the refusal 16 17 18, then 20.
        assert_eq!(t.delivered(), 7);
        assert_eq!(t.lost(21), 4);
        assert_eq!(t.duplicates(), 1);
        assert_eq!(t.gaps, 2);
        let c = &rec.counts;
        assert_eq!(
            (c.reconnects, c.recovered_true, c.recovered_false),
            (2, 1, 1)
        );
        assert_eq!(c.replayed, 2);
        assert_eq!(rec.recover_us.len(), 1);
        assert!(!rec.gave_up);
        assert_eq!(live.connected.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn storms_hit_about_the_fraction_and_differ() {
        let hits = |storm| (0..10_000).filter(|&i| hit_by(i, storm, 0.3)).count();
        let (a, b) = (hits(1), hits(2));
        assert!((2_700..3_300).contains(&a), "{a}");
        assert!((2_700..3_300).contains(&b), "{b}");
        let same = (0..10_000)
            .filter(|&i| hit_by(i, 1, 0.3) == hit_by(i, 2, 0.3))
            .count();
        assert!(same < 9_000, "storms pick other subscribers: {same}");
        assert!((0..100).all(|i| !hit_by(i, 1, 0.0)));
        assert!((0..100).all(|i| hit_by(i, 1, 1.0)));
    }
}
