//! What this node knows of its cluster's leadership beyond Raft's metrics: since when it leads
//! (kept by the metrics watch, [`crate::metrics::watch_raft`]), when it last accepted an append
//! from a leader (the cluster port's append route), and whether it is stopping. The election gate
//! ([`crate::election_gate`]), readiness ([`crate::Cluster::follows_a_leader`]) and the
//! hand-over ([`crate::handover`]) read it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use openraft::RaftMetrics;
use parking_lot::Mutex;

use crate::types::{Node, NodeId};

#[derive(Default)]
pub(crate) struct LeaderContact {
    /// The term this node leads in and since when.
    leading_since: Mutex<Option<(u64, Instant)>>,
    /// When this node last accepted an append from a leader.
    heard: Mutex<Option<Instant>>,
    /// The node is stopping: it calls no election any more.
    stopping: AtomicBool,
}

impl LeaderContact {
    /// Raft says this node leads in `term`: from now, unless it already did in that term.
    pub(crate) fn leads(&self, term: u64) {
        let mut leading = self.leading_since.lock();
        if leading.is_none_or(|(led, _)| led != term) {
            *leading = Some((term, Instant::now()));
        }
    }

    /// How long this node (`me`) has led, if `metrics` say it leads.
    pub(crate) fn leading_for(
        &self,
        me: NodeId,
        metrics: &RaftMetrics<NodeId, Node>,
    ) -> Option<Duration> {
        let leading = *self.leading_since.lock();
        match leading {
            Some((term, since))
                if term == metrics.current_term && metrics.current_leader == Some(me) =>
            {
                Some(since.elapsed())
            }
            _ => None,
        }
    }

    /// This node just accepted an append from a leader.
    pub(crate) fn heard_from_leader(&self) {
        *self.heard.lock() = Some(Instant::now());
    }

    /// Whether this node accepted an append from a leader within `within`.
    pub(crate) fn heard_within(&self, within: Duration) -> bool {
        self.heard
            .lock()
            .is_some_and(|heard| heard.elapsed() < within)
    }

    /// From now on the node calls no election.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }
}
