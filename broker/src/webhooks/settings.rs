//! An app's webhook settings, as its config file gives them, and their checks.
//!
//! ```toml
//! [[apps.webhooks]]
//! url = "https://app.example.com/pusher/webhook"
//! event_types = ["client_event", "cache_miss"]
//! filter = { channel_name_starts_with = "presence-" }   # optional
//! headers = { "X-From" = "chorus" }                      # optional
//!
//! [apps.webhook_delivery]                                # optional, Pusher's defaults
//! batching = true
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

use super::event::WebhookKind;

/// Where one of an app's webhooks goes and which events it wants.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// An absolute `http` or `https` URL.
    pub url: String,
    /// Which events it receives, by Pusher's names.
    pub event_types: Vec<String>,
    /// Only events of channels whose name matches.
    #[serde(default)]
    pub filter: ChannelFilter,
    /// Sent with every request, besides Pusher's own headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// A channel name's required start and end (empty: any).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelFilter {
    #[serde(default)]
    pub channel_name_starts_with: String,
    #[serde(default)]
    pub channel_name_ends_with: String,
}

impl ChannelFilter {
    pub fn matches(&self, channel: &str) -> bool {
        channel.starts_with(&self.channel_name_starts_with)
            && channel.ends_with(&self.channel_name_ends_with)
    }
}

/// How an app's webhooks are sent. The defaults are Pusher's.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookDelivery {
    /// Several events in one request: those queued within `batch_window_ms` of the first, at
    /// most `batch_max_events`.
    pub batching: bool,
    pub batch_window_ms: u64,
    pub batch_max_events: usize,
    /// How long a failing webhook is retried before it is dropped (and counted).
    pub retry_window_secs: u64,
    /// The longest wait between two tries: the wait doubles from 500 ms after each failure in
    /// a row, up to this.
    pub max_backoff_ms: u64,
    /// How long one request may take, connecting included.
    pub timeout_ms: u64,
    /// Webhooks waiting per webhook URL at most; beyond, the oldest are dropped (and counted).
    pub max_queued: u64,
    /// How long `channel_vacated` waits: a channel occupied again within it sends neither.
    pub vacate_delay_ms: u64,
}

impl Default for WebhookDelivery {
    fn default() -> Self {
        WebhookDelivery {
            batching: true,
            batch_window_ms: 250,
            batch_max_events: 20,
            retry_window_secs: 300,
            max_backoff_ms: 60_000,
            timeout_ms: 5000,
            max_queued: 100_000,
            vacate_delay_ms: 3000,
        }
    }
}

/// Headers a webhook's own may not replace.
/// The longest webhook URL: the cluster names a webhook by its URL in its log.
const LONGEST_URL: usize = 1024;

const RESERVED_HEADERS: [&str; 4] = [
    "content-type",
    "content-length",
    "x-pusher-key",
    "x-pusher-signature",
];

/// Checks one webhook; on a problem, the key under the webhook (`url`, `event_types`, ...) and
/// what is wrong.
pub fn check_webhook(webhook: &WebhookConfig) -> Result<(), (String, String)> {
    let problem = |key: &str, text: String| Err((key.to_owned(), text));
    match reqwest::Url::parse(&webhook.url) {
        _ if webhook.url.len() > LONGEST_URL => {
            return problem("url", format!("longer than {LONGEST_URL} bytes"))
        }
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
        Ok(_) => return problem("url", format!("{:?} is not an http(s) URL", webhook.url)),
        Err(e) => return problem("url", format!("{:?}: {e}", webhook.url)),
    }
    if webhook.event_types.is_empty() {
        return problem("event_types", "names no event".to_owned());
    }
    for name in &webhook.event_types {
        match WebhookKind::parse(name) {
            Some(_) => {}
            None => {
                let known: Vec<_> = WebhookKind::ALL.iter().map(|k| k.name()).collect();
                return problem(
                    "event_types",
                    format!(
                        "{name:?} is not an event type (known: {})",
                        known.join(", ")
                    ),
                );
            }
        }
    }
    for (name, value) in &webhook.headers {
        let valid = reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_ok()
            && reqwest::header::HeaderValue::from_str(value).is_ok();
        if !valid {
            return problem("headers", format!("{name:?} is not a valid header"));
        }
        if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            return problem("headers", format!("{name:?} is set by Chorus"));
        }
    }
    Ok(())
}

/// Checks an app's delivery settings; on a problem, the key and what is wrong.
pub fn check_delivery(delivery: &WebhookDelivery) -> Result<(), (String, String)> {
    let ranges: [(&str, u64, u64, u64); 7] = [
        ("batch_window_ms", delivery.batch_window_ms, 0, 60_000),
        (
            "batch_max_events",
            delivery.batch_max_events as u64,
            1,
            1000,
        ),
        (
            "retry_window_secs",
            delivery.retry_window_secs,
            1,
            7 * 86_400,
        ),
        ("max_backoff_ms", delivery.max_backoff_ms, 500, 600_000),
        ("timeout_ms", delivery.timeout_ms, 100, 120_000),
        ("max_queued", delivery.max_queued, 1, 100_000_000),
        ("vacate_delay_ms", delivery.vacate_delay_ms, 0, 60_000),
    ];
    for (key, value, min, max) in ranges {
        if !(min..=max).contains(&value) {
            return Err((key.to_owned(), format!("must be between {min} and {max}")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webhook(url: &str, types: &[&str]) -> WebhookConfig {
        WebhookConfig {
            url: url.to_owned(),
            event_types: types.iter().map(|t| t.to_string()).collect(),
            filter: ChannelFilter::default(),
            headers: BTreeMap::new(),
        }
    }

    #[test]
    fn a_webhook_needs_an_http_url_and_known_event_types() {
        assert!(check_webhook(&webhook("https://a.example/hook", &["client_event"])).is_ok());
        let key = |w: &WebhookConfig| check_webhook(w).unwrap_err().0;
        assert_eq!(key(&webhook("ftp://a.example/", &["client_event"])), "url");
        assert_eq!(key(&webhook("not a url", &["client_event"])), "url");
        assert_eq!(key(&webhook("http://a.example/", &[])), "event_types");
        assert_eq!(
            key(&webhook("http://a.example/", &["occupied"])),
            "event_types"
        );
        let long = format!("http://a.example/{}", "x".repeat(LONGEST_URL));
        assert_eq!(key(&webhook(&long, &["client_event"])), "url");
        let every: Vec<&str> = WebhookKind::ALL.iter().map(|k| k.name()).collect();
        assert!(check_webhook(&webhook("http://a.example/", &every)).is_ok());
    }

    #[test]
    fn pusher_headers_cannot_be_replaced() {
        let mut w = webhook("http://a.example/", &["cache_miss"]);
        w.headers.insert("X-Pusher-Signature".into(), "x".into());
        assert_eq!(check_webhook(&w).unwrap_err().0, "headers");
        w.headers.clear();
        w.headers.insert("X-From".into(), "chorus".into());
        assert!(check_webhook(&w).is_ok());
        w.headers.insert("bad header".into(), "x".into());
        assert_eq!(check_webhook(&w).unwrap_err().0, "headers");
    }

    #[test]
    fn filters_match_both_ends() {
        let filter = ChannelFilter {
            channel_name_starts_with: "presence-".into(),
            channel_name_ends_with: "-room".into(),
        };
        assert!(filter.matches("presence-a-room"));
        assert!(!filter.matches("private-a-room"));
        assert!(!filter.matches("presence-a"));
        assert!(ChannelFilter::default().matches("anything"));
    }

    #[test]
    fn delivery_settings_are_bounded() {
        assert!(check_delivery(&WebhookDelivery::default()).is_ok());
        let zero_timeout = WebhookDelivery {
            timeout_ms: 0,
            ..WebhookDelivery::default()
        };
        assert_eq!(check_delivery(&zero_timeout).unwrap_err().0, "timeout_ms");
    }
}
