//! The task that empties one webhook queue into its receiver: oldest first, in batches when the
//! app batches, each batch retried with exponential backoff and jitter until its receiver takes
//! it or its retry window passes. It holds at most one batch in memory; what waits is on disk.

use std::sync::Arc;
use std::time::Duration;

use chorus_storage::{QueuedWebhook, WebhookQueue};
use prometheus::{Histogram, IntGauge};
use tokio::sync::Notify;

use super::event::{WebhookEvent, WebhookKind};
use super::metrics::{DropReason, WebhookMetrics};
use super::post::{self, Outcome};
use super::settings::{WebhookConfig, WebhookDelivery};
use crate::history::now_ms;

/// The first wait after a failure; each further failure doubles it, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long an idle sender sleeps before it looks at its queue again without being woken.
const IDLE_LOOK: Duration = Duration::from_secs(5);

/// Everything one sender needs.
pub struct Sender {
    pub app_id: String,
    pub key: String,
    pub secret: String,
    pub webhook: Arc<WebhookConfig>,
    pub delivery: WebhookDelivery,
    pub queue: WebhookQueue,
    /// Notified when an event is queued.
    pub wake: Arc<Notify>,
    pub client: reqwest::Client,
    pub metrics: WebhookMetrics,
    pub queued: IntGauge,
}

/// A batch read from the queue, its events decoded.
struct Batch {
    entries: Vec<QueuedWebhook>,
    kinds: Vec<WebhookKind>,
}

impl Sender {
    /// Runs for as long as the node does.
    pub async fn run(self) {
        let latency = self.metrics.latency(&self.app_id);
        let mut failures: u32 = 0;
        loop {
            let batch = self.next_batch().await;
            let payloads: Vec<&[u8]> = batch.entries.iter().map(|e| &e.payload[..]).collect();
            let body = post::body(now_ms(), &payloads);
            let timeout = Duration::from_millis(self.delivery.timeout_ms);
            let outcome = post::post(
                &self.client,
                &self.webhook,
                &self.key,
                &self.secret,
                body,
                timeout,
            )
            .await;
            match outcome {
                Outcome::Delivered => {
                    failures = 0;
                    self.delivered(&batch, &latency);
                }
                Outcome::Refused(status) => {
                    failures = 0;
                    tracing::warn!(app = %self.app_id, url = %self.webhook.url, status,
                        "webhook refused by its receiver; its events are dropped");
                    self.metrics.failed(&self.app_id, "status");
                    self.drop_entries(&batch, |_| true, DropReason::Refused);
                }
                Outcome::Retry(reason) => {
                    failures = failures.saturating_add(1);
                    self.metrics.failed(&self.app_id, reason);
                    if failures == 1 {
                        tracing::info!(app = %self.app_id, url = %self.webhook.url, reason,
                            "webhook failed; retrying with backoff");
                    }
                    self.after_failure(&batch, failures).await;
                }
            }
        }
    }

    /// The oldest events waiting: as soon as there is one without batching; with batching,
    /// once the batch is full or the first has waited the batch window.
    async fn next_batch(&self) -> Batch {
        let limit = if self.delivery.batching {
            self.delivery.batch_max_events
        } else {
            1
        };
        loop {
            let entries = match self.queue.first(limit) {
                Ok(entries) => entries,
                Err(e) => {
                    tracing::warn!(app = %self.app_id, error = %e, "cannot read webhook queue");
                    tokio::time::sleep(IDLE_LOOK).await;
                    continue;
                }
            };
            self.queued.set(self.queue.len() as i64);
            let Some(first) = entries.first() else {
                let _ = tokio::time::timeout(IDLE_LOOK, self.wake.notified()).await;
                continue;
            };
            let due = first.queued_ms + self.delivery.batch_window_ms;
            let now = now_ms();
            if self.delivery.batching && entries.len() < limit && now < due {
                tokio::time::sleep(Duration::from_millis(due - now)).await;
                continue;
            }
            return self.decoded(entries);
        }
    }

    /// Reads the kind of each entry; an entry that does not decode is dropped with a warning.
    fn decoded(&self, entries: Vec<QueuedWebhook>) -> Batch {
        let mut batch = Batch {
            entries: Vec::with_capacity(entries.len()),
            kinds: Vec::with_capacity(entries.len()),
        };
        for entry in entries {
            match serde_json::from_slice::<WebhookEvent>(&entry.payload) {
                Ok(event) => {
                    batch.kinds.push(event.kind());
                    batch.entries.push(entry);
                }
                Err(e) => {
                    tracing::warn!(app = %self.app_id, error = %e, "dropping an unreadable queued webhook");
                    let _ = self.queue.remove(entry.position);
                }
            }
        }
        batch
    }

    fn delivered(&self, batch: &Batch, latency: &Histogram) {
        let now = now_ms();
        for (entry, kind) in batch.entries.iter().zip(&batch.kinds) {
            self.remove(entry);
            self.metrics.sent(&self.app_id, *kind);
            latency.observe(now.saturating_sub(entry.queued_ms) as f64 / 1000.0);
        }
        self.queued.set(self.queue.len() as i64);
    }

    /// Drops the entries of `batch` that `which` picks, counting them with `reason`.
    fn drop_entries(
        &self,
        batch: &Batch,
        which: impl Fn(&QueuedWebhook) -> bool,
        reason: DropReason,
    ) {
        for (entry, kind) in batch.entries.iter().zip(&batch.kinds) {
            if which(entry) {
                self.remove(entry);
                self.metrics.dropped(&self.app_id, *kind, reason);
            }
        }
        self.queued.set(self.queue.len() as i64);
    }

    fn remove(&self, entry: &QueuedWebhook) {
        if let Err(e) = self.queue.remove(entry.position) {
            tracing::warn!(app = %self.app_id, error = %e, "cannot remove a sent webhook");
        }
    }

    /// Drops what has waited past the retry window, then waits out the backoff.
    async fn after_failure(&self, batch: &Batch, failures: u32) {
        let window_ms = self.delivery.retry_window_secs * 1000;
        let now = now_ms();
        self.drop_entries(
            batch,
            |entry| entry.queued_ms + window_ms <= now,
            DropReason::Expired,
        );
        tokio::time::sleep(backoff(failures)).await;
        self.metrics.retried(&self.app_id);
    }
}

/// The wait after `failures` failures in a row: doubling from [`FIRST_BACKOFF`] up to
/// [`MAX_BACKOFF`], a random point in its upper half so that senders do not retry in step.
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    let ceiling = FIRST_BACKOFF
        .saturating_mul(1 << doublings)
        .min(MAX_BACKOFF);
    let half = ceiling / 2;
    half + half.mul_f64(rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_its_bounds() {
        for failures in 1..40 {
            let wait = backoff(failures);
            let ceiling = (FIRST_BACKOFF * 2u32.pow(failures.min(17) - 1)).min(MAX_BACKOFF);
            assert!(
                wait >= ceiling / 2 && wait <= ceiling,
                "{failures}: {wait:?}"
            );
        }
        assert!(backoff(1) <= FIRST_BACKOFF);
        assert!(backoff(30) >= MAX_BACKOFF / 2);
    }
}
