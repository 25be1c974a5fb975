//! The node's handle on its Raft cluster: openraft running on a tokio runtime thread of its own,
//! with the node's sled storage, the HTTP network client, the bootstrap and membership task
//! ([`crate::membership`], following a members file with [`crate::desired`]), the gate on its
//! elections (`election_gate`), failure detection ([`crate::liveness`]) and re-admission
//! (`readmission`), the metrics watch, the task that records this node's channel
//! interest (`interest`), the streams that forward frames to other nodes
//! ([`crate::forward`]), the questions it asks every other member at once
//! ([`crate::query`]), and the hand-over of its leadership before it stops
//! ([`crate::handover`]).
//!
//! The rest of the node (actix, a current-thread runtime per worker) never runs Raft's futures
//! itself: it hands them to the Raft runtime with [`Cluster::on_raft_runtime`] and awaits the
//! answer, which works from any runtime.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chorus_storage::{RaftMeta, Store};
use parking_lot::Mutex;
use prometheus::Registry;

use crate::declared::Declared;
use crate::delivery::Delivery;
use crate::desired::DesiredMembers;
use crate::error::ClusterError;
use crate::forward::Forwarder;
use crate::handover::HandOver;
use crate::history_repair::HistoryGaps;
use crate::hold::Hold;
use crate::liveness::{Liveness, MIN_DEAD_AFTER};
use crate::log_store::LogStore;
use crate::metrics::{ForwardSeries, QuerySeries, RaftSeries};
use crate::network::HttpNetwork;
use crate::outbound::{cluster_client, ClusterClient};
use crate::peers::Peers;
use crate::resolve::Names;
use crate::secret::ClusterSecret;
use crate::state::ChannelKey;
use crate::state_machine::{StateMachineStore, StateReader};
use crate::status::{ClusterStatus, MemberStatus};
use crate::types::{LogId, NodeId, PresenceChange, Request, Response, TypeConfig};

/// The Raft instance of this cluster.
pub type Raft = openraft::Raft<TypeConfig>;

/// How this node takes part in the cluster.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub node_id: NodeId,
    /// This node's cluster address as the others reach it (`host:port`).
    pub advertise_addr: String,
    /// The other nodes; `None` for a one-node cluster (or one that follows `members_file`).
    pub peers: Option<Peers>,
    /// A members file to follow (see [`crate::desired`]): the nodes the cluster should have, by
    /// revision. Exclusive with `peers`.
    pub members_file: Option<PathBuf>,
    pub secret: ClusterSecret,
    /// How long a member may go without answering before the leader declares it dead (at least
    /// [`MIN_DEAD_AFTER`]; see [`crate::liveness`]).
    pub dead_after: Duration,
    /// Log entries between two snapshots of the replicated state; as many stay in the log after
    /// a snapshot, for followers to catch up from (see [`DEFAULT_SNAPSHOT_EVERY`]).
    pub snapshot_every: u64,
    /// The address this node's cluster traffic leaves from; `None`: the system's choice (see
    /// [`crate::outbound`]).
    pub local_address: Option<IpAddr>,
    /// The TLS of this node's traffic to the other nodes' cluster ports, which then speak only
    /// TLS; `None`: plain HTTP (see [`crate::outbound`]).
    pub tls: Option<rustls::ClientConfig>,
}

/// Log entries between snapshots, by default. A follower that fell further behind installs a
/// snapshot, and fetches the history it skipped from the others ([`crate::history_repair`]).
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 20_000;

/// The longest election timeout, in milliseconds; also the leader lease (see [`LEADER_LEASE`]).
const ELECTION_TIMEOUT_MAX_MS: u64 = 1200;

/// How long a follower that heard from its leader refuses to vote for another candidate
/// (openraft's leader lease is `election_timeout_max`).
pub(crate) const LEADER_LEASE: Duration = Duration::from_millis(ELECTION_TIMEOUT_MAX_MS);

/// Raft's timing: a heartbeat every 100 ms, an election after 0.6-1.2 s without one (six missed
/// heartbeats at least). A follower that heard from a leader also refuses to vote for another
/// until a lease of `election_timeout_max` has passed (openraft), so a dead leader is replaced
/// after about 1.8-2.4 s.
fn raft_config(snapshot_every: u64) -> Result<openraft::Config, ClusterError> {
    openraft::Config {
        cluster_name: "chorus".to_owned(),
        heartbeat_interval: 100,
        election_timeout_min: 600,
        election_timeout_max: ELECTION_TIMEOUT_MAX_MS,
        install_snapshot_timeout: 5000,
        // Snapshot chunks travel as JSON arrays of numbers (about 4 bytes a byte).
        snapshot_max_chunk_size: 1024 * 1024,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_every),
        max_in_snapshot_log_to_keep: snapshot_every,
        ..openraft::Config::default()
    }
    .validate()
    .map_err(|e| ClusterError::Config(e.to_string()))
}

/// What the Raft runtime's tasks and the handle share.
pub(crate) struct Core {
    pub(crate) settings: ClusterSettings,
    pub(crate) raft: Raft,
    pub(crate) state: StateReader,
    pub(crate) store: Store,
    pub(crate) client: ClusterClient,
    pub(crate) series: RaftSeries,
    /// The channels this node has local subscribers of.
    pub(crate) interest: Declared<ChannelKey, ()>,
    /// Channels whose history a snapshot skipped, to fetch from another node.
    pub(crate) history_gaps: HistoryGaps,
    /// The users this node has connections of, per presence channel, with their info.
    pub(crate) presence: Declared<(ChannelKey, String), String>,
    /// The log index of this run's first presence declaration (a reset), once committed: this
    /// node has caught up once it has applied it (0 until then).
    caught_up_at: AtomicU64,
    pub(crate) forwarder: Forwarder,
    pub(crate) liveness: Arc<Liveness>,
    pub(crate) query_series: QuerySeries,
    runtime: tokio::runtime::Handle,
    /// The resolver of every name this node looks up.
    pub(crate) names: Names,
    /// The followers whose appends are held back during a hand-over.
    pub(crate) hold: Arc<Hold>,
    /// Every write this node makes to the log as the leader holds this shared; a hand-over
    /// takes it alone, so the log stops growing while the next leader catches up.
    pub(crate) leader_writes: tokio::sync::RwLock<()>,
    /// Held by the leader's membership round and by a hand-over, for all of their course.
    pub(crate) membership_changes: tokio::sync::Mutex<()>,
    /// The term this node leads in and since when.
    leading_since: Mutex<Option<(u64, Instant)>>,
    /// When this node last accepted an append from a leader.
    leader_contact: Mutex<Option<Instant>>,
    /// The last good content of the members file, if the node follows one.
    pub(crate) file_members: Mutex<Option<DesiredMembers>>,
    /// The node is stopping: it calls no election any more.
    pub(crate) stopping: AtomicBool,
}

impl Core {
    pub(crate) fn node_id(&self) -> NodeId {
        self.settings.node_id
    }

    /// This node just accepted an append from a leader.
    pub(crate) fn heard_from_leader(&self) {
        *self.leader_contact.lock() = Some(Instant::now());
    }

    /// Whether this node accepted an append from a leader within `within`.
    pub(crate) fn leader_heard_within(&self, within: Duration) -> bool {
        self.leader_contact
            .lock()
            .is_some_and(|heard| heard.elapsed() < within)
    }

    /// How long this node has led, if it leads.
    pub(crate) fn leading_for(&self) -> Option<Duration> {
        let metrics = self.raft.metrics().borrow().clone();
        let leading = *self.leading_since.lock();
        match leading {
            Some((term, since))
                if term == metrics.current_term
                    && metrics.current_leader == Some(self.node_id()) =>
            {
                Some(since.elapsed())
            }
            _ => None,
        }
    }

    /// The other nodes of the Raft membership as this node last saw it (voters and learners),
    /// with their cluster addresses; the leader first.
    pub(crate) fn other_nodes(&self) -> Vec<(NodeId, String)> {
        let metrics = self.raft.metrics().borrow().clone();
        let me = self.node_id();
        let mut nodes: Vec<(NodeId, String)> = metrics
            .membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != me)
            .map(|(id, node)| (*id, node.addr.clone()))
            .collect();
        nodes.sort_by_key(|(id, _)| Some(*id) != metrics.current_leader);
        nodes
    }

    /// The last log index this node knows committed, as Raft last saved it.
    fn commit_index(&self) -> Option<u64> {
        match self.store.raft().meta::<Option<LogId>>(RaftMeta::Committed) {
            Ok(committed) => committed.flatten().map(|log_id| log_id.index),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the committed log id");
                None
            }
        }
    }

    pub(crate) fn status(&self) -> ClusterStatus {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let recorded = self.state.read(|state| state.members().clone());
        let members = membership
            .nodes()
            .map(|(id, node)| MemberStatus {
                id: *id,
                addr: node.addr.clone(),
                voter: voters.contains(id),
                matched_index: metrics
                    .replication
                    .as_ref()
                    .and_then(|replication| replication.get(id).copied().flatten())
                    .map(|log_id| log_id.index),
                recorded: recorded.get(id) == Some(&node.addr),
            })
            .collect();
        let (desired, retired) = self.state.read(|state| {
            let retired = state.retired().iter().copied().collect();
            (state.desired().cloned(), retired)
        });
        ClusterStatus {
            node_id: self.node_id(),
            state: metrics.state.into(),
            leader_id: metrics.current_leader,
            term: metrics.current_term,
            commit_index: self.commit_index(),
            applied_index: metrics.last_applied.map(|log_id| log_id.index),
            last_log_index: metrics.last_log_index,
            members,
            desired,
            retired,
        }
    }

    /// Keeps the Prometheus series in step with Raft's metrics until Raft stops.
    async fn watch_metrics(self: Arc<Core>) {
        let mut watch = self.raft.metrics();
        let mut leader = None;
        loop {
            let metrics = watch.borrow_and_update().clone();
            let series = &self.series;
            series.term.set(gauge_value(metrics.current_term));
            series
                .is_leader
                .set(i64::from(metrics.current_leader == Some(self.node_id())));
            if metrics.current_leader != leader {
                if metrics.current_leader.is_some() {
                    series.leader_changes.inc();
                }
                leader = metrics.current_leader;
            }
            if metrics.current_leader == Some(self.node_id()) {
                let mut leading = self.leading_since.lock();
                if leading.is_none_or(|(term, _)| term != metrics.current_term) {
                    *leading = Some((metrics.current_term, Instant::now()));
                }
            }
            series
                .last_log_index
                .set(gauge_value(metrics.last_log_index.unwrap_or(0)));
            series
                .applied_index
                .set(gauge_value(metrics.last_applied.map_or(0, |l| l.index)));
            series
                .commit_index
                .set(gauge_value(self.commit_index().unwrap_or(0)));
            series.voters.set(gauge_value(
                metrics.membership_config.membership().voter_ids().count() as u64,
            ));
            let members = self.state.read(|state| state.members().len());
            series.members.set(gauge_value(members as u64));
            if watch.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Proposes this node's presence changes as `UpdatePresence`, until the runtime stops.
async fn submit_presence(core: Arc<Core>) {
    crate::declared::submit(&core.presence, "presence", |(reset, changes)| {
        let request = Request::UpdatePresence {
            node: core.node_id(),
            reset,
            changes: changes
                .into_iter()
                .map(|((key, user_id), user_info)| PresenceChange {
                    app: key.app,
                    channel: key.channel,
                    user_id,
                    user_info,
                })
                .collect(),
        };
        let core = core.clone();
        async move {
            let (response, log_index) = crate::propose::propose_logged(&core, request).await?;
            if reset {
                let _ = core.caught_up_at.compare_exchange(
                    0,
                    log_index,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            Ok(response)
        }
    })
    .await;
}

fn gauge_value(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Stops the Raft runtime thread.
struct Lifecycle {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The node's handle on the cluster; cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    core: Arc<Core>,
    lifecycle: Arc<Mutex<Lifecycle>>,
    admissions: tokio::sync::watch::Receiver<u64>,
}

/// A follower that accepted an append this recently follows a live leader.
const FOLLOWING: Duration = Duration::from_secs(1);

/// How many worker threads the Raft runtime has.
const RAFT_WORKERS: usize = 2;

impl Cluster {
    /// Starts Raft on the node's store, on its own runtime thread, with its series in
    /// `registry`; returns once Raft has read its log and state. Committed history goes to
    /// `delivery`. Bootstrap and joining go on in the background.
    pub fn start(
        settings: ClusterSettings,
        store: &Store,
        registry: &Registry,
        delivery: Delivery,
    ) -> Result<Cluster, ClusterError> {
        if settings.dead_after < MIN_DEAD_AFTER {
            return Err(ClusterError::Config(format!(
                "dead_after must be at least {MIN_DEAD_AFTER:?}, not {:?}",
                settings.dead_after
            )));
        }
        let config = Arc::new(raft_config(settings.snapshot_every)?);
        let series = RaftSeries::register(registry).map_err(ClusterError::Metrics)?;
        let forward_series = ForwardSeries::register(registry).map_err(ClusterError::Metrics)?;
        let query_series = QuerySeries::register(registry).map_err(ClusterError::Metrics)?;
        let names = Names::default();
        let client = cluster_client(settings.local_address, settings.tls.as_ref(), &names)
            .map_err(|e| ClusterError::Config(e.to_string()))?;
        // A client of its own for forwarding: its connections stay open to each destination.
        let forward_client = cluster_client(settings.local_address, settings.tls.as_ref(), &names)
            .map_err(|e| ClusterError::Config(e.to_string()))?;
        let hold = Arc::new(Hold::default());
        let file_members = match &settings.members_file {
            Some(path) => Some(
                crate::desired::read_members_file(path)
                    .map_err(|e| ClusterError::Config(e.to_string()))?,
            ),
            None => None,
        };
        let log_store = LogStore::new(store).map_err(ClusterError::Runtime)?;
        let state_machine = StateMachineStore::delivering(store, delivery)
            .map_err(|e| ClusterError::Storage(Box::new(e)))?;
        let store = store.clone();
        let liveness = Arc::new(Liveness::new(settings.dead_after));
        let (admissions_tx, admissions) = tokio::sync::watch::channel(0);
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("chorus-raft".to_owned())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(RAFT_WORKERS)
                    .thread_name("chorus-raft-worker")
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = started_tx.send(Err(ClusterError::Runtime(e)));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let network = HttpNetwork {
                        client: client.clone(),
                        secret: settings.secret.clone(),
                        rpc_errors: series.rpc_errors.clone(),
                        liveness: liveness.clone(),
                        hold: hold.clone(),
                    };
                    let state = state_machine.reader();
                    let interest = state_machine.interest_index();
                    let history_gaps = state_machine.history_gaps();
                    let raft = match Raft::new(
                        settings.node_id,
                        config,
                        network,
                        log_store,
                        state_machine,
                    )
                    .await
                    {
                        Ok(raft) => raft,
                        Err(e) => {
                            let _ = started_tx.send(Err(ClusterError::Fatal(Box::new(e))));
                            return;
                        }
                    };
                    // Until the gate has looked (see `election_gate`): a node removed from the
                    // voters, back with its old log, must not call elections.
                    raft.runtime_config().elect(false);
                    let runtime = tokio::runtime::Handle::current();
                    let forwarder = Forwarder::new(
                        settings.node_id,
                        interest,
                        raft.clone(),
                        forward_client,
                        settings.secret.clone(),
                        forward_series,
                        runtime.clone(),
                    );
                    let core = Arc::new(Core {
                        settings,
                        raft: raft.clone(),
                        state,
                        store,
                        client,
                        series,
                        interest: Declared::default(),
                        history_gaps,
                        presence: Declared::default(),
                        caught_up_at: AtomicU64::new(0),
                        forwarder,
                        liveness,
                        query_series,
                        runtime,
                        names,
                        hold,
                        leader_writes: tokio::sync::RwLock::new(()),
                        membership_changes: tokio::sync::Mutex::new(()),
                        leading_since: Mutex::new(None),
                        leader_contact: Mutex::new(None),
                        file_members: Mutex::new(file_members),
                        stopping: AtomicBool::new(false),
                    });
                    tokio::spawn(core.clone().watch_metrics());
                    tokio::spawn(crate::election_gate::gate_elections(core.clone()));
                    tokio::spawn(crate::membership::keep_membership(core.clone()));
                    if let Some(path) = core.settings.members_file.clone() {
                        tokio::spawn(crate::desired::follow_members_file(core.clone(), path));
                    }
                    tokio::spawn(crate::interest::submit_interest(core.clone()));
                    tokio::spawn(submit_presence(core.clone()));
                    tokio::spawn(crate::history_repair::repair_history(core.clone()));
                    tokio::spawn(crate::liveness::declare_the_dead(core.clone()));
                    tokio::spawn(crate::readmission::watch_admission(
                        core.clone(),
                        admissions_tx,
                    ));
                    if started_tx.send(Ok(core)).is_err() {
                        return;
                    }
                    // Until the node stops (or drops every handle).
                    let _ = stop_rx.await;
                    if let Err(e) = raft.shutdown().await {
                        tracing::warn!(error = %e, "raft did not shut down cleanly");
                    }
                });
            })
            .map_err(ClusterError::Runtime)?;
        let core = started_rx.recv().map_err(|_| ClusterError::Stopped)??;
        Ok(Cluster {
            core,
            lifecycle: Arc::new(Mutex::new(Lifecycle {
                stop: Some(stop_tx),
                thread: Some(thread),
            })),
            admissions,
        })
    }

    pub fn node_id(&self) -> NodeId {
        self.core.node_id()
    }

    pub(crate) fn core(&self) -> Arc<Core> {
        self.core.clone()
    }

    /// The Raft instance; call its async methods through [`Cluster::on_raft_runtime`].
    pub fn raft(&self) -> &Raft {
        &self.core.raft
    }

    /// The replicated state as this node last applied it.
    pub fn state(&self) -> &StateReader {
        &self.core.state
    }

    pub fn secret(&self) -> &ClusterSecret {
        &self.core.settings.secret
    }

    /// This node's view of the cluster.
    pub fn status(&self) -> ClusterStatus {
        self.core.status()
    }

    /// Whether this node belongs to a cluster that has a leader: it leads, or it accepted an
    /// append from the leader within the last second (ten heartbeats). What a readiness probe
    /// asks besides serving clients.
    pub fn follows_a_leader(&self) -> bool {
        let metrics = self.core.raft.metrics().borrow().clone();
        let member = metrics
            .membership_config
            .membership()
            .nodes()
            .any(|(id, _)| *id == self.node_id());
        member
            && (metrics.current_leader == Some(self.node_id())
                || self.core.leader_heard_within(FOLLOWING))
    }

    /// For a node about to stop: it calls no election any more and, if it leads, hands its
    /// leadership to another up-to-date voter, for the cluster to go on with hardly a moment
    /// without a leader (see [`crate::handover`]). Returns once another node leads, or at once
    /// when this one does not lead; an error when no voter could take over (the others then
    /// elect a leader by themselves once this node has stopped).
    pub async fn hand_over_before_stopping(&self) -> Result<HandOver, ClusterError> {
        self.core.stopping.store(true, Ordering::Relaxed);
        self.core.raft.runtime_config().elect(false);
        let core = self.core.clone();
        self.on_raft_runtime(async move { crate::handover::hand_over(&core, |_| true).await })
            .await?
    }

    /// Records, in the background, that this node now has (`present`) or no longer has local
    /// subscribers of `channel` of `app`. Call it when the local count crosses zero; it never
    /// waits.
    pub fn declare_interest(&self, app: &str, channel: &str, present: bool) {
        let key = ChannelKey::new(app, channel);
        self.core.interest.declare(key, present.then_some(()));
    }

    /// Records, in the background, that this node now has connections of `user_id` in presence
    /// channel `channel` of `app` (`user_info`, the app's JSON text, from its first one) or,
    /// with `None`, no longer has any. Call it when the local count crosses zero; it never
    /// waits. Once committed, every node hears of users joining or leaving cluster-wide through
    /// [`crate::Committed::Presence`].
    pub fn declare_presence(
        &self,
        app: &str,
        channel: &str,
        user_id: &str,
        user_info: Option<String>,
    ) {
        let key = (ChannelKey::new(app, channel), user_id.to_owned());
        self.core.presence.declare(key, user_info);
    }

    /// Whether this node has caught up with the cluster since it started: it applied the entry
    /// that reset its presence, and so everything committed before it. Until then its view of
    /// presence may be of an earlier run, or far behind: presence subscriptions wait for it.
    pub fn caught_up(&self) -> bool {
        let at = self.core.caught_up_at.load(Ordering::Relaxed);
        at > 0
            && self
                .core
                .state
                .last_applied()
                .is_some_and(|applied| applied.index >= at)
    }

    /// Waits, at most `within`, until this node has [caught up](Cluster::caught_up); says
    /// whether it has.
    pub async fn await_caught_up(&self, within: Duration) -> bool {
        if self.caught_up() {
            return true;
        }
        let cluster = self.clone();
        let mut applied = self.core.raft.metrics();
        let waited = self.on_raft_runtime(async move {
            tokio::time::timeout(within, async move {
                while !cluster.caught_up() {
                    // Applying moves the metrics; the reset's commit may come first, so look
                    // again at least every 50 ms.
                    let _ =
                        tokio::time::timeout(Duration::from_millis(50), applied.changed()).await;
                }
            })
            .await
            .is_ok()
        });
        waited.await.unwrap_or(false)
    }

    /// How many times this node was admitted into the replicated members, as it last applied
    /// them (0 until it first sees itself a member). The value changes when the node is taken
    /// back after being declared dead, which dropped everything it had declared for itself
    /// (interest, presence connections), perhaps while it kept running and its clients stayed.
    /// On every change, the first included, whatever the node keeps in the replicated state for
    /// itself is to be declared again with a reset; channel interest already is (see
    /// [`crate::readmission`]).
    pub fn admissions(&self) -> tokio::sync::watch::Receiver<u64> {
        self.admissions.clone()
    }

    /// The streams that forward published frames to the other nodes with interest.
    pub fn forwarder(&self) -> &Forwarder {
        &self.core.forwarder
    }

    /// Writes `request` to the replicated state through the leader, wherever it is, and returns
    /// what applying it answered.
    pub async fn propose(&self, request: Request) -> Result<Response, ClusterError> {
        let core = self.core.clone();
        self.on_raft_runtime(async move { crate::propose::propose(&core, request).await })
            .await?
    }

    /// Runs `work` on the Raft runtime and returns its output; callable from any runtime.
    pub async fn on_raft_runtime<T: Send + 'static>(
        &self,
        work: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, ClusterError> {
        self.core
            .runtime
            .spawn(work)
            .await
            .map_err(|_| ClusterError::Stopped)
    }

    /// Stops Raft and its runtime thread, and waits for them (blocks briefly). Later calls do
    /// nothing.
    pub fn shutdown(&self) {
        let mut lifecycle = self.lifecycle.lock();
        if let Some(stop) = lifecycle.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = lifecycle.thread.take() {
            // The thread does not unwind (a panic aborts the process): this only waits.
            let _ = thread.join();
        }
    }
}
