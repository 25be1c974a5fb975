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
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::task::JoinSet;

use crate::error::ClusterError;
use crate::metrics::QuerySeries;
use crate::peer_request::PeerRequests;
use crate::types::NodeId;

/// What the other members answered to one question.
#[derive(Debug)]
pub struct Answers<A> {
    /// Each answer, by the id of the member that gave it in time.
    pub answered: BTreeMap<NodeId, A>,
    /// The members that gave no usable answer in time, by id.
    pub unanswered: Vec<NodeId>,
}

/// A question to the other members: `body` (JSON) to POST to `path` on each of `members`
/// (with their cluster addresses), each given `timeout` to answer.
pub(crate) struct Question {
    pub(crate) members: Vec<(NodeId, String)>,
    pub(crate) path: String,
    pub(crate) body: Vec<u8>,
    pub(crate) timeout: Duration,
}

/// The question's round trip to every other member, on the Raft runtime; the members left
/// unanswered are counted in `series`.
pub(crate) async fn ask<A: DeserializeOwned + Send + 'static>(
    question: Question,
    client: PeerRequests,
    series: QuerySeries,
) -> Answers<A> {
    let Question {
        members,
        path,
        body,
        timeout,
    } = question;
    let mut asking = JoinSet::new();
    for (node, addr) in members {
        let (client, path, body) = (client.clone(), path.clone(), body.clone());
        asking.spawn(async move {
            let answer = client.post_encoded::<A>(&addr, &path, body, timeout).await;
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
                series.unanswered(node, reason);
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
