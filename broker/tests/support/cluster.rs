//! Several real `chorus` processes forming one Raft cluster on free loopback ports, each a
//! [`NodeProcess`] with its own temporary data directory, configured through the environment
//! as an operator would: `CHORUS_NODE_ID`, `CHORUS_CLUSTER_PORT`, `CHORUS_PEERS`,
//! `CHORUS_CLUSTER_SECRET` (and a small file giving app 1 history on its `history-*` channels,
//! and any limits the test sets).
//! Clients connect to any node and publish to any node, and the channel interest each node
//! applied is read from its cluster port. A cluster may be started with more `CHORUS_*`
//! settings ([`TestCluster::start_with_env`]) or limits ([`TestCluster::start_with_limits`]); a
//! node can be killed, restarted (even where it cannot find a quorum:
//! [`TestCluster::restart_alone`]), or frozen and thawed (SIGSTOP, SIGCONT). A cluster started
//! [`TestCluster::start_behind_proxies`] has each node on an address of its own, reached by the
//! others through a proxy, so that a node can be cut off from the others and taken back
//! ([`super::partition`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use chorus_cluster::{ClusterStatus, Role, SECRET_HEADER};

use super::node::{unused_port, NodeProcess, Probe};
use super::partition::{node_host, Cut, Partition};

pub const CLUSTER_SECRET: &str = "test-cluster-secret-0123";

/// Every node's configuration: app 1 keeps the history of its `history-*` channels.
const HISTORY_RULE: &str = "[[apps.history]]\nchannels = \"history-*\"\nmax_events = 100000\n";

/// How a cluster's nodes are started.
#[derive(Clone, Default)]
struct Settings {
    /// More environment of every node.
    env: Vec<(String, String)>,
    /// The body of app 1's `[apps.limits]`.
    limits: String,
}

/// One node of a [`TestCluster`].
pub struct ClusterNode {
    pub id: u64,
    /// The address it listens on (`CHORUS_HOST`), and sends its cluster traffic from.
    pub host: IpAddr,
    pub port: u16,
    pub metrics_port: u16,
    pub cluster_port: u16,
    /// Where the other nodes reach its cluster port, when not directly (a proxy).
    advertised: Option<SocketAddr>,
    process: NodeProcess,
}

impl ClusterNode {
    /// A node that is not started yet, on free ports of `host` with an empty data directory.
    fn new(name: &str, id: u64, host: IpAddr, settings: &Settings) -> ClusterNode {
        let dir = format!("chorus-cluster-{name}-{}-{id}", std::process::id());
        let config = super::app_config("", &settings.limits, HISTORY_RULE);
        let cluster_port = unused_port();
        let mut env = vec![
            ("CHORUS_CLUSTER_PORT".to_owned(), cluster_port.to_string()),
            ("CHORUS_NODE_ID".to_owned(), id.to_string()),
            (
                "CHORUS_CLUSTER_SECRET".to_owned(),
                CLUSTER_SECRET.to_owned(),
            ),
            ("CHORUS_LOG".to_owned(), "warn,openraft=off".to_owned()),
        ];
        env.extend(settings.env.iter().cloned());
        let process = NodeProcess::new(&dir, host, &config, env);
        ClusterNode {
            id,
            host,
            port: process.port,
            metrics_port: process.metrics_port,
            cluster_port,
            advertised: None,
            process,
        }
    }

    /// The node's cluster address, `host:port` (not its proxy's).
    pub fn cluster_addr(&self) -> String {
        SocketAddr::new(self.host, self.cluster_port).to_string()
    }

    /// The address of its public port, for clients.
    pub fn public_addr(&self) -> SocketAddr {
        self.process.public_addr()
    }

    pub fn cluster_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.cluster_addr())
    }

    /// What its public port answers on `GET path`: the status and the JSON body.
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let response = reqwest::get(self.process.url(path)).await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    /// A raw WebSocket client of this node, after `connection_established`.
    pub async fn connect(&self) -> super::Client {
        super::connect(self.public_addr(), None).await
    }

    /// Publishes one event (name `e`) through this node's HTTP API; `false` when refused (429).
    pub async fn publish(&self, channel: &str, data: &str) -> bool {
        super::publish(self.public_addr(), channel, data).await
    }

    /// This node's entry in a peer list: where the others reach it.
    fn peer_entry(&self) -> String {
        match self.advertised {
            Some(addr) => format!("{}@{addr}", self.id),
            None => format!("{}@{}", self.id, self.cluster_addr()),
        }
    }

    /// Starts the node with the peer list `peers` (kept for its restarts).
    fn spawn(&mut self, peers: &str) {
        self.process.set_env("CHORUS_PEERS", peers);
        self.process.spawn();
    }
}

/// Starting nodes is tried this many times, on fresh ports, when a port was taken.
const START_ATTEMPTS: usize = 3;

/// Nodes 1..=size started with the same peer list, and any added later.
pub struct TestCluster {
    name: String,
    settings: Settings,
    pub nodes: BTreeMap<u64, ClusterNode>,
    client: reqwest::Client,
    /// The proxies between the nodes, if started behind them.
    partition: Partition,
}

/// Owned environment variables.
fn owned(env: &[(&str, &str)]) -> Vec<(String, String)> {
    env.iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

impl TestCluster {
    /// Starts `size` nodes (ids 1 to `size`) and waits until each serves.
    pub async fn start(name: &str, size: u64) -> TestCluster {
        TestCluster::start_with_env(name, size, &[]).await
    }

    /// Starts `size` nodes, each (and any added or restarted later) with the environment
    /// variables `env` as well.
    pub async fn start_with_env(name: &str, size: u64, env: &[(&str, &str)]) -> TestCluster {
        let settings = Settings {
            env: owned(env),
            ..Settings::default()
        };
        TestCluster::start_nodes(name, size, settings, false).await
    }

    /// Starts `size` nodes whose app 1 has `limits` (the body of its `[apps.limits]`).
    pub async fn start_with_limits(name: &str, size: u64, limits: &str) -> TestCluster {
        let settings = Settings {
            limits: limits.to_owned(),
            ..Settings::default()
        };
        TestCluster::start_nodes(name, size, settings, false).await
    }

    /// Starts `size` nodes (with the environment `env` as well), node N on `127.0.1.N`, each
    /// reached by the others through a proxy, so that [`TestCluster::isolate`] can cut a node
    /// off. Nodes added later are not behind proxies.
    pub async fn start_behind_proxies(name: &str, size: u64, env: &[(&str, &str)]) -> TestCluster {
        let settings = Settings {
            env: owned(env),
            ..Settings::default()
        };
        TestCluster::start_nodes(name, size, settings, true).await
    }

    /// Starts every node at once (a node is ready only once a quorum of them is up, with a
    /// leader), and waits until each is ready.
    async fn start_nodes(
        name: &str,
        size: u64,
        settings: Settings,
        behind_proxies: bool,
    ) -> TestCluster {
        for _ in 0..START_ATTEMPTS {
            let mut partition = Partition::default();
            let mut nodes = BTreeMap::new();
            for id in 1..=size {
                let host = if behind_proxies {
                    node_host(id)
                } else {
                    IpAddr::V4(Ipv4Addr::LOCALHOST)
                };
                let mut node = ClusterNode::new(name, id, host, &settings);
                if behind_proxies {
                    let cluster_addr = SocketAddr::new(host, node.cluster_port);
                    node.advertised = Some(partition.proxy(id, host, cluster_addr).await);
                }
                nodes.insert(id, node);
            }
            let peers = nodes
                .values()
                .map(ClusterNode::peer_entry)
                .collect::<Vec<_>>()
                .join(",");
            for node in nodes.values_mut() {
                node.spawn(&peers);
            }
            let mut all_ready = true;
            for node in nodes.values_mut() {
                all_ready &= node.process.wait_for(Probe::Ready).await;
            }
            if all_ready {
                return TestCluster {
                    name: name.to_owned(),
                    settings,
                    nodes,
                    client: reqwest::Client::new(),
                    partition,
                };
            }
        }
        panic!("{size} nodes did not start in {START_ATTEMPTS} attempts");
    }

    /// Starts one more node, whose peer list is the others' plus itself (the others' lists stay
    /// as they were), and returns its id.
    pub async fn add_node(&mut self) -> u64 {
        let id = self.nodes.keys().max().map_or(1, |max| max + 1);
        for _ in 0..START_ATTEMPTS {
            let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
            let mut node = ClusterNode::new(&self.name, id, localhost, &self.settings);
            let mut entries: Vec<String> =
                self.nodes.values().map(ClusterNode::peer_entry).collect();
            entries.push(node.peer_entry());
            node.spawn(&entries.join(","));
            if node.process.wait_for(Probe::Ready).await {
                self.nodes.insert(id, node);
                return id;
            }
        }
        panic!("node {id} did not start in {START_ATTEMPTS} attempts");
    }

    pub fn node(&self, id: u64) -> &ClusterNode {
        &self.nodes[&id]
    }

    /// What node `id` answers on `GET path` of its cluster port, with the secret, as JSON;
    /// `None` while it does not answer.
    async fn cluster_get<T: serde::de::DeserializeOwned>(&self, id: u64, path: &str) -> Option<T> {
        let response = self
            .client
            .get(self.node(id).cluster_url(path))
            .header(SECRET_HEADER, CLUSTER_SECRET)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        assert_eq!(response.status(), 200, "GET {path} of node {id}");
        Some(
            response
                .json()
                .await
                .expect("the cluster port answers JSON"),
        )
    }

    /// What node `id` answers on `GET /cluster`; `None` while it does not answer.
    pub async fn status(&self, id: u64) -> Option<ClusterStatus> {
        self.cluster_get(id, "/cluster").await
    }

    /// Waits (at most `within`) until every node of `among` names the same leader, one of
    /// `among`, which says it leads, with `voters` voters, each recorded in the replicated state;
    /// returns the leader's id and every node's status at that moment.
    pub async fn agreed_leader(
        &self,
        among: &[u64],
        voters: usize,
        within: Duration,
    ) -> (u64, BTreeMap<u64, ClusterStatus>) {
        let agreed = |statuses: &BTreeMap<u64, ClusterStatus>| agreement(statuses, among, voters);
        let what = format!("agree on a leader with {voters} voters");
        self.await_statuses(among, within, &what, agreed).await
    }

    /// Waits (at most `within`) until every node of `among` names the same leader, one of
    /// `among`, which says it leads (whatever the membership: some voters may be cut off);
    /// returns the leader's id and every node's status at that moment.
    pub async fn leader_among(
        &self,
        among: &[u64],
        within: Duration,
    ) -> (u64, BTreeMap<u64, ClusterStatus>) {
        let named = |statuses: &BTreeMap<u64, ClusterStatus>| named_leader(statuses, among);
        self.await_statuses(among, within, "agree on a leader", named)
            .await
    }

    /// Waits (at most `within`, else fails saying they did not `what`) until the statuses of
    /// every node of `among` pass `check`; returns what it found and the statuses.
    async fn await_statuses<T>(
        &self,
        among: &[u64],
        within: Duration,
        what: &str,
        check: impl Fn(&BTreeMap<u64, ClusterStatus>) -> Option<T>,
    ) -> (T, BTreeMap<u64, ClusterStatus>) {
        let deadline = Instant::now() + within;
        let mut last = BTreeMap::new();
        loop {
            last.clear();
            for &id in among {
                if let Some(status) = self.status(id).await {
                    last.insert(id, status);
                }
            }
            if let Some(found) = check(&last) {
                return (found, last);
            }
            assert!(
                Instant::now() < deadline,
                "nodes {among:?} did not {what} within {within:?}; they said {last:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The nodes with subscribers of `channel` of app 1, as node `id` last applied it.
    pub async fn interest(&self, id: u64, channel: &str) -> Vec<u64> {
        let channels: Vec<serde_json::Value> = self
            .cluster_get(id, "/cluster/interest")
            .await
            .unwrap_or_else(|| panic!("node {id} does not answer"));
        channels
            .iter()
            .find(|entry| entry["app"] == "1" && entry["channel"] == channel)
            .map(|entry| serde_json::from_value(entry["nodes"].clone()).unwrap())
            .unwrap_or_default()
    }

    /// Waits (at most `within`) until node `id` has applied that exactly `nodes` have subscribers
    /// of `channel`.
    pub async fn await_interest(&self, id: u64, channel: &str, nodes: &[u64], within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let now = self.interest(id, channel).await;
            if now == nodes {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} says nodes {now:?} have subscribers of {channel}, not {nodes:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The value of the series `series` (its name and labels, as exposed) in node `id`'s
    /// `/metrics`, if it is there.
    async fn series(&self, id: u64, series: &str) -> Option<f64> {
        let url = self.node(id).process.metrics_url();
        let text = reqwest::get(url).await.unwrap().text().await.unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map(|value| value.parse().unwrap())
    }

    /// The value of `series` in node `id`'s metrics, which must be there.
    pub async fn metric(&self, id: u64, series: &str) -> f64 {
        self.series(id, series)
            .await
            .unwrap_or_else(|| panic!("no {series} in node {id}'s metrics"))
    }

    /// The value of `series` in node `id`'s metrics; 0 while a labelled counter is not there.
    pub async fn metric_or_zero(&self, id: u64, series: &str) -> f64 {
        self.series(id, series).await.unwrap_or(0.0)
    }

    /// Waits (at most `within`) until `series` in node `id`'s metrics is `value`.
    pub async fn await_metric(&self, id: u64, series: &str, value: f64, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let now = self.metric_or_zero(id, series).await;
            if now == value {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {id}'s {series} is {now}, not {value}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kill -9` of node `id`.
    pub fn kill_hard(&mut self, id: u64) {
        self.nodes.get_mut(&id).unwrap().process.kill_hard();
    }

    /// Freezes node `id` (SIGSTOP): it keeps its sockets open but answers nothing.
    pub fn freeze(&self, id: u64) {
        self.node(id).process.signal("STOP");
    }

    /// Lets a frozen node `id` run again (SIGCONT).
    pub fn thaw(&self, id: u64) {
        self.node(id).process.signal("CONT");
    }

    /// Cuts node `id` off from the other nodes (a cluster started behind proxies), as `cut`
    /// says: no cluster traffic to or from it goes through, open connections included. Its
    /// clients stay connected.
    pub fn isolate(&self, id: u64, cut: Cut) {
        self.partition.isolate(id, cut);
    }

    /// Lets the cluster traffic of every node through again.
    pub fn heal(&self) {
        self.partition.heal();
    }

    /// The members node `id` has in its replicated state (`recorded`), by id; `None` while it
    /// does not answer.
    pub async fn recorded_members(&self, id: u64) -> Option<Vec<u64>> {
        let status = self.status(id).await?;
        Some(
            status
                .members
                .iter()
                .filter(|member| member.recorded)
                .map(|member| member.id)
                .collect(),
        )
    }

    /// Starts node `id` again on its ports, data directory and peer list, and waits until it
    /// is ready (serving, in a cluster with a leader).
    pub async fn restart(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).unwrap();
        node.process.spawn();
        let ready = node.process.wait_for(Probe::Ready).await;
        assert!(ready, "node {id} exited on restart");
    }

    /// Waits until node `id` is ready (serving, in a cluster with a leader).
    pub async fn await_ready(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).unwrap();
        assert!(
            node.process.wait_for(Probe::Ready).await,
            "node {id} exited"
        );
    }

    /// Starts node `id` again where it may find no quorum (the others are down): waits only
    /// until it is up (`/healthz`), and checks it is not ready.
    pub async fn restart_alone(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).unwrap();
        node.process.spawn();
        let up = node.process.wait_for(Probe::Healthy).await;
        assert!(up, "node {id} exited on restart");
        let (status, body) = node.get("/readyz").await;
        assert_eq!(status, 503, "node {id} is ready without a quorum: {body}");
    }
}

/// The leader every node of `among` names, if they all answered and agree, and every one has
/// `voters` voters, each recorded in the replicated state.
fn agreement(statuses: &BTreeMap<u64, ClusterStatus>, among: &[u64], voters: usize) -> Option<u64> {
    let leader = named_leader(statuses, among)?;
    let agreed = statuses.values().all(|status| {
        status.voters().count() == voters && status.voters().all(|member| member.recorded)
    });
    agreed.then_some(leader)
}

/// The leader every node of `among` names, if they all answered and agree, and it is one of
/// them and says it leads.
fn named_leader(statuses: &BTreeMap<u64, ClusterStatus>, among: &[u64]) -> Option<u64> {
    if statuses.len() != among.len() {
        return None;
    }
    let leader = statuses.values().next()?.leader_id?;
    let agreed = among.contains(&leader)
        && statuses
            .values()
            .all(|status| status.leader_id == Some(leader))
        && statuses[&leader].state == Role::Leader;
    agreed.then_some(leader)
}
