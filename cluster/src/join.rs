//! Joining a running cluster: a node that is in no cluster, and finds a peer that is, asks that
//! cluster's leader (`POST /cluster/join` on its cluster port, with the secret) to take it as a
//! learner. The leader's membership round ([`crate::membership`]) promotes it to voter once it
//! has caught up. So a node added later needs only a peer list that names one running node. A
//! node an operator retired is taken back this way (it starts afresh and asks); a cluster that
//! follows a members file takes only the nodes the file lists (and adds them by itself).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ClusterError;
use crate::leader_writes::LeaderWrites;
use crate::peer_request::PeerRequests;
use crate::state_machine::StateReader;
use crate::types::{NodeId, Request};

/// How long the leader has to answer a join request.
const JOIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The path of the join request on the cluster port.
pub(crate) const JOIN_PATH: &str = "/cluster/join";

/// A node asking to join: its id and its cluster address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    pub node_id: NodeId,
    pub addr: String,
}

/// What the leader did with a join request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinOutcome {
    /// The node is now a learner; it becomes a voter once caught up.
    AddedAsLearner,
    /// The node was in the membership already.
    AlreadyMember,
    /// This node is not the leader: ask `leader_id`.
    NotLeader { leader_id: Option<NodeId> },
    /// The cluster follows a members file that does not list the node.
    NotListed { revision: u64 },
}

/// The leader's side: adds the node as a learner unless it is known. `me` is this node, at
/// cluster address `addr` (for errors).
pub(crate) async fn admit(
    (me, addr): (NodeId, &str),
    writes: &LeaderWrites,
    state: &StateReader,
    request: JoinRequest,
) -> Result<JoinOutcome, ClusterError> {
    let metrics = writes.raft().metrics().borrow().clone();
    if metrics.current_leader != Some(me) {
        return Ok(JoinOutcome::NotLeader {
            leader_id: metrics.current_leader,
        });
    }
    let known = metrics
        .membership_config
        .membership()
        .nodes()
        .any(|(id, _)| *id == request.node_id);
    if known {
        return Ok(JoinOutcome::AlreadyMember);
    }
    let (desired, retired) = state.read(|state| {
        let desired = state.desired().cloned();
        (desired, state.retired().contains(&request.node_id))
    });
    if let Some(desired) = desired {
        if !desired.members.contains_key(&request.node_id) {
            return Ok(JoinOutcome::NotListed {
                revision: desired.revision,
            });
        }
    }
    let refused = |body: String| ClusterError::Refused {
        addr: addr.to_owned(),
        status: 503,
        body,
    };
    if retired {
        let taken_back = Request::SetRetired {
            id: request.node_id,
            retired: false,
        };
        if let Err(e) = writes.write(taken_back).await {
            return Err(refused(e.to_string()));
        }
        tracing::info!(
            node = request.node_id,
            "a retired node asked to join: taken back"
        );
    }
    match writes.add_learner(request.node_id, &request.addr).await {
        Ok(()) => {
            tracing::info!(node = request.node_id, addr = %request.addr, "node joined as learner");
            Ok(JoinOutcome::AddedAsLearner)
        }
        Err(e) => match e.forward_to_leader() {
            Some(forward) => Ok(JoinOutcome::NotLeader {
                leader_id: forward.leader_id,
            }),
            None => Err(refused(e.to_string())),
        },
    }
}

/// The joining node's side: asks the leader at `leader_addr`.
pub(crate) async fn request_join(
    client: &PeerRequests,
    leader_addr: &str,
    request: &JoinRequest,
) -> Result<JoinOutcome, ClusterError> {
    client
        .post(leader_addr, JOIN_PATH, request, JOIN_TIMEOUT)
        .await
}
