//! One webhook request as Pusher sends it, and what its answer means for the events in it.
//!
//! The body is `{"time_ms": ..., "events": [...]}`, signed with the app's secret in
//! `X-Pusher-Signature` (hex HMAC-SHA256 of the exact body) beside `X-Pusher-Key`. A 2xx
//! delivers; a connection error, a timeout, 408, 429 or a 5xx is worth retrying; anything else
//! (a redirect is never followed) refuses the events for good. The answer's body is never read.

use std::time::Duration;

use reqwest::header::{HeaderValue, CONTENT_TYPE};
use reqwest::StatusCode;

use crate::protocol::signature;

use super::settings::WebhookConfig;

/// What became of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Worth trying again; the reason as metrics label it.
    Retry(&'static str),
    /// Not to be retried: the receiver's status.
    Refused(u16),
}

/// The HTTP client every webhook of the node shares: no redirects, bounded connecting.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(4)
        .build()
        .expect("a client with these settings builds")
}

/// The body of a request carrying `events` (each already a JSON object).
pub fn body(time_ms: u64, events: &[&[u8]]) -> Vec<u8> {
    let size: usize = events.iter().map(|e| e.len() + 1).sum();
    let mut body = Vec::with_capacity(40 + size);
    body.extend_from_slice(format!("{{\"time_ms\":{time_ms},\"events\":[").as_bytes());
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(event);
    }
    body.extend_from_slice(b"]}");
    body
}

/// What an answer's status means.
pub fn outcome_of(status: StatusCode) -> Outcome {
    if status.is_success() {
        Outcome::Delivered
    } else if status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
    {
        Outcome::Retry("status")
    } else {
        Outcome::Refused(status.as_u16())
    }
}

/// Sends `body` to `webhook`, signed for the app (`key`, `secret`), within `timeout`.
pub async fn post(
    client: &reqwest::Client,
    webhook: &WebhookConfig,
    key: &str,
    secret: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Outcome {
    let text = std::str::from_utf8(&body).expect("webhook bodies are JSON");
    let signature = signature::sign(secret, text);
    let mut request = client
        .post(&webhook.url)
        .timeout(timeout)
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .header("X-Pusher-Key", key)
        .header("X-Pusher-Signature", signature);
    for (name, value) in &webhook.headers {
        request = request.header(name, value);
    }
    match request.body(body).send().await {
        Ok(response) => outcome_of(response.status()),
        Err(e) if e.is_timeout() => Outcome::Retry("timeout"),
        Err(_) => Outcome::Retry("connection"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_holds_the_events_as_they_are() {
        let body = body(12, &[br#"{"name":"a"}"#, br#"{"name":"b"}"#]);
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({"time_ms": 12, "events": [{"name": "a"}, {"name": "b"}]})
        );
    }

    #[test]
    fn which_answers_are_retried() {
        let of = |code: u16| outcome_of(StatusCode::from_u16(code).unwrap());
        assert_eq!(of(200), Outcome::Delivered);
        assert_eq!(of(204), Outcome::Delivered);
        for retried in [408, 429, 500, 502, 503] {
            assert_eq!(of(retried), Outcome::Retry("status"), "{retried}");
        }
        for refused in [301, 302, 400, 401, 404, 410] {
            assert_eq!(of(refused), Outcome::Refused(refused), "{refused}");
        }
    }
}
