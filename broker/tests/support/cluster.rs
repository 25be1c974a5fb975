//! Several real `chorus` processes forming one Raft cluster on free loopback ports, each with
//! its own temporary data directory, configured through the environment as an operator would:
//! `CHORUS_NODE_ID`, `CHORUS_CLUSTER_PORT`, `CHORUS_PEERS`, `CHORUS_CLUSTER_SECRET` (and a small
//! file giving app 1 history on its `history-*` channels).
//! Clients connect to any node and publish to any node, and the channel interest each node
//! applied is read from its cluster port.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chorus_cluster::{ClusterStatus, Role, SECRET_HEADER};

pub const CLUSTER_SECRET: &str = "test-cluster-secret-0123";

/// Every node's configuration file: app 1 (its key and secret come from the environment) keeps
/// the history of its `history-*` channels.
const NODE_CONFIG: &str = "[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"replaced-by-env\"\n\
    [[apps.history]]\nchannels = \"history-*\"\nmax_events = 100000\n";

/// One node of a [`TestCluster`].
pub struct ClusterNode {
    pub id: u64,
    pub port: u16,
    pub metrics_port: u16,
    pub cluster_port: u16,
    /// The `CHORUS_PEERS` it starts with.
    peers: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl ClusterNode {
    /// A node that is not started yet, on free ports with an empty data directory.
    fn new(name: &str, id: u64) -> ClusterNode {
        let dir =
            std::env::temp_dir().join(format!("chorus-cluster-{name}-{}-{id}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        ClusterNode {
            id,
            port: unused_port(),
            metrics_port: unused_port(),
            cluster_port: unused_port(),
            peers: String::new(),
            dir,
            child: None,
        }
    }

    /// The node's cluster address, `127.0.0.1:port`.
    pub fn cluster_addr(&self) -> String {
        format!("127.0.0.1:{}", self.cluster_port)
    }

    pub fn cluster_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.cluster_addr())
    }

    /// A raw WebSocket client of this node, after `connection_established`.
    pub async fn connect(&self) -> super::Client {
        super::connect(self.port, None).await
    }

    /// Publishes one event (name `e`) through this node's HTTP API; `false` when refused (429).
    pub async fn publish(&self, channel: &str, data: &str) -> bool {
        super::publish(self.port, channel, data).await
    }

    /// This node's entry in a peer list.
    fn peer_entry(&self) -> String {
        format!("{}@{}", self.id, self.cluster_addr())
    }

    fn spawn(&mut self) {
        let config = self.dir.join("chorus.toml");
        std::fs::write(&config, NODE_CONFIG).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_chorus"))
            .arg("--config")
            .arg(config)
            .env("CHORUS_HOST", "127.0.0.1")
            .env("CHORUS_PORT", self.port.to_string())
            .env("CHORUS_METRICS_PORT", self.metrics_port.to_string())
            .env("CHORUS_CLUSTER_PORT", self.cluster_port.to_string())
            .env("CHORUS_NODE_ID", self.id.to_string())
            .env("CHORUS_PEERS", &self.peers)
            .env("CHORUS_CLUSTER_SECRET", CLUSTER_SECRET)
            .env("CHORUS_DATA_DIR", self.dir.join("data"))
            .env("CHORUS_APP_ID", "1")
            .env("CHORUS_APP_KEY", super::KEY)
            .env("CHORUS_APP_SECRET", super::SECRET)
            .env("CHORUS_LOG", "warn,openraft=off")
            .stdout(Stdio::null())
            .spawn()
            .expect("start chorus");
        self.child = Some(child);
    }

    /// Waits until the node serves; `false` if its process ended first (a port it was given
    /// was taken in the meantime by another process).
    async fn wait_ready(&mut self) -> bool {
        let url = format!("http://127.0.0.1:{}/readyz", self.port);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if reqwest::get(&url).await.is_ok_and(|r| r.status() == 200) {
                return true;
            }
            let child = self.child.as_mut().expect("node is running");
            if child.try_wait().expect("the node's status").is_some() {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not become ready",
                self.id
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port nothing listens on right now, and not handed out before by this test process.
pub fn unused_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|addr| addr.port())
            .expect("a free loopback port");
        if HANDED_OUT.lock().unwrap().insert(port) {
            return port;
        }
    }
}

/// Starting nodes is tried this many times, on fresh ports, when a port was taken.
const START_ATTEMPTS: usize = 3;

/// Nodes 1..=size started with the same peer list, and any added later.
pub struct TestCluster {
    name: String,
    pub nodes: BTreeMap<u64, ClusterNode>,
    client: reqwest::Client,
}

impl TestCluster {
    /// Starts `size` nodes (ids 1 to `size`) and waits until each serves.
    pub async fn start(name: &str, size: u64) -> TestCluster {
        for _ in 0..START_ATTEMPTS {
            let mut nodes: BTreeMap<u64, ClusterNode> = (1..=size)
                .map(|id| (id, ClusterNode::new(name, id)))
                .collect();
            let peers = nodes
                .values()
                .map(ClusterNode::peer_entry)
                .collect::<Vec<_>>()
                .join(",");
            for node in nodes.values_mut() {
                node.peers = peers.clone();
                node.spawn();
            }
            let mut all_ready = true;
            for node in nodes.values_mut() {
                all_ready &= node.wait_ready().await;
            }
            if all_ready {
                return TestCluster {
                    name: name.to_owned(),
                    nodes,
                    client: reqwest::Client::new(),
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
            let mut node = ClusterNode::new(&self.name, id);
            let mut entries: Vec<String> =
                self.nodes.values().map(ClusterNode::peer_entry).collect();
            entries.push(node.peer_entry());
            node.peers = entries.join(",");
            node.spawn();
            if node.wait_ready().await {
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
        let deadline = Instant::now() + within;
        let mut last = BTreeMap::new();
        loop {
            last.clear();
            for &id in among {
                if let Some(status) = self.status(id).await {
                    last.insert(id, status);
                }
            }
            if let Some(leader) = agreement(&last, among, voters) {
                return (leader, last);
            }
            assert!(
                Instant::now() < deadline,
                "nodes {among:?} did not agree on a leader with {voters} voters within \
                 {within:?}; they said {last:#?}"
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
        let url = format!("http://127.0.0.1:{}/metrics", self.node(id).metrics_port);
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
        let node = self.nodes.get_mut(&id).unwrap();
        let mut child = node.child.take().expect("node is running");
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }

    /// `kill -STOP` of node `id`: its process stays and its ports still accept connections, but
    /// it answers nothing until [`TestCluster::resume`].
    pub fn pause(&self, id: u64) {
        self.signal(id, "-STOP");
    }

    /// `kill -CONT` of node `id`, paused before.
    pub fn resume(&self, id: u64) {
        self.signal(id, "-CONT");
    }

    fn signal(&self, id: u64, signal: &str) {
        let pid = self.node(id).child.as_ref().expect("node is running").id();
        let status = Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Starts node `id` again on its ports, data directory and peer list.
    pub async fn restart(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).unwrap();
        node.spawn();
        assert!(node.wait_ready().await, "node {id} exited on restart");
    }
}

/// The leader every node of `among` names, if they all answered and agree.
fn agreement(statuses: &BTreeMap<u64, ClusterStatus>, among: &[u64], voters: usize) -> Option<u64> {
    if statuses.len() != among.len() {
        return None;
    }
    let leader = statuses.values().next()?.leader_id?;
    let agreed = among.contains(&leader)
        && statuses.values().all(|status| {
            status.leader_id == Some(leader)
                && status.voters().count() == voters
                && status.voters().all(|member| member.recorded)
        })
        && statuses[&leader].state == Role::Leader;
    agreed.then_some(leader)
}
