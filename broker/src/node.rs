//! What every request handler of a node shares: its configuration, apps, metrics, order lock,
//! state and cluster; and whether it is ready.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chorus_cluster::{Cluster, ClusterError};
use chorus_storage::Store;

use crate::actors::connection::Timeouts;
use crate::apps::Apps;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::order::Order;
use crate::protocol::frame::SocketIds;

pub struct Node {
    pub config: Config,
    pub apps: Apps,
    pub metrics: Metrics,
    pub socket_ids: SocketIds,
    pub store: Store,
    /// The lock that orders committed changes and joining subscribers (see `crate::order`).
    pub order: Order,
    /// The node's Raft cluster (a one-node cluster when it has no peers).
    pub cluster: Cluster,
    /// It serves clients: set once its listeners are up, cleared when it starts shutting down.
    serving: AtomicBool,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the store in {path} (is another node using it?): {source}")]
    Store {
        path: std::path::PathBuf,
        source: chorus_storage::StorageError,
    },
    #[error("cannot start the cluster: {0}")]
    Cluster(#[from] ClusterError),
    #[error("cannot start the thread that delivers what the cluster commits: {0}")]
    Commits(#[source] std::io::Error),
}

impl Node {
    /// Opens the node's store in its data directory, starts its cluster and sets up its apps,
    /// which deliver what the cluster commits from then on.
    pub fn new(config: Config) -> Result<Node, NodeError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| NodeError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let store = Store::open(&config.data_dir).map_err(|source| NodeError::Store {
            path: config.data_dir.clone(),
            source,
        })?;
        let metrics = Metrics::new();
        let (cluster, commits) =
            Cluster::start(config.cluster_settings(), &store, metrics.registry())?;
        let order = Order::new(commits.order_lock());
        let apps = Apps::new(
            &config.apps,
            &metrics,
            config.max_outbound_bytes,
            &store,
            &cluster,
        );
        let apps = apps.map_err(|source| {
            cluster.shutdown();
            NodeError::Store {
                path: config.data_dir.clone(),
                source,
            }
        })?;
        crate::commits::deliver_all(commits, apps.clone(), order.clone())
            .map_err(NodeError::Commits)?;
        Ok(Node {
            config,
            apps,
            metrics,
            socket_ids: SocketIds::default(),
            store,
            order,
            cluster,
            serving: AtomicBool::new(false),
        })
    }

    /// Starts the senders of every app's webhooks on the current runtime.
    pub fn start_webhooks(&self) {
        let client = crate::webhooks::post::client();
        for app in self.apps.iter() {
            app.webhooks.start(&client, &self.cluster);
        }
    }

    /// Trims every history channel to its app's retention, and forgets cache channels' last
    /// events once they are too old to replay.
    pub fn enforce_retention(&self) -> Result<u64, chorus_storage::StorageError> {
        let now_ms = crate::history::now_ms();
        let expired = self
            .store
            .last_events()
            .expire(crate::registry::CACHE_TTL, now_ms)?;
        let trimmed = self
            .store
            .history()
            .enforce_retention(now_ms, |app, channel| {
                self.apps.by_id(app)?.history.retention(channel)
            })?;
        Ok(expired + trimmed)
    }

    pub fn timeouts(&self) -> Timeouts {
        Timeouts {
            activity: Duration::from_secs(self.config.activity_timeout_secs),
            pong: Duration::from_secs(self.config.pong_timeout_secs),
            heartbeat: Duration::from_secs(self.config.sse_heartbeat_secs),
        }
    }

    /// Serving clients (`true` once the listeners are up) or not (starting, shutting down).
    pub fn set_ready(&self, serving: bool) {
        self.serving.store(serving, Ordering::Relaxed);
    }

    /// It takes new clients: it is neither starting nor shutting down. A node cut off from its
    /// cluster still serves (its clients keep channels without history).
    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
    }

    /// Whether a load balancer may send it clients (`/readyz`): it serves, and it is a member of
    /// a cluster that has a leader, so history publishes and presence work through it. Liveness
    /// (`/healthz`) never depends on this.
    pub fn readiness(&self) -> Readiness {
        if !self.is_serving() {
            return Readiness::NotServing;
        }
        let status = self.cluster.status();
        if !status.members.iter().any(|m| m.id == status.node_id) {
            return Readiness::NotAMember;
        }
        // A leader it follows now (it leads, or heard from the leader within the last second),
        // and has heard from since it started: it applied what it committed for itself then.
        // Before that, the leader it names may be one it remembers from before a restart.
        if !self.cluster.follows_a_leader() || !self.cluster.caught_up() {
            return Readiness::NoLeader;
        }
        Readiness::Ready
    }
}

/// What `/readyz` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// Starting, or shutting down.
    NotServing,
    /// Not (yet) in its cluster's membership.
    NotAMember,
    /// Its cluster has no leader it knows of (an election, or no quorum), or none it heard from
    /// since it started.
    NoLeader,
}

impl Readiness {
    /// Why it is not ready, for the answer's body.
    pub fn reason(self) -> &'static str {
        match self {
            Readiness::Ready => "ready",
            Readiness::NotServing => "not serving: starting or shutting down",
            Readiness::NotAMember => "not a member of its cluster yet",
            Readiness::NoLeader => "no leader of its cluster heard from",
        }
    }
}
