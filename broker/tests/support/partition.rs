//! A network partition between real `chorus` processes: a TCP proxy per node, in the test
//! process, through which all the cluster traffic to that node goes, and which can cut the links
//! of one node and restore them.
//!
//! Node N listens on its own loopback address (`127.0.1.N`: Linux routes all of `127/8` to
//! `lo`) and sends its cluster traffic from it (a node whose `host` is one address sends from
//! it). Every node's peer list names the proxies (`127.0.0.1:pN`), so a connection to node N
//! arrives at proxy N, which knows where it comes from by its source address and passes it on
//! to node N's cluster port. [`Partition::isolate`] cuts node N off, so that nothing N sends
//! reaches the others and nothing they send reaches N, in one of two ways ([`Cut`]): rejected,
//! as by a firewall that resets, or dropped, as by a network that loses the packets;
//! [`Partition::heal`] lets everything through again. Clients and the test's own status requests
//! go to the nodes directly, never through a proxy.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};

/// The loopback address node `id` listens on and sends from.
pub fn node_host(id: u64) -> IpAddr {
    let last = u8::try_from(id).expect("a node id below 256");
    IpAddr::V4(Ipv4Addr::new(127, 0, 1, last))
}

/// How a cut-off node's links behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// A new connection is closed as soon as it is accepted (the sender sees it closed before
    /// any answer) and the open ones are aborted.
    Rejected,
    /// Connections, new and open, stay open but pass no byte: the sender waits for an answer
    /// until it gives up. Once healed, what was held goes through, as TCP retransmits.
    Dropped,
}

/// One connection passed on by a proxy: between which nodes (`from` is `None` when it does not
/// come from a node's address), and the task passing its bytes.
struct Link {
    from: Option<u64>,
    to: u64,
    passing: AbortHandle,
}

/// What the proxies share: which nodes are cut off and how, which node each source address is,
/// and the open links.
#[derive(Default)]
struct Links {
    rejected: BTreeSet<u64>,
    nodes_by_host: BTreeMap<IpAddr, u64>,
    open: Vec<Link>,
}

/// The nodes whose links are cut by [`Cut::Dropped`]: a link's bytes wait while this holds
/// either of its ends.
type Dropped = watch::Sender<BTreeSet<u64>>;

fn is_cut(cut_off: &BTreeSet<u64>, from: Option<u64>, to: u64) -> bool {
    cut_off.contains(&to) || from.is_some_and(|from| cut_off.contains(&from))
}

/// The proxies of one cluster's nodes; they stop when it is dropped.
pub struct Partition {
    links: Arc<Mutex<Links>>,
    dropped: Arc<Dropped>,
    proxies: Vec<JoinHandle<()>>,
}

impl Default for Partition {
    fn default() -> Partition {
        Partition {
            links: Arc::default(),
            dropped: Arc::new(watch::Sender::new(BTreeSet::new())),
            proxies: Vec::new(),
        }
    }
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
        let dropped = self.dropped.clone();
        self.proxies.push(tokio::spawn(async move {
            loop {
                let Ok((inbound, source)) = listener.accept().await else {
                    continue;
                };
                let (links, dropped) = (links.clone(), dropped.clone());
                tokio::spawn(pass_on(links, dropped, inbound, source, id, cluster_addr));
            }
        }));
        addr
    }

    /// Cuts node `id` off from the others, as `cut` says.
    pub fn isolate(&self, id: u64, cut: Cut) {
        match cut {
            Cut::Rejected => {
                let mut links = self.links.lock().unwrap();
                links.rejected.insert(id);
                links.open.retain(|link| {
                    let cut = link.from == Some(id) || link.to == id;
                    if cut {
                        link.passing.abort();
                    }
                    !cut
                });
            }
            Cut::Dropped => {
                self.dropped.send_modify(|dropped| {
                    dropped.insert(id);
                });
            }
        }
    }

    /// Lets every connection through again.
    pub fn heal(&self) {
        self.links.lock().unwrap().rejected.clear();
        self.dropped.send_modify(BTreeSet::clear);
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        for proxy in &self.proxies {
            proxy.abort();
        }
        for link in &self.links.lock().unwrap().open {
            link.passing.abort();
        }
    }
}

/// Passes on a connection that came to node `to`'s proxy from `source`, to its cluster port
/// `cluster_addr`, unless the link is rejected: then (or if the node does not answer) the
/// connection is closed at once.
async fn pass_on(
    links: Arc<Mutex<Links>>,
    dropped: Arc<Dropped>,
    inbound: TcpStream,
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
    if is_cut(&links.lock().unwrap().rejected, from, to) {
        return;
    }
    let Ok(outbound) = TcpStream::connect(cluster_addr).await else {
        return;
    };
    // Registered under the same lock `isolate` takes, so no link escapes a cut.
    let mut links = links.lock().unwrap();
    if is_cut(&links.rejected, from, to) {
        return;
    }
    let (inbound_read, inbound_write) = inbound.into_split();
    let (outbound_read, outbound_write) = outbound.into_split();
    let passing = tokio::spawn(async move {
        tokio::join!(
            pump(inbound_read, outbound_write, dropped.subscribe(), from, to),
            pump(outbound_read, inbound_write, dropped.subscribe(), from, to),
        );
    });
    links.open.retain(|link| !link.passing.is_finished());
    links.open.push(Link {
        from,
        to,
        passing: passing.abort_handle(),
    });
}

/// Copies bytes one way between `from` and `to`, holding them while the link is dropped; ends
/// (closing its side for writing) when the reader ends or the writer fails.
async fn pump(
    mut reader: OwnedReadHalf,
    mut writer: OwnedWriteHalf,
    mut dropped: watch::Receiver<BTreeSet<u64>>,
    from: Option<u64>,
    to: u64,
) {
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let read = match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        // The borrow of the set is let go of at once: `isolate` and `heal` wait for it.
        let passable = dropped
            .wait_for(|dropped| !is_cut(dropped, from, to))
            .await
            .is_ok();
        if !passable || writer.write_all(&buffer[..read]).await.is_err() {
            break;
        }
    }
    let _ = writer.shutdown().await;
}
