//! Changing the replicated state from any node: only the leader can write to the Raft log, so a
//! node that is not the leader sends its [`Request`] to the leader (`POST /cluster/propose` on its
//! cluster port, with the secret), which writes it and answers once it is committed. A node that
//! is no longer the leader when asked says so, and the proposer asks the one it names.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cluster::Core;
use crate::error::ClusterError;
use crate::peer_request::send_to_peer;
use crate::types::{NodeId, Request, Response};

/// The path of a proposal on the cluster port.
pub(crate) const PROPOSE_PATH: &str = "/cluster/propose";

/// How long the leader has to commit a proposal.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How many times a proposal follows a change of leader before giving up.
const LEADER_HOPS: usize = 3;

/// What a node asked to write a proposal did with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProposeOutcome {
    /// Committed and applied on the leader, which answered this.
    Applied(Response),
    /// This node is not the leader: ask `leader_id`.
    NotLeader { leader_id: Option<NodeId> },
}

/// The leader's side: writes `request` to the log and waits until it is committed.
pub(crate) async fn write_as_leader(
    core: &Core,
    request: Request,
) -> Result<ProposeOutcome, ClusterError> {
    match core.raft.client_write(request).await {
        Ok(written) => Ok(ProposeOutcome::Applied(written.data)),
        Err(e) => match e.forward_to_leader() {
            Some(forward) => Ok(ProposeOutcome::NotLeader {
                leader_id: forward.leader_id,
            }),
            None => Err(ClusterError::Refused {
                addr: core.settings.advertise_addr.clone(),
                status: 503,
                body: e.to_string(),
            }),
        },
    }
}

/// Writes `request` through the current leader, this node or another; returns what applying it
/// answered.
pub(crate) async fn propose(core: &Core, request: Request) -> Result<Response, ClusterError> {
    let mut leader_id = core.raft.metrics().borrow().current_leader;
    for _ in 0..LEADER_HOPS {
        let leader = leader_id.ok_or(ClusterError::NoLeader)?;
        let outcome = if leader == core.node_id() {
            write_as_leader(core, request.clone()).await?
        } else {
            let addr = leader_addr(core, leader).ok_or(ClusterError::NoLeader)?;
            let post = core
                .client
                .post(format!("http://{addr}{PROPOSE_PATH}"))
                .json(&request);
            send_to_peer(post, &addr, &core.settings.secret, PROPOSE_TIMEOUT).await?
        };
        match outcome {
            ProposeOutcome::Applied(response) => return Ok(response),
            ProposeOutcome::NotLeader { leader_id: named } => leader_id = named,
        }
    }
    Err(ClusterError::NoLeader)
}

/// The cluster address of node `id`, as Raft's membership has it.
fn leader_addr(core: &Core, id: NodeId) -> Option<String> {
    core.raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .get_node(&id)
        .map(|node| node.addr.clone())
}
