//! A network partition between real `chorus` processes: a TCP proxy per node, in the test
//! process, through which all the cluster traffic to that node goes, and which can cut the links
//! of one node and restore them.
//!
//! Node N listens on its own loopback address (`127.0.1.N`: Linux routes all of `127/8` to
//! `lo`) and sends its cluster traffic from it (a node whose `host` is one address sends from
//! it). Every node's peer list names the proxies (`127.0.0.1:pN`), so a connection to node N
//! arrives at proxy N, which knows where it comes from by its source address and passes it on
//! to node N's cluster port. [`Partition::isolate`] cuts node N off: its proxy, and every other
//! proxy for connections from N, close new connections as soon as they are accepted (the sender
//! sees the connection closed before any answer, much as after a firewall's reset) and abort the
//! open ones, so nothing N sends reaches the others and nothing they send reaches N;
//! [`Partition::heal`] lets everything through again. Clients and the test's own status requests go to the nodes directly, never through a
//! proxy.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

/// The loopback address node `id` listens on and sends from.
pub fn node_host(id: u64) -> IpAddr {
    let last = u8::try_from(id).expect("a node id below 256");
    IpAddr::V4(Ipv4Addr::new(127, 0, 1, last))
}

/// One connection passed on by a proxy: between which nodes (`from` is `None` when it does not
/// come from a node's address), and the task copying its bytes.
struct Link {
    from: Option<u64>,
    to: u64,
    copying: AbortHandle,
}

/// What the proxies share: which nodes are cut off, which node each source address is, and the
/// open links.
#[derive(Default)]
struct Links {
    isolated: BTreeSet<u64>,
    nodes_by_host: BTreeMap<IpAddr, u64>,
    open: Vec<Link>,
}

impl Links {
    fn cut(&self, from: Option<u64>, to: u64) -> bool {
        self.isolated.contains(&to) || from.is_some_and(|from| self.isolated.contains(&from))
    }
}

/// The proxies of one cluster's nodes; they stop when it is dropped.
#[derive(Default)]
pub struct Partition {
    links: Arc<Mutex<Links>>,
    proxies: Vec<JoinHandle<()>>,
}

impl Partition {
    /// Starts the proxy of node `id`, which listens on `host` and whose cluster port is
    /// `cluster_addr`; returns the address the other nodes are to reach it at.
    pub async fn proxy(&mut self, id: u64, host: IpAddr, cluster_addr: SocketAddr) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a proxy port");
        let addr = listener.local_addr().unwrap();
        self.links.lock().unwrap().nodes_by_host.insert(host, id);
        let links = self.links.clone();
        self.proxies.push(tokio::spawn(async move {
            loop {
                let Ok((inbound, source)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(pass_on(links.clone(), inbound, source, id, cluster_addr));
            }
        }));
        addr
    }

    /// Cuts node `id` off from the others: no connection to or from it goes through, and the
    /// open ones are aborted.
    pub fn isolate(&self, id: u64) {
        let mut links = self.links.lock().unwrap();
        links.isolated.insert(id);
        links.open.retain(|link| {
            let cut = link.from == Some(id) || link.to == id;
            if cut {
                link.copying.abort();
            }
            !cut
        });
    }

    /// Lets every connection through again.
    pub fn heal(&self) {
        self.links.lock().unwrap().isolated.clear();
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        for proxy in &self.proxies {
            proxy.abort();
        }
        for link in &self.links.lock().unwrap().open {
            link.copying.abort();
        }
    }
}

/// Passes on a connection that came to node `to`'s proxy from `source`, unless the link is cut:
/// then (or if the node does not answer) the connection is closed at once.
async fn pass_on(
    links: Arc<Mutex<Links>>,
    mut inbound: TcpStream,
    source: SocketAddr,
    to: u64,
    cluster_addr: SocketAddr,
) {
    let from = links
        .lock()
        .unwrap()
        .nodes_by_host
        .get(&source.ip())
        .copied();
    if links.lock().unwrap().cut(from, to) {
        return;
    }
    let Ok(mut outbound) = TcpStream::connect(cluster_addr).await else {
        return;
    };
    // Registered under the same lock `isolate` takes, so no link escapes a cut.
    let mut links = links.lock().unwrap();
    if links.cut(from, to) {
        return;
    }
    let copying = tokio::spawn(async move {
        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
    });
    links.open.retain(|link| !link.copying.is_finished());
    links.open.push(Link {
        from,
        to,
        copying: copying.abort_handle(),
    });
}
