//! Which address a request comes from: the peer's, unless the peer is a trusted proxy; then the
//! nearest address in `X-Forwarded-For` that is not itself a trusted proxy (each proxy appends
//! the address it heard from, so the entries a client wrote itself come first and are never
//! believed). A trusted proxy that names no client gives no address: it is never limited as if
//! it were one client.

use std::net::IpAddr;

use crate::http::edge::{canonical, Network};

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
