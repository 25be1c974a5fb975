//! Handing leadership over to another voter: before the leader stops (SIGTERM), or before it is
//! taken out of the voters.
//!
//! openraft 0.9.25 has no leader transfer. What it has: a follower refuses to vote while its
//! leader lease runs (it accepted an append within `election_timeout_max`, 1.2 s); the leader's
//! own lease counts from its election, so once it has led that long it grants its vote to a
//! candidate whose log is as long as its own, which deposes it; and `trigger().elect()` makes a
//! node stand at once. A candidate needs a majority `q` of the voters: itself, the leader, and
//! `q - 2` followers whose lease has run out. So [`hand_over`]:
//! 1. picks the next leader: a live voter with the longest log (for a removal, one that stays),
//!    and `q - 2` other live followers to let go (with 3 or 2 voters none, with 4 or 5 one; see
//!    [`plan`]);
//! 2. holds back the leader's appends to those followers ([`crate::hold`]) and waits out their
//!    lease, [`LEADER_LEASE`] after the last append reached them, while the leader goes on
//!    committing with the others (still a majority, the next leader among them);
//! 3. stops the leader's own writes (they wait: [`crate::leader_writes`]),
//!    waits until the next leader holds every entry of the leader's log, and asks it to stand
//!    (`POST /cluster/elect`, answered by [`stand`]);
//! 4. its vote request reaches the leader, which grants it and steps down, and the followers
//!    let go, which grant it too: it leads after one round of vote requests.
//!
//! The cluster has no leader from the moment the old one grants its vote to the moment the new
//! one counts a majority: one round trip of vote requests and each voter's writing of its vote
//! to disk. Writes wait from step 3 on, for that and for the next leader to take the last
//! entries. A leader elected less than a lease ago first waits until it has led that long; with
//! four voters or more, step 2 adds a lease (1.2 s) to the hand-over, with no write held up.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cluster::LEADER_LEASE;
use crate::contact::LeaderContact;
use crate::error::ClusterError;
use crate::hold::Hold;
use crate::leader_writes::LeaderWrites;
use crate::liveness::Liveness;
use crate::peer_request::PeerRequests;
use crate::raft_view::node_addr;
use crate::types::{NodeId, Raft};

/// The path on the cluster port where the leader asks the next one to stand.
pub(crate) const ELECT_PATH: &str = "/cluster/elect";

/// Added to a lease before counting on its end (clocks, and the append under way).
const MARGIN: Duration = Duration::from_millis(150);

/// How long the leader waits for its writes under way to end before going on.
const PAUSE_WAIT: Duration = Duration::from_secs(1);

/// How long the next leader has to take the last entries, and then to win.
const CATCH_UP_WAIT: Duration = Duration::from_secs(1);
const ELECTION_WAIT: Duration = Duration::from_secs(2);

/// What a hand-over did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandOver {
    /// This node did not lead: nothing to hand over.
    NotLeader,
    /// This node is the only voter: no one to hand over to.
    Alone,
    /// `node` leads now; the hand-over took `took`.
    HandedTo { node: NodeId, took: Duration },
}

/// Who takes over, and which followers are let go so that it can win.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) next: NodeId,
    pub(crate) let_go: BTreeSet<NodeId>,
}

/// Why no hand-over can be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoHandOver {
    #[error("no other voter that answers can lead")]
    NoCandidate,
    #[error("{needed} more voters that answer are needed to elect the next leader, {live} answer")]
    TooFewLive { needed: usize, live: usize },
}

/// Plans a hand-over from `leader` among `voters`: the next leader is the voter of `live` that
/// `may_lead` allows with the most entries `matched`, the lowest id first among equals; it
/// needs `q - 2` more votes from followers of `live`, let go (those that may not lead first).
pub(crate) fn plan(
    voters: &BTreeSet<NodeId>,
    live: &BTreeSet<NodeId>,
    matched: &BTreeMap<NodeId, u64>,
    leader: NodeId,
    may_lead: impl Fn(NodeId) -> bool,
) -> Result<Plan, NoHandOver> {
    let others: Vec<NodeId> = voters
        .iter()
        .copied()
        .filter(|id| *id != leader && live.contains(id))
        .collect();
    let next = others
        .iter()
        .copied()
        .filter(|id| may_lead(*id))
        .max_by_key(|id| {
            (
                matched.get(id).copied().unwrap_or(0),
                std::cmp::Reverse(*id),
            )
        })
        .ok_or(NoHandOver::NoCandidate)?;
    let quorum = voters.len() / 2 + 1;
    let needed = quorum.saturating_sub(2);
    let mut followers: Vec<NodeId> = others.into_iter().filter(|id| *id != next).collect();
    followers.sort_by_key(|id| may_lead(*id));
    if followers.len() < needed {
        return Err(NoHandOver::TooFewLive {
            needed,
            live: followers.len(),
        });
    }
    Ok(Plan {
        next,
        let_go: followers.into_iter().take(needed).collect(),
    })
}

/// What a hand-over uses. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Transfer {
    pub(crate) me: NodeId,
    pub(crate) writes: Arc<LeaderWrites>,
    pub(crate) contact: Arc<LeaderContact>,
    pub(crate) hold: Arc<Hold>,
    pub(crate) liveness: Arc<Liveness>,
    pub(crate) client: PeerRequests,
}

impl Transfer {
    fn raft(&self) -> &Raft {
        self.writes.raft()
    }

    /// Hands this node's leadership over to another voter that `may_lead` allows, as the
    /// module documentation says; returns once another node leads (or at once when this one
    /// does not).
    pub(crate) async fn hand_over(
        &self,
        may_lead: impl Fn(NodeId) -> bool,
    ) -> Result<HandOver, ClusterError> {
        let started = Instant::now();
        let _changing = self.writes.membership_change().await;
        let metrics = self.raft().metrics().borrow().clone();
        if metrics.current_leader != Some(self.me) {
            return Ok(HandOver::NotLeader);
        }
        let voters: BTreeSet<NodeId> = metrics.membership_config.membership().voter_ids().collect();
        if voters.len() == 1 {
            return Ok(HandOver::Alone);
        }
        let live = self.liveness.live_voters(self.me, &voters);
        let matched: BTreeMap<NodeId, u64> = metrics
            .replication
            .iter()
            .flatten()
            .filter_map(|(id, log_id)| log_id.map(|log_id| (*id, log_id.index)))
            .collect();
        let plan = plan(&voters, &live, &matched, self.me, may_lead)
            .map_err(|e| ClusterError::HandOver(e.to_string()))?;
        tracing::info!(next = plan.next, let_go = ?plan.let_go, "handing leadership over");

        let _holding = self.hold.hold(&plan.let_go);
        if !plan.let_go.is_empty() {
            self.wait_out_leases(&plan.let_go).await;
        }
        let led = self
            .contact
            .leading_for(self.me, &self.raft().metrics().borrow());
        match led {
            Some(led) if led < LEADER_LEASE + MARGIN => {
                tokio::time::sleep(LEADER_LEASE + MARGIN - led).await;
            }
            Some(_) => {}
            None => return Ok(HandOver::NotLeader),
        }
        // Whether or not the writes under way all ended, none starts from here on.
        let _paused = tokio::time::timeout(PAUSE_WAIT, self.writes.pause()).await;
        self.await_caught_up(plan.next).await?;
        let term = self.raft().metrics().borrow().current_term;
        self.ask_to_stand(plan.next, term).await?;
        let node = self.await_another_leader().await?;
        let took = started.elapsed();
        tracing::info!(
            node,
            took_ms = took.as_millis() as u64,
            "leadership handed over"
        );
        Ok(HandOver::HandedTo { node, took })
    }

    /// Waits until the appends under way to `let_go` have ended, then for their leader lease
    /// to run out.
    async fn wait_out_leases(&self, let_go: &BTreeSet<NodeId>) {
        let deadline = Instant::now() + PAUSE_WAIT;
        while !self.hold.drained(let_go) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(LEADER_LEASE + MARGIN).await;
    }

    /// Waits until `next` holds every entry of this node's log.
    async fn await_caught_up(&self, next: NodeId) -> Result<(), ClusterError> {
        let mut metrics = self.raft().metrics();
        let deadline = tokio::time::Instant::now() + CATCH_UP_WAIT;
        loop {
            let caught_up = {
                let now = metrics.borrow_and_update();
                let matched = now
                    .replication
                    .as_ref()
                    .and_then(|replication| replication.get(&next).copied().flatten())
                    .map(|log_id| log_id.index);
                matched.is_some() && matched >= now.last_log_index
            };
            if caught_up {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, metrics.changed())
                .await
                .is_err()
            {
                return Err(ClusterError::HandOver(format!(
                    "node {next} did not catch up within {CATCH_UP_WAIT:?}"
                )));
            }
        }
    }

    /// Asks `next` to stand for election in the term after `term`.
    async fn ask_to_stand(&self, next: NodeId, term: u64) -> Result<(), ClusterError> {
        let addr = node_addr(self.raft(), next)
            .ok_or_else(|| ClusterError::HandOver(format!("node {next} left the membership")))?;
        let request = ElectRequest {
            leader: self.me,
            term,
        };
        let asked = self.client.post(&addr, ELECT_PATH, &request, CATCH_UP_WAIT);
        match asked.await? {
            ElectOutcome::Standing => Ok(()),
            ElectOutcome::Refused { reason } => Err(ClusterError::HandOver(format!(
                "node {next} does not stand: {reason}"
            ))),
        }
    }

    /// Waits until another node leads; returns it.
    async fn await_another_leader(&self) -> Result<NodeId, ClusterError> {
        let me = self.me;
        let mut metrics = self.raft().metrics();
        let deadline = tokio::time::Instant::now() + ELECTION_WAIT;
        loop {
            let leader = metrics.borrow_and_update().current_leader;
            if let Some(leader) = leader.filter(|leader| *leader != me) {
                return Ok(leader);
            }
            if tokio::time::timeout_at(deadline, metrics.changed())
                .await
                .is_err()
            {
                let still = if leader == Some(me) {
                    "this node still leads"
                } else {
                    "no leader known"
                };
                return Err(ClusterError::HandOver(format!(
                    "no other leader within {ELECTION_WAIT:?}: {still}"
                )));
            }
        }
    }
}

/// The leader asking the next one to stand, in the term it leads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ElectRequest {
    pub(crate) leader: NodeId,
    pub(crate) term: u64,
}

/// What the node asked to stand did.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ElectOutcome {
    Standing,
    Refused { reason: String },
}

/// The next leader's side (node `me`): stands at once if it follows the asking leader in its
/// term and is a voter.
pub(crate) async fn stand(
    me: NodeId,
    raft: &Raft,
    request: ElectRequest,
) -> Result<ElectOutcome, ClusterError> {
    let metrics = raft.metrics().borrow().clone();
    let refused = |reason: String| Ok(ElectOutcome::Refused { reason });
    if metrics.current_term != request.term || metrics.current_leader != Some(request.leader) {
        return refused(format!(
            "it follows {:?} in term {}, not node {} in term {}",
            metrics.current_leader, metrics.current_term, request.leader, request.term
        ));
    }
    if !metrics
        .membership_config
        .membership()
        .voter_ids()
        .any(|id| id == me)
    {
        return refused("it is not a voter".to_owned());
    }
    raft.trigger()
        .elect()
        .await
        .map_err(|e| ClusterError::Fatal(Box::new(e)))?;
    Ok(ElectOutcome::Standing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn the_next_leader_has_the_longest_log_and_a_majority_can_elect_it() {
        let matched = BTreeMap::from([(2, 90), (3, 100), (4, 100), (5, 80)]);
        let three = plan(&ids(&[1, 2, 3]), &ids(&[1, 2, 3]), &matched, 1, |_| true);
        assert_eq!(
            three,
            Ok(Plan {
                next: 3,
                let_go: ids(&[])
            }),
            "itself and the leader are a majority of three"
        );
        let five = plan(
            &ids(&[1, 2, 3, 4, 5]),
            &ids(&[1, 2, 3, 4, 5]),
            &matched,
            1,
            |_| true,
        );
        assert_eq!(
            five,
            Ok(Plan {
                next: 3,
                let_go: ids(&[2])
            }),
            "equal logs: the lowest id; one follower let go"
        );
        let staying = |id| id != 3;
        let removal = plan(
            &ids(&[1, 2, 3, 4, 5]),
            &ids(&[1, 2, 3, 4, 5]),
            &matched,
            1,
            staying,
        );
        assert_eq!(
            removal,
            Ok(Plan {
                next: 4,
                let_go: ids(&[3])
            }),
            "a node that leaves does not lead, and is let go first"
        );
        assert_eq!(
            plan(&ids(&[1, 2]), &ids(&[1, 2]), &matched, 1, |_| true).map(|p| p.next),
            Ok(2)
        );
    }

    #[test]
    fn no_hand_over_without_enough_voters_that_answer() {
        let matched = BTreeMap::new();
        assert_eq!(
            plan(&ids(&[1]), &ids(&[1]), &matched, 1, |_| true),
            Err(NoHandOver::NoCandidate)
        );
        assert_eq!(
            plan(&ids(&[1, 2, 3]), &ids(&[1]), &matched, 1, |_| true),
            Err(NoHandOver::NoCandidate),
            "the others are silent"
        );
        assert_eq!(
            plan(&ids(&[1, 2, 3, 4, 5]), &ids(&[1, 2]), &matched, 1, |_| true),
            Err(NoHandOver::TooFewLive { needed: 1, live: 0 })
        );
    }
}
