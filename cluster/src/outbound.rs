//! The HTTP clients of this node's cluster traffic (Raft RPCs, proposals, joins, questions to
//! the other members, forwarded frames), and of the operator's `chorus cluster` commands.
//!
//! A [`ClusterClient`] speaks `https://` when the cluster's ports speak TLS (its connections then
//! trust the cluster's certificate authority alone: the TLS configuration it is given), else
//! `http://`; every request names a node's cluster address and a path, never a whole URL.
//!
//! A node whose `host` is a specific address sends that traffic from it
//! ([`reqwest::ClientBuilder::local_address`]): on a machine with several addresses the other
//! nodes (and any firewall between them) see it come from the address it is reached at, not
//! from whichever one the routing table picks. A node listening on every address
//! (`0.0.0.0`, the default) leaves the choice to the system. Every client resolves host names
//! through [`Names`], never the C library, and ignores the proxy variables (`HTTP_PROXY`, ...):
//! cluster traffic goes straight to the other nodes.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::resolve::Names;

/// How long connecting to another node's cluster port may take (a TLS handshake included).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A client of other nodes' cluster ports. Its connections stay open to each destination
/// (keep-alive) between requests. Cheap to clone: the clones share them.
#[derive(Debug, Clone)]
pub struct ClusterClient {
    http: reqwest::Client,
    scheme: &'static str,
}

impl ClusterClient {
    /// A `POST` to `path` on the cluster port at `addr` (`host:port`).
    pub fn post(&self, addr: &str, path: &str) -> reqwest::RequestBuilder {
        self.http.post(self.url(addr, path))
    }

    /// A `GET` of `path` on the cluster port at `addr` (`host:port`).
    pub fn get(&self, addr: &str, path: &str) -> reqwest::RequestBuilder {
        self.http.get(self.url(addr, path))
    }

    fn url(&self, addr: &str, path: &str) -> String {
        format!("{}://{addr}{path}", self.scheme)
    }
}

/// A client for cluster traffic, sending from `local_address` when there is one, over TLS when
/// `tls` is given.
pub(crate) fn cluster_client(
    local_address: Option<IpAddr>,
    tls: Option<&rustls::ClientConfig>,
    names: &Names,
) -> Result<ClusterClient, reqwest::Error> {
    let builder = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_idle_timeout(Duration::from_secs(90))
        .local_address(local_address)
        .dns_resolver(Arc::new(names.clone()))
        .no_proxy();
    let (builder, scheme) = match tls {
        Some(tls) => (builder.use_preconfigured_tls(tls.clone()), "https"),
        None => (builder, "http"),
    };
    Ok(ClusterClient {
        http: builder.build()?,
        scheme,
    })
}

/// A client for an operator's command to a node's cluster port (`chorus cluster status`), over
/// TLS when `tls` is given.
pub fn operator_client(
    tls: Option<&rustls::ClientConfig>,
) -> Result<ClusterClient, reqwest::Error> {
    cluster_client(None, tls, &Names::default())
}
