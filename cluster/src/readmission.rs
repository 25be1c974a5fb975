//! A node taken back into the members declares its state again.
//!
//! When the leader declares a node dead ([`crate::liveness`]), `RemoveMember` drops the node's
//! channel interest and presence connections from the replicated state, even if the node was
//! only cut off and kept running with its clients. Once it answers again the leader adds it back
//! to the members, and the replicated state counts that admission
//! ([`crate::ReplicatedState::admission`]). Every node watches its own count as it applies the
//! log: whenever it changes (the first time it is seen included), whatever the node keeps in the
//! replicated state for itself must be declared again, with a reset, so that it lands after the
//! removal. [`watch_admission`] does it for channel interest and presence connections; the count
//! is also published on [`crate::Cluster::admissions`].

use std::sync::Arc;

use tokio::sync::watch;

use crate::cluster::Core;

/// Re-declares this node's interest and presence whenever it is (re-)admitted into the members,
/// and publishes its admission count on `admissions`; until Raft stops.
pub(crate) async fn watch_admission(core: Arc<Core>, admissions: watch::Sender<u64>) {
    let me = core.node_id();
    let mut applied = core.raft.metrics();
    loop {
        // The count as applied here; unchanged while this node is not a member.
        let admission = core.state.read(|state| state.admission(me));
        if let Some(admission) = admission {
            let before = *admissions.borrow();
            if admission != before {
                if before != 0 {
                    core.series.readmissions.inc();
                    tracing::warn!(
                        admission,
                        "this node was taken back into the members: declaring its state again"
                    );
                }
                core.interest.declare_all_again();
                core.presence.declare_all_again();
                admissions.send_replace(admission);
            }
        }
        if applied.changed().await.is_err() {
            return;
        }
    }
}
