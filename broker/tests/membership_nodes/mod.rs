//! Real `chorus` processes for the membership tests, run as a StatefulSet's pods are: each node
//! keeps its data directory across restarts (a persistent volume), reads a members file that is
//! refreshed in place by an atomic symlink swap (as the kubelet refreshes a mounted ConfigMap),
//! and is stopped with SIGTERM (then waited for, as the kubelet waits for the grace period) or
//! killed with `kill -9`. Nodes can also be started with a static peer list instead.
//!
//! [`Nodes`] asks every node's cluster port for its status and waits until they agree on a
//! leader and on exactly the voters expected; [`Publisher`] keeps publishing batches to a history
//! channel through whichever nodes are up, and remembers every event that was acknowledged.

#![allow(dead_code)] // each test file uses its own part

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chorus_cluster::{ClusterStatus, Role, SECRET_HEADER};

use crate::support::cluster::CLUSTER_SECRET;
use crate::support::node::unused_port;

/// Every node's configuration file: app 1 (key and secret of the test support) keeps the history
/// of its `history-*` channels.
fn node_config() -> String {
    format!(
        "[[apps]]\nid = \"1\"\nkey = \"{}\"\nsecret = \"{}\"\n\
         [[apps.history]]\nchannels = \"history-*\"\nmax_events = 100000\n",
        crate::support::KEY,
        crate::support::SECRET
    )
}

/// How a node learns of the others.
#[derive(Debug, Clone)]
pub enum Peering {
    /// Its own members file (as each pod has its own mount of the ConfigMap).
    MembersFile,
    /// `CHORUS_PEERS` with this text.
    Peers(String),
}

/// One node: its ports, its data directory (kept when it stops), and its process.
pub struct Node {
    pub id: u64,
    pub host: IpAddr,
    pub port: u16,
    pub metrics_port: u16,
    pub cluster_port: u16,
    dir: PathBuf,
    peering: Peering,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Node {
    /// A node not started yet, on free ports, with an empty data directory under `root`.
    pub fn new(root: &Path, id: u64, peering: Peering) -> Node {
        let dir = root.join(format!("node-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("chorus.toml"), node_config()).unwrap();
        Node {
            id,
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: unused_port(),
            metrics_port: unused_port(),
            cluster_port: unused_port(),
            dir,
            peering,
            env: Vec::new(),
            child: None,
        }
    }

    pub fn cluster_addr(&self) -> String {
        SocketAddr::new(self.host, self.cluster_port).to_string()
    }

    pub fn public_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }

    /// The node's members file (the path its "mount" shows).
    pub fn members_file(&self) -> PathBuf {
        self.dir.join("mount").join("members.toml")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// More environment for its next starts.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// Starts the process on the node's ports and data directory.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "node {} is running", self.id);
        let mut command = Command::new(env!("CARGO_BIN_EXE_chorus"));
        command
            .arg("--config")
            .arg(self.dir.join("chorus.toml"))
            .env("CHORUS_HOST", self.host.to_string())
            .env("CHORUS_PORT", self.port.to_string())
            .env("CHORUS_METRICS_PORT", self.metrics_port.to_string())
            .env("CHORUS_CLUSTER_PORT", self.cluster_port.to_string())
            .env("CHORUS_NODE_ID", self.id.to_string())
            .env("CHORUS_CLUSTER_SECRET", CLUSTER_SECRET)
            .env("CHORUS_DATA_DIR", self.data_dir())
            .env("CHORUS_LOG", "warn,openraft=off")
            .stdout(Stdio::null());
        match &self.peering {
            Peering::MembersFile => command.env("CHORUS_MEMBERS_FILE", self.members_file()),
            Peering::Peers(peers) => command.env("CHORUS_PEERS", peers),
        };
        command.envs(self.env.iter().map(|(key, value)| (key, value)));
        self.child = Some(command.spawn().expect("start chorus"));
    }

    /// Waits until the node serves its public port.
    pub async fn await_serving(&mut self) {
        let url = format!("http://{}/healthz", self.public_addr());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if reqwest::get(&url).await.is_ok_and(|r| r.status() == 200) {
                return;
            }
            let child = self.child.as_mut().expect("node is running");
            let exited = child.try_wait().expect("the node's status");
            assert!(exited.is_none(), "node {} exited: {exited:?}", self.id);
            assert!(Instant::now() < deadline, "node {} does not serve", self.id);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("node is running").id()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Sends SIGTERM, as the kubelet does to a pod it deletes.
    pub fn terminate(&self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM node {}", self.id);
    }

    /// Waits (at most `within`) for the process to exit; its status.
    pub async fn await_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().expect("node is running");
        loop {
            if let Some(status) = child.try_wait().expect("the node's status") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not exit within {within:?}",
                self.id
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `kill -9`.
    pub fn kill_hard(&mut self) {
        let mut child = self.child.take().expect("node is running");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Writes a members file into a node's "mount" as the kubelet updates a ConfigMap volume: the
/// new content in a directory of its own, then the `..data` link swapped to it at once, the file
/// itself a link through `..data`.
pub fn write_members(node: &Node, revision: u64, members: &[&Node]) {
    let mount = node.members_file().parent().unwrap().to_owned();
    std::fs::create_dir_all(&mount).unwrap();
    let version = format!("..revision_{revision}");
    let peers: Vec<String> = members
        .iter()
        .map(|member| format!("{}@{}", member.id, member.cluster_addr()))
        .collect();
    std::fs::create_dir_all(mount.join(&version)).unwrap();
    let text = format!("revision = {revision}\npeers = \"{}\"\n", peers.join(","));
    std::fs::write(mount.join(&version).join("members.toml"), text).unwrap();
    let staged = mount.join("..data_tmp");
    let _ = std::fs::remove_file(&staged);
    std::os::unix::fs::symlink(&version, &staged).unwrap();
    std::fs::rename(&staged, mount.join("..data")).unwrap();
    let file = node.members_file();
    if std::fs::symlink_metadata(&file).is_err() {
        std::os::unix::fs::symlink("..data/members.toml", &file).unwrap();
    }
}

/// What the cluster port at `addr` answers on `GET /cluster`; `None` while it does not answer
/// (within a second).
pub async fn status_at(client: &reqwest::Client, addr: &str) -> Option<ClusterStatus> {
    let response = client
        .get(format!("http://{addr}/cluster"))
        .header(SECRET_HEADER, CLUSTER_SECRET)
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .ok()?;
    response.json().await.ok()
}

/// A set of nodes under one temporary directory, removed at the end.
pub struct Nodes {
    pub root: PathBuf,
    pub nodes: BTreeMap<u64, Node>,
    client: reqwest::Client,
}

impl Drop for Nodes {
    fn drop(&mut self) {
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl Nodes {
    /// Nodes `ids`, not started, each following its own members file.
    pub fn new(name: &str, ids: &[u64]) -> Nodes {
        let root = std::env::temp_dir().join(format!("chorus-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let nodes = ids
            .iter()
            .map(|id| (*id, Node::new(&root, *id, Peering::MembersFile)))
            .collect();
        Nodes {
            root,
            nodes,
            client: reqwest::Client::new(),
        }
    }

    /// Nodes `ids`, not started, each with the static peer list naming them all.
    pub fn with_peer_list(name: &str, ids: &[u64]) -> Nodes {
        let mut nodes = Nodes::new(name, ids);
        let list = Nodes::peer_list(&nodes.nodes);
        for node in nodes.nodes.values_mut() {
            node.peering = Peering::Peers(list.clone());
        }
        nodes
    }

    /// The static peer list naming every node of `nodes`.
    pub fn peer_list(nodes: &BTreeMap<u64, Node>) -> String {
        let entries: Vec<String> = nodes
            .values()
            .map(|node| format!("{}@{}", node.id, node.cluster_addr()))
            .collect();
        entries.join(",")
    }

    pub fn node(&mut self, id: u64) -> &mut Node {
        self.nodes.get_mut(&id).unwrap()
    }

    /// Writes revision `revision` listing `members` into the files of `readers`.
    pub fn write_members(&self, revision: u64, members: &[u64], readers: &[u64]) {
        let listed: Vec<&Node> = members.iter().map(|id| &self.nodes[id]).collect();
        for id in readers {
            write_members(&self.nodes[id], revision, &listed);
        }
    }

    /// Starts nodes `ids` and waits until each serves.
    pub async fn start(&mut self, ids: &[u64]) {
        for id in ids {
            self.node(*id).start();
        }
        for id in ids {
            self.node(*id).await_serving().await;
        }
    }

    /// The ids of the nodes running.
    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|node| node.is_running())
            .map(|node| node.id)
            .collect()
    }

    /// What node `id` answers on `GET /cluster`; `None` while it does not answer.
    pub async fn status(&self, id: u64) -> Option<ClusterStatus> {
        status_at(&self.client, &self.nodes[&id].cluster_addr()).await
    }

    /// Waits (at most `within`) until every node of `among` answers, names the same leader, one
    /// of them, has exactly `voters` as voters and no learner, and the desired members at
    /// `revision` (none: no members file); returns the leader's status.
    pub async fn await_voters(
        &self,
        among: &[u64],
        voters: &[u64],
        revision: Option<u64>,
        within: Duration,
    ) -> ClusterStatus {
        let wanted: BTreeSet<u64> = voters.iter().copied().collect();
        let deadline = Instant::now() + within;
        loop {
            let mut statuses = BTreeMap::new();
            for id in among {
                if let Some(status) = self.status(*id).await {
                    statuses.insert(*id, status);
                }
            }
            let desired = statuses
                .values()
                .all(|status| status.desired.as_ref().map(|d| d.revision) == revision);
            if let Some(leader) = agreed(&statuses, among, &wanted).filter(|_| desired) {
                return statuses.remove(&leader).unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "nodes {among:?} did not agree on voters {voters:?} and revision {revision:?} \
                 within {within:?}: {statuses:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The leader all of `among` name, if every one answered, the leader says it leads, and every
/// one has exactly `voters` as voters and no other node in its membership.
fn agreed(
    statuses: &BTreeMap<u64, ClusterStatus>,
    among: &[u64],
    voters: &BTreeSet<u64>,
) -> Option<u64> {
    if statuses.len() != among.len() {
        return None;
    }
    let leader = statuses.values().next()?.leader_id?;
    let leads = statuses.get(&leader)?.state == Role::Leader;
    let same = statuses.values().all(|status| {
        let members: BTreeSet<u64> = status.members.iter().map(|m| m.id).collect();
        let actual: BTreeSet<u64> = status.voters().map(|m| m.id).collect();
        status.leader_id == Some(leader) && actual == *voters && members == *voters
    });
    (leads && same).then_some(leader)
}

/// What the publisher saw: every acknowledged event's data, and the answers by step.
#[derive(Default)]
pub struct Published {
    pub acknowledged: Vec<String>,
    /// Per step: (acknowledged batches, 503s, other refusals or failures).
    pub answers: BTreeMap<String, (u64, u64, u64)>,
    /// The longest time between two acknowledged batches.
    pub longest_gap: Duration,
}

/// Publishes batches of 5 events to a history channel, round-robin through the nodes in
/// `targets`, until stopped.
pub struct Publisher {
    pub targets: Arc<Mutex<Vec<SocketAddr>>>,
    pub step: Arc<Mutex<String>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Published>,
}

impl Publisher {
    pub fn start(channel: &str, targets: Vec<SocketAddr>) -> Publisher {
        let targets = Arc::new(Mutex::new(targets));
        let step = Arc::new(Mutex::new("start".to_owned()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = tokio::spawn(publish(
            channel.to_owned(),
            targets.clone(),
            step.clone(),
            stop.clone(),
        ));
        Publisher {
            targets,
            step,
            stop,
            task,
        }
    }

    /// Names the step the following answers are counted under.
    pub fn step(&self, name: &str) {
        *self.step.lock().unwrap() = name.to_owned();
    }

    /// Publishes through these nodes from now on.
    pub fn targets(&self, targets: Vec<SocketAddr>) {
        *self.targets.lock().unwrap() = targets;
    }

    pub async fn stop(self) -> Published {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

async fn publish(
    channel: String,
    targets: Arc<Mutex<Vec<SocketAddr>>>,
    step: Arc<Mutex<String>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Published {
    let mut published = Published::default();
    let mut last_ack = Instant::now();
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let target = {
            let targets = targets.lock().unwrap();
            targets[(n as usize) % targets.len()]
        };
        let batch: Vec<String> = (0..5).map(|i| format!("{n}-{i}")).collect();
        n += 1;
        let status = crate::support::publish_batch(target, &channel, &batch).await;
        let step_name = step.lock().unwrap().clone();
        let counts = published.answers.entry(step_name).or_default();
        match status {
            Some(200) => {
                counts.0 += 1;
                published.acknowledged.extend(batch);
                published.longest_gap = published.longest_gap.max(last_ack.elapsed());
                last_ack = Instant::now();
            }
            Some(503) => counts.1 += 1,
            _ => counts.2 += 1,
        }
    }
    published
}
