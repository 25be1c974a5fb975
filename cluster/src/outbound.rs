//! The HTTP clients of this node's cluster traffic (Raft RPCs, proposals, joins, questions to
//! the other members, forwarded frames), and of the operator's `chorus cluster` commands.
//!
//! A node whose `host` is a specific address sends that traffic from it
//! ([`reqwest::ClientBuilder::local_address`]): on a machine with several addresses the other
//! nodes (and any firewall between them) see it come from the address it is reached at, not
//! from whichever one the routing table picks. A node listening on every address
//! (`0.0.0.0`, the default) leaves the choice to the system. Every client resolves host names
//! through [`Names`], never the C library.

use std::net::IpAddr;
use std::time::Duration;

use crate::resolve::Names;

/// How long connecting to another node's cluster port may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A client for cluster traffic, sending from `local_address` when there is one. Its
/// connections stay open to each destination (keep-alive) between requests.
pub(crate) fn cluster_client(
    local_address: Option<IpAddr>,
    names: &Names,
) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_idle_timeout(Duration::from_secs(90))
        .local_address(local_address)
        .dns_resolver(names.clone())
        .build()
}

/// A client for an operator's command to a node's cluster port (`chorus cluster status`).
pub fn operator_client() -> Result<reqwest::Client, reqwest::Error> {
    cluster_client(None, &Names::default())
}
