//! An app's webhooks, sent as Pusher sends them.
//!
//! Each webhook URL of an app has its own queues on disk ([`chorus_storage::WebhookQueue`]) and
//! its own [`sender::Sender`], so a receiver that is down delays only its own events. Events that
//! happen on a node (a client event, a cache miss) are queued by that node in its local stream
//! and sent by it. Queueing is a write to sled and a wake-up: nothing here waits for a receiver,
//! so webhooks never slow publishing or fan-out.
//!
//! [`settings`] is the configuration, [`event`] the events, [`post`] one request and what its
//! answer means, [`sender`] the task that empties a queue, [`metrics`] what they count.

pub mod event;
pub mod metrics;
pub mod post;
pub mod sender;
pub mod settings;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chorus_storage::{Position, StorageError, WebhookQueue, WebhookQueues};
use serde_json::value::RawValue;
use tokio::sync::Notify;

use crate::config::AppConfig;
use event::{WebhookEvent, WebhookKind};
use metrics::{DropReason, WebhookMetrics};
use sender::Sender;
use settings::WebhookConfig;

/// The stream of events this node saw happen itself.
const LOCAL_STREAM: u8 = b'l';

/// One webhook URL of the app: what it wants and where its events wait.
struct Target {
    webhook: Arc<WebhookConfig>,
    kinds: Vec<WebhookKind>,
    local: WebhookQueue,
    wake: Arc<Notify>,
}

impl Target {
    fn wants(&self, kind: WebhookKind, channel: &str) -> bool {
        self.kinds.contains(&kind) && self.webhook.filter.matches(channel)
    }
}

/// An app's webhooks on this node. Cheap to clone.
#[derive(Clone)]
pub struct Webhooks {
    inner: Arc<Inner>,
}

struct Inner {
    app: AppConfig,
    targets: Vec<Target>,
    metrics: WebhookMetrics,
    /// The position the next local event takes.
    next_local: AtomicU64,
}

impl Webhooks {
    /// Opens the queues of `app`'s webhooks.
    pub fn new(
        app: &AppConfig,
        queues: &WebhookQueues,
        metrics: &WebhookMetrics,
    ) -> Result<Webhooks, StorageError> {
        let max_queued = app.webhook_delivery.max_queued;
        let mut targets = Vec::with_capacity(app.webhooks.len());
        let mut next_local = 1;
        for (i, webhook) in app.webhooks.iter().enumerate() {
            let local = queues.queue(&app.id, i as u16, LOCAL_STREAM, max_queued)?;
            if let Some(last) = local.last_position()? {
                next_local = next_local.max(last.index + 1);
            }
            targets.push(Target {
                webhook: Arc::new(webhook.clone()),
                kinds: webhook
                    .event_types
                    .iter()
                    .filter_map(|name| WebhookKind::parse(name))
                    .collect(),
                local,
                wake: Arc::new(Notify::new()),
            });
        }
        for (i, target) in targets.iter().enumerate() {
            metrics.queued(&app.id, i).set(target.local.len() as i64);
        }
        Ok(Webhooks {
            inner: Arc::new(Inner {
                app: app.clone(),
                targets,
                metrics: metrics.clone(),
                next_local: AtomicU64::new(next_local),
            }),
        })
    }

    /// Whether any webhook wants events of `kind`: a cheap check before building one.
    pub fn wants(&self, kind: WebhookKind) -> bool {
        self.inner.targets.iter().any(|t| t.kinds.contains(&kind))
    }

    /// A client sent `event` on `channel` (Pusher's `client_event`).
    pub fn client_event(
        &self,
        channel: &str,
        event: &str,
        data: &RawValue,
        socket_id: &str,
        user_id: Option<&str>,
    ) {
        if !self.wants(WebhookKind::ClientEvent) {
            return;
        }
        self.queue_local(WebhookEvent::ClientEvent {
            id: local_id(),
            channel: channel.to_owned(),
            event: event.to_owned(),
            data: event::client_data(data),
            socket_id: socket_id.to_owned(),
            user_id: user_id.map(str::to_owned),
        });
    }

    /// A subscriber of the cache channel `channel` found no cached event.
    pub fn cache_miss(&self, channel: &str) {
        if !self.wants(WebhookKind::CacheMiss) {
            return;
        }
        self.queue_local(WebhookEvent::CacheMiss {
            id: local_id(),
            channel: channel.to_owned(),
        });
    }

    /// Queues `event` for every webhook that wants it and wakes their senders.
    fn queue_local(&self, event: WebhookEvent) {
        let inner = &self.inner;
        let kind = event.kind();
        let targets: Vec<(usize, &Target)> = inner
            .targets
            .iter()
            .enumerate()
            .filter(|(_, t)| t.wants(kind, event.channel()))
            .collect();
        if targets.is_empty() {
            return;
        }
        let payload = serde_json::to_vec(&event).expect("webhook events serialise");
        let position = Position {
            index: inner.next_local.fetch_add(1, Ordering::Relaxed),
            seq: 0,
        };
        let now = crate::history::now_ms();
        for (i, target) in targets {
            match target.local.push(position, now, &payload) {
                Ok(dropped) => {
                    for _ in dropped {
                        inner
                            .metrics
                            .dropped(&inner.app.id, kind, DropReason::QueueFull);
                    }
                    inner
                        .metrics
                        .queued(&inner.app.id, i)
                        .set(target.local.len() as i64);
                    target.wake.notify_one();
                }
                Err(e) => tracing::warn!(app = %inner.app.id, error = %e, "cannot queue a webhook"),
            }
        }
    }

    /// The senders of the app's webhooks, to be spawned on the node's runtime.
    pub fn senders(&self, client: &reqwest::Client) -> Vec<Sender> {
        let inner = &self.inner;
        inner
            .targets
            .iter()
            .enumerate()
            .map(|(i, target)| Sender {
                app_id: inner.app.id.clone(),
                key: inner.app.key.clone(),
                secret: inner.app.secret.clone(),
                webhook: target.webhook.clone(),
                delivery: inner.app.webhook_delivery.clone(),
                queue: target.local.clone(),
                wake: target.wake.clone(),
                client: client.clone(),
                metrics: inner.metrics.clone(),
                queued: inner.metrics.queued(&inner.app.id, i),
            })
            .collect()
    }
}

/// An id for an event only this node sees: random, so no other node's or run's collides.
fn local_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}
