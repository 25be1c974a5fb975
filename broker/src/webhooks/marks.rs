//! Commits how far the leader has sent a webhook's cluster events: the task that proposes each
//! new mark ([`chorus_cluster::Request::WebhooksSent`]) once its sender reports it. Marks that
//! come while one is being proposed are folded into the next proposal, so a busy webhook costs
//! one log entry per round trip, not one per request. A proposal that fails (no leader for the
//! moment) is tried again while the mark is still the newest; a mark that never commits only
//! means a new leader sends those events again, with the same ids.

use std::time::Duration;

use chorus_cluster::{Cluster, Request, WebhookMark, WebhookTarget};
use chorus_storage::Position;
use tokio::sync::watch;

/// How long to wait before proposing a mark again after a failure.
const RETRY: Duration = Duration::from_secs(1);

/// Proposes the marks `sent` reports for `target` until the sender is gone.
pub async fn commit_marks(
    cluster: Cluster,
    target: WebhookTarget,
    mut sent: watch::Receiver<Option<Position>>,
) {
    while sent.changed().await.is_ok() {
        let Some(through) = *sent.borrow_and_update() else {
            continue;
        };
        let request = Request::WebhooksSent {
            target: target.clone(),
            through: WebhookMark {
                index: through.index,
                seq: through.seq,
            },
        };
        if let Err(e) = cluster.propose(request).await {
            tracing::debug!(app = %target.app, error = %e, "webhook mark not committed; trying again");
            tokio::time::sleep(RETRY).await;
            // Propose it again unless a newer one came meanwhile.
            sent.mark_changed();
        }
    }
}
