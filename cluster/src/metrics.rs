//! The cluster's series in a node's Prometheus registry: Raft's term, leadership, log positions
//! and RPC errors, updated from openraft's metrics watch ([`watch_raft`]) and by the network
//! client for failed RPCs; the members and their failures ([`crate::liveness`],
//! [`crate::readmission`]); the forwarding of frames between nodes, by peer; and the questions
//! to the other members that went unanswered ([`crate::query`]), by peer and reason.

use std::sync::Arc;

use chorus_storage::Store;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::contact::LeaderContact;
use crate::state_machine::StateReader;
use crate::status::commit_index;
use crate::types::{NodeId, Raft};

/// The node's Raft metrics, registered in its registry.
#[derive(Clone)]
pub(crate) struct RaftSeries {
    pub(crate) term: IntGauge,
    pub(crate) is_leader: IntGauge,
    pub(crate) leader_changes: IntCounter,
    pub(crate) last_log_index: IntGauge,
    pub(crate) commit_index: IntGauge,
    pub(crate) applied_index: IntGauge,
    pub(crate) voters: IntGauge,
    pub(crate) rpc_errors: IntCounterVec,
    pub(crate) members: IntGauge,
    pub(crate) declared_dead: IntCounter,
    pub(crate) readmissions: IntCounter,
}

impl RaftSeries {
    pub(crate) fn register(registry: &Registry) -> Result<RaftSeries, prometheus::Error> {
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let gauge = IntGauge::new(name, help)?;
            registry.register(Box::new(gauge.clone()))?;
            Ok(gauge)
        };
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let counter = IntCounter::new(name, help)?;
            registry.register(Box::new(counter.clone()))?;
            Ok(counter)
        };
        let rpc_errors = IntCounterVec::new(
            Opts::new(
                "chorus_raft_rpc_errors_total",
                "Raft RPCs to other nodes that failed, by RPC and kind of failure.",
            ),
            &["rpc", "kind"],
        )?;
        registry.register(Box::new(rpc_errors.clone()))?;
        Ok(RaftSeries {
            term: gauge("chorus_raft_term", "The node's current Raft term.")?,
            is_leader: gauge(
                "chorus_raft_is_leader",
                "1 while this node is the cluster's leader, else 0.",
            )?,
            leader_changes: counter(
                "chorus_raft_leader_changes_total",
                "Times this node saw the cluster's leader change (to another node or to none).",
            )?,
            last_log_index: gauge(
                "chorus_raft_last_log_index",
                "The last index of this node's Raft log.",
            )?,
            commit_index: gauge(
                "chorus_raft_commit_index",
                "The last Raft log index this node knows committed.",
            )?,
            applied_index: gauge(
                "chorus_raft_applied_index",
                "The last Raft log index applied to this node's replicated state.",
            )?,
            voters: gauge(
                "chorus_raft_voters",
                "Voters in the Raft membership as this node knows it.",
            )?,
            rpc_errors,
            members: gauge(
                "chorus_cluster_members",
                "Members in the replicated state as this node applied it (nodes declared dead \
                 are not).",
            )?,
            declared_dead: counter(
                "chorus_cluster_nodes_declared_dead_total",
                "Nodes this node, as the leader, declared dead and removed from the members.",
            )?,
            readmissions: counter(
                "chorus_cluster_readmissions_total",
                "Times this node saw itself taken back into the members after being declared \
                 dead while it ran, and declared its state again.",
            )?,
        })
    }
}

/// The forwarding series, labelled by the other node's id.
#[derive(Clone)]
pub(crate) struct ForwardSeries {
    pub(crate) frames: IntCounterVec,
    pub(crate) batches: IntCounterVec,
    pub(crate) dropped: IntCounterVec,
    pub(crate) errors: IntCounterVec,
    pub(crate) received: IntCounterVec,
}

impl ForwardSeries {
    pub(crate) fn register(registry: &Registry) -> Result<ForwardSeries, prometheus::Error> {
        let counter = |name: &str, help: &str| -> Result<IntCounterVec, prometheus::Error> {
            let counter = IntCounterVec::new(Opts::new(name, help), &["peer"])?;
            registry.register(Box::new(counter.clone()))?;
            Ok(counter)
        };
        Ok(ForwardSeries {
            frames: counter(
                "chorus_forwarded_frames_total",
                "Published frames this node forwarded to another node (taken by it).",
            )?,
            batches: counter(
                "chorus_forwarded_batches_total",
                "Batches of frames this node sent to another node (writes on its stream, or \
                 POSTs to a node that has no stream).",
            )?,
            dropped: counter(
                "chorus_forward_dropped_total",
                "Frames for another node dropped: its queue was full, or it did not take them \
                 (lost with a broken stream, or in a batch it did not take).",
            )?,
            errors: counter(
                "chorus_forward_errors_total",
                "Streams to another node that could not be opened or broke, and batches it did \
                 not take (unreachable, refused).",
            )?,
            received: counter(
                "chorus_forward_received_frames_total",
                "Frames other nodes forwarded to this one.",
            )?,
        })
    }

    /// Counts `frames` frames for `peer` dropped.
    pub(crate) fn dropped(&self, peer: NodeId, frames: usize) {
        self.dropped
            .with_label_values(&[&peer.to_string()])
            .inc_by(frames as u64);
    }

    /// The series of the stream to `peer`.
    pub(crate) fn peer(&self, peer: NodeId) -> PeerSeries {
        let peer = peer.to_string();
        PeerSeries {
            frames: self.frames.with_label_values(&[&peer]),
            batches: self.batches.with_label_values(&[&peer]),
            dropped: self.dropped.with_label_values(&[&peer]),
            errors: self.errors.with_label_values(&[&peer]),
        }
    }
}

/// The forwarding series of one destination node.
pub(crate) struct PeerSeries {
    pub(crate) frames: IntCounter,
    pub(crate) batches: IntCounter,
    pub(crate) dropped: IntCounter,
    pub(crate) errors: IntCounter,
}

/// The questions to other members that got no usable answer.
#[derive(Clone)]
pub(crate) struct QuerySeries {
    unanswered: IntCounterVec,
}

impl QuerySeries {
    pub(crate) fn register(registry: &Registry) -> Result<QuerySeries, prometheus::Error> {
        let unanswered = IntCounterVec::new(
            Opts::new(
                "chorus_cluster_query_unanswered_total",
                "Questions to another node (cluster-wide API answers, terminations) it did not \
                 answer in time or at all, by peer and reason (timeout, unreachable, refused, \
                 invalid_answer).",
            ),
            &["peer", "reason"],
        )?;
        registry.register(Box::new(unanswered.clone()))?;
        Ok(QuerySeries { unanswered })
    }

    /// Counts a question `peer` left unanswered for `reason`.
    pub(crate) fn unanswered(&self, peer: NodeId, reason: &str) {
        self.unanswered
            .with_label_values(&[&peer.to_string(), reason])
            .inc();
    }
}

/// What the watch over Raft's metrics updates, and reads besides them.
pub(crate) struct RaftWatch {
    pub(crate) me: NodeId,
    pub(crate) raft: Raft,
    pub(crate) series: RaftSeries,
    /// Told when this node leads.
    pub(crate) contact: Arc<LeaderContact>,
    /// For the commit index.
    pub(crate) store: Store,
    /// For the members.
    pub(crate) state: StateReader,
}

/// Keeps the Prometheus series in step with Raft's metrics, and tells `contact` since when
/// this node leads, until Raft stops.
pub(crate) async fn watch_raft(watch: RaftWatch) {
    let series = &watch.series;
    let mut metrics_watch = watch.raft.metrics();
    let mut leader = None;
    loop {
        let metrics = metrics_watch.borrow_and_update().clone();
        series.term.set(gauge_value(metrics.current_term));
        let leads = metrics.current_leader == Some(watch.me);
        series.is_leader.set(i64::from(leads));
        if metrics.current_leader != leader {
            if metrics.current_leader.is_some() {
                series.leader_changes.inc();
            }
            leader = metrics.current_leader;
        }
        if leads {
            watch.contact.leads(metrics.current_term);
        }
        let last_log_index = metrics.last_log_index.unwrap_or(0);
        series.last_log_index.set(gauge_value(last_log_index));
        let applied = metrics.last_applied.map_or(0, |l| l.index);
        series.applied_index.set(gauge_value(applied));
        let committed = commit_index(&watch.store).unwrap_or(0);
        series.commit_index.set(gauge_value(committed));
        let voters = metrics.membership_config.membership().voter_ids().count();
        series.voters.set(gauge_value(voters as u64));
        let members = watch.state.read(|state| state.members().len());
        series.members.set(gauge_value(members as u64));
        if metrics_watch.changed().await.is_err() {
            return;
        }
    }
}

fn gauge_value(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
