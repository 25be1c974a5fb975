//! The publisher: `streams` concurrent workers posting stamped events over the signed HTTP API,
//! either closed-loop (each worker sends as soon as its previous request returned, optionally held
//! back while too many deliveries are outstanding) or at a fixed total rate.
//!
//! Each worker is one stream: it numbers its events per channel and sends them one request after
//! the other, so receivers can tell loss, duplicates and reordering exactly.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::deliveries::{self, Deliveries};
use crate::payload::{self, Stamp};
use crate::pusher::rest::{Event, Rest};

pub const EVENT_NAME: &str = "lt-bench";

/// How late a timer may fire (tokio's resolution is 1 ms) before the lateness counts as latency.
const TIMER_SLACK_US: u64 = 2_000;

/// What to publish and how hard.
#[derive(Debug, Clone)]
pub struct Plan {
    pub channels: Arc<Vec<String>>,
    /// Receivers on each channel, to know how many deliveries an accepted event owes.
    pub receivers_per_channel: Arc<Vec<u64>>,
    /// Concurrent workers (requests in flight).
    pub streams: usize,
    /// Events per request: 1 uses `/events`, more uses `/batch_events`.
    pub batch: usize,
    /// Fixed total rate in events per second; `None`: closed loop.
    pub rate: Option<f64>,
    /// Stop after this many events.
    pub max_events: u64,
    pub duration: Duration,
    pub payload_bytes: usize,
    /// Closed loop: wait while more than this many deliveries are outstanding.
    pub max_pending_deliveries: Option<u64>,
    /// With a run tag: every event carries the idempotency key `{tag}-{stream}-{channel}-{seq}`.
    pub keys: Option<String>,
}

/// Figures the progress line and the back-pressure read while publishing.
#[derive(Debug, Default)]
pub struct Live {
    pub accepted: AtomicU64,
    pub refused: AtomicU64,
    /// Deliveries owed by accepted events.
    pub expected: AtomicU64,
    /// Deliveries owed by accepted events and by those in flight: what the back-pressure bounds.
    pub promised: AtomicU64,
}

/// One worker's record.
struct StreamRecord {
    /// Events sent on each channel (the next sequence number).
    sent: Vec<u64>,
    /// Sequence numbers whose request failed, per channel.
    failed: Vec<Vec<u64>>,
    rtt: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    last_error: Option<String>,
}

/// Everything the publisher did.
pub struct Published {
    /// `sent[stream][channel]`.
    pub sent: Vec<Vec<u64>>,
    /// `failed[stream][channel]`: refused sequence numbers.
    pub failed: Vec<Vec<Vec<u64>>>,
    /// Request round-trip times in microseconds.
    pub rtt: Histogram<u64>,
    pub errors: BTreeMap<String, u64>,
    pub last_error: Option<String>,
    pub requests: u64,
    pub elapsed: Duration,
}

impl Published {
    /// Per-stream sent counts and refused numbers on one channel, as [`crate::sequence::Tracker::lost`] wants them.
    pub fn for_channel(&self, channel: usize) -> (Vec<u64>, Vec<Vec<u64>>) {
        let sent = self.sent.iter().map(|s| s[channel]).collect();
        let failed = self.failed.iter().map(|f| f[channel].clone()).collect();
        (sent, failed)
    }
}

/// Runs the plan to its end (duration or event count) and returns the record.
pub async fn run(
    plan: Plan,
    rest: Rest,
    live: Arc<Live>,
    deliveries: Arc<Deliveries>,
) -> Published {
    let start = Instant::now();
    let start_us = payload::now_us();
    let deadline = start + plan.duration;
    let tickets = Arc::new(AtomicU64::new(0));
    let plan = Arc::new(plan);
    let mut workers = Vec::with_capacity(plan.streams);
    for stream in 0..plan.streams {
        let ctx = WorkerCtx {
            plan: plan.clone(),
            rest: rest.clone(),
            live: live.clone(),
            deliveries: deliveries.clone(),
            tickets: tickets.clone(),
            stream,
            start,
            start_us,
            deadline,
        };
        workers.push(tokio::spawn(worker(ctx)));
    }
    let mut published = Published {
        sent: Vec::new(),
        failed: Vec::new(),
        rtt: deliveries::new_histogram(),
        errors: BTreeMap::new(),
        last_error: None,
        requests: 0,
        elapsed: Duration::ZERO,
    };
    for w in workers {
        let record = match w.await {
            Ok(r) => r,
            Err(e) => {
                *published.errors.entry("worker_panic".into()).or_default() += 1;
                published.last_error = Some(e.to_string());
                StreamRecord::new(plan.channels.len())
            }
        };
        published.requests += record.rtt.len();
        published.rtt.add(&record.rtt).expect("same bounds");
        for (k, v) in record.errors {
            *published.errors.entry(k).or_default() += v;
        }
        if record.last_error.is_some() {
            published.last_error = record.last_error;
        }
        published.sent.push(record.sent);
        published.failed.push(record.failed);
    }
    published.elapsed = start.elapsed();
    published
}

impl StreamRecord {
    fn new(channels: usize) -> StreamRecord {
        StreamRecord {
            sent: vec![0; channels],
            failed: vec![Vec::new(); channels],
            rtt: deliveries::new_histogram(),
            errors: BTreeMap::new(),
            last_error: None,
        }
    }
}

struct WorkerCtx {
    plan: Arc<Plan>,
    rest: Rest,
    live: Arc<Live>,
    deliveries: Arc<Deliveries>,
    tickets: Arc<AtomicU64>,
    stream: usize,
    start: Instant,
    start_us: u64,
    deadline: Instant,
}

async fn worker(ctx: WorkerCtx) -> StreamRecord {
    let plan = &ctx.plan;
    let channels = plan.channels.len();
    let batch = plan.batch.max(1);
    let mut record = StreamRecord::new(channels);
    let node = ctx.stream % ctx.rest.nodes();
    'publishing: loop {
        if Instant::now() >= ctx.deadline {
            break;
        }
        if let (Some(max), None) = (plan.max_pending_deliveries, plan.rate) {
            loop {
                let pending = ctx
                    .live
                    .promised
                    .load(Ordering::Relaxed)
                    .saturating_sub(ctx.deliveries.delivered());
                if pending <= max {
                    break;
                }
                if Instant::now() >= ctx.deadline {
                    break 'publishing;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let first = ctx.tickets.fetch_add(batch as u64, Ordering::Relaxed);
        if first >= plan.max_events {
            break;
        }
        let count = (batch as u64).min(plan.max_events - first) as usize;
        let sent_us = match plan.rate {
            Some(rate) => {
                let offset = Duration::from_secs_f64(first as f64 / rate);
                let at = ctx.start + offset;
                if at >= ctx.deadline {
                    break;
                }
                tokio::time::sleep_until(at.into()).await;
                // A publisher running late (a slow server holding the window) must not hide
                // the wait: stamp the intended time, so no coordinated omission. Lateness within
                // the timer's resolution is the harness's, not the server's: stamp the real time.
                let intended = ctx.start_us + offset.as_micros() as u64;
                let now = payload::now_us();
                if now.saturating_sub(intended) > TIMER_SLACK_US {
                    intended
                } else {
                    now
                }
            }
            None => payload::now_us(),
        };
        let mut chans = Vec::with_capacity(count);
        for i in 0..count {
            let channel = ((first + i as u64) % channels as u64) as usize;
            chans.push((channel, record.sent[channel]));
            record.sent[channel] += 1;
        }
        let (route, body) = request(plan, ctx.stream, &chans, sent_us);
        let owed: u64 = chans
            .iter()
            .map(|&(c, _)| plan.receivers_per_channel[c])
            .sum();
        ctx.live.promised.fetch_add(owed, Ordering::Relaxed);
        let sent_at = Instant::now();
        let result = ctx.rest.post(node, route, body).await;
        record
            .rtt
            .saturating_record((sent_at.elapsed().as_micros() as u64).max(1));
        match result {
            Ok(_) => {
                ctx.live.expected.fetch_add(owed, Ordering::Relaxed);
                ctx.live.accepted.fetch_add(count as u64, Ordering::Relaxed);
            }
            Err(e) => {
                ctx.live.promised.fetch_sub(owed, Ordering::Relaxed);
                for &(c, seq) in &chans {
                    record.failed[c].push(seq);
                }
                ctx.live.refused.fetch_add(count as u64, Ordering::Relaxed);
                *record.errors.entry(e.kind().to_owned()).or_default() += 1;
                record.last_error = Some(e.to_string());
                // Do not spin on a server that refuses everything.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    record
}

/// The route and body of one request of `stream`: an event for each `(channel, seq)` of
/// `chans`, stamped as sent at `sent_us`, each with its idempotency key when the plan has keys.
fn request(
    plan: &Plan,
    stream: usize,
    chans: &[(usize, u64)],
    sent_us: u64,
) -> (&'static str, String) {
    let datas: Vec<String> = chans
        .iter()
        .map(|&(_, seq)| {
            let stamp = Stamp {
                stream: stream as u32,
                seq,
                sent_us,
            };
            payload::encode(stamp, plan.payload_bytes)
        })
        .collect();
    let keys: Vec<Option<String>> = chans
        .iter()
        .map(|&(c, seq)| {
            let tag = plan.keys.as_ref()?;
            Some(format!("{tag}-{stream}-{c}-{seq}"))
        })
        .collect();
    let events: Vec<Event> = chans
        .iter()
        .zip(&datas)
        .zip(&keys)
        .map(|((&(c, _), d), key)| Event {
            name: EVENT_NAME,
            channel: &plan.channels[c],
            data: d,
            key: key.as_deref(),
        })
        .collect();
    match events.as_slice() {
        [one] if plan.batch <= 1 => ("events", Rest::events_body(one)),
        _ => ("batch_events", Rest::batch_body(&events)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::Target;
    use crate::pusher::signing::Credentials;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// Serves keep-alive HTTP/1.1: checks each request's signature, refuses every fifth with 500.
    async fn fake_api(listener: TcpListener, creds: Credentials, served: Arc<AtomicU64>) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (creds, served) = (creds.clone(), served.clone());
            tokio::spawn(serve(stream, creds, served));
        }
    }

    async fn serve(mut stream: TcpStream, creds: Credentials, served: Arc<AtomicU64>) {
        let mut buf = Vec::new();
        loop {
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                let mut chunk = [0u8; 4096];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                continue;
            };
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let mut chunk = [0u8; 4096];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let body = buf[end + 4..end + 4 + len].to_vec();
            buf.drain(..end + 4 + len);
            let target = head.split_whitespace().nth(1).unwrap();
            let (path, query) = target.split_once('?').unwrap();
            let ts: u64 = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("auth_timestamp="))
                .unwrap()
                .parse()
                .unwrap();
            let expected = creds.signed_query("POST", path, &[], &body, ts);
            let n = served.fetch_add(1, Ordering::Relaxed);
            let status = if query != expected {
                "401 Unauthorized"
            } else if n % 5 == 4 {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let reply = format!("HTTP/1.1 {status}\r\ncontent-length: 2\r\n\r\n{{}}");
            if stream.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
        }
    }

    #[tokio::test]
    async fn closed_loop_accounts_for_every_event() {
        let creds = Credentials {
            app_id: "9".into(),
            key: "k".into(),
            secret: "s".into(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = Arc::new(AtomicU64::new(0));
        tokio::spawn(fake_api(listener, creds.clone(), served.clone()));
        let target = Arc::new(Target::loopback(port, creds).await);
        let rest = Rest::new(target, 4).unwrap();
        let plan = Plan {
            channels: Arc::new(vec!["a".into(), "b".into(), "c".into()]),
            receivers_per_channel: Arc::new(vec![1, 2, 3]),
            streams: 3,
            batch: 2,
            rate: None,
            max_events: 100,
            duration: Duration::from_secs(20),
            payload_bytes: 50,
            max_pending_deliveries: None,
            keys: None,
        };
        let live = Arc::new(Live::default());
        let published = run(plan, rest, live.clone(), Arc::new(Deliveries::new())).await;
        // 100 events in requests of 2; every fifth request refused.
        assert_eq!(published.requests, 50);
        assert_eq!(served.load(Ordering::Relaxed), 50);
        let accepted = live.accepted.load(Ordering::Relaxed);
        let refused = live.refused.load(Ordering::Relaxed);
        assert_eq!((accepted, refused), (80, 20));
        let sent: u64 = published.sent.iter().flatten().sum();
        let failed: usize = published.failed.iter().flatten().map(Vec::len).sum();
        assert_eq!(sent, 100);
        assert_eq!(failed, 20);
        assert_eq!(published.errors.get("http_status"), Some(&10));
        // Events go round-robin over the channels: a and b get 33 or 34, c gets 33.
        let per_channel: Vec<u64> = (0..3)
            .map(|c| published.sent.iter().map(|s| s[c]).sum())
            .collect();
        assert_eq!(per_channel, vec![34, 33, 33]);
        // What accepted events owe: their channel's receivers each.
        let receivers = [1u64, 2, 3];
        let owed: u64 = (0..3)
            .flat_map(|s| (0..3).map(move |c| (s, c)))
            .map(|(s, c)| {
                (published.sent[s][c] - published.failed[s][c].len() as u64) * receivers[c]
            })
            .sum();
        assert_eq!(live.expected.load(Ordering::Relaxed), owed);
        assert_eq!(live.promised.load(Ordering::Relaxed), owed);
    }
}
