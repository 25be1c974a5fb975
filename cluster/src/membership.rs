//! Forming the cluster and keeping its membership in step with the peer list or the desired
//! members, with no command from an operator.
//!
//! Every node runs [`keep_membership`], once a second:
//! - A node not yet in a cluster finds its peers (a static list, a DNS name, or the members
//!   file). If one of them belongs to a cluster, it asks that cluster's leader to take it
//!   ([`crate::join`]); with a members file it waits instead, for the leader adds the nodes the
//!   file lists. Else, if it has the lowest id among them and a quorum of the listed nodes
//!   answers (itself included), it initializes the cluster with every listed node as a voter;
//!   any other node waits to be contacted by a leader. A node with no peers lists only itself: a
//!   one-node cluster, the same way.
//! - The leader adds every wanted node it does not know as a learner, promotes a learner to voter
//!   once its log is within [`PROMOTION_LAG`] entries of the leader's, and writes every voter
//!   that answers (see [`crate::liveness`]) into the replicated state (`AddMember`) with its
//!   address: a node declared dead is written back once it answers again. A known node whose
//!   address changed (in the leader's static list or the desired members, or answering from a
//!   new DNS record as a rescheduled pod does, or this node alone restarted on another port) gets
//!   its address updated. The wanted nodes are the desired members once a members file put them
//!   in the replicated state ([`crate::desired`]), else the peer list less the nodes an operator
//!   retired.
//! - With desired members, the leader also takes out the learners and voters they do not list,
//!   one safe step a round ([`crate::removal`]), handing its own leadership over before it goes.
//!
//! Without a members file nodes are never removed from Raft's membership automatically: dropping
//! a node from the list does not take it out (`chorus cluster remove` does), and a node declared
//! dead ([`crate::liveness`]) leaves the replicated members only, staying a voter.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, ChangeMembers, RaftMetrics};
use tokio::task::JoinSet;

use crate::cluster::Core;
use crate::join::{request_join, JoinRequest};
use crate::liveness::ANSWERED_RECENTLY;
use crate::peers::Peers;
use crate::removal::{live_voters, next_step, Step};
use crate::status::{fetch_status, ClusterStatus};
use crate::types::{Node, NodeId, Request};

/// How often membership is checked.
const ROUND: Duration = Duration::from_secs(1);

/// How long a peer has to answer a probe.
const PROBE_TIMEOUT: Duration = Duration::from_millis(800);

/// A learner this close to the leader's last log index is promoted to voter.
pub const PROMOTION_LAG: u64 = 100;

/// A node of the peer list: its cluster address, whether that address is sure (given by the
/// static list or this node's settings, or the node answered there), and what it said of itself
/// when asked (`None` when it was not asked or did not answer).
struct Found {
    addr: String,
    sure: bool,
    status: Option<ClusterStatus>,
}

/// Forms the cluster and keeps its membership up to date, until the runtime stops.
pub(crate) async fn keep_membership(core: Arc<Core>) {
    let mut blocked: Option<String> = None;
    loop {
        let metrics = core.raft.metrics().borrow().clone();
        let in_cluster = metrics
            .membership_config
            .membership()
            .voter_ids()
            .next()
            .is_some();
        if !in_cluster {
            bootstrap(&core).await;
        } else if metrics.current_leader == Some(core.node_id()) {
            let step = reconcile(&core, &metrics).await;
            report_blocked(&step, &mut blocked);
            if step == Some(Step::HandOverFirst) {
                hand_over_to_a_staying_voter(&core).await;
            }
        }
        tokio::time::sleep(ROUND).await;
    }
}

/// Says once, until it changes, why a voter that is not wanted cannot be removed yet.
fn report_blocked(step: &Option<Step>, blocked: &mut Option<String>) {
    let now = match step {
        Some(Step::Blocked(why)) => Some(why.to_string()),
        _ => None,
    };
    if now != *blocked {
        if let Some(why) = &now {
            tracing::warn!(reason = %why, "a voter the members file no longer lists stays for now");
        }
        *blocked = now;
    }
}

/// The leader is not among the desired members: it hands its leadership to one that is, which
/// then removes it.
async fn hand_over_to_a_staying_voter(core: &Core) {
    let desired = core.state.read(|state| state.desired().cloned());
    let Some(desired) = desired else { return };
    match crate::handover::hand_over(core, |id| desired.members.contains_key(&id)).await {
        Ok(outcome) => tracing::info!(?outcome, "the leader is not desired: it handed over"),
        Err(e) => tracing::warn!(error = %e, "the leader is not desired but cannot hand over yet"),
    }
}

/// The nodes of the peer list by id. A static list is asked only when `probe`; a DNS name's
/// records are always asked, since a node's id is what it answers.
async fn discover(core: &Core, probe: bool) -> BTreeMap<NodeId, Found> {
    let me = core.node_id();
    let mut found = BTreeMap::new();
    let addresses: Vec<String> = match (listed_nodes(core), &core.settings.peers) {
        (Some(nodes), _) => {
            for (id, addr) in &nodes {
                found.insert(
                    *id,
                    Found {
                        addr: addr.clone(),
                        sure: true,
                        status: None,
                    },
                );
            }
            if probe {
                nodes
                    .iter()
                    .filter(|(id, _)| **id != me)
                    .map(|(_, addr)| addr.clone())
                    .collect()
            } else {
                Vec::new()
            }
        }
        (None, Some(Peers::Dns { name, port })) => {
            match core.names.lookup_port(name, *port).await {
                Ok(records) => records
                    .into_iter()
                    .map(|addr| addr.to_string())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect(),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot resolve the peers' DNS name");
                    Vec::new()
                }
            }
        }
        (None, _) => Vec::new(),
    };
    let mut probes = JoinSet::new();
    for addr in addresses {
        let client = core.client.clone();
        let secret = core.settings.secret.clone();
        probes.spawn(async move {
            let status = fetch_status(&client, &addr, &secret, PROBE_TIMEOUT).await;
            (addr, status)
        });
    }
    while let Some(Ok((addr, answer))) = probes.join_next().await {
        match answer {
            Ok(status) => {
                found.insert(
                    status.node_id,
                    Found {
                        addr,
                        sure: true,
                        status: Some(status),
                    },
                );
            }
            Err(e) => tracing::debug!(%addr, error = %e, "peer did not answer"),
        }
    }
    // This node answers for itself. With a DNS name its own record may not be there yet: its
    // advertised address stands in, unsure.
    let dns = matches!(core.settings.peers, Some(Peers::Dns { .. }));
    let own = found.entry(me).or_insert_with(|| Found {
        addr: core.settings.advertise_addr.clone(),
        sure: !dns,
        status: None,
    });
    own.status = Some(core.status());
    found
}

/// The nodes this node is told of by id: a static peer list, or with a members file the desired
/// members once replicated, else the file as this node last read it. `None` with a DNS name or
/// no peers.
fn listed_nodes(core: &Core) -> Option<BTreeMap<NodeId, String>> {
    if core.settings.members_file.is_some() {
        let desired = core
            .state
            .read(|state| state.desired().map(|d| d.members.clone()));
        let file = || core.file_members.lock().as_ref().map(|d| d.members.clone());
        return desired.or_else(file);
    }
    match &core.settings.peers {
        Some(Peers::Static(nodes)) => Some(nodes.clone()),
        _ => None,
    }
}

/// Joins the cluster a peer belongs to, or initializes one if this node is the one to: see the
/// module documentation.
async fn bootstrap(core: &Core) {
    let me = core.node_id();
    let following_a_file = core.settings.members_file.is_some();
    if following_a_file && !listed_nodes(core).is_some_and(|nodes| nodes.contains_key(&me)) {
        return; // Not desired (yet): the leader adds this node once the file lists it.
    }
    let found = discover(core, true).await;
    let peer_statuses = found
        .iter()
        .filter(|(id, _)| **id != me)
        .filter_map(|(_, peer)| peer.status.as_ref());
    let mut clustered = peer_statuses.filter(|status| status.is_member_of_a_cluster());
    if let Some(peer) = clustered.next() {
        if !following_a_file {
            ask_to_join(core, peer, &found[&me].addr).await;
        }
        return;
    }
    if found.keys().next() != Some(&me) {
        return; // A lower id initializes; this node waits to be contacted.
    }
    let answered = found.values().filter(|peer| peer.status.is_some()).count();
    let quorum = found.len() / 2 + 1;
    if answered < quorum {
        tracing::info!(
            answered,
            quorum,
            "waiting for a quorum of the listed nodes to answer before forming the cluster"
        );
        return;
    }
    let members: BTreeMap<NodeId, Node> = found
        .iter()
        .map(|(id, peer)| (*id, BasicNode::new(&peer.addr)))
        .collect();
    let ids: Vec<NodeId> = members.keys().copied().collect();
    match core.raft.initialize(members).await {
        Ok(()) => tracing::info!(voters = ?ids, "formed the cluster"),
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
        Err(e) => tracing::warn!(error = %e, "cannot form the cluster; retrying"),
    }
}

/// Asks the leader of the cluster `peer` belongs to to take this node (at `addr`) as a learner.
async fn ask_to_join(core: &Core, peer: &ClusterStatus, addr: &str) {
    let leader = peer
        .leader_id
        .and_then(|leader| peer.members.iter().find(|member| member.id == leader));
    let Some(leader) = leader else {
        tracing::info!(
            peer = peer.node_id,
            "a peer belongs to a cluster with no leader yet"
        );
        return;
    };
    let request = JoinRequest {
        node_id: core.node_id(),
        addr: addr.to_owned(),
    };
    match request_join(&core.client, &leader.addr, &core.settings.secret, &request).await {
        Ok(outcome) => tracing::info!(leader = leader.id, ?outcome, "asked to join the cluster"),
        Err(e) => tracing::warn!(leader = leader.id, error = %e, "cannot ask to join; retrying"),
    }
}

/// The leader's round: record voters, add wanted nodes as learners, promote caught-up learners,
/// and with desired members take one step towards them; returns that step, or `None`.
async fn reconcile(core: &Core, metrics: &RaftMetrics<NodeId, Node>) -> Option<Step> {
    // A hand-over under way: its next leader carries on.
    let _changing = core.membership_changes.try_lock().ok()?;
    let membership = metrics.membership_config.membership();
    if membership.get_joint_config().len() > 1 {
        return None; // A membership change is under way.
    }
    let nodes: BTreeMap<NodeId, String> = membership
        .nodes()
        .map(|(id, node)| (*id, node.addr.clone()))
        .collect();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let (desired, retired) = core.state.read(|state| {
        let desired = state.desired().map(|d| d.members.clone());
        (desired, state.retired().clone())
    });
    let me = core.node_id();
    let answered: BTreeSet<NodeId> = voters
        .iter()
        .copied()
        .filter(|id| *id == me || core.liveness.answered_within(*id, ANSWERED_RECENTLY))
        .collect();
    if !record_voters(core, &nodes, &answered, &retired).await {
        return None;
    }
    let wanted: BTreeMap<NodeId, Found> = match &desired {
        Some(members) => members
            .iter()
            .map(|(id, addr)| {
                let found = Found {
                    addr: addr.clone(),
                    sure: true,
                    status: None,
                };
                (*id, found)
            })
            .collect(),
        None => {
            let dns = matches!(core.settings.peers, Some(Peers::Dns { .. }));
            let mut found = discover(core, dns).await;
            found.retain(|id, _| !retired.contains(id));
            found
        }
    };
    add_and_move(core, &nodes, &wanted).await;
    // Without desired members, a node that asked to join is promoted though the leader's own
    // list may not name it.
    let may_vote = |id: &NodeId| match &desired {
        Some(members) => members.contains_key(id),
        None => !retired.contains(id),
    };
    if promote_caught_up(core, metrics, &nodes, &voters, may_vote).await {
        return None;
    }
    let desired = desired?;
    let unwanted_learner = nodes
        .keys()
        .find(|id| !voters.contains(id) && !desired.contains_key(id));
    if let Some(id) = unwanted_learner {
        match crate::removal::remove_learner(core, *id).await {
            Ok(()) => tracing::info!(node = id, "learner not desired: removed"),
            Err(e) => tracing::warn!(node = id, error = %e, "cannot remove a learner; retrying"),
        }
        return None;
    }
    let unwanted: BTreeSet<NodeId> = voters
        .iter()
        .copied()
        .filter(|id| !desired.contains_key(id))
        .collect();
    let step = next_step(&voters, &live_voters(core, &voters), me, &unwanted)?;
    if let Step::Remove(id) = step {
        match crate::removal::remove_voter(core, id).await {
            Ok(()) => tracing::info!(node = id, "voter not desired: removed"),
            Err(e) => tracing::warn!(node = id, error = %e, "cannot remove a voter; retrying"),
        }
    }
    Some(step)
}

/// Writes every voter that `answered` into the replicated members, with its address (unless
/// an operator retired it); false when a write failed.
async fn record_voters(
    core: &Core,
    nodes: &BTreeMap<NodeId, String>,
    answered: &BTreeSet<NodeId>,
    retired: &BTreeSet<NodeId>,
) -> bool {
    let recorded = core.state.read(|state| state.members().clone());
    for id in answered.iter().filter(|id| !retired.contains(id)) {
        let addr = &nodes[id];
        if recorded.get(id) == Some(addr) {
            continue;
        }
        let request = Request::AddMember {
            id: *id,
            addr: addr.clone(),
        };
        let _writing = core.leader_writes.read().await;
        match core.raft.client_write(request).await {
            Ok(_) => tracing::info!(member = id, %addr, "member recorded"),
            Err(e) => {
                report_failure(&e, "cannot record a member; retrying");
                return false;
            }
        }
    }
    true
}

/// Adds every wanted node the membership does not have as a learner, and moves a known node to
/// its new address when that address is sure.
async fn add_and_move(
    core: &Core,
    nodes: &BTreeMap<NodeId, String>,
    wanted: &BTreeMap<NodeId, Found>,
) {
    for (id, peer) in wanted {
        let _writing = core.leader_writes.read().await;
        match nodes.get(id) {
            None => match core
                .raft
                .add_learner(*id, BasicNode::new(&peer.addr), false)
                .await
            {
                Ok(_) => tracing::info!(node = id, addr = %peer.addr, "node added as learner"),
                Err(e) => report_failure(&e, "cannot add a learner; retrying"),
            },
            Some(known) if known != &peer.addr && peer.sure => {
                let moved = BTreeMap::from([(*id, BasicNode::new(&peer.addr))]);
                match core
                    .raft
                    .change_membership(ChangeMembers::SetNodes(moved), true)
                    .await
                {
                    Ok(_) => tracing::info!(node = id, addr = %peer.addr, "node address updated"),
                    Err(e) => report_failure(&e, "cannot update a node's address; retrying"),
                }
            }
            Some(_) => {}
        }
    }
}

/// Promotes the learners that `may_vote` allows whose log is within [`PROMOTION_LAG`] of the
/// leader's; true when the membership changed.
async fn promote_caught_up(
    core: &Core,
    metrics: &RaftMetrics<NodeId, Node>,
    nodes: &BTreeMap<NodeId, String>,
    voters: &BTreeSet<NodeId>,
    may_vote: impl Fn(&NodeId) -> bool,
) -> bool {
    let last = metrics.last_log_index.unwrap_or(0);
    let matched = |id: &NodeId| {
        metrics
            .replication
            .as_ref()
            .and_then(|replication| replication.get(id).copied().flatten())
            .map(|log_id| log_id.index)
    };
    let caught_up: BTreeSet<NodeId> = nodes
        .keys()
        .filter(|id| !voters.contains(id) && may_vote(id))
        .filter(|id| matched(id).is_some_and(|index| index + PROMOTION_LAG >= last))
        .copied()
        .collect();
    if caught_up.is_empty() {
        return false;
    }
    let _writing = core.leader_writes.read().await;
    match core
        .raft
        .change_membership(ChangeMembers::AddVoterIds(caught_up.clone()), true)
        .await
    {
        Ok(_) => tracing::info!(nodes = ?caught_up, "learners promoted to voters"),
        Err(e) => report_failure(&e, "cannot promote learners; retrying"),
    }
    true
}

/// Logs a failed membership write: quietly when this node just stopped being the leader (the
/// next round runs on the new one), as a warning otherwise.
fn report_failure(error: &RaftError<NodeId, ClientWriteError<NodeId, Node>>, what: &str) {
    if error.forward_to_leader().is_some() {
        tracing::debug!(%error, "{what}");
    } else {
        tracing::warn!(%error, "{what}");
    }
}
