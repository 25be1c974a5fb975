//! A closed-loop publisher for a cluster that may lose a node: `streams` workers post batches of
//! stamped events to one channel over the signed HTTP API, worker i starting on API node i mod N.
//! A request that fails for want of a node (no connection, reset, timeout, 502/503/504) is sent
//! again to the next node until it is acknowledged or the run ends; any other refusal is counted
//! and the worker goes on. Records the latency of acknowledged requests (per attempt) and, once a
//! marker is set (a leader's kill), when the first request sent after it was acknowledged; with
//! `until_ack_after_marker`, publishing goes on past its duration until that happens (bounded).
//! With `keys`, each event carries an idempotency key, the same in every attempt.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::deliveries::new_histogram;
use crate::error::Error;
use crate::payload::{self, Stamp};
use crate::publisher::EVENT_NAME;
use crate::pusher::rest::{Event, Rest};

/// Marker and first acknowledgment not set yet.
const UNSET: u64 = u64::MAX;

/// What to publish.
#[derive(Debug, Clone)]
pub struct RetryPlan {
    pub channel: String,
    pub streams: usize,
    /// Events per request: 1 uses `/events`, more `/batch_events`.
    pub batch: usize,
    pub max_events: u64,
    pub duration: Duration,
    pub payload_bytes: usize,
    /// Go on publishing after `duration`, for at most this long, until a request sent after the
    /// marker is acknowledged.
    pub until_ack_after_marker: Option<Duration>,
    /// With a run tag: every event carries the idempotency key `{tag}-{stream}-{seq}`, the
    /// same in each attempt, so a request acknowledged but whose answer was lost and that is
    /// sent again to another node is stored once.
    pub keys: Option<String>,
}

/// Counters shared by the workers, and the marker the failover sets.
pub struct Progress {
    start: Instant,
    pub accepted: AtomicU64,
    /// Microseconds after `start` of the marker.
    marker_us: AtomicU64,
    /// Microseconds after `start` when the first request sent after the marker was acknowledged.
    first_ack_after_marker_us: AtomicU64,
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            start: Instant::now(),
            accepted: AtomicU64::new(0),
            marker_us: AtomicU64::new(UNSET),
            first_ack_after_marker_us: AtomicU64::new(UNSET),
        }
    }

    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Marks `at` (a leader's kill): requests sent from then on are watched for the first ack.
    pub fn set_marker(&self, at: Instant) {
        let us = at.saturating_duration_since(self.start).as_micros() as u64;
        self.marker_us.store(us, Ordering::Relaxed);
    }

    fn acknowledged_after_marker(&self) -> bool {
        self.first_ack_after_marker_us.load(Ordering::Relaxed) != UNSET
    }

    /// From the marker to the acknowledgment of the first request sent after it.
    pub fn marker_to_first_ack(&self) -> Option<Duration> {
        let marker = self.marker_us.load(Ordering::Relaxed);
        let ack = self.first_ack_after_marker_us.load(Ordering::Relaxed);
        (marker != UNSET && ack != UNSET).then(|| Duration::from_micros(ack - marker))
    }
}

/// Everything the workers did.
pub struct RetryOutcome {
    /// Latency of acknowledged requests (the attempt that was acknowledged), microseconds.
    pub rtt: Histogram<u64>,
    pub accepted: u64,
    /// Events of requests refused for good (not a missing node).
    pub refused: u64,
    /// Acknowledged requests.
    pub requests: u64,
    /// Attempts sent again to another node.
    pub retries: u64,
    pub errors: BTreeMap<String, u64>,
    pub last_error: Option<String>,
    pub elapsed: Duration,
}

impl RetryOutcome {
    fn empty() -> RetryOutcome {
        RetryOutcome {
            rtt: new_histogram(),
            accepted: 0,
            refused: 0,
            requests: 0,
            retries: 0,
            errors: BTreeMap::new(),
            last_error: None,
            elapsed: Duration::ZERO,
        }
    }
}

/// A failure another node may not have: the node is gone, restarting or without a leader.
pub fn is_node_failure(e: &Error) -> bool {
    match e {
        Error::Http(_) | Error::Io(_) | Error::Timeout(_) => true,
        Error::HttpStatus { status, .. } => matches!(status, 502..=504),
        Error::During { source, .. } => is_node_failure(source),
        _ => false,
    }
}

/// Runs the plan to its end and returns the record.
pub async fn run(plan: RetryPlan, rest: Rest, progress: Arc<Progress>) -> RetryOutcome {
    let end = End {
        deadline: Instant::now() + plan.duration,
        extension: plan.until_ack_after_marker,
    };
    let tickets = Arc::new(AtomicU64::new(0));
    let plan = Arc::new(plan);
    let workers: Vec<_> = (0..plan.streams)
        .map(|stream| {
            tokio::spawn(worker(
                plan.clone(),
                rest.clone(),
                progress.clone(),
                tickets.clone(),
                stream,
                end,
            ))
        })
        .collect();
    let mut outcome = RetryOutcome::empty();
    for w in workers {
        match w.await {
            Ok(r) => {
                outcome.rtt.add(&r.rtt).expect("same bounds");
                outcome.accepted += r.accepted;
                outcome.refused += r.refused;
                outcome.requests += r.requests;
                outcome.retries += r.retries;
                for (k, v) in r.errors {
                    *outcome.errors.entry(k).or_default() += v;
                }
                if r.last_error.is_some() {
                    outcome.last_error = r.last_error;
                }
            }
            Err(e) => {
                *outcome.errors.entry("worker_panic".into()).or_default() += 1;
                outcome.last_error = Some(e.to_string());
            }
        }
    }
    outcome.elapsed = progress.start.elapsed();
    outcome
}

/// When publishing stops.
#[derive(Clone, Copy)]
struct End {
    deadline: Instant,
    /// How long after the deadline to go on while no request sent after the marker is acknowledged.
    extension: Option<Duration>,
}

impl End {
    fn reached(&self, progress: &Progress) -> bool {
        let now = Instant::now();
        if now < self.deadline {
            return false;
        }
        match self.extension {
            Some(extra) => progress.acknowledged_after_marker() || now >= self.deadline + extra,
            None => true,
        }
    }
}

async fn worker(
    plan: Arc<RetryPlan>,
    rest: Rest,
    progress: Arc<Progress>,
    tickets: Arc<AtomicU64>,
    stream: usize,
    end: End,
) -> RetryOutcome {
    let mut r = RetryOutcome::empty();
    let batch = plan.batch.max(1) as u64;
    let mut node = stream % rest.nodes();
    let mut seq = 0u64;
    'publishing: while !end.reached(&progress) {
        let first = tickets.fetch_add(batch, Ordering::Relaxed);
        if first >= plan.max_events {
            break;
        }
        let count = batch.min(plan.max_events - first);
        let sent_us = payload::now_us();
        let datas: Vec<String> = (0..count)
            .map(|i| {
                let stamp = Stamp {
                    stream: stream as u32,
                    seq: seq + i,
                    sent_us,
                };
                payload::encode(stamp, plan.payload_bytes)
            })
            .collect();
        seq += count;
        let keys: Vec<Option<String>> = (seq - count..seq)
            .map(|n| plan.keys.as_ref().map(|tag| format!("{tag}-{stream}-{n}")))
            .collect();
        let events: Vec<Event> = datas
            .iter()
            .zip(&keys)
            .map(|(d, key)| Event {
                name: EVENT_NAME,
                channel: &plan.channel,
                data: d,
                key: key.as_deref(),
            })
            .collect();
        let (route, body) = bodies(&events);
        loop {
            let sent_at = Instant::now();
            let sent_after_start_us = progress.now_us();
            match rest.post(node, route, body.clone()).await {
                Ok(_) => {
                    r.rtt
                        .saturating_record((sent_at.elapsed().as_micros() as u64).max(1));
                    r.accepted += count;
                    r.requests += 1;
                    progress.accepted.fetch_add(count, Ordering::Relaxed);
                    let marker = progress.marker_us.load(Ordering::Relaxed);
                    if marker != UNSET && sent_after_start_us >= marker {
                        progress
                            .first_ack_after_marker_us
                            .fetch_min(progress.now_us(), Ordering::Relaxed);
                    }
                    break;
                }
                Err(e) => {
                    *r.errors.entry(e.kind().to_owned()).or_default() += 1;
                    let retry = is_node_failure(&e);
                    r.last_error = Some(e.to_string());
                    if !retry {
                        r.refused += count;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        break;
                    }
                    if end.reached(&progress) {
                        r.refused += count;
                        break 'publishing;
                    }
                    r.retries += 1;
                    node = (node + 1) % rest.nodes();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }
    r
}

/// The route and body of a request of `events`.
fn bodies(events: &[Event]) -> (&'static str, String) {
    match events {
        [one] => ("events", Rest::events_body(one)),
        _ => ("batch_events", Rest::batch_body(events)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_nodes_are_retried_refusals_are_not() {
        let status = |status| Error::HttpStatus {
            url: "u".into(),
            status,
            body: String::new(),
        };
        assert!(is_node_failure(&status(503)));
        assert!(is_node_failure(&status(502)));
        assert!(!is_node_failure(&status(413)));
        assert!(!is_node_failure(&status(401)));
        assert!(is_node_failure(&Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused
        ))));
        assert!(is_node_failure(&status(503).during("publishing")));
    }

    #[test]
    fn keyed_bodies_carry_one_key_per_event() {
        let e = |data, key| Event {
            name: "n",
            channel: "c",
            data,
            key,
        };
        let (route, body) = bodies(&[e("a", Some("t-0-1")), e("b", Some("t-0-2"))]);
        assert_eq!(route, "batch_events");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["batch"][1]["idempotency_key"], "t-0-2");
        assert_eq!(body["batch"][1]["data"], "b");
        let (route, body) = bodies(&[e("a", None)]);
        assert_eq!((route, body), ("events", Rest::events_body(&e("a", None))));
    }

    #[test]
    fn first_ack_is_timed_from_the_marker() {
        let p = Progress::new();
        assert_eq!(p.marker_to_first_ack(), None);
        p.set_marker(p.start + Duration::from_millis(100));
        p.first_ack_after_marker_us
            .fetch_min(350_000, Ordering::Relaxed);
        assert_eq!(p.marker_to_first_ack(), Some(Duration::from_millis(250)));
    }

    #[test]
    fn goes_on_past_the_deadline_until_an_ack_after_the_marker() {
        let p = Progress::new();
        let past = End {
            deadline: Instant::now() - Duration::from_millis(1),
            extension: Some(Duration::from_secs(60)),
        };
        assert!(!past.reached(&p));
        p.first_ack_after_marker_us.store(5, Ordering::Relaxed);
        assert!(past.reached(&p));
        let plain = End {
            deadline: past.deadline,
            extension: None,
        };
        assert!(plain.reached(&Progress::new()));
    }
}
