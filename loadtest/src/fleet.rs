//! A fleet of idle subscribed connections owned by one process: ramped up at a given rate, kept
//! alive (pings answered), then optionally checked with one event per channel before closing.
//! The `connections` scenario runs one fleet in-process or one per worker process.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::common::Target;
use crate::deliveries::Deliveries;
use crate::error::{Error, Result};
use crate::ramp::{self, RampLive, RampPlan};
use crate::subscriber::{self, Receivers};

/// Where a fleet's connections go.
#[derive(Debug, Clone)]
pub struct FleetPlan {
    pub count: usize,
    pub first_index: usize,
    pub rate: Option<f64>,
    pub concurrency: usize,
    pub timeout: Duration,
    pub channel_base: String,
    pub channels: usize,
}

/// The name of channel `c` of a run.
pub fn channel_name(base: &str, c: usize) -> String {
    format!("{base}-{c}")
}

/// How the ramp went.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Ramped {
    pub established: u64,
    pub failures: BTreeMap<String, u64>,
    pub last_error: Option<String>,
    pub ramp_secs: f64,
    /// Setup times (microseconds) as a hex V2-serialized HDR histogram.
    pub setup_us: String,
}

/// How the fleet ended.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Finished {
    pub delivered: u64,
    pub expected: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub dropped: u64,
    pub pusher_errors: u64,
    pub errors: BTreeMap<String, u64>,
    pub last_error: Option<String>,
    /// Delivery latencies (microseconds) as a hex V2-serialized HDR histogram.
    pub latency_us: String,
}

pub struct Fleet {
    deliveries: Arc<Deliveries>,
    receivers: Receivers,
    stop: watch::Sender<bool>,
    channels: usize,
}

impl Fleet {
    /// Ramps the fleet up; returns once every connection is subscribed or has failed.
    pub async fn start(
        target: Arc<Target>,
        plan: &FleetPlan,
        live: Arc<RampLive>,
    ) -> (Fleet, Ramped) {
        let deliveries = Arc::new(Deliveries::new());
        let (stop, stop_rx) = watch::channel(false);
        let receivers = Arc::new(Mutex::new(Vec::with_capacity(plan.count)));
        let outcome = {
            let (receivers, deliveries) = (receivers.clone(), deliveries.clone());
            let (base, channels) = (plan.channel_base.clone(), plan.channels);
            ramp::run(
                target,
                RampPlan {
                    count: plan.count,
                    first_index: plan.first_index,
                    rate: plan.rate,
                    concurrency: plan.concurrency,
                    timeout: plan.timeout,
                },
                Arc::new(move |i| channel_name(&base, i % channels)),
                Arc::new(move |i, sub| {
                    let h = tokio::spawn(subscriber::receive(
                        sub.ws,
                        i,
                        deliveries.clone(),
                        stop_rx.clone(),
                    ));
                    if let Ok(mut r) = receivers.lock() {
                        r.push((i, h));
                    }
                }),
                live,
            )
            .await
        };
        let receivers = std::mem::take(&mut *receivers.lock().unwrap_or_else(|e| e.into_inner()));
        let ramped = Ramped {
            established: outcome.established,
            failures: outcome.failures,
            last_error: outcome.last_error,
            ramp_secs: outcome.elapsed.as_secs_f64(),
            setup_us: encode_histogram(&outcome.setup_us),
        };
        (
            Fleet {
                deliveries,
                receivers,
                stop,
                channels: plan.channels,
            },
            ramped,
        )
    }

    /// Ends the fleet. With `verify`, first waits (at most `drain`) for the one event published on
    /// each channel not listed in `failed_channels`, and counts who got it.
    pub async fn finish(
        self,
        verify: bool,
        failed_channels: &[usize],
        drain: Duration,
    ) -> Finished {
        let expected = if verify {
            self.receivers
                .iter()
                .filter(|(i, _)| !failed_channels.contains(&(i % self.channels)))
                .count() as u64
        } else {
            0
        };
        let deadline = Instant::now() + drain;
        while verify && self.deliveries.delivered() < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = self.stop.send(true);
        let mut f = Finished {
            expected,
            ..Finished::default()
        };
        for (i, handle) in self.receivers {
            let r = match handle.await {
                Ok(r) => r,
                Err(e) => {
                    *f.errors.entry("receiver_panic".into()).or_default() += 1;
                    f.last_error = Some(e.to_string());
                    continue;
                }
            };
            f.delivered += r.tracker.unique;
            f.duplicates += r.tracker.duplicates;
            f.pusher_errors += r.pusher_errors;
            if verify {
                let failed = if failed_channels.contains(&(i % self.channels)) {
                    vec![vec![0]]
                } else {
                    vec![]
                };
                f.lost += r.tracker.lost(&[1], &failed);
            }
            if let Some(e) = r.ended_early {
                f.dropped += 1;
                *f.errors.entry(format!("dropped_{}", e.kind())).or_default() += 1;
                f.last_error = Some(e.to_string());
            }
        }
        f.latency_us = encode_histogram(&self.deliveries.latency());
        f
    }
}

pub fn encode_histogram(h: &Histogram<u64>) -> String {
    let mut buf = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut buf)
        .expect("serializing into memory");
    hex::encode(buf)
}

pub fn decode_histogram(text: &str) -> Result<Histogram<u64>> {
    let bytes = hex::decode(text).map_err(|e| Error::Worker(format!("bad histogram: {e}")))?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| Error::Worker(format!("bad histogram: {e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliveries::new_histogram;

    #[test]
    fn histograms_survive_the_worker_pipe() {
        let mut h = new_histogram();
        for v in [1u64, 10, 100, 1000, 123_456] {
            h.record(v).unwrap();
        }
        let back = decode_histogram(&encode_histogram(&h)).unwrap();
        assert_eq!(back.len(), 5);
        assert_eq!(back.max(), h.max());
        let mut merged = new_histogram();
        merged.add(&back).unwrap();
        assert_eq!(merged.len(), 5);
        assert!(decode_histogram("zz").is_err());
    }
}
