//! The signed Pusher HTTP API, as far as the harness needs it: triggering events (one or a batch)
//! and reading channel state.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::common::Target;
use crate::error::{Error, Result};

/// An HTTP API client over keep-alive connections to every API node.
#[derive(Clone)]
pub struct Rest {
    client: reqwest::Client,
    target: Arc<Target>,
}

/// One event for [`Rest::events_body`] / [`Rest::batch_body`]. `data` must already be a JSON-safe
/// string (no quotes, backslashes or control characters), as the benchmark payloads are.
pub struct Event<'a> {
    pub name: &'a str,
    pub channel: &'a str,
    pub data: &'a str,
    /// The event's idempotency key, if it has one.
    pub key: Option<&'a str>,
}

impl Rest {
    pub fn new(target: Arc<Target>, max_idle_per_node: usize) -> Result<Rest> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(max_idle_per_node)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Rest { client, target })
    }

    pub fn nodes(&self) -> usize {
        self.target.api_nodes.len()
    }

    /// Body of `POST /apps/{id}/events` for one event on one channel.
    pub fn events_body(e: &Event) -> String {
        match e.key {
            None => format!(
                r#"{{"name":"{}","channel":"{}","data":"{}"}}"#,
                e.name, e.channel, e.data
            ),
            Some(key) => format!(
                r#"{{"name":"{}","channel":"{}","data":"{}","idempotency_key":"{key}"}}"#,
                e.name, e.channel, e.data
            ),
        }
    }

    /// Body of `POST /apps/{id}/batch_events`.
    pub fn batch_body(events: &[Event]) -> String {
        let mut body = String::from(r#"{"batch":["#);
        for (i, e) in events.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&Self::events_body(e));
        }
        body.push_str("]}");
        body
    }

    /// Signed POST of `body` to `/apps/{id}/{route}` on API node `node`; the response body on 2xx.
    pub async fn post(&self, node: usize, route: &str, body: String) -> Result<bytes::Bytes> {
        let base = &self.target.api_nodes[node % self.target.api_nodes.len()].base;
        let path = format!("/apps/{}/{route}", self.target.creds.app_id);
        let query = self.target.creds.signed_query(
            "POST",
            &path,
            &[],
            body.as_bytes(),
            crate::payload::now_us() / 1_000_000,
        );
        let url = format!("{base}{path}?{query}");
        let response = self
            .client
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        success_body(response, format!("{base}{path}")).await
    }

    /// Signed GET of `/apps/{id}/{route}` with `params`, parsed as JSON.
    pub async fn get(&self, node: usize, route: &str, params: &[(&str, &str)]) -> Result<Value> {
        let base = &self.target.api_nodes[node % self.target.api_nodes.len()].base;
        let path = format!("/apps/{}/{route}", self.target.creds.app_id);
        let query = self.target.creds.signed_query(
            "GET",
            &path,
            params,
            b"",
            crate::payload::now_us() / 1_000_000,
        );
        let response = self
            .client
            .get(format!("{base}{path}?{query}"))
            .send()
            .await?;
        let bytes = success_body(response, format!("{base}{path}")).await?;
        Ok(serde_json::from_slice(&bytes)?)
    }
}

/// The body of a 2xx response; any other status is an error that carries the body.
pub async fn success_body(response: reqwest::Response, url: String) -> Result<bytes::Bytes> {
    let status = response.status();
    let bytes = response.bytes().await?;
    if !status.is_success() {
        return Err(Error::HttpStatus {
            url,
            status: status.as_u16(),
            body: String::from_utf8_lossy(&bytes).into_owned(),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_valid_json() {
        let e = Event {
            name: "lt",
            channel: "lt-1",
            data: "#LT1:0:1:2:xx",
            key: None,
        };
        let one: Value = serde_json::from_str(&Rest::events_body(&e)).unwrap();
        assert_eq!(one["channel"], "lt-1");
        assert_eq!(one["data"], "#LT1:0:1:2:xx");
        let batch: Value = serde_json::from_str(&Rest::batch_body(&[
            e,
            Event {
                name: "lt",
                channel: "lt-2",
                data: "d",
                key: Some("k-2"),
            },
        ]))
        .unwrap();
        assert_eq!(batch["batch"].as_array().unwrap().len(), 2);
        assert_eq!(batch["batch"][1]["channel"], "lt-2");
        assert_eq!(batch["batch"][1]["idempotency_key"], "k-2");
        assert!(batch["batch"][0].get("idempotency_key").is_none());
    }
}
