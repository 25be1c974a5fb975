//! The limits of the node's public edge that are not an app's: how long and how slowly a request
//! body may arrive, how many connections and handshakes one client address may have, and which
//! proxies are trusted to name the client in `X-Forwarded-For`.
//!
//! They are read from the environment once, the first time they are needed, with the defaults
//! below (per-IP limits off). Every name is `CHORUS_` and the setting's name in capitals.

use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use actix_web::HttpRequest;

use crate::http::client_ip;
use crate::http::per_ip::{PerIp, Refusal, Slot};
use crate::node::Node;

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

/// A network of trusted proxies: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    /// `10.0.0.0/8`, `::1` or `fd00::/8`; `None` when it is neither.
    pub fn parse(text: &str) -> Option<Network> {
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (text.trim().parse::<IpAddr>().ok()?, None),
        };
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(bits);
        (prefix <= bits).then_some(Network { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

/// An IPv4 address written as IPv6 (`::ffff:a.b.c.d`) is that IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn prefix_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let (whole, rest) = (usize::from(prefix / 8), prefix % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    rest == 0 || {
        let mask = 0xFFu8 << (8 - rest);
        a[whole] & mask == b[whole] & mask
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

impl Default for EdgeSettings {
    fn default() -> Self {
        EdgeSettings {
            body: BodyDeadline {
                idle: Duration::from_secs(5),
                min_bytes_per_sec: 16 * 1024,
            },
            max_connections_per_ip: 0,
            max_handshakes_per_ip_per_sec: 0,
            trusted_proxies: Vec::new(),
        }
    }
}

/// A setting that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{name}={value:?}: {problem}")]
pub struct SettingError {
    name: &'static str,
    value: String,
    problem: &'static str,
}

impl EdgeSettings {
    /// The defaults, with what `var` gives for each name (the process environment in a node).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<EdgeSettings, SettingError> {
        let mut s = EdgeSettings::default();
        let number = |name: &'static str, default: u64| -> Result<u64, SettingError> {
            var(name).map_or(Ok(default), |value| {
                value.trim().parse().map_err(|_| SettingError {
                    name,
                    value,
                    problem: "not a whole number",
                })
            })
        };
        let idle = number("CHORUS_BODY_TIMEOUT_SECS", s.body.idle.as_secs())?;
        s.body.idle = Duration::from_secs(idle.clamp(1, 3600));
        s.body.min_bytes_per_sec =
            number("CHORUS_BODY_MIN_BYTES_PER_SEC", s.body.min_bytes_per_sec)?.max(1);
        let small = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        s.max_connections_per_ip = small(number("CHORUS_MAX_CONNECTIONS_PER_IP", 0)?);
        s.max_handshakes_per_ip_per_sec = small(number("CHORUS_MAX_HANDSHAKES_PER_IP_PER_SEC", 0)?);
        if let Some(value) = var("CHORUS_TRUSTED_PROXIES") {
            for part in value.split(',').filter(|p| !p.trim().is_empty()) {
                let network = Network::parse(part).ok_or_else(|| SettingError {
                    name: "CHORUS_TRUSTED_PROXIES",
                    value: value.clone(),
                    problem: "give addresses or networks (a.b.c.d/n), comma-separated",
                })?;
                s.trusted_proxies.push(network);
            }
        }
        Ok(s)
    }
}

/// The node's edge: its settings and the per-IP counts.
pub struct Edge {
    pub settings: EdgeSettings,
    pub per_ip: PerIp,
}

/// The process's edge, made from the environment the first time it is asked for. A setting
/// that cannot be read is reported and its default used.
pub fn edge() -> &'static Edge {
    static EDGE: OnceLock<Edge> = OnceLock::new();
    EDGE.get_or_init(|| {
        let settings =
            EdgeSettings::from_vars(|name| std::env::var(name).ok()).unwrap_or_else(|e| {
                tracing::error!(error = %e, "edge setting refused; using the defaults");
                EdgeSettings::default()
            });
        Edge {
            per_ip: PerIp::new(&settings),
            settings,
        }
    })
}

/// Takes a place for a WebSocket or SSE request's client address (see `per_ip.rs`), counting
/// a refusal by its reason.
pub fn admit_address(node: &Node, req: &HttpRequest) -> Result<Slot, Refusal> {
    let edge = edge();
    let ip = client_ip::of_request(req, &edge.settings.trusted_proxies);
    edge.per_ip
        .admit(ip, Instant::now())
        .inspect_err(|e| node.metrics.refused(e.reason()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_match_by_prefix() {
        let net = Network::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        let one = Network::parse("127.0.0.9").unwrap();
        assert!(one.contains("127.0.0.9".parse().unwrap()));
        assert!(!one.contains("127.0.0.8".parse().unwrap()));
        let odd = Network::parse("192.168.0.128/25").unwrap();
        assert!(odd.contains("192.168.0.200".parse().unwrap()));
        assert!(!odd.contains("192.168.0.100".parse().unwrap()));
        assert!(Network::parse("fd00::/8")
            .unwrap()
            .contains("fd12::1".parse().unwrap()));
        for bad in ["", "10.0.0.0/33", "nope", "1.2.3.4/x"] {
            assert_eq!(Network::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn settings_come_from_the_variables_and_bad_ones_are_refused() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let s = EdgeSettings::from_vars(vars(&[
            ("CHORUS_MAX_CONNECTIONS_PER_IP", "3"),
            ("CHORUS_TRUSTED_PROXIES", "127.0.0.9, 10.0.0.0/8"),
        ]))
        .unwrap();
        assert_eq!(s.max_connections_per_ip, 3);
        assert_eq!(s.max_handshakes_per_ip_per_sec, 0);
        assert_eq!(s.trusted_proxies.len(), 2);
        assert!(EdgeSettings::from_vars(vars(&[("CHORUS_TRUSTED_PROXIES", "x")])).is_err());
        assert!(EdgeSettings::from_vars(vars(&[("CHORUS_BODY_TIMEOUT_SECS", "-1")])).is_err());
        let d = EdgeSettings::default().body;
        assert_eq!(d.for_len(0), Duration::from_secs(5));
        assert_eq!(d.for_len(32 * 1024), Duration::from_secs(7));
    }
}
