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
use std::time::Duration;

use openraft::ChangeMembers;
use serde::{Deserialize, Serialize};

use crate::cluster::Core;
use crate::error::ClusterError;
use crate::handover::HandOver;
use crate::liveness::ANSWERS_NOW;
use crate::peer_request::send_to_peer;
use crate::types::{NodeId, Request};

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

/// The voters of this node's membership that answer now (this node among them; see
/// [`ANSWERS_NOW`]).
pub(crate) fn live_voters(core: &Core, voters: &BTreeSet<NodeId>) -> BTreeSet<NodeId> {
    let me = core.node_id();
    voters
        .iter()
        .copied()
        .filter(|id| *id == me || core.liveness.answered_within(*id, ANSWERS_NOW))
        .collect()
}

/// Takes voter `id` out of the membership (the leader's side, checks done), then out of the
/// replicated members.
pub(crate) async fn remove_voter(core: &Core, id: NodeId) -> Result<(), ClusterError> {
    change(core, ChangeMembers::RemoveVoters(BTreeSet::from([id]))).await?;
    forget_member(core, id).await
}

/// Takes learner `id` out of the membership (the leader's side).
pub(crate) async fn remove_learner(core: &Core, id: NodeId) -> Result<(), ClusterError> {
    change(core, ChangeMembers::RemoveNodes(BTreeSet::from([id]))).await?;
    forget_member(core, id).await
}

async fn change(
    core: &Core,
    change: ChangeMembers<NodeId, crate::types::Node>,
) -> Result<(), ClusterError> {
    let _writing = core.leader_writes.read().await;
    core.raft
        .change_membership(change, false)
        .await
        .map(|_| ())
        .map_err(|e| ClusterError::MembershipChange(e.to_string()))
}

/// Drops `id` from the replicated members, unless it is not one (declared dead already): its
/// presence members and channel interest leave with it.
async fn forget_member(core: &Core, id: NodeId) -> Result<(), ClusterError> {
    if !core.state.read(|state| state.members().contains_key(&id)) {
        return Ok(());
    }
    write(core, Request::RemoveMember { id }).await
}

async fn write(core: &Core, request: Request) -> Result<(), ClusterError> {
    let _writing = core.leader_writes.read().await;
    core.raft
        .client_write(request)
        .await
        .map(|_| ())
        .map_err(|e| ClusterError::MembershipChange(e.to_string()))
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

/// Removes node `id` through the leader, wherever it is (following it when it changes, as a
/// leader that removes itself hands over first); answers `Removed` or `Refused`.
pub(crate) async fn remove(core: &Core, id: NodeId) -> Result<RemoveOutcome, ClusterError> {
    let deadline = tokio::time::Instant::now() + REMOVE_TIMEOUT;
    loop {
        let leader = core.raft.metrics().borrow().current_leader;
        let outcome = match leader {
            Some(leader) if leader == core.node_id() => remove_as_leader(core, id).await?,
            Some(leader) => ask_leader(core, leader, id, deadline).await?,
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
    core: &Core,
    leader: NodeId,
    id: NodeId,
    deadline: tokio::time::Instant,
) -> Result<RemoveOutcome, ClusterError> {
    let addr = core
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .get_node(&leader)
        .map(|node| node.addr.clone());
    let Some(addr) = addr else {
        return Ok(RemoveOutcome::NotLeader { leader_id: None });
    };
    let post = core
        .client
        .post(&addr, REMOVE_PATH)
        .json(&RemoveRequest { id });
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    send_to_peer(post, &addr, &core.settings.secret, left).await
}

/// The leader's side of an operator's removal.
async fn remove_as_leader(core: &Core, id: NodeId) -> Result<RemoveOutcome, ClusterError> {
    let refused = |reason: String| Ok(RemoveOutcome::Refused { reason });
    let me = core.node_id();
    if let Some(revision) = following_a_file(core) {
        return refused(format!(
            "this cluster follows a members file (revision {revision}): remove node {id} from \
             the file instead"
        ));
    }
    let metrics = core.raft.metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    if membership.get_node(&id).is_none() {
        return refused(format!("node {id} is not in the membership"));
    }
    if !voters.contains(&id) {
        let _changing = core.membership_changes.lock().await;
        write(core, Request::SetRetired { id, retired: true }).await?;
        remove_learner(core, id).await?;
        return Ok(removed(core, id));
    }
    if let Err(unsafe_now) = check(&voters, &live_voters(core, &voters), id) {
        return refused(unsafe_now.to_string());
    }
    if id == me {
        return match crate::handover::hand_over(core, |other| other != me).await {
            Ok(HandOver::HandedTo { node, .. }) => Ok(RemoveOutcome::NotLeader {
                leader_id: Some(node),
            }),
            Ok(HandOver::NotLeader | HandOver::Alone) => {
                Ok(RemoveOutcome::NotLeader { leader_id: None })
            }
            Err(e) => refused(format!("node {id} leads and cannot hand over: {e}")),
        };
    }
    let _changing = core.membership_changes.lock().await;
    write(core, Request::SetRetired { id, retired: true }).await?;
    remove_voter(core, id).await?;
    tracing::info!(node = id, "node removed by an operator");
    Ok(removed(core, id))
}

fn removed(core: &Core, id: NodeId) -> RemoveOutcome {
    let metrics = core.raft.metrics().borrow().clone();
    RemoveOutcome::Removed {
        id,
        voters: metrics.membership_config.membership().voter_ids().collect(),
    }
}

/// The revision of the desired members, when the cluster follows a members file.
fn following_a_file(core: &Core) -> Option<u64> {
    let replicated = core.state.read(|state| state.desired().map(|d| d.revision));
    match (replicated, &core.settings.members_file) {
        (Some(revision), _) => Some(revision),
        (None, Some(_)) => core.file_members.lock().as_ref().map(|d| d.revision),
        (None, None) => None,
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
