//! The task that empties one webhook queue into its receiver: oldest first (see [`super::plan`]
//! for the vacate delay), in batches when the app batches, each batch retried with exponential
//! backoff and jitter until its receiver takes it or its retry window passes. It holds at most
//! one batch in memory; what waits is on disk.
//!
//! A queue of the node's own events is sent by the node. A queue of the cluster's events is
//! sent only while the node leads, and after each step the sender says how far it got, so that
//! the mark can be committed for every node (see [`super::marks`]).

use std::sync::Arc;
use std::time::Duration;

use chorus_storage::{Position, QueuedWebhook, WebhookQueue};
use prometheus::{Histogram, IntGauge};
use tokio::sync::{watch, Notify};

use super::event::{WebhookEvent, WebhookKind};
use super::metrics::{DropReason, WebhookMetrics};
use super::plan::{plan, Waiting};
use super::post::{self, Outcome};
use super::settings::{WebhookConfig, WebhookDelivery};
use crate::history::now_ms;

/// The first wait after a failure; each further failure doubles it, up to the app's
/// `max_backoff_ms`.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// How long an idle sender sleeps before it looks at its queue again without being woken.
const IDLE_LOOK: Duration = Duration::from_secs(5);
/// How often a sender of the cluster's events looks whether its node leads.
const LEADERSHIP_LOOK: Duration = Duration::from_millis(200);
/// How many of the oldest waiting events the sender plans over at most: a channel's vacate
/// waiting out its delay lets the others' events past it, up to this far.
const PLANNED: usize = 500;

/// Whose events a queue holds, and so who sends them.
pub enum Stream {
    /// Events this node saw happen: it sends them.
    Local,
    /// Events of the cluster's committed changes: sent while `leads` says this node leads;
    /// `sent` is told how far the queue is done with.
    Cluster {
        leads: Arc<dyn Fn() -> bool + Send + Sync>,
        sent: watch::Sender<Option<Position>>,
    },
}

/// Everything one sender needs.
pub struct Sender {
    pub app_id: String,
    pub key: String,
    pub secret: String,
    pub webhook: Arc<WebhookConfig>,
    pub delivery: WebhookDelivery,
    pub queue: WebhookQueue,
    pub stream: Stream,
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

/// The oldest waiting events, decoded.
struct Window {
    entries: Vec<QueuedWebhook>,
    events: Vec<WebhookEvent>,
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
            self.report_progress();
        }
    }

    /// The next events to send: as soon as there is one without batching; with batching, once
    /// the batch is full or the first has waited the batch window. Cluster events only while
    /// this node leads.
    async fn next_batch(&self) -> Batch {
        let limit = if self.delivery.batching {
            self.delivery.batch_max_events
        } else {
            1
        };
        // Planned over a few more than a batch; over many more only while a vacate holds its
        // channel back and others' events may go past it.
        let mut planned = (limit * 2).max(16);
        loop {
            if !self.may_send() {
                tokio::time::sleep(LEADERSHIP_LOOK).await;
                continue;
            }
            let window = self.window(planned);
            self.queued.set(self.queue.len() as i64);
            if window.entries.is_empty() {
                let _ = tokio::time::timeout(IDLE_LOOK, self.wake.notified()).await;
                continue;
            }
            let now = now_ms();
            let waiting: Vec<Waiting<'_>> = (window.entries.iter().zip(&window.events))
                .map(|(entry, event)| Waiting {
                    kind: event.kind(),
                    channel: event.channel(),
                    queued_ms: entry.queued_ms,
                })
                .collect();
            let plan = plan(&waiting, now, self.delivery.vacate_delay_ms, limit);
            if !plan.cancel.is_empty() {
                for &i in &plan.cancel {
                    self.remove(&window.entries[i]);
                }
                self.report_progress();
                continue;
            }
            let held_back = plan.due_ms.is_some() && window.entries.len() == planned;
            if plan.send.len() < limit && held_back && planned < PLANNED {
                planned = PLANNED;
                continue;
            }
            let Some(&first) = plan.send.first() else {
                let due = plan.due_ms.unwrap_or(now).saturating_sub(now);
                let wait = Duration::from_millis(due).min(IDLE_LOOK);
                let _ = tokio::time::timeout(wait, self.wake.notified()).await;
                continue;
            };
            let due = window.entries[first].queued_ms + self.delivery.batch_window_ms;
            if self.delivery.batching && plan.send.len() < limit && now < due {
                tokio::time::sleep(Duration::from_millis(due - now)).await;
                continue;
            }
            return Batch {
                kinds: plan.send.iter().map(|&i| window.events[i].kind()).collect(),
                entries: plan
                    .send
                    .iter()
                    .map(|&i| window.entries[i].clone())
                    .collect(),
            };
        }
    }

    fn may_send(&self) -> bool {
        match &self.stream {
            Stream::Local => true,
            Stream::Cluster { leads, .. } => leads(),
        }
    }

    /// The `size` oldest waiting events, decoded; an entry that does not decode is dropped with
    /// a warning.
    fn window(&self, size: usize) -> Window {
        let entries = match self.queue.first(size) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(app = %self.app_id, error = %e, "cannot read webhook queue");
                Vec::new()
            }
        };
        let mut window = Window {
            entries: Vec::with_capacity(entries.len()),
            events: Vec::with_capacity(entries.len()),
        };
        for entry in entries {
            match serde_json::from_slice::<WebhookEvent>(&entry.payload) {
                Ok(event) => {
                    window.events.push(event);
                    window.entries.push(entry);
                }
                Err(e) => {
                    tracing::warn!(app = %self.app_id, error = %e, "dropping an unreadable queued webhook");
                    let _ = self.queue.remove(entry.position);
                }
            }
        }
        window
    }

    /// Tells how far the cluster's queue is done with: everything before its oldest waiting
    /// event. Only forward; nothing for the node's own queue.
    fn report_progress(&self) {
        let Stream::Cluster { sent, .. } = &self.stream else {
            return;
        };
        let first = match self.queue.first(1) {
            Ok(first) => first.first().map(|e| e.position),
            Err(_) => return,
        };
        let done = match first {
            Some(first) => before(first),
            None => self.queue.highest_removed(),
        };
        if let Some(done) = done {
            sent.send_if_modified(|held| {
                let further = held.is_none_or(|h| h < done);
                if further {
                    *held = Some(done);
                }
                further
            });
        }
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
        let longest = Duration::from_millis(self.delivery.max_backoff_ms);
        tokio::time::sleep(backoff(failures, longest)).await;
        self.metrics.retried(&self.app_id);
    }
}

/// The position just before `position`, if there is one.
fn before(position: Position) -> Option<Position> {
    match position.seq.checked_sub(1) {
        Some(seq) => Some(Position { seq, ..position }),
        None => Some(Position {
            index: position.index.checked_sub(1)?,
            seq: u32::MAX,
        }),
    }
}

/// The wait after `failures` failures in a row: doubling from [`FIRST_BACKOFF`] up to
/// `longest`, a random point in its upper half so that senders do not retry in step.
pub fn backoff(failures: u32, longest: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    let ceiling = FIRST_BACKOFF.saturating_mul(1 << doublings).min(longest);
    let half = ceiling / 2;
    half + half.mul_f64(rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_its_bounds() {
        let longest = Duration::from_secs(60);
        for failures in 1..40 {
            let wait = backoff(failures, longest);
            let ceiling = (FIRST_BACKOFF * 2u32.pow(failures.min(17) - 1)).min(longest);
            assert!(
                wait >= ceiling / 2 && wait <= ceiling,
                "{failures}: {wait:?}"
            );
        }
        assert!(backoff(1, longest) <= FIRST_BACKOFF);
        assert!(backoff(30, longest) >= longest / 2);
        assert!(backoff(30, Duration::from_secs(2)) <= Duration::from_secs(2));
    }

    #[test]
    fn progress_is_everything_before_the_oldest_waiting() {
        let at = |index, seq| Position { index, seq };
        assert_eq!(before(at(7, 2)), Some(at(7, 1)));
        assert_eq!(before(at(7, 0)), Some(at(6, u32::MAX)));
        assert_eq!(before(at(0, 0)), None);
    }
}
