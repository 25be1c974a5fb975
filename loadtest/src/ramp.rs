//! Opening many subscribed connections at a bounded rate and concurrency, handing each one over as
//! soon as it is subscribed, and recording setup times and failures by kind.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::Semaphore;

use crate::common::Target;
use crate::deliveries::new_histogram;
use crate::subscriber::{self, Subscribed};

/// Live counts for the progress line.
#[derive(Debug, Default)]
pub struct RampLive {
    pub established: AtomicU64,
    pub failed: AtomicU64,
}

/// How to ramp.
pub struct RampPlan {
    pub count: usize,
    /// Global index of the first connection (picks node and source address round-robin).
    pub first_index: usize,
    /// Connections per second; `None`: as fast as `concurrency` allows.
    pub rate: Option<f64>,
    pub concurrency: usize,
    pub timeout: Duration,
}

/// What the ramp did.
pub struct RampOutcome {
    pub established: u64,
    pub failures: BTreeMap<String, u64>,
    pub last_error: Option<String>,
    /// Connect + subscribe times, microseconds.
    pub setup_us: Histogram<u64>,
    pub elapsed: Duration,
}

type OnReady<T> = Arc<dyn Fn(usize, T) + Send + Sync>;
type ChannelOf = Arc<dyn Fn(usize) -> String + Send + Sync>;

/// Opens `plan.count` WebSocket connections; connection `i` (global index) subscribes to
/// `channel_of(i)` and is passed to `on_ready` once subscribed.
pub async fn run(
    target: Arc<Target>,
    plan: RampPlan,
    channel_of: ChannelOf,
    on_ready: OnReady<Subscribed>,
    live: Arc<RampLive>,
) -> RampOutcome {
    let connect = |target: Arc<Target>, index: usize, channel: String, timeout: Duration| async move {
        subscriber::connect_and_subscribe(&target, index, &channel, timeout).await
    };
    run_with(target, plan, channel_of, connect, on_ready, live).await
}

/// [`run`] with another way to connect and subscribe (`connect(target, index, channel, timeout)`),
/// such as an SSE stream.
pub async fn run_with<T, C, F>(
    target: Arc<Target>,
    plan: RampPlan,
    channel_of: ChannelOf,
    connect: C,
    on_ready: OnReady<T>,
    live: Arc<RampLive>,
) -> RampOutcome
where
    T: Send + 'static,
    C: Fn(Arc<Target>, usize, String, Duration) -> F + Clone + Send + 'static,
    F: std::future::Future<Output = crate::error::Result<T>> + Send + 'static,
{
    struct Shared {
        failures: BTreeMap<String, u64>,
        last_error: Option<String>,
        setup_us: Histogram<u64>,
    }
    let shared = Arc::new(Mutex::new(Shared {
        failures: BTreeMap::new(),
        last_error: None,
        setup_us: new_histogram(),
    }));
    let start = Instant::now();
    let semaphore = Arc::new(Semaphore::new(plan.concurrency.max(1)));
    let mut tasks = Vec::with_capacity(plan.count);
    for n in 0..plan.count {
        if let Some(rate) = plan.rate {
            let at = start + Duration::from_secs_f64(n as f64 / rate);
            tokio::time::sleep_until(at.into()).await;
        }
        let Ok(permit) = semaphore.clone().acquire_owned().await else {
            break;
        };
        let index = plan.first_index + n;
        let (target, channel_of, on_ready, live, shared, connect) = (
            target.clone(),
            channel_of.clone(),
            on_ready.clone(),
            live.clone(),
            shared.clone(),
            connect.clone(),
        );
        let timeout = plan.timeout;
        tasks.push(tokio::spawn(async move {
            let channel = channel_of(index);
            let started = Instant::now();
            let result = connect(target, index, channel, timeout).await;
            drop(permit);
            match result {
                Ok(sub) => {
                    live.established.fetch_add(1, Ordering::Relaxed);
                    let us = started.elapsed().as_micros() as u64;
                    if let Ok(mut s) = shared.lock() {
                        s.setup_us.saturating_record(us.max(1));
                    }
                    on_ready(index, sub);
                }
                Err(e) => {
                    live.failed.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut s) = shared.lock() {
                        *s.failures.entry(e.kind().to_owned()).or_default() += 1;
                        s.last_error = Some(e.to_string());
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed();
    let s = shared.lock().unwrap_or_else(|e| e.into_inner());
    RampOutcome {
        established: live.established.load(Ordering::Relaxed),
        failures: s.failures.clone(),
        last_error: s.last_error.clone(),
        setup_us: s.setup_us.clone(),
        elapsed,
    }
}
