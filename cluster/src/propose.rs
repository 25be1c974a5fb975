//! Changing the replicated state from any node: only the leader can write to the Raft log, so a
//! node that is not the leader sends its [`Request`] to the leader (`POST /cluster/propose` on its
//! cluster port, with the secret), which writes it and answers once it is committed. A node that
//! is no longer the leader when asked says so, and the proposer asks the one it names.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ClusterError;
use crate::leader_writes::LeaderWrites;
use crate::peer_request::PeerRequests;
use crate::raft_view::node_addr;
use crate::types::{NodeId, Request, Response, LONGEST_NAME};

/// The path of a proposal on the cluster port.
pub(crate) const PROPOSE_PATH: &str = "/cluster/propose";

/// How long the leader has to commit a proposal.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(4);

/// How long a proposal may take in all, waiting for a leader and following changes of leader.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long to wait before asking again after the leader could not be reached.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// What a node asked to write a proposal did with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProposeOutcome {
    /// Committed at `log_index` and applied on the leader, which answered this.
    Applied { response: Response, log_index: u64 },
    /// This node is not the leader: ask `leader_id`.
    NotLeader { leader_id: Option<NodeId> },
}

/// The leader's side: writes `request` to the log and waits until it is committed. `me` is this
/// node's cluster address, for errors.
pub(crate) async fn write_as_leader(
    writes: &LeaderWrites,
    me: &str,
    request: Request,
) -> Result<ProposeOutcome, ClusterError> {
    if !request.is_plausible() {
        return Err(ClusterError::Refused {
            addr: me.to_owned(),
            status: 400,
            body: format!("an app id or channel name is over {LONGEST_NAME} bytes"),
        });
    }
    // A leader cut off from a majority stays leader until it hears of a newer term, and its
    // writes wait for a commit that cannot come. A leader handing over holds its writes back
    // (see `crate::handover`) until another leads: then this one answers where it is.
    let written = tokio::time::timeout(COMMIT_TIMEOUT, writes.write(request))
        .await
        .map_err(|_| ClusterError::Uncommitted(COMMIT_TIMEOUT))?;
    match written {
        Ok(written) => Ok(ProposeOutcome::Applied {
            response: written.data,
            log_index: written.log_id.index,
        }),
        Err(e) => match e.forward_to_leader() {
            Some(forward) => Ok(ProposeOutcome::NotLeader {
                leader_id: forward.leader_id,
            }),
            None => Err(ClusterError::Refused {
                addr: me.to_owned(),
                status: 503,
                body: e.to_string(),
            }),
        },
    }
}

/// Writes requests to the replicated state through the leader, wherever it is. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Proposer {
    me: NodeId,
    /// This node's cluster address.
    addr: String,
    writes: Arc<LeaderWrites>,
    client: PeerRequests,
}

impl Proposer {
    pub(crate) fn new(
        me: NodeId,
        addr: String,
        writes: Arc<LeaderWrites>,
        client: PeerRequests,
    ) -> Proposer {
        Proposer {
            me,
            addr,
            writes,
            client,
        }
    }

    /// Writes `request` through the current leader, this node or another; returns what applying
    /// it answered. While there is no leader (an election), or the leader cannot be connected to
    /// (it died, and the others have not noticed yet), it waits and asks again, for at most
    /// [`PROPOSE_TIMEOUT`] in all. It never sends the request twice once a leader may have taken
    /// it.
    pub(crate) async fn propose(&self, request: Request) -> Result<Response, ClusterError> {
        self.propose_logged(request)
            .await
            .map(|(response, _)| response)
    }

    /// As [`Proposer::propose`], also returning the index of the log entry the request became.
    pub(crate) async fn propose_logged(
        &self,
        request: Request,
    ) -> Result<(Response, u64), ClusterError> {
        let deadline = tokio::time::Instant::now() + PROPOSE_TIMEOUT;
        let mut named = None;
        loop {
            let leader = match named.take() {
                Some(leader) => leader,
                None => self.await_leader(deadline).await?,
            };
            let outcome = if leader == self.me {
                write_as_leader(&self.writes, &self.addr, request.clone()).await
            } else {
                self.ask_leader(leader, &request, deadline).await
            };
            match outcome {
                Ok(ProposeOutcome::Applied {
                    response,
                    log_index,
                }) => return Ok((response, log_index)),
                Ok(ProposeOutcome::NotLeader { leader_id }) => named = leader_id,
                Err(ClusterError::Unreachable { source, .. }) if source.is_connect() => {}
                Err(ClusterError::NoLeader) => {}
                Err(e) => return Err(e),
            }
            if tokio::time::Instant::now() + RETRY_PAUSE >= deadline {
                return Err(ClusterError::NoLeader);
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Sends `request` to node `leader`, for it to write.
    async fn ask_leader(
        &self,
        leader: NodeId,
        request: &Request,
        deadline: tokio::time::Instant,
    ) -> Result<ProposeOutcome, ClusterError> {
        let addr = node_addr(self.writes.raft(), leader).ok_or(ClusterError::NoLeader)?;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.client.post(&addr, PROPOSE_PATH, request, left).await
    }

    /// The leader this node knows of, waiting until `deadline` for one to be elected.
    async fn await_leader(&self, deadline: tokio::time::Instant) -> Result<NodeId, ClusterError> {
        let mut metrics = self.writes.raft().metrics();
        loop {
            if let Some(leader) = metrics.borrow_and_update().current_leader {
                return Ok(leader);
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(ClusterError::Stopped),
                Err(_) => return Err(ClusterError::NoLeader),
            }
        }
    }
}
