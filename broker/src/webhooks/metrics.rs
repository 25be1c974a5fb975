//! The webhooks' metrics: sent, failed, retried and dropped by app and type, what waits, and
//! how long a change took to reach its receiver.

use prometheus::{Histogram, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Registry};

use super::event::WebhookKind;
use crate::metrics::Registrar;

/// Every webhook metric of the node.
#[derive(Clone)]
pub struct WebhookMetrics {
    sent: IntCounterVec,
    failed: IntCounterVec,
    retried: IntCounterVec,
    dropped: IntCounterVec,
    queued: IntGaugeVec,
    latency: HistogramVec,
}

/// Why a webhook event was dropped.
#[derive(Debug, Clone, Copy)]
pub enum DropReason {
    /// Its retry window passed.
    Expired,
    /// The receiver answered with a status that is not retried.
    Refused,
    /// Its queue was full.
    QueueFull,
}

impl DropReason {
    fn label(self) -> &'static str {
        match self {
            DropReason::Expired => "expired",
            DropReason::Refused => "refused",
            DropReason::QueueFull => "queue_full",
        }
    }
}

impl WebhookMetrics {
    pub fn register(registry: &Registry) -> WebhookMetrics {
        let r = Registrar(registry);
        WebhookMetrics {
            sent: r.counter(
                "chorus_webhooks_sent_total",
                "Webhook events a receiver accepted (2xx).",
                &["app_id", "type"],
            ),
            failed: r.counter(
                "chorus_webhook_requests_failed_total",
                "Webhook requests that did not deliver, by reason (connection, timeout, status).",
                &["app_id", "reason"],
            ),
            retried: r.counter(
                "chorus_webhook_retries_total",
                "Webhook requests sent again after a failure.",
                &["app_id"],
            ),
            dropped: r.counter(
                "chorus_webhooks_dropped_total",
                "Webhook events given up on: expired, refused by the receiver, or their queue full.",
                &["app_id", "type", "reason"],
            ),
            queued: r.gauge(
                "chorus_webhooks_queued",
                "Webhook events waiting on this node, by app, webhook (its place in the app's list) \
                 and stream (local: this node's own events; cluster: the cluster's, sent by the \
                 leader).",
                &["app_id", "webhook", "stream"],
            ),
            latency: r.histograms(
                "chorus_webhook_delivery_seconds",
                "Time from a webhook event being queued to its receiver accepting it.",
                (0.001, 4.0, 10),
                &["app_id"],
            ),
        }
    }

    pub fn sent(&self, app: &str, kind: WebhookKind) {
        self.sent.with_label_values(&[app, kind.name()]).inc();
    }

    pub fn failed(&self, app: &str, reason: &str) {
        self.failed.with_label_values(&[app, reason]).inc();
    }

    pub fn retried(&self, app: &str) {
        self.retried.with_label_values(&[app]).inc();
    }

    pub fn dropped(&self, app: &str, kind: WebhookKind, reason: DropReason) {
        self.dropped
            .with_label_values(&[app, kind.name(), reason.label()])
            .inc();
    }

    /// The gauge of what waits for `app`'s webhook number `webhook` in `stream`.
    pub fn queued(&self, app: &str, webhook: usize, stream: &str) -> IntGauge {
        (self.queued).with_label_values(&[app, &webhook.to_string(), stream])
    }

    pub fn latency(&self, app: &str) -> Histogram {
        self.latency.with_label_values(&[app])
    }
}
