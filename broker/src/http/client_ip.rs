//! Which address a request comes from: the peer's, unless the peer is a trusted proxy; then the
//! nearest address in `X-Forwarded-For` that is not itself a trusted proxy (each proxy appends
//! the address it heard from, so the entries a client wrote itself come first and are never
//! believed). A trusted proxy that names no client gives no address: it is never limited as if
//! it were one client. The trusted proxies are [`Network`]s (the setting `trusted_proxies`).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

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

impl FromStr for Network {
    type Err = String;

    fn from_str(text: &str) -> Result<Network, String> {
        Network::parse(text).ok_or_else(|| {
            format!("{text:?} is not an address or a network (a.b.c.d, a.b.c.d/n, fd00::/8)")
        })
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Network {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Network, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The client's address, given the peer's and the request's `X-Forwarded-For` values.
pub fn client_ip<'a>(
    peer: Option<IpAddr>,
    forwarded_for: impl Iterator<Item = &'a str>,
    trusted: &[Network],
) -> Option<IpAddr> {
    let peer = canonical(peer?);
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(peer) {
        return Some(peer);
    }
    let hops: Vec<&str> = forwarded_for
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect();
    for hop in hops.iter().rev() {
        let ip = canonical(hop.parse::<IpAddr>().ok()?);
        if !is_trusted(ip) {
            return Some(ip);
        }
    }
    None
}

/// The client's address of an actix request.
pub fn of_request(req: &actix_web::HttpRequest, trusted: &[Network]) -> Option<IpAddr> {
    let forwarded = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok());
    client_ip(req.peer_addr().map(|a| a.ip()), forwarded, trusted)
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
        let net: Network = "10.1.0.0/16".parse().unwrap();
        assert_eq!(net.to_string().parse::<Network>(), Ok(net));
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = [
            Network::parse("127.0.0.9").unwrap(),
            Network::parse("10.0.0.0/8").unwrap(),
        ];
        let client = |peer: &str, xff: &[&str]| client_ip(ip(peer), xff.iter().copied(), &trusted);
        // Not a proxy: its own header is ignored.
        assert_eq!(client("127.0.0.2", &["1.2.3.4"]), ip("127.0.0.2"));
        // A trusted proxy names the client; what the client wrote before it is not believed.
        assert_eq!(client("127.0.0.9", &["6.6.6.6, 1.2.3.4"]), ip("1.2.3.4"));
        // Through two trusted proxies.
        assert_eq!(client("127.0.0.9", &["1.2.3.4", "10.1.1.1"]), ip("1.2.3.4"));
        // A trusted proxy that names no one, or garbage, is no client.
        assert_eq!(client("127.0.0.9", &[]), None);
        assert_eq!(client("127.0.0.9", &["nonsense"]), None);
        assert_eq!(client("127.0.0.9", &["10.2.2.2"]), None);
        assert_eq!(client("::ffff:127.0.0.2", &[]), ip("127.0.0.2"));
    }
}
