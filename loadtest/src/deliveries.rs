//! Where receivers report what they got: sharded counters (cheap enough to bump per message) for
//! live progress and publisher back-pressure, and sharded latency histograms they flush in batches.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

const SHARDS: usize = 32;

/// Latencies are recorded in microseconds, from 1 us to 10 minutes, 3 significant figures.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

#[repr(align(128))]
struct Shard {
    delivered: AtomicU64,
    /// When the latest delivery in this shard arrived, microseconds since the epoch.
    last_us: AtomicU64,
    latency: Mutex<Histogram<u64>>,
}

/// Totals shared by all receivers of a run.
pub struct Deliveries {
    start: Instant,
    shards: Vec<Shard>,
}

impl Default for Deliveries {
    fn default() -> Self {
        Self::new()
    }
}

impl Deliveries {
    pub fn new() -> Deliveries {
        Deliveries {
            start: Instant::now(),
            shards: (0..SHARDS)
                .map(|_| Shard {
                    delivered: AtomicU64::new(0),
                    last_us: AtomicU64::new(0),
                    latency: Mutex::new(new_histogram()),
                })
                .collect(),
        }
    }

    /// Counts one delivery for receiver `receiver`, received at `now_us` (microseconds since the
    /// epoch, see [`crate::payload::now_us`]).
    #[inline]
    pub fn count(&self, receiver: usize, now_us: u64) {
        let shard = &self.shards[receiver % SHARDS];
        shard.delivered.fetch_add(1, Ordering::Relaxed);
        shard.last_us.fetch_max(now_us, Ordering::Relaxed);
    }

    /// Adds a receiver's buffered latencies (microseconds) to the shared histograms.
    pub fn flush_latencies(&self, receiver: usize, latencies_us: &mut Vec<u64>) {
        if latencies_us.is_empty() {
            return;
        }
        let mut h = self.shards[receiver % SHARDS]
            .latency
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for &l in latencies_us.iter() {
            h.saturating_record(l.max(1));
        }
        latencies_us.clear();
    }

    pub fn delivered(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.delivered.load(Ordering::Relaxed))
            .sum()
    }

    /// When the latest delivery happened (the start when there was none).
    pub fn last_delivery(&self) -> Instant {
        let last_us = self
            .shards
            .iter()
            .map(|s| s.last_us.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0);
        let ago = crate::payload::now_us().saturating_sub(last_us);
        Instant::now()
            .checked_sub(Duration::from_micros(ago))
            .unwrap_or(self.start)
            .max(self.start)
    }

    /// All latencies recorded so far, merged.
    pub fn latency(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for s in &self.shards {
            let h = s.latency.lock().unwrap_or_else(|e| e.into_inner());
            all.add(&*h).expect("same bounds");
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_merges_across_shards() {
        let d = Deliveries::new();
        let now = crate::payload::now_us();
        for r in 0..100 {
            d.count(r, now);
        }
        assert_eq!(d.delivered(), 100);
        let mut a = vec![1000, 2000];
        let mut b = vec![3000, 0];
        d.flush_latencies(1, &mut a);
        d.flush_latencies(2, &mut b);
        assert!(a.is_empty() && b.is_empty());
        let h = d.latency();
        assert_eq!(h.len(), 4);
        assert_eq!(h.min(), 1);
        assert!(h.max() >= 3000 && h.max() < 3010);
        assert!(d.last_delivery() >= d.start);
    }
}
