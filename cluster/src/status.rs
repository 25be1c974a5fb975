//! What `GET /cluster` answers, and the client that asks it (used by `chorus cluster status`
//! and by nodes probing each other at bootstrap).

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use chorus_storage::{RaftMeta, Store};
use serde::{Deserialize, Serialize};

use crate::desired::DesiredMembers;
use crate::error::ClusterError;
use crate::outbound::ClusterClient;
use crate::peer_request::send_to_peer;
use crate::secret::ClusterSecret;
use crate::state_machine::StateReader;
use crate::types::{LogId, NodeId, Raft};

/// A node's Raft role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
}

impl From<openraft::ServerState> for Role {
    fn from(state: openraft::ServerState) -> Role {
        match state {
            openraft::ServerState::Leader => Role::Leader,
            openraft::ServerState::Follower => Role::Follower,
            openraft::ServerState::Candidate => Role::Candidate,
            openraft::ServerState::Learner => Role::Learner,
            openraft::ServerState::Shutdown => Role::Shutdown,
        }
    }
}

/// A node of the Raft membership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: NodeId,
    /// Its cluster address.
    pub addr: String,
    /// A voter, or a learner still catching up.
    pub voter: bool,
    /// The last log index the leader knows it holds (only when this node is the leader).
    pub matched_index: Option<u64>,
    /// The replicated state lists it, at this address (`AddMember` was applied here, and it was
    /// not declared dead since).
    pub recorded: bool,
}

/// One node's view of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub node_id: NodeId,
    pub state: Role,
    pub leader_id: Option<NodeId>,
    pub term: u64,
    /// The last log index known committed (None before the first commit).
    pub commit_index: Option<u64>,
    /// The last log index applied to this node's state.
    pub applied_index: Option<u64>,
    /// The last log index in this node's log.
    pub last_log_index: Option<u64>,
    /// The Raft membership, by id.
    pub members: Vec<MemberStatus>,
    /// The members the cluster should have, from a members file (none: it never removes a node
    /// by itself).
    #[serde(default)]
    pub desired: Option<DesiredMembers>,
    /// The nodes an operator took out of the cluster (`chorus cluster remove`).
    #[serde(default)]
    pub retired: Vec<NodeId>,
}

impl ClusterStatus {
    /// This node belongs to a cluster (its membership has a voter).
    pub fn is_member_of_a_cluster(&self) -> bool {
        self.members.iter().any(|m| m.voter)
    }

    pub fn voters(&self) -> impl Iterator<Item = &MemberStatus> {
        self.members.iter().filter(|m| m.voter)
    }
}

fn index(i: Option<u64>) -> String {
    i.map_or_else(|| "-".to_owned(), |i| i.to_string())
}

impl fmt::Display for ClusterStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = serde_json::to_value(self.state).unwrap_or_default();
        writeln!(
            f,
            "node {}: {}, term {}",
            self.node_id,
            state.as_str().unwrap_or("?"),
            self.term
        )?;
        match self.leader_id {
            Some(leader) => writeln!(f, "leader: node {leader}")?,
            None => writeln!(f, "leader: none known")?,
        }
        writeln!(
            f,
            "log: last {}, committed {}, applied {}",
            index(self.last_log_index),
            index(self.commit_index),
            index(self.applied_index)
        )?;
        self.fmt_desired(f)?;
        writeln!(f, "members ({}):", self.members.len())?;
        for member in &self.members {
            let mut notes = Vec::new();
            if Some(member.id) == self.leader_id {
                notes.push("leader".to_owned());
            }
            if member.id == self.node_id {
                notes.push("this node".to_owned());
            }
            if let Some(matched) = member.matched_index {
                notes.push(format!("matched {matched}"));
            }
            if !member.recorded {
                notes.push("not a member yet or any more: joining, or declared dead".to_owned());
            }
            if self
                .desired
                .as_ref()
                .is_some_and(|desired| !desired.members.contains_key(&member.id))
            {
                notes.push("not desired: to be removed".to_owned());
            }
            let notes = if notes.is_empty() {
                String::new()
            } else {
                format!("  ({})", notes.join(", "))
            };
            writeln!(
                f,
                "  {:>4}  {:<7}  {}{notes}",
                member.id,
                if member.voter { "voter" } else { "learner" },
                member.addr
            )?;
        }
        Ok(())
    }
}

impl ClusterStatus {
    /// The desired set beside the actual one: which listed nodes are not in the membership yet.
    fn fmt_desired(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(desired) = &self.desired else {
            writeln!(
                f,
                "desired: no members file (nodes are never removed by themselves)"
            )?;
            if !self.retired.is_empty() {
                writeln!(f, "retired by an operator: {}", ids(self.retired.iter()))?;
            }
            return Ok(());
        };
        writeln!(
            f,
            "desired (revision {}): {}",
            desired.revision,
            ids(desired.members.keys())
        )?;
        let missing: Vec<&NodeId> = desired
            .members
            .keys()
            .filter(|id| !self.members.iter().any(|member| member.id == **id))
            .collect();
        if !missing.is_empty() {
            writeln!(f, "desired, not joined yet: {}", ids(missing.into_iter()))?;
        }
        Ok(())
    }
}

fn ids<'a>(ids: impl Iterator<Item = &'a NodeId>) -> String {
    ids.map(|id| id.to_string()).collect::<Vec<_>>().join(", ")
}

/// Node `me`'s view of the cluster: its Raft, the commit index its store saved, and the
/// replicated state it applied.
pub(crate) fn status_of(
    me: NodeId,
    raft: &Raft,
    store: &Store,
    state: &StateReader,
) -> ClusterStatus {
    let metrics = raft.metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let recorded = state.read(|state| state.members().clone());
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
    let (desired, retired) = state.read(|state| {
        let retired = state.retired().iter().copied().collect();
        (state.desired().cloned(), retired)
    });
    ClusterStatus {
        node_id: me,
        state: metrics.state.into(),
        leader_id: metrics.current_leader,
        term: metrics.current_term,
        commit_index: commit_index(store),
        applied_index: metrics.last_applied.map(|log_id| log_id.index),
        last_log_index: metrics.last_log_index,
        members,
        desired,
        retired,
    }
}

/// The last log index this node knows committed, as Raft last saved it.
pub(crate) fn commit_index(store: &Store) -> Option<u64> {
    match store.raft().meta::<Option<LogId>>(RaftMeta::Committed) {
        Ok(committed) => committed.flatten().map(|log_id| log_id.index),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the committed log id");
            None
        }
    }
}

/// Asks the node at `addr` (`host:port` of its cluster port) for its status.
pub async fn fetch_status(
    client: &ClusterClient,
    addr: &str,
    secret: &ClusterSecret,
    timeout: Duration,
) -> Result<ClusterStatus, ClusterError> {
    let request = client.get(addr, "/cluster");
    send_to_peer(request, addr, secret, timeout).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_as_a_table_and_round_trips_as_json() {
        let status = ClusterStatus {
            node_id: 2,
            state: Role::Follower,
            leader_id: Some(1),
            term: 3,
            commit_index: Some(12),
            applied_index: Some(11),
            last_log_index: Some(12),
            members: vec![
                MemberStatus {
                    id: 1,
                    addr: "10.0.0.1:6002".into(),
                    voter: true,
                    matched_index: None,
                    recorded: true,
                },
                MemberStatus {
                    id: 2,
                    addr: "10.0.0.2:6002".into(),
                    voter: false,
                    matched_index: None,
                    recorded: false,
                },
            ],
            desired: Some(DesiredMembers {
                revision: 4,
                members: [(1, "10.0.0.1:6002"), (3, "10.0.0.3:6002")]
                    .into_iter()
                    .map(|(id, addr)| (id, addr.to_owned()))
                    .collect(),
            }),
            retired: Vec::new(),
        };
        let text = status.to_string();
        assert!(
            text.starts_with("node 2: follower, term 3\nleader: node 1\n"),
            "{text}"
        );
        assert!(text.contains("committed 12, applied 11"), "{text}");
        assert!(
            text.contains("1  voter    10.0.0.1:6002  (leader)"),
            "{text}"
        );
        assert!(
            text.contains(
                "2  learner  10.0.0.2:6002  (this node, not a member yet or any more: joining, or \
                 declared dead, not desired: to be removed)"
            ),
            "{text}"
        );
        assert!(
            text.contains("desired (revision 4): 1, 3\ndesired, not joined yet: 3\n"),
            "{text}"
        );
        let json = serde_json::to_string(&status).unwrap();
        assert!(json.contains("\"state\":\"follower\""), "{json}");
        assert_eq!(
            serde_json::from_str::<ClusterStatus>(&json).unwrap(),
            status
        );
        assert!(status.is_member_of_a_cluster());
    }
}
