//! The limits of the node's public edge that are not an app's: how long and how slowly a request
//! body may arrive, how many connections and handshakes one client address may have, and which
//! proxies are trusted to name the client in `X-Forwarded-For`. Their settings are fields of
//! [`Config`] (`body_timeout_secs`, `body_min_bytes_per_sec`, `max_connections_per_ip`,
//! `max_handshakes_per_ip_per_sec`, `trusted_proxies`); the per-IP limits are off (0) unless
//! configured. The public port's workers share one [`Edge`] (actix app data).

use std::time::{Duration, Instant};

use actix_web::HttpRequest;

use crate::config::Config;
use crate::http::client_ip::{self, Network};
use crate::http::per_ip::{PerIp, Refusal, Slot};
use crate::metrics::Metrics;

/// How a request body must arrive.
#[derive(Debug, Clone, Copy)]
pub struct BodyDeadline {
    /// The longest wait for the next bytes of a body, and the time every body gets on top of
    /// what its length needs at the minimum rate.
    pub idle: Duration,
    /// The slowest a body may arrive, in bytes per second, over the whole body.
    pub min_bytes_per_sec: u64,
}

impl BodyDeadline {
    /// The whole time a body of `len` bytes may take.
    pub fn for_len(&self, len: usize) -> Duration {
        let at_min_rate = len as f64 / self.min_bytes_per_sec.max(1) as f64;
        self.idle + Duration::from_secs_f64(at_min_rate)
    }
}

/// The edge settings; see the module's doc.
#[derive(Debug, Clone)]
pub struct EdgeSettings {
    pub body: BodyDeadline,
    /// Open WebSocket and SSE connections per client address; 0: no limit.
    pub max_connections_per_ip: u32,
    /// WebSocket and SSE handshakes per client address per second; 0: no limit.
    pub max_handshakes_per_ip_per_sec: u32,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<Network>,
}

impl EdgeSettings {
    pub fn of(config: &Config) -> EdgeSettings {
        EdgeSettings {
            body: BodyDeadline::of(config),
            max_connections_per_ip: config.max_connections_per_ip,
            max_handshakes_per_ip_per_sec: config.max_handshakes_per_ip_per_sec,
            trusted_proxies: config.trusted_proxies.clone(),
        }
    }
}

impl BodyDeadline {
    pub fn of(config: &Config) -> BodyDeadline {
        BodyDeadline {
            idle: Duration::from_secs(config.body_timeout_secs),
            min_bytes_per_sec: config.body_min_bytes_per_sec.max(1),
        }
    }
}

/// The node's edge: its settings and the per-IP counts, shared by the public port's workers.
pub struct Edge {
    pub settings: EdgeSettings,
    pub per_ip: PerIp,
}

impl Edge {
    pub fn new(config: &Config) -> Edge {
        let settings = EdgeSettings::of(config);
        Edge {
            per_ip: PerIp::new(
                settings.max_connections_per_ip,
                settings.max_handshakes_per_ip_per_sec,
            ),
            settings,
        }
    }

    /// Takes a place for a WebSocket or SSE request's client address (see `per_ip.rs`),
    /// counting a refusal by its reason.
    pub fn admit(&self, req: &HttpRequest, metrics: &Metrics) -> Result<Slot, Refusal> {
        let ip = client_ip::of_request(req, &self.settings.trusted_proxies);
        self.per_ip
            .admit(ip, Instant::now())
            .inspect_err(|e| metrics.refused(e.reason()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_gets_the_idle_time_and_its_length_at_the_minimum_rate() {
        let d = BodyDeadline {
            idle: Duration::from_secs(5),
            min_bytes_per_sec: 16 * 1024,
        };
        assert_eq!(d.for_len(0), Duration::from_secs(5));
        assert_eq!(d.for_len(32 * 1024), Duration::from_secs(7));
    }
}
