//! An app's webhooks, sent as Pusher sends them.
//!
//! Each webhook URL of an app has its own queues on disk ([`chorus_storage::WebhookQueue`]) and
//! its own [`sender::Sender`]s, so a receiver that is down delays only its own events. Events
//! that happen on a node (a client event, a cache miss) are queued by that node in its local
//! stream and sent by it. Events of the cluster's committed changes (channels occupied and
//! vacated, users joining and leaving presence channels: once per change for the whole cluster)
//! are queued by every node alike, each at its change's place in the log, and sent by the
//! leader alone; how far it got is committed ([`marks`]), so every node drops what was sent and
//! a new leader resumes where the old one stopped. Queueing is a write to sled and a wake-up:
//! nothing here waits for a receiver, so webhooks never slow publishing or fan-out.
//!
//! A channel's `subscription_count` is the one event of neither kind: the node where the count
//! changed asks the others and sends the sum ([`subscription_counts`]).
//!
//! [`settings`] is the configuration, [`event`] the events, [`post`] one request and what its
//! answer means, [`plan`] what goes next, [`sender`] the task that empties a queue, [`marks`]
//! the task that commits a leader's progress, [`metrics`] what they count.

pub mod event;
pub mod marks;
pub mod metrics;
pub mod plan;
pub mod post;
pub mod sender;
pub mod settings;
pub mod subscription_counts;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chorus_cluster::{Change, Cluster, WebhookMark, WebhookTarget};
use chorus_storage::{Position, StorageError, WebhookQueue, WebhookQueues};
use serde_json::value::RawValue;
use tokio::sync::{watch, Notify};

use crate::config::AppConfig;
use event::{WebhookEvent, WebhookKind};
use metrics::{DropReason, WebhookMetrics};
use sender::{Sender, Stream};
use settings::WebhookConfig;

/// The stream of events this node saw happen itself.
const LOCAL_STREAM: u8 = b'l';
/// The stream of events of the cluster's committed changes.
const CLUSTER_STREAM: u8 = b'c';

/// One webhook URL of the app: what it wants and where its events wait.
struct Target {
    /// Its name in the queues and the cluster's marks: its URL (with `#n` when the app lists
    /// the same URL again).
    name: String,
    webhook: Arc<WebhookConfig>,
    kinds: Vec<WebhookKind>,
    local: Queue,
    cluster: Queue,
}

/// A queue of a target and what wakes its sender.
struct Queue {
    queue: WebhookQueue,
    wake: Arc<Notify>,
}

impl Queue {
    fn open(
        queues: &WebhookQueues,
        app: &AppConfig,
        name: &str,
        stream: u8,
    ) -> Result<Queue, StorageError> {
        let max_queued = app.webhook_delivery.max_queued;
        Ok(Queue {
            queue: queues.queue(&app.id, name, stream, max_queued)?,
            wake: Arc::new(Notify::new()),
        })
    }
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
    /// The channels whose subscription count changed here.
    counts: subscription_counts::SubscriptionCounts,
}

impl Webhooks {
    /// Opens the queues of `app`'s webhooks.
    pub fn new(
        app: &AppConfig,
        queues: &WebhookQueues,
        metrics: &WebhookMetrics,
    ) -> Result<Webhooks, StorageError> {
        let mut targets: Vec<Target> = Vec::with_capacity(app.webhooks.len());
        let mut next_local = 1;
        for (i, webhook) in app.webhooks.iter().enumerate() {
            let repeated = app.webhooks[..i].iter().any(|w| w.url == webhook.url);
            let name = match repeated {
                true => format!("{}#{i}", webhook.url),
                false => webhook.url.clone(),
            };
            let local = Queue::open(queues, app, &name, LOCAL_STREAM)?;
            if let Some(last) = local.queue.last_position()? {
                next_local = next_local.max(last.index + 1);
            }
            let cluster = Queue::open(queues, app, &name, CLUSTER_STREAM)?;
            metrics
                .queued(&app.id, i, "local")
                .set(local.queue.len() as i64);
            metrics
                .queued(&app.id, i, "cluster")
                .set(cluster.queue.len() as i64);
            targets.push(Target {
                name,
                webhook: Arc::new(webhook.clone()),
                kinds: webhook
                    .event_types
                    .iter()
                    .filter_map(|name| WebhookKind::parse(name))
                    .collect(),
                local,
                cluster,
            });
        }
        Ok(Webhooks {
            inner: Arc::new(Inner {
                app: app.clone(),
                targets,
                metrics: metrics.clone(),
                next_local: AtomicU64::new(next_local),
                counts: Default::default(),
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

    /// This node's subscription count of `channel` changed (see [`subscription_counts`]).
    pub fn subscription_count_changed(&self, channel: &str) {
        if self.wants(WebhookKind::SubscriptionCount) {
            self.inner.counts.changed(channel);
        }
    }

    /// The cluster committed `change` of this app, the `seq`th change of log entry `index`:
    /// queues the webhook event it calls for, if any webhook wants it. Every node does so alike.
    pub fn committed(&self, index: u64, seq: u32, change: &Change) {
        let Some(event) = WebhookEvent::of_change(index, seq, change) else {
            return;
        };
        self.queue(&event, Position { index, seq }, |t| &t.cluster, "cluster");
    }

    /// The leader has sent everything committed up to `through` to the webhook named `target`:
    /// drops what waits for it up to there.
    pub fn sent_through(&self, target: &str, through: WebhookMark) {
        let inner = &self.inner;
        let Some((i, target)) = (inner.targets.iter().enumerate()).find(|(_, t)| t.name == target)
        else {
            return;
        };
        let through = Position {
            index: through.index,
            seq: through.seq,
        };
        if let Err(e) = target.cluster.queue.remove_through(through) {
            tracing::warn!(app = %inner.app.id, error = %e, "cannot drop sent webhooks");
        }
        let gauge = inner.metrics.queued(&inner.app.id, i, "cluster");
        gauge.set(target.cluster.queue.len() as i64);
    }

    /// Queues `event` in the local stream of every webhook that wants it.
    fn queue_local(&self, event: WebhookEvent) {
        let position = Position {
            index: self.inner.next_local.fetch_add(1, Ordering::Relaxed),
            seq: 0,
        };
        self.queue(&event, position, |t| &t.local, "local");
    }

    /// Queues `event` at `position` in the `stream` of every webhook that wants it, and wakes
    /// their senders.
    fn queue(
        &self,
        event: &WebhookEvent,
        position: Position,
        stream: impl Fn(&Target) -> &Queue,
        stream_name: &str,
    ) {
        let inner = &self.inner;
        let kind = event.kind();
        let mut payload = None;
        for (i, target) in inner.targets.iter().enumerate() {
            if !target.wants(kind, event.channel()) {
                continue;
            }
            let payload = payload.get_or_insert_with(|| {
                serde_json::to_vec(event).expect("webhook events serialise")
            });
            let queue = stream(target);
            match queue
                .queue
                .push(position, crate::history::now_ms(), payload)
            {
                Ok(dropped) => {
                    for _ in dropped {
                        (inner.metrics).dropped(&inner.app.id, kind, DropReason::QueueFull);
                    }
                    let gauge = inner.metrics.queued(&inner.app.id, i, stream_name);
                    gauge.set(queue.queue.len() as i64);
                    queue.wake.notify_one();
                }
                Err(e) => tracing::warn!(app = %inner.app.id, error = %e, "cannot queue a webhook"),
            }
        }
    }

    /// Starts, on the current runtime, a sender for each queue of the app's webhooks, and for
    /// each webhook the task that commits how far the leader sent its cluster events.
    pub fn start(&self, client: &reqwest::Client, cluster: &Cluster) {
        let inner = &self.inner;
        for (i, target) in inner.targets.iter().enumerate() {
            let (sent, marks) = watch::channel(None);
            let leads = {
                let cluster = cluster.clone();
                Arc::new(move || cluster.leads())
            };
            let streams = [
                (&target.local, Stream::Local, "local"),
                (&target.cluster, Stream::Cluster { leads, sent }, "cluster"),
            ];
            for (queue, stream, stream_name) in streams {
                let sender = Sender {
                    app_id: inner.app.id.clone(),
                    key: inner.app.key.clone(),
                    secret: inner.app.secret.clone(),
                    webhook: target.webhook.clone(),
                    delivery: inner.app.webhook_delivery.clone(),
                    queue: queue.queue.clone(),
                    stream,
                    wake: queue.wake.clone(),
                    client: client.clone(),
                    metrics: inner.metrics.clone(),
                    queued: inner.metrics.queued(&inner.app.id, i, stream_name),
                };
                actix_rt::spawn(sender.run());
            }
            let target = WebhookTarget {
                app: inner.app.id.clone(),
                url: target.name.clone(),
            };
            actix_rt::spawn(marks::commit_marks(cluster.clone(), target, marks));
        }
    }
}

/// An id for an event only this node sees: random, so no other node's or run's collides.
fn local_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}
