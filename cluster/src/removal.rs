//! Taking nodes out of the Raft membership, one safe step at a time: the voters a members file
//! no longer lists (the leader's membership round, [`crate::membership`]), and the node an
//! operator names (`chorus cluster remove ID`: `POST /cluster/remove` on any node's cluster
//! port, carried out by the leader, [`remove`]).
//!
//! A voter is removed with openraft's `change_membership` (joint consensus: the old voters and
//! the new ones must each have a majority for the change), and only when both keep a majority
//! of voters that answer ([`check`]): a removal never leaves the cluster unable to commit. The
//! voters a members file drops go one at a time ([`next_step`]): those that no longer answer
//! first, highest id first, then the others; the leader last, after handing its leadership to a
//! voter that stays ([`crate::handover`]), which carries on. A removed node's presence members
//! and channel interest leave everywhere once (`RemoveMember`, as for a node declared dead),
//! unless it was declared dead already. A node an operator removes is also retired
//! (`SetRetired`), so that a static peer list that still names it does not bring it back.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::ChangeMembers;
use serde::{Deserialize, Serialize};

use crate::error::ClusterError;
use crate::handover::{HandOver, Transfer};
use crate::leader_writes::LeaderWrites;
use crate::liveness::Liveness;
use crate::peer_request::PeerRequests;
use crate::raft_view::node_addr;
use crate::roster::Roster;
use crate::state_machine::StateReader;
use crate::types::{Departure, Node, NodeId, Request};

/// The path of an operator's removal on the cluster port.
pub(crate) const REMOVE_PATH: &str = "/cluster/remove";

/// How long a removal may take in all, following changes of leader.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a voter cannot be removed now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unsafe {
    #[error("node {0} is the only voter")]
    LastVoter(NodeId),
    #[error(
        "only {live} of the {voters} voters answer, fewer than the {quorum} needed to commit a \
         change"
    )]
    NoQuorumNow {
        live: usize,
        voters: usize,
        quorum: usize,
    },
    #[error(
        "without node {id}, {live} of the {voters} voters left would answer, fewer than the \
         {quorum} needed to commit"
    )]
    NoQuorumAfter {
        id: NodeId,
        live: usize,
        voters: usize,
        quorum: usize,
    },
}

/// Whether voter `id` can be removed from `voters`, of which `live` answer: the voters now and
/// the voters after must each keep a majority that answers.
pub(crate) fn check(
    voters: &BTreeSet<NodeId>,
    live: &BTreeSet<NodeId>,
    id: NodeId,
) -> Result<(), Unsafe> {
    let quorum = |n: usize| n / 2 + 1;
    let live_now = voters.intersection(live).count();
    if live_now < quorum(voters.len()) {
        return Err(Unsafe::NoQuorumNow {
            live: live_now,
            voters: voters.len(),
            quorum: quorum(voters.len()),
        });
    }
    let after: BTreeSet<NodeId> = voters.iter().copied().filter(|v| *v != id).collect();
    if after.is_empty() {
        return Err(Unsafe::LastVoter(id));
    }
    let live_after = after.intersection(live).count();
    if live_after < quorum(after.len()) {
        return Err(Unsafe::NoQuorumAfter {
            id,
            live: live_after,
            voters: after.len(),
            quorum: quorum(after.len()),
        });
    }
    Ok(())
}

/// The leader's next step towards voters without `unwanted`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    Remove(NodeId),
    /// Only the leader itself is left to remove: it hands leadership over first.
    HandOverFirst,
    /// The next removal is not safe now.
    Blocked(Unsafe),
}

/// The next step to take `unwanted` out of `voters` (of which `live` answer), led by `leader`:
/// silent voters first, then the others, highest id first, the leader last; `None` when no
/// voter is unwanted.
pub(crate) fn next_step(
    voters: &BTreeSet<NodeId>,
    live: &BTreeSet<NodeId>,
    leader: NodeId,
    unwanted: &BTreeSet<NodeId>,
) -> Option<Step> {
    let first = voters
        .iter()
        .copied()
        .filter(|id| unwanted.contains(id) && *id != leader)
        .max_by_key(|id| (!live.contains(id), *id));
    match first {
        Some(id) => Some(match check(voters, live, id) {
            Ok(()) => Step::Remove(id),
            Err(unsafe_now) => Step::Blocked(unsafe_now),
        }),
        None if unwanted.contains(&leader) && voters.contains(&leader) => Some(Step::HandOverFirst),
        None => None,
    }
}

/// What removals use. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Removals {
    pub(crate) me: NodeId,
    pub(crate) writes: Arc<LeaderWrites>,
    pub(crate) state: StateReader,
    pub(crate) roster: Arc<Roster>,
    pub(crate) liveness: Arc<Liveness>,
    pub(crate) client: PeerRequests,
    /// For a leader that removes itself: it hands over first.
    pub(crate) transfer: Transfer,
}

impl Removals {
    /// Removals by the node that hands its leadership over with `transfer`.
    pub(crate) fn new(transfer: &Transfer, state: StateReader, roster: Arc<Roster>) -> Removals {
        Removals {
            me: transfer.me,
            writes: transfer.writes.clone(),
            state,
            roster,
            liveness: transfer.liveness.clone(),
            client: transfer.client.clone(),
            transfer: transfer.clone(),
        }
    }

    /// Takes voter `id` out of the membership (the leader's side, checks done), then out of
    /// the replicated members.
    pub(crate) async fn remove_voter(&self, id: NodeId) -> Result<(), ClusterError> {
        self.change(ChangeMembers::RemoveVoters(BTreeSet::from([id])))
            .await?;
        self.forget_member(id).await
    }

    /// Takes learner `id` out of the membership (the leader's side).
    pub(crate) async fn remove_learner(&self, id: NodeId) -> Result<(), ClusterError> {
        self.change(ChangeMembers::RemoveNodes(BTreeSet::from([id])))
            .await?;
        self.forget_member(id).await
    }

    async fn change(&self, change: ChangeMembers<NodeId, Node>) -> Result<(), ClusterError> {
        let changed = self.writes.change_membership(change, false).await;
        changed.map_err(|e| ClusterError::MembershipChange(e.to_string()))
    }

    /// Drops `id` from the replicated members, unless it is not one (declared dead already):
    /// its presence members and channel interest leave with it.
    async fn forget_member(&self, id: NodeId) -> Result<(), ClusterError> {
        if !self.state.read(|state| state.members().contains_key(&id)) {
            return Ok(());
        }
        let why = Departure::Removed;
        self.write(Request::RemoveMember { id, why }).await
    }

    async fn write(&self, request: Request) -> Result<(), ClusterError> {
        let written = self.writes.write(request).await;
        written
            .map(|_| ())
            .map_err(|e| ClusterError::MembershipChange(e.to_string()))
    }
}

/// An operator's removal of node `id`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoveRequest {
    pub id: NodeId,
}

/// What became of a removal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoveOutcome {
    /// The node is out; these are the voters now.
    Removed { id: NodeId, voters: Vec<NodeId> },
    /// Refused, for this reason.
    Refused { reason: String },
    /// This node does not lead: ask `leader_id`.
    NotLeader { leader_id: Option<NodeId> },
}

impl Removals {
    /// Removes node `id` through the leader, wherever it is (following it when it changes, as
    /// a leader that removes itself hands over first); answers `Removed` or `Refused`.
    pub(crate) async fn remove(&self, id: NodeId) -> Result<RemoveOutcome, ClusterError> {
        let deadline = tokio::time::Instant::now() + REMOVE_TIMEOUT;
        loop {
            let leader = self.writes.raft().metrics().borrow().current_leader;
            let outcome = match leader {
                Some(leader) if leader == self.me => self.remove_as_leader(id).await?,
                Some(leader) => self.ask_leader(leader, id, deadline).await?,
                None => RemoveOutcome::NotLeader { leader_id: None },
            };
            if !matches!(outcome, RemoveOutcome::NotLeader { .. }) {
                return Ok(outcome);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClusterError::NoLeader);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn ask_leader(
        &self,
        leader: NodeId,
        id: NodeId,
        deadline: tokio::time::Instant,
    ) -> Result<RemoveOutcome, ClusterError> {
        let Some(addr) = node_addr(self.writes.raft(), leader) else {
            return Ok(RemoveOutcome::NotLeader { leader_id: None });
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let request = RemoveRequest { id };
        self.client.post(&addr, REMOVE_PATH, &request, left).await
    }

    /// The leader's side of an operator's removal.
    async fn remove_as_leader(&self, id: NodeId) -> Result<RemoveOutcome, ClusterError> {
        let refused = |reason: String| Ok(RemoveOutcome::Refused { reason });
        let me = self.me;
        if let Some(revision) = self.roster.file_revision() {
            return refused(format!(
                "this cluster follows a members file (revision {revision}): remove node {id} \
                 from the file instead"
            ));
        }
        let metrics = self.writes.raft().metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        if membership.get_node(&id).is_none() {
            return refused(format!("node {id} is not in the membership"));
        }
        if !voters.contains(&id) {
            let _changing = self.writes.membership_change().await;
            self.write(Request::SetRetired { id, retired: true })
                .await?;
            self.remove_learner(id).await?;
            return Ok(self.removed(id));
        }
        if let Err(unsafe_now) = check(&voters, &self.liveness.live_voters(me, &voters), id) {
            return refused(unsafe_now.to_string());
        }
        if id == me {
            return match self.transfer.hand_over(|other| other != me).await {
                Ok(HandOver::HandedTo { node, .. }) => Ok(RemoveOutcome::NotLeader {
                    leader_id: Some(node),
                }),
                Ok(HandOver::NotLeader | HandOver::Alone) => {
                    Ok(RemoveOutcome::NotLeader { leader_id: None })
                }
                Err(e) => refused(format!("node {id} leads and cannot hand over: {e}")),
            };
        }
        let _changing = self.writes.membership_change().await;
        self.write(Request::SetRetired { id, retired: true })
            .await?;
        self.remove_voter(id).await?;
        tracing::info!(node = id, "node removed by an operator");
        Ok(self.removed(id))
    }

    fn removed(&self, id: NodeId) -> RemoveOutcome {
        let metrics = self.writes.raft().metrics().borrow().clone();
        RemoveOutcome::Removed {
            id,
            voters: metrics.membership_config.membership().voter_ids().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn a_removal_keeps_a_majority_that_answers_before_and_after() {
        let five = ids(&[1, 2, 3, 4, 5]);
        assert_eq!(check(&five, &five, 5), Ok(()));
        assert_eq!(
            check(&five, &ids(&[1, 2, 3]), 5),
            Ok(()),
            "3 of 4 answer after"
        );
        assert_eq!(
            check(&five, &ids(&[1, 2, 5]), 5),
            Err(Unsafe::NoQuorumAfter {
                id: 5,
                live: 2,
                voters: 4,
                quorum: 3
            }),
            "removing a live voter when two are silent"
        );
        assert_eq!(
            check(&five, &ids(&[1, 2]), 5),
            Err(Unsafe::NoQuorumNow {
                live: 2,
                voters: 5,
                quorum: 3
            })
        );
        assert_eq!(check(&ids(&[1]), &ids(&[1]), 1), Err(Unsafe::LastVoter(1)));
        assert_eq!(check(&ids(&[1, 2]), &ids(&[1, 2]), 2), Ok(()));
        let three = ids(&[1, 2, 3]);
        assert!(
            check(&three, &ids(&[1, 3]), 3).is_err(),
            "1 of 2 answers after"
        );
        assert_eq!(check(&three, &ids(&[1, 3]), 2), Ok(()), "the silent one");
    }

    #[test]
    fn silent_voters_go_first_highest_id_first_and_the_leader_last() {
        let five = ids(&[1, 2, 3, 4, 5]);
        let all_live = five.clone();
        let unwanted = ids(&[3, 4, 5]);
        assert_eq!(
            next_step(&five, &all_live, 1, &unwanted),
            Some(Step::Remove(5))
        );
        assert_eq!(
            next_step(&five, &ids(&[1, 2, 3, 5]), 1, &unwanted),
            Some(Step::Remove(4)),
            "the silent one first"
        );
        assert_eq!(
            next_step(&five, &all_live, 4, &unwanted),
            Some(Step::Remove(5)),
            "the leader last"
        );
        assert_eq!(
            next_step(&ids(&[1, 2, 4]), &ids(&[1, 2, 4]), 4, &unwanted),
            Some(Step::HandOverFirst)
        );
        assert_eq!(next_step(&ids(&[1, 2]), &ids(&[1, 2]), 1, &unwanted), None);
        assert_eq!(
            next_step(&five, &ids(&[1, 2]), 1, &unwanted),
            Some(Step::Blocked(Unsafe::NoQuorumNow {
                live: 2,
                voters: 5,
                quorum: 3
            }))
        );
    }
}
