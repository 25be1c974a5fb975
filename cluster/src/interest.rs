//! This node's channel interest on its way into the replicated state: the broker declares a
//! channel when its local subscription count crosses zero ([`crate::Cluster::declare_interest`],
//! never a wait on Raft), and [`submit_interest`] proposes what changed as `UpdateInterest`, in
//! order, the first proposal of a run (or of a re-admission) resetting the node's interest to
//! exactly what it has (see [`crate::declared`]).

use std::sync::Arc;

use crate::cluster::Core;
use crate::propose::propose;
use crate::types::{InterestChange, Request};

/// Proposes this node's interest changes, one proposal at a time, until the runtime stops.
pub(crate) async fn submit_interest(core: Arc<Core>) {
    crate::declared::submit(&core.interest, "channel interest", |(reset, changes)| {
        let request = Request::UpdateInterest {
            node: core.node_id(),
            reset,
            changes: changes
                .into_iter()
                .map(|(key, present)| InterestChange {
                    app: key.app,
                    channel: key.channel,
                    present: present.is_some(),
                })
                .collect(),
        };
        let core = core.clone();
        async move { propose(&core, request).await }
    })
    .await;
}
