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

use chorus_storage::Store;
use openraft::error::{InitializeError, RaftError};
use openraft::{BasicNode, ChangeMembers, RaftMetrics};
use tokio::task::JoinSet;

use crate::join::{request_join, JoinRequest};
use crate::leader_writes::{LeaderWrites, WriteError};
use crate::liveness::{Liveness, ANSWERED_RECENTLY};
use crate::peer_request::PeerRequests;
use crate::peers::Peers;
use crate::removal::{next_step, Removals, Step};
use crate::roster::Roster;
use crate::state_machine::StateReader;
use crate::status::{status_of, ClusterStatus};
use crate::types::{Node, NodeId, Raft, Request};

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

/// What the membership task uses.
pub(crate) struct Membership {
    pub(crate) me: NodeId,
    /// This node's cluster address, as it advertises it.
    pub(crate) addr: String,
    pub(crate) writes: Arc<LeaderWrites>,
    pub(crate) state: StateReader,
    /// For this node's status, as it answers for itself.
    pub(crate) store: Store,
    pub(crate) roster: Arc<Roster>,
    pub(crate) liveness: Arc<Liveness>,
    pub(crate) client: PeerRequests,
    pub(crate) removals: Removals,
}

/// Forms the cluster and keeps its membership up to date, until the runtime stops.
pub(crate) async fn keep_membership(membership: Membership) {
    let mut blocked: Option<String> = None;
    loop {
        let metrics = membership.raft().metrics().borrow().clone();
        let in_cluster = metrics
            .membership_config
            .membership()
            .voter_ids()
            .next()
            .is_some();
        if !in_cluster {
            membership.bootstrap().await;
        } else if metrics.current_leader == Some(membership.me) {
            let step = membership.reconcile(&metrics).await;
            report_blocked(&step, &mut blocked);
            if step == Some(Step::HandOverFirst) {
                membership.hand_over_to_a_staying_voter().await;
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

impl Membership {
    fn raft(&self) -> &Raft {
        self.writes.raft()
    }

    /// The leader is not among the desired members: it hands its leadership to one that is,
    /// which then removes it.
    async fn hand_over_to_a_staying_voter(&self) {
        let Some(desired) = self.roster.desired() else {
            return;
        };
        let handed = (self.removals.transfer).hand_over(|id| desired.members.contains_key(&id));
        match handed.await {
            Ok(outcome) => tracing::info!(?outcome, "the leader is not desired: it handed over"),
            Err(e) => {
                tracing::warn!(error = %e, "the leader is not desired but cannot hand over yet")
            }
        }
    }

    /// The nodes of the peer list by id. A static list is asked only when `probe`; a DNS
    /// name's records are always asked, since a node's id is what it answers.
    async fn discover(&self, probe: bool) -> BTreeMap<NodeId, Found> {
        let me = self.me;
        let mut found = BTreeMap::new();
        let addresses: Vec<String> = match (self.roster.listed_nodes(), self.roster.peers()) {
            (Some(nodes), _) => {
                for (id, addr) in &nodes {
                    let listed = Found {
                        addr: addr.clone(),
                        sure: true,
                        status: None,
                    };
                    found.insert(*id, listed);
                }
                let others = nodes.into_iter().filter(|(id, _)| *id != me);
                others.filter(|_| probe).map(|(_, addr)| addr).collect()
            }
            (None, Some(Peers::Dns { name, port })) => self.resolve(name, *port).await,
            (None, _) => Vec::new(),
        };
        let mut probes = JoinSet::new();
        for addr in addresses {
            let client = self.client.clone();
            probes.spawn(async move {
                let status = client.status(&addr, PROBE_TIMEOUT).await;
                (addr, status)
            });
        }
        while let Some(Ok((addr, answer))) = probes.join_next().await {
            match answer {
                Ok(status) => {
                    let id = status.node_id;
                    let status = Some(status);
                    found.insert(
                        id,
                        Found {
                            addr,
                            sure: true,
                            status,
                        },
                    );
                }
                Err(e) => tracing::debug!(%addr, error = %e, "peer did not answer"),
            }
        }
        // This node answers for itself. With a DNS name its own record may not be there yet:
        // its advertised address stands in, unsure.
        let own = found.entry(me).or_insert_with(|| Found {
            addr: self.addr.clone(),
            sure: !self.roster.by_dns(),
            status: None,
        });
        own.status = Some(status_of(me, self.raft(), &self.store, &self.state));
        found
    }

    /// The addresses of the peers' DNS name, each with the cluster port.
    async fn resolve(&self, name: &str, port: u16) -> Vec<String> {
        match self.roster.names().lookup_port(name, port).await {
            Ok(records) => {
                let addresses: BTreeSet<String> =
                    records.into_iter().map(|addr| addr.to_string()).collect();
                addresses.into_iter().collect()
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot resolve the peers' DNS name");
                Vec::new()
            }
        }
    }

    /// Joins the cluster a peer belongs to, or initializes one if this node is the one to: see
    /// the module documentation.
    async fn bootstrap(&self) {
        let me = self.me;
        let following_a_file = self.roster.members_file().is_some();
        let listed = self.roster.listed_nodes();
        if following_a_file && !listed.is_some_and(|nodes| nodes.contains_key(&me)) {
            return; // Not desired (yet): the leader adds this node once the file lists it.
        }
        let found = self.discover(true).await;
        let peer_statuses = found
            .iter()
            .filter(|(id, _)| **id != me)
            .filter_map(|(_, peer)| peer.status.as_ref());
        let mut clustered = peer_statuses.filter(|status| status.is_member_of_a_cluster());
        if let Some(peer) = clustered.next() {
            if !following_a_file {
                self.ask_to_join(peer, &found[&me].addr).await;
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
        match self.raft().initialize(members).await {
            Ok(()) => tracing::info!(voters = ?ids, "formed the cluster"),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
            Err(e) => tracing::warn!(error = %e, "cannot form the cluster; retrying"),
        }
    }

    /// Asks the leader of the cluster `peer` belongs to to take this node (at `addr`) as a
    /// learner.
    async fn ask_to_join(&self, peer: &ClusterStatus, addr: &str) {
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
            node_id: self.me,
            addr: addr.to_owned(),
        };
        match request_join(&self.client, &leader.addr, &request).await {
            Ok(outcome) => {
                tracing::info!(leader = leader.id, ?outcome, "asked to join the cluster")
            }
            Err(e) => {
                tracing::warn!(leader = leader.id, error = %e, "cannot ask to join; retrying")
            }
        }
    }

    /// The leader's round: record voters, add wanted nodes as learners, promote caught-up
    /// learners, and with desired members take one step towards them; returns that step, or
    /// `None`.
    async fn reconcile(&self, metrics: &RaftMetrics<NodeId, Node>) -> Option<Step> {
        // A hand-over under way: its next leader carries on.
        let _changing = self.writes.try_membership_change()?;
        let membership = metrics.membership_config.membership();
        if membership.get_joint_config().len() > 1 {
            return None; // A membership change is under way.
        }
        let nodes: BTreeMap<NodeId, String> = membership
            .nodes()
            .map(|(id, node)| (*id, node.addr.clone()))
            .collect();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let (desired, retired) = self.state.read(|state| {
            let desired = state.desired().map(|d| d.members.clone());
            (desired, state.retired().clone())
        });
        let me = self.me;
        let answered: BTreeSet<NodeId> = voters
            .iter()
            .copied()
            .filter(|id| *id == me || self.liveness.answered_within(*id, ANSWERED_RECENTLY))
            .collect();
        if !self.record_voters(&nodes, &answered, &retired).await {
            return None;
        }
        let wanted = match &desired {
            Some(members) => sure(members),
            None => {
                let mut found = self.discover(self.roster.by_dns()).await;
                found.retain(|id, _| !retired.contains(id));
                found
            }
        };
        self.add_and_move(&nodes, &wanted).await;
        // Without desired members, a node that asked to join is promoted though the leader's
        // own list may not name it.
        let may_vote = |id: &NodeId| match &desired {
            Some(members) => members.contains_key(id),
            None => !retired.contains(id),
        };
        if self
            .promote_caught_up(metrics, &nodes, &voters, may_vote)
            .await
        {
            return None;
        }
        self.step_towards(&desired?, &nodes, &voters).await
    }

    /// One step towards the `desired` members: an unwanted learner removed, else the next
    /// unwanted voter when that is safe; returns the step taken or blocked.
    async fn step_towards(
        &self,
        desired: &BTreeMap<NodeId, String>,
        nodes: &BTreeMap<NodeId, String>,
        voters: &BTreeSet<NodeId>,
    ) -> Option<Step> {
        let unwanted_learner = nodes
            .keys()
            .find(|id| !voters.contains(id) && !desired.contains_key(id));
        if let Some(id) = unwanted_learner {
            match self.removals.remove_learner(*id).await {
                Ok(()) => tracing::info!(node = id, "learner not desired: removed"),
                Err(e) => {
                    tracing::warn!(node = id, error = %e, "cannot remove a learner; retrying")
                }
            }
            return None;
        }
        let unwanted: BTreeSet<NodeId> = voters
            .iter()
            .copied()
            .filter(|id| !desired.contains_key(id))
            .collect();
        let live = self.liveness.live_voters(self.me, voters);
        let step = next_step(voters, &live, self.me, &unwanted)?;
        if let Step::Remove(id) = step {
            match self.removals.remove_voter(id).await {
                Ok(()) => tracing::info!(node = id, "voter not desired: removed"),
                Err(e) => tracing::warn!(node = id, error = %e, "cannot remove a voter; retrying"),
            }
        }
        Some(step)
    }

    /// Writes every voter that `answered` into the replicated members, with its address
    /// (unless an operator retired it); false when a write failed.
    async fn record_voters(
        &self,
        nodes: &BTreeMap<NodeId, String>,
        answered: &BTreeSet<NodeId>,
        retired: &BTreeSet<NodeId>,
    ) -> bool {
        let recorded = self.state.read(|state| state.members().clone());
        for id in answered.iter().filter(|id| !retired.contains(id)) {
            let addr = &nodes[id];
            if recorded.get(id) == Some(addr) {
                continue;
            }
            let request = Request::AddMember {
                id: *id,
                addr: addr.clone(),
            };
            match self.writes.write(request).await {
                Ok(_) => tracing::info!(member = id, %addr, "member recorded"),
                Err(e) => {
                    report_failure(&e, "cannot record a member; retrying");
                    return false;
                }
            }
        }
        true
    }

    /// Adds every wanted node the membership does not have as a learner, and moves a known
    /// node to its new address when that address is sure.
    async fn add_and_move(
        &self,
        nodes: &BTreeMap<NodeId, String>,
        wanted: &BTreeMap<NodeId, Found>,
    ) {
        for (id, peer) in wanted {
            match nodes.get(id) {
                None => match self.writes.add_learner(*id, &peer.addr).await {
                    Ok(()) => tracing::info!(node = id, addr = %peer.addr, "node added as learner"),
                    Err(e) => report_failure(&e, "cannot add a learner; retrying"),
                },
                Some(known) if known != &peer.addr && peer.sure => {
                    let moved = BTreeMap::from([(*id, BasicNode::new(&peer.addr))]);
                    let changes = ChangeMembers::SetNodes(moved);
                    match self.writes.change_membership(changes, true).await {
                        Ok(()) => {
                            tracing::info!(node = id, addr = %peer.addr, "node address updated")
                        }
                        Err(e) => report_failure(&e, "cannot update a node's address; retrying"),
                    }
                }
                Some(_) => {}
            }
        }
    }

    /// Promotes the learners that `may_vote` allows whose log is within [`PROMOTION_LAG`] of
    /// the leader's; true when the membership changed.
    async fn promote_caught_up(
        &self,
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
        let changes = ChangeMembers::AddVoterIds(caught_up.clone());
        match self.writes.change_membership(changes, true).await {
            Ok(()) => tracing::info!(nodes = ?caught_up, "learners promoted to voters"),
            Err(e) => report_failure(&e, "cannot promote learners; retrying"),
        }
        true
    }
}

/// The desired members as nodes found at sure addresses.
fn sure(members: &BTreeMap<NodeId, String>) -> BTreeMap<NodeId, Found> {
    members
        .iter()
        .map(|(id, addr)| {
            let found = Found {
                addr: addr.clone(),
                sure: true,
                status: None,
            };
            (*id, found)
        })
        .collect()
}

/// Logs a failed membership write: quietly when this node just stopped being the leader (the
/// next round runs on the new one), as a warning otherwise.
fn report_failure(error: &WriteError, what: &str) {
    if error.forward_to_leader().is_some() {
        tracing::debug!(%error, "{what}");
    } else {
        tracing::warn!(%error, "{what}");
    }
}
