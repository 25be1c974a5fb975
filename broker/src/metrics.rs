//! Prometheus metrics of a node, served as text on the metrics port.
//!
//! Labels are bounded: app ids, transports, reasons, codes, routes and statuses; never channel
//! names or user ids. The per-app series the hot path touches are resolved once per app into
//! [`AppMetrics`], so delivering a message does no label lookup.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric of the node.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    connections: IntGaugeVec,
    sse_connections: IntGaugeVec,
    subscriptions: IntGaugeVec,
    channels: IntGaugeVec,
    messages_received: IntCounterVec,
    bytes_received: IntCounterVec,
    messages_sent: IntCounterVec,
    bytes_sent: IntCounterVec,
    deliveries: IntCounterVec,
    published: IntCounterVec,
    disconnects: IntCounterVec,
    slow_readers: IntCounterVec,
    refused: IntCounterVec,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    publish_to_write: Histogram,
    /// Bytes the WebSocket connections hold in buffers of their own: what a client sent of a
    /// frame not yet whole, and what was taken for a socket and not yet written. Zero when
    /// every connection is idle.
    pub connection_buffers: IntGauge,
}

/// The series of one app, resolved once.
#[derive(Clone)]
pub struct AppMetrics {
    pub connections: IntGauge,
    pub sse_connections: IntGauge,
    pub subscriptions: IntGauge,
    pub channels: IntGauge,
    pub ws_messages_received: IntCounter,
    pub ws_bytes_received: IntCounter,
    pub messages_sent: IntCounter,
    pub bytes_sent: IntCounter,
    pub deliveries: IntCounter,
    pub published_api: IntCounter,
    pub published_client: IntCounter,
    pub slow_readers: IntCounter,
    pub publish_to_write: Histogram,
    app_id: String,
    disconnects: IntCounterVec,
}

impl AppMetrics {
    /// Counts a closed connection by why it closed and the close code sent (0 when none).
    pub fn disconnect(&self, reason: &str, code: u16) {
        self.disconnects
            .with_label_values(&[self.app_id.as_str(), reason, &code.to_string()])
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Makes metrics and registers them in one registry.
pub(crate) struct Registrar<'a>(pub(crate) &'a Registry);

impl Registrar<'_> {
    fn register<M: prometheus::core::Collector + Clone + 'static>(&self, metric: M) -> M {
        (self.0)
            .register(Box::new(metric.clone()))
            .expect("unique metric");
        metric
    }

    pub(crate) fn gauge(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.register(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    pub(crate) fn counter(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    /// One gauge for the node, without labels.
    fn node_gauge(&self, name: &str, help: &str) -> IntGauge {
        self.register(IntGauge::new(name, help).expect("valid metric"))
    }

    /// A gauge per app.
    fn app_gauge(&self, name: &str, help: &str) -> IntGaugeVec {
        self.gauge(name, help, &["app_id"])
    }

    /// A counter per app.
    fn app_counter(&self, name: &str, help: &str) -> IntCounterVec {
        self.counter(name, help, &["app_id"])
    }

    /// One histogram, its buckets `count` steps of `factor` from `start`.
    fn histogram(
        &self,
        name: &str,
        help: &str,
        (start, factor, count): (f64, f64, usize),
    ) -> Histogram {
        let buckets = prometheus::exponential_buckets(start, factor, count).expect("valid buckets");
        let opts = HistogramOpts::new(name, help).buckets(buckets);
        self.register(Histogram::with_opts(opts).expect("valid metric"))
    }

    /// A histogram per label values, its buckets `count` steps of `factor` from `start`.
    pub(crate) fn histograms(
        &self,
        name: &str,
        help: &str,
        (start, factor, count): (f64, f64, usize),
        labels: &[&str],
    ) -> HistogramVec {
        let buckets = prometheus::exponential_buckets(start, factor, count).expect("valid buckets");
        let opts = HistogramOpts::new(name, help).buckets(buckets);
        self.register(HistogramVec::new(opts, labels).expect("valid metric"))
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let r = Registrar(&registry);
        Metrics {
            connections: r.app_gauge(
                "chorus_connections",
                "Open client connections (WebSocket and SSE).",
            ),
            sse_connections: r.app_gauge(
                "chorus_sse_connections",
                "Open Server-Sent Events streams (also counted in chorus_connections).",
            ),
            subscriptions: r.app_gauge(
                "chorus_subscriptions",
                "Channel subscriptions held by open connections.",
            ),
            channels: r.app_gauge(
                "chorus_channels",
                "Channels with at least one subscriber on this node.",
            ),
            messages_received: r.counter(
                "chorus_messages_received_total",
                "Messages received from clients.",
                &["app_id", "transport"],
            ),
            bytes_received: r.counter(
                "chorus_bytes_received_total",
                "Bytes of messages received from clients.",
                &["app_id", "transport"],
            ),
            messages_sent: r.app_counter(
                "chorus_messages_sent_total",
                "Frames written to client connections, protocol frames included.",
            ),
            bytes_sent: r.app_counter(
                "chorus_bytes_sent_total",
                "Bytes of frames written to client connections.",
            ),
            deliveries: r.app_counter(
                "chorus_deliveries_total",
                "Published events written to a subscriber's connection.",
            ),
            published: r.counter(
                "chorus_events_published_total",
                "Events published to a channel, by where they came from.",
                &["app_id", "source"],
            ),
            disconnects: r.counter(
                "chorus_disconnects_total",
                "Closed client connections by reason and close code.",
                &["app_id", "reason", "code"],
            ),
            slow_readers: r.app_counter(
                "chorus_slow_reader_disconnects_total",
                "Connections cut off because their outbound buffer was full.",
            ),
            refused: r.counter(
                "chorus_connections_refused_total",
                "WebSocket and SSE handshakes refused for their client address, by reason.",
                &["reason"],
            ),
            http_requests: r.counter(
                "chorus_http_requests_total",
                "HTTP API requests by route and status.",
                &["route", "status"],
            ),
            http_duration: r.histograms(
                "chorus_http_request_duration_seconds",
                "HTTP API request handling time.",
                (0.0001, 4.0, 9),
                &["route"],
            ),
            publish_to_write: r.histogram(
                "chorus_publish_to_write_seconds",
                "Time from a message entering the node to its frame being handed to a socket.",
                (0.00005, 2.0, 16),
            ),
            connection_buffers: r.node_gauge(
                "chorus_connection_buffer_bytes",
                "Bytes WebSocket connections hold in buffers of their own (a frame not yet \
                 whole, frames taken for a socket and not yet written).",
            ),
            registry,
        }
    }

    pub fn for_app(&self, app_id: &str) -> AppMetrics {
        AppMetrics {
            connections: self.connections.with_label_values(&[app_id]),
            sse_connections: self.sse_connections.with_label_values(&[app_id]),
            subscriptions: self.subscriptions.with_label_values(&[app_id]),
            channels: self.channels.with_label_values(&[app_id]),
            ws_messages_received: self.messages_received.with_label_values(&[app_id, "ws"]),
            ws_bytes_received: self.bytes_received.with_label_values(&[app_id, "ws"]),
            messages_sent: self.messages_sent.with_label_values(&[app_id]),
            bytes_sent: self.bytes_sent.with_label_values(&[app_id]),
            deliveries: self.deliveries.with_label_values(&[app_id]),
            published_api: self.published.with_label_values(&[app_id, "api"]),
            published_client: self.published.with_label_values(&[app_id, "client"]),
            slow_readers: self.slow_readers.with_label_values(&[app_id]),
            publish_to_write: self.publish_to_write.clone(),
            app_id: app_id.to_owned(),
            disconnects: self.disconnects.clone(),
        }
    }

    /// Counts a handshake refused for its client address (`ip_connections`, `ip_handshakes`).
    pub fn refused(&self, reason: &str) {
        self.refused.with_label_values(&[reason]).inc();
    }

    /// Counts an HTTP request; `route` is the route pattern, never the concrete path.
    pub fn http_request(&self, route: &str, status: u16, seconds: f64) {
        self.http_requests
            .with_label_values(&[route, &status.to_string()])
            .inc();
        self.http_duration
            .with_label_values(&[route])
            .observe(seconds);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("exposition is UTF-8")
    }
}

impl Metrics {
    /// The registry every series of the node is in, for other parts of the node (the cluster)
    /// to register theirs.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_named_series() {
        let metrics = Metrics::new();
        let app = metrics.for_app("7");
        app.connections.inc();
        app.deliveries.inc_by(3);
        app.disconnect("client_closed", 0);
        metrics.http_request("/apps/{app_id}/events", 200, 0.001);
        let text = metrics.render();
        assert!(
            text.contains("chorus_connections{app_id=\"7\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("chorus_deliveries_total{app_id=\"7\"} 3"),
            "{text}"
        );
        assert!(text.contains(
            "chorus_http_requests_total{route=\"/apps/{app_id}/events\",status=\"200\"} 1"
        ));
        assert!(text.contains(
            "chorus_disconnects_total{app_id=\"7\",code=\"0\",reason=\"client_closed\"} 1"
        ));
    }
}
