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

use prometheus::IntCounter;
use tokio::sync::watch;

use crate::declarations::Declarations;
use crate::state_machine::StateReader;
use crate::types::{NodeId, Raft};

/// What the watch over this node's admissions uses.
pub(crate) struct AdmissionWatch {
    pub(crate) me: NodeId,
    /// For its applied index: the watch looks again whenever it moves.
    pub(crate) raft: Raft,
    pub(crate) state: StateReader,
    pub(crate) declarations: Arc<Declarations>,
    pub(crate) readmissions: IntCounter,
    pub(crate) admissions: watch::Sender<u64>,
}

/// Re-declares this node's interest and presence whenever it is (re-)admitted into the members,
/// and publishes its admission count; until Raft stops.
pub(crate) async fn watch_admission(watch: AdmissionWatch) {
    let mut applied = watch.raft.metrics();
    loop {
        // The count as applied here; unchanged while this node is not a member.
        let admission = watch.state.read(|state| state.admission(watch.me));
        if let Some(admission) = admission {
            let before = *watch.admissions.borrow();
            if admission != before {
                if before != 0 {
                    watch.readmissions.inc();
                    tracing::warn!(
                        admission,
                        "this node was taken back into the members: declaring its state again"
                    );
                }
                watch.declarations.declare_all_again();
                watch.admissions.send_replace(admission);
            }
        }
        if applied.changed().await.is_err() {
            return;
        }
    }
}
