//! The node's handle on its Raft cluster, and how it starts: openraft on a tokio runtime thread
//! of its own with the node's sled storage ([`crate::log_store`], [`crate::state_machine`]) and
//! the HTTP network client ([`crate::network`]), and beside it the tasks that keep the cluster
//! going, each given only the handles it uses: the metrics watch, the gate on this node's
//! elections ([`crate::election_gate`]), bootstrap and the membership round
//! ([`crate::membership`]), following a members file ([`crate::desired`]), proposing what this
//! node declares of itself ([`crate::declarations`]), fetching history a snapshot skipped
//! ([`crate::history_repair`]), declaring the dead ([`crate::liveness`]) and re-declaring after
//! a re-admission ([`crate::readmission`]).
//!
//! [`Cluster::start`] returns the handle with the feed of what the cluster commits
//! ([`crate::feed`]), for the node to consume. Through the handle the node declares its
//! interest and presence, proposes, forwards frames ([`crate::forward`]), asks the other members
//! ([`crate::query`]) and hands its leadership over before it stops ([`crate::handover`]); the
//! cluster port's routes ([`crate::http`]) answer through it too.
//!
//! The rest of the node (actix, a current-thread runtime per worker) never runs Raft's futures
//! itself: it hands them to the Raft runtime with [`Cluster::on_raft_runtime`] and awaits the
//! answer, which works from any runtime.

use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chorus_storage::{StorageError, Store};
use parking_lot::Mutex;
use prometheus::Registry;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{oneshot, watch};

use crate::contact::LeaderContact;
use crate::declarations::Declarations;
use crate::desired::DesiredMembers;
use crate::error::ClusterError;
use crate::feed::CommitFeed;
use crate::forward::Forwarder;
use crate::handover::{ElectOutcome, ElectRequest, HandOver, Transfer};
use crate::history_repair::{HistoryAnswer, HistoryGaps, HistoryQuestion};
use crate::hold::Hold;
use crate::join::{JoinOutcome, JoinRequest};
use crate::leader_writes::LeaderWrites;
use crate::liveness::{Liveness, MIN_DEAD_AFTER};
use crate::log_store::LogStore;
use crate::metrics::{ForwardSeries, QuerySeries, RaftSeries};
use crate::network::HttpNetwork;
use crate::outbound::{cluster_client, ClusterClient};
use crate::peer_request::PeerRequests;
use crate::peers::Peers;
use crate::propose::{ProposeOutcome, Proposer};
use crate::query::{Answers, Question};
use crate::raft_view::other_nodes;
use crate::removal::{Removals, RemoveOutcome};
use crate::resolve::Names;
use crate::roster::Roster;
use crate::secret::ClusterSecret;
use crate::state::ChannelKey;
use crate::state_machine::{StateMachineStore, StateReader};
use crate::status::{status_of, ClusterStatus};
use crate::types::{NodeId, Raft, Request, Response};

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

/// The node's handle on the cluster; cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    shared: Arc<Shared>,
    lifecycle: Arc<Mutex<Lifecycle>>,
    admissions: watch::Receiver<u64>,
}

/// What the handle's methods and the cluster port's routes use.
struct Shared {
    me: NodeId,
    /// This node's cluster address, as the others reach it.
    addr: String,
    secret: ClusterSecret,
    raft: Raft,
    writes: Arc<LeaderWrites>,
    state: StateReader,
    store: Store,
    client: PeerRequests,
    contact: Arc<LeaderContact>,
    declarations: Arc<Declarations>,
    proposer: Proposer,
    transfer: Transfer,
    removals: Removals,
    forwarder: Forwarder,
    query_series: QuerySeries,
    runtime: tokio::runtime::Handle,
}

/// Stops the Raft runtime thread.
struct Lifecycle {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A follower that accepted an append this recently follows a live leader.
const FOLLOWING: Duration = Duration::from_secs(1);

/// How many worker threads the Raft runtime has.
const RAFT_WORKERS: usize = 2;

impl Cluster {
    /// Starts Raft on the node's store, on its own runtime thread, with its series in
    /// `registry`; returns once Raft has read its log and state and re-applied what it had
    /// committed, with the feed of what the cluster commits (consume it, what was re-applied
    /// first, or drop it: see [`crate::feed`]). Bootstrap and joining go
    /// on in the background.
    pub fn start(
        settings: ClusterSettings,
        store: &Store,
        registry: &Registry,
    ) -> Result<(Cluster, CommitFeed), ClusterError> {
        let (startup, mut feed) = Startup::prepare(settings, store, registry)?;
        // Raft re-applies the entries committed since the last snapshot before it returns.
        feed.start_replay();
        let (admissions_tx, admissions) = watch::channel(0);
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("chorus-raft".to_owned())
            .spawn(move || run_raft(startup, admissions_tx, started_tx, stop_rx))
            .map_err(ClusterError::Runtime)?;
        let shared = started_rx.recv().map_err(|_| ClusterError::Stopped)??;
        feed.end_replay();
        let lifecycle = Lifecycle {
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        let cluster = Cluster {
            shared,
            lifecycle: Arc::new(Mutex::new(lifecycle)),
            admissions,
        };
        Ok((cluster, feed))
    }

    pub fn node_id(&self) -> NodeId {
        self.shared.me
    }

    /// The Raft instance; call its async methods through [`Cluster::on_raft_runtime`].
    pub fn raft(&self) -> &Raft {
        &self.shared.raft
    }

    /// The replicated state as this node last applied it.
    pub fn state(&self) -> &StateReader {
        &self.shared.state
    }

    pub fn secret(&self) -> &ClusterSecret {
        &self.shared.secret
    }

    /// This node's view of the cluster.
    pub fn status(&self) -> ClusterStatus {
        let shared = &self.shared;
        status_of(shared.me, &shared.raft, &shared.store, &shared.state)
    }

    /// Whether this node belongs to a cluster that has a leader: it leads, or it accepted an
    /// append from the leader within the last second (ten heartbeats). What a readiness probe
    /// asks besides serving clients.
    pub fn follows_a_leader(&self) -> bool {
        let me = self.node_id();
        let metrics = self.shared.raft.metrics().borrow().clone();
        let member = metrics
            .membership_config
            .membership()
            .nodes()
            .any(|(id, _)| *id == me);
        member
            && (metrics.current_leader == Some(me) || self.shared.contact.heard_within(FOLLOWING))
    }

    /// Whether this node leads its cluster, as far as it knows, and has caught up: the one
    /// node that sends what the whole cluster's changes call for (the cluster's webhooks).
    pub fn leads(&self) -> bool {
        let leads = self.shared.raft.metrics().borrow().current_leader == Some(self.node_id());
        leads && self.caught_up()
    }

    /// For a node about to stop: it calls no election any more and, if it leads, hands its
    /// leadership to another up-to-date voter, for the cluster to go on with hardly a moment
    /// without a leader (see [`crate::handover`]). Returns once another node leads, or at once
    /// when this one does not lead; an error when no voter could take over (the others then
    /// elect a leader by themselves once this node has stopped).
    pub async fn hand_over_before_stopping(&self) -> Result<HandOver, ClusterError> {
        self.shared.contact.stop();
        self.shared.raft.runtime_config().elect(false);
        let transfer = self.shared.transfer.clone();
        self.on_raft_runtime(async move { transfer.hand_over(|_| true).await })
            .await?
    }

    /// Records, in the background, that this node now has (`present`) or no longer has local
    /// subscribers of `channel` of `app`. Call it when the local count crosses zero; it never
    /// waits. Once committed, every node hears of the channel's first and last node with
    /// subscribers through [`crate::Change::ChannelOccupied`] and
    /// [`crate::Change::ChannelVacated`].
    pub fn declare_interest(&self, app: &str, channel: &str, present: bool) {
        let key = ChannelKey::new(app, channel);
        self.shared.declarations.declare_interest(key, present);
    }

    /// Records, in the background, that this node now has connections of `user_id` in presence
    /// channel `channel` of `app` (`user_info`, the app's JSON text, from its first one) or,
    /// with `None`, no longer has any. Call it when the local count crosses zero; it never
    /// waits. Once committed, every node hears of users joining or leaving cluster-wide through
    /// [`crate::Change::Presence`].
    pub fn declare_presence(
        &self,
        app: &str,
        channel: &str,
        user_id: &str,
        user_info: Option<String>,
    ) {
        let key = ChannelKey::new(app, channel);
        (self.shared.declarations).declare_presence(key, user_id.to_owned(), user_info);
    }

    /// Whether this node has caught up with the cluster since it started: it applied the entry
    /// that reset its presence, and so everything committed before it. Until then its view of
    /// presence may be of an earlier run, or far behind: presence subscriptions wait for it.
    pub fn caught_up(&self) -> bool {
        let at = self.shared.declarations.caught_up_at();
        at > 0 && (self.shared.state.last_applied()).is_some_and(|applied| applied.index >= at)
    }

    /// Waits, at most `within`, until this node has [caught up](Cluster::caught_up); says
    /// whether it has. It looks again each time this node applies entries or learns where its
    /// reset was committed.
    pub async fn await_caught_up(&self, within: Duration) -> bool {
        if self.caught_up() {
            return true;
        }
        let cluster = self.clone();
        let mut applied = self.shared.raft.metrics();
        let mut reset_at = self.shared.declarations.watch_caught_up_at();
        let waited = self.on_raft_runtime(async move {
            let caught_up = async move {
                while !cluster.caught_up() {
                    let moved = tokio::select! {
                        moved = applied.changed() => moved.is_ok(),
                        moved = reset_at.changed() => moved.is_ok(),
                    };
                    if !moved {
                        return false; // Raft stopped.
                    }
                }
                true
            };
            tokio::time::timeout(within, caught_up)
                .await
                .unwrap_or(false)
        });
        waited.await.unwrap_or(false)
    }

    /// Waits, at most `within`, until this node has applied the log through `index`; says
    /// whether it has.
    pub async fn await_applied(&self, index: u64, within: Duration) -> bool {
        let state = self.shared.state.clone();
        let applied = move || (state.last_applied()).is_some_and(|log_id| log_id.index >= index);
        if applied() {
            return true;
        }
        let mut metrics = self.shared.raft.metrics();
        let waited = self.on_raft_runtime(async move {
            let through = async move {
                while !applied() {
                    if metrics.changed().await.is_err() {
                        return false; // Raft stopped.
                    }
                }
                true
            };
            tokio::time::timeout(within, through).await.unwrap_or(false)
        });
        waited.await.unwrap_or(false)
    }

    /// How many times this node was admitted into the replicated members, as it last applied
    /// them (0 until it first sees itself a member). The value changes when the node is taken
    /// back after being declared dead, which dropped everything it had declared for itself
    /// (interest, presence connections), perhaps while it kept running and its clients stayed.
    /// On every change, the first included, whatever the node keeps in the replicated state for
    /// itself is to be declared again with a reset; channel interest and presence already are
    /// (see [`crate::readmission`]).
    pub fn admissions(&self) -> watch::Receiver<u64> {
        self.admissions.clone()
    }

    /// The streams that forward published frames to the other nodes with interest.
    pub fn forwarder(&self) -> &Forwarder {
        &self.shared.forwarder
    }

    /// Writes `request` to the replicated state through the leader, wherever it is, and returns
    /// what applying it answered.
    pub async fn propose(&self, request: Request) -> Result<Response, ClusterError> {
        let proposer = self.shared.proposer.clone();
        self.on_raft_runtime(async move { proposer.propose(request).await })
            .await?
    }

    /// POSTs `question` as JSON to `path` on every other member's cluster port, in parallel,
    /// and returns what each answered within `timeout` (see [`crate::query`]). Callable from
    /// any runtime; fails only when the question cannot be encoded or the Raft runtime has
    /// stopped.
    pub async fn ask_others<Q, A>(
        &self,
        path: &str,
        question: &Q,
        timeout: Duration,
    ) -> Result<Answers<A>, ClusterError>
    where
        Q: Serialize + ?Sized,
        A: DeserializeOwned + Send + 'static,
    {
        let question = Question {
            members: other_nodes(&self.shared.raft, self.shared.me),
            path: path.to_owned(),
            body: serde_json::to_vec(question).map_err(ClusterError::Encode)?,
            timeout,
        };
        let client = self.shared.client.clone();
        let series = self.shared.query_series.clone();
        self.on_raft_runtime(crate::query::ask(question, client, series))
            .await
    }

    /// Runs `work` on the Raft runtime and returns its output; callable from any runtime.
    pub async fn on_raft_runtime<T: Send + 'static>(
        &self,
        work: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, ClusterError> {
        self.shared
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

/// What the cluster port's routes ask of the node ([`crate::http`]).
impl Cluster {
    /// This node just accepted an append from a leader.
    pub(crate) fn heard_from_leader(&self) {
        self.shared.contact.heard_from_leader();
    }

    /// A node asks to join (the leader's side, see [`crate::join`]).
    pub(crate) async fn admit(&self, request: JoinRequest) -> Result<JoinOutcome, ClusterError> {
        let shared = self.shared.clone();
        self.on_raft_runtime(async move {
            let me = (shared.me, shared.addr.as_str());
            crate::join::admit(me, &shared.writes, &shared.state, request).await
        })
        .await?
    }

    /// Another node proposes a request, for this one to write if it leads.
    pub(crate) async fn write_as_leader(
        &self,
        request: Request,
    ) -> Result<ProposeOutcome, ClusterError> {
        let shared = self.shared.clone();
        self.on_raft_runtime(async move {
            crate::propose::write_as_leader(&shared.writes, &shared.addr, request).await
        })
        .await?
    }

    /// The leader asks this node to stand (see [`crate::handover`]).
    pub(crate) async fn stand(&self, request: ElectRequest) -> Result<ElectOutcome, ClusterError> {
        let (me, raft) = (self.shared.me, self.shared.raft.clone());
        self.on_raft_runtime(async move { crate::handover::stand(me, &raft, request).await })
            .await?
    }

    /// An operator removes node `id` (see [`crate::removal`]).
    pub(crate) async fn remove(&self, id: NodeId) -> Result<RemoveOutcome, ClusterError> {
        let removals = self.shared.removals.clone();
        self.on_raft_runtime(async move { removals.remove(id).await })
            .await?
    }

    /// History events before an offset, for a node that skipped them.
    pub(crate) fn history_page(
        &self,
        question: &HistoryQuestion,
    ) -> Result<HistoryAnswer, StorageError> {
        crate::history_repair::answer(&self.shared.store, question)
    }
}

/// What the Raft runtime thread starts from, made before it.
struct Startup {
    settings: ClusterSettings,
    config: Arc<openraft::Config>,
    store: Store,
    series: RaftSeries,
    forward_series: ForwardSeries,
    query_series: QuerySeries,
    names: Names,
    client: ClusterClient,
    /// A client of its own for forwarding: its connections stay open to each destination.
    forward_client: ClusterClient,
    file_members: Option<(PathBuf, DesiredMembers)>,
    log_store: LogStore,
    state_machine: StateMachineStore,
}

impl Startup {
    /// Checks the settings, registers the series, makes the clients and opens the storage.
    fn prepare(
        settings: ClusterSettings,
        store: &Store,
        registry: &Registry,
    ) -> Result<(Startup, CommitFeed), ClusterError> {
        if settings.dead_after < MIN_DEAD_AFTER {
            return Err(ClusterError::Config(format!(
                "dead_after must be at least {MIN_DEAD_AFTER:?}, not {:?}",
                settings.dead_after
            )));
        }
        let names = Names::default();
        let client = || {
            cluster_client(settings.local_address, settings.tls.as_ref(), &names)
                .map_err(|e| ClusterError::Config(e.to_string()))
        };
        let (client, forward_client) = (client()?, client()?);
        let file_members = match &settings.members_file {
            Some(path) => {
                let members = crate::desired::read_members_file(path)
                    .map_err(|e| ClusterError::Config(e.to_string()))?;
                Some((path.clone(), members))
            }
            None => None,
        };
        let (state_machine, feed) =
            StateMachineStore::with_feed(store).map_err(|e| ClusterError::Storage(Box::new(e)))?;
        let startup = Startup {
            config: Arc::new(raft_config(settings.snapshot_every)?),
            store: store.clone(),
            series: RaftSeries::register(registry).map_err(ClusterError::Metrics)?,
            forward_series: ForwardSeries::register(registry).map_err(ClusterError::Metrics)?,
            query_series: QuerySeries::register(registry).map_err(ClusterError::Metrics)?,
            names,
            client,
            forward_client,
            file_members,
            log_store: LogStore::new(store).map_err(ClusterError::Runtime)?,
            state_machine,
            settings,
        };
        Ok((startup, feed))
    }
}

/// The Raft runtime thread: starts Raft and the tasks, says so on `started`, and runs until
/// `stop` (or every handle is dropped), then shuts Raft down.
fn run_raft(
    startup: Startup,
    admissions: watch::Sender<u64>,
    started: std::sync::mpsc::Sender<Result<Arc<Shared>, ClusterError>>,
    stop: oneshot::Receiver<()>,
) {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(RAFT_WORKERS)
        .thread_name("chorus-raft-worker")
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = started.send(Err(ClusterError::Runtime(e)));
            return;
        }
    };
    runtime.block_on(async move {
        let (shared, tasks) = match start_raft(startup).await {
            Ok(running) => running,
            Err(e) => {
                let _ = started.send(Err(e));
                return;
            }
        };
        tasks.spawn(&shared, admissions);
        let raft = shared.raft.clone();
        if started.send(Ok(shared)).is_err() {
            return;
        }
        let _ = stop.await;
        if let Err(e) = raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not shut down cleanly");
        }
    });
}

/// What the tasks take besides the shared handles.
struct TaskParts {
    series: RaftSeries,
    roster: Arc<Roster>,
    liveness: Arc<Liveness>,
    gaps: HistoryGaps,
}

/// Starts Raft on the runtime it runs on, with its elections off until the gate has looked
/// (see [`crate::election_gate`]: a node removed from the voters, back with its old log, must
/// not call elections); makes the handles.
async fn start_raft(startup: Startup) -> Result<(Arc<Shared>, TaskParts), ClusterError> {
    let Startup {
        settings,
        config,
        store,
        series,
        forward_series,
        query_series,
        names,
        client,
        forward_client,
        file_members,
        log_store,
        state_machine,
    } = startup;
    let me = settings.node_id;
    let state = state_machine.reader();
    let interest = state_machine.interest_index();
    let gaps = state_machine.history_gaps();
    let (network, liveness, hold) = network(&settings, &client, &series);
    let raft = Raft::new(me, config, network, log_store, state_machine)
        .await
        .map_err(|e| ClusterError::Fatal(Box::new(e)))?;
    raft.runtime_config().elect(false);

    let runtime = tokio::runtime::Handle::current();
    let client = PeerRequests::new(client, settings.secret.clone());
    let writes = Arc::new(LeaderWrites::new(raft.clone()));
    let contact = Arc::new(LeaderContact::default());
    let roster = Arc::new(Roster::new(
        settings.peers,
        file_members,
        names,
        state.clone(),
    ));
    let proposer = Proposer::new(
        me,
        settings.advertise_addr.clone(),
        writes.clone(),
        client.clone(),
    );
    let transfer = Transfer {
        me,
        writes: writes.clone(),
        contact: contact.clone(),
        hold,
        liveness: liveness.clone(),
        client: client.clone(),
    };
    let removals = Removals::new(&transfer, state.clone(), roster.clone());
    let forwarder = Forwarder::new(
        me,
        interest,
        raft.clone(),
        forward_client,
        settings.secret.clone(),
        forward_series,
        runtime.clone(),
    );
    let shared = Shared {
        me,
        addr: settings.advertise_addr,
        secret: settings.secret,
        raft,
        writes,
        state,
        store,
        client,
        contact,
        declarations: Arc::new(Declarations::default()),
        proposer,
        transfer,
        removals,
        forwarder,
        query_series,
        runtime,
    };
    let tasks = TaskParts {
        series,
        roster,
        liveness,
        gaps,
    };
    Ok((Arc::new(shared), tasks))
}

/// Raft's network client, with the liveness it records answers in and the hold it obeys.
fn network(
    settings: &ClusterSettings,
    client: &ClusterClient,
    series: &RaftSeries,
) -> (HttpNetwork, Arc<Liveness>, Arc<Hold>) {
    let liveness = Arc::new(Liveness::new(settings.dead_after));
    let hold = Arc::new(Hold::default());
    let network = HttpNetwork {
        client: client.clone(),
        secret: settings.secret.clone(),
        rpc_errors: series.rpc_errors.clone(),
        liveness: liveness.clone(),
        hold: hold.clone(),
    };
    (network, liveness, hold)
}

impl TaskParts {
    /// Spawns the tasks that keep the cluster going, each with the handles it uses; they run
    /// until the runtime stops.
    fn spawn(self, shared: &Shared, admissions: watch::Sender<u64>) {
        let TaskParts {
            series,
            roster,
            liveness,
            gaps,
        } = self;
        let (me, raft, state) = (shared.me, &shared.raft, &shared.state);
        tokio::spawn(crate::metrics::watch_raft(crate::metrics::RaftWatch {
            me,
            raft: raft.clone(),
            series: series.clone(),
            contact: shared.contact.clone(),
            store: shared.store.clone(),
            state: state.clone(),
        }));
        tokio::spawn(crate::election_gate::gate_elections(
            crate::election_gate::Gate {
                me,
                raft: raft.clone(),
                contact: shared.contact.clone(),
                roster: roster.clone(),
                client: shared.client.clone(),
            },
        ));
        tokio::spawn(crate::membership::keep_membership(
            crate::membership::Membership {
                me,
                addr: shared.addr.clone(),
                writes: shared.writes.clone(),
                state: state.clone(),
                store: shared.store.clone(),
                roster: roster.clone(),
                liveness: liveness.clone(),
                client: shared.client.clone(),
                removals: shared.removals.clone(),
            },
        ));
        if let Some(path) = roster.members_file() {
            tokio::spawn(crate::desired::follow_members_file(
                crate::desired::FileFollower {
                    path: path.to_owned(),
                    roster: roster.clone(),
                    raft: raft.clone(),
                    proposer: shared.proposer.clone(),
                },
            ));
        }
        spawn_declarations(me, &shared.declarations, &shared.proposer);
        tokio::spawn(crate::history_repair::repair_history(
            crate::history_repair::Repair {
                me,
                raft: raft.clone(),
                store: shared.store.clone(),
                gaps,
                client: shared.client.clone(),
            },
        ));
        tokio::spawn(crate::liveness::declare_the_dead(
            crate::liveness::DeathWatch {
                me,
                writes: shared.writes.clone(),
                state: state.clone(),
                liveness,
                declared_dead: series.declared_dead.clone(),
            },
        ));
        tokio::spawn(crate::readmission::watch_admission(
            crate::readmission::AdmissionWatch {
                me,
                raft: raft.clone(),
                state: state.clone(),
                declarations: shared.declarations.clone(),
                readmissions: series.readmissions,
                admissions,
            },
        ));
    }
}

/// Spawns the tasks that propose node `me`'s interest and presence.
fn spawn_declarations(me: NodeId, declarations: &Arc<Declarations>, proposer: &Proposer) {
    let (interest, proposing) = (declarations.clone(), proposer.clone());
    tokio::spawn(async move {
        crate::declarations::submit_interest(me, &interest, proposing).await;
    });
    let (presence, proposing) = (declarations.clone(), proposer.clone());
    tokio::spawn(async move {
        crate::declarations::submit_presence(me, &presence, proposing).await;
    });
}
