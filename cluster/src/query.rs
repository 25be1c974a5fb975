//! Asking every other member of the cluster the same question at once.
//!
//! The node POSTs one JSON body to a path of each other member's cluster port, with the cluster
//! secret, all in parallel on the Raft runtime, and gives each member at most a timeout to answer
//! 200 with JSON. The question never fails as a whole: a member that does not answer in time,
//! cannot be reached, refuses or answers something else is left out of the answers, logged at
//! debug, and counted in `chorus_cluster_query_unanswered_total` by peer and reason. A one-node
//! cluster has no other
//! member: its answers are empty at once, on the same code path.
//!
//! The members are the nodes of the Raft membership as this node last saw it, voters and
//! learners (a joining node serves clients while it catches up), with their cluster addresses, as
//! forwarding reaches them. The replicated state's list of members would do too, but it records
//! only voters, and a leader records them a membership round after the cluster forms.
//!
//! What the question is and what its answers mean is the caller's (the broker's cluster-wide
//! HTTP API answers and the termination of a user's connections on every node).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::task::JoinSet;

use crate::cluster::{Cluster, Core};
use crate::error::ClusterError;
use crate::peer_request::send_to_peer;
use crate::types::NodeId;

/// What the other members answered to one question.
#[derive(Debug)]
pub struct Answers<A> {
    /// Each answer, by the id of the member that gave it in time.
    pub answered: BTreeMap<NodeId, A>,
    /// The members that gave no usable answer in time, by id.
    pub unanswered: Vec<NodeId>,
}

impl Cluster {
    /// POSTs `question` as JSON to `path` on every other member's cluster port, in parallel,
    /// and returns what each answered within `timeout`. Callable from any runtime; fails only
    /// when the question cannot be encoded or the Raft runtime has stopped.
    pub async fn ask_others<Q, A>(
        &self,
        path: &str,
        question: &Q,
        timeout: Duration,
    ) -> Result<Answers<A>, ClusterError>
    where
        Q: Serialize + ?Sized,
        A: DeserializeOwned + Send + 'static,
    {
        let body = serde_json::to_vec(question).map_err(ClusterError::Encode)?;
        let core = self.core();
        let path = path.to_owned();
        self.on_raft_runtime(async move { ask(core, path, body, timeout).await })
            .await
    }
}

/// The question's round trip to every other member, on the Raft runtime.
async fn ask<A: DeserializeOwned + Send + 'static>(
    core: Arc<Core>,
    path: String,
    body: Vec<u8>,
    timeout: Duration,
) -> Answers<A> {
    let mut asking = JoinSet::new();
    for (node, addr) in core.other_nodes() {
        let request = core
            .client
            .post(&addr, &path)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone());
        let secret = core.settings.secret.clone();
        asking.spawn(async move {
            let answer = send_to_peer::<A>(request, &addr, &secret, timeout).await;
            (node, answer)
        });
    }
    let mut answers = Answers {
        answered: BTreeMap::new(),
        unanswered: Vec::new(),
    };
    while let Some(joined) = asking.join_next().await {
        let Ok((node, answer)) = joined else {
            // A task ends only by returning (a panic aborts the process): nothing to count.
            continue;
        };
        match answer {
            Ok(answer) => {
                answers.answered.insert(node, answer);
            }
            Err(e) => {
                let reason = unanswered_reason(&e);
                tracing::debug!(node, path = %path, reason, error = %e, "a member did not answer");
                core.query_series.unanswered(node, reason);
                answers.unanswered.push(node);
            }
        }
    }
    answers.unanswered.sort_unstable();
    answers
}

/// The `reason` label of a member's missing answer.
fn unanswered_reason(error: &ClusterError) -> &'static str {
    match error {
        ClusterError::Unreachable { source, .. } if source.is_timeout() => "timeout",
        ClusterError::Unreachable { source, .. } if source.is_decode() => "invalid_answer",
        ClusterError::Unreachable { .. } => "unreachable",
        ClusterError::Refused { .. } => "refused",
        _ => "other",
    }
}
