//! This node's channel interest on its way into the replicated state.
//!
//! The broker declares a channel when its local subscription count crosses zero
//! ([`InterestQueue::declare`]: a short lock, never a wait on Raft). A task on the Raft runtime
//! ([`submit_interest`]) proposes what changed since its last proposal, as one
//! `UpdateInterest`; changes made while a proposal is under way wait for the next one, so a
//! channel that flaps is written once, with its last state. The first proposal of a run resets
//! the node's interest to exactly what it has, so a restarted node leaves nothing stale; it is
//! retried (as is any failed proposal) until the cluster has a leader to take it. The same reset
//! is made again whenever the node is taken back into the members after being declared dead
//! ([`crate::readmission`]), since its removal dropped its interest.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::cluster::Core;
use crate::propose::propose;
use crate::state::ChannelKey;
use crate::types::{InterestChange, Request};

/// The first wait after a failed proposal; doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(1);

/// This node's declared interest and what of it is not proposed yet.
#[derive(Default)]
pub(crate) struct InterestQueue {
    pending: Mutex<Pending>,
    wake: Notify,
}

struct Pending {
    /// Every channel with local subscribers now.
    local: BTreeSet<ChannelKey>,
    /// The last state of each channel that changed since the last proposal.
    changes: BTreeMap<ChannelKey, bool>,
    /// The node's interest is to be reset to `local` (at start, and until that succeeds).
    reset: bool,
}

impl Default for Pending {
    fn default() -> Pending {
        Pending {
            local: BTreeSet::new(),
            changes: BTreeMap::new(),
            reset: true,
        }
    }
}

impl InterestQueue {
    /// The node now has (`present`) or no longer has local subscribers of `channel` of `app`.
    pub(crate) fn declare(&self, app: &str, channel: &str, present: bool) {
        let key = ChannelKey::new(app, channel);
        let mut pending = self.pending.lock();
        if present {
            pending.local.insert(key.clone());
        } else {
            pending.local.remove(&key);
        }
        if !pending.reset {
            pending.changes.insert(key, present);
        }
        drop(pending);
        self.wake.notify_one();
    }

    /// The node's interest is to be reset again to what it has (it was taken back into the
    /// members: see [`crate::readmission`]).
    pub(crate) fn redeclare(&self) {
        let mut pending = self.pending.lock();
        pending.reset = true;
        pending.changes.clear();
        drop(pending);
        self.wake.notify_one();
    }

    /// The next proposal to make, if any: the reset, or the changes since the last one.
    fn take(&self, node: u64) -> Option<Request> {
        let mut pending = self.pending.lock();
        let (reset, changes) = if pending.reset {
            pending.reset = false;
            pending.changes.clear();
            let all = pending
                .local
                .iter()
                .map(|key| (key.clone(), true))
                .collect();
            (true, all)
        } else if pending.changes.is_empty() {
            return None;
        } else {
            (false, std::mem::take(&mut pending.changes))
        };
        Some(Request::UpdateInterest {
            node,
            reset,
            changes: changes
                .into_iter()
                .map(|(key, present)| InterestChange {
                    app: key.app,
                    channel: key.channel,
                    present,
                })
                .collect(),
        })
    }

    /// Puts back a proposal that failed, under any change declared since.
    fn put_back(&self, request: Request) {
        let Request::UpdateInterest { reset, changes, .. } = request else {
            return;
        };
        let mut pending = self.pending.lock();
        if reset {
            pending.reset = true;
            pending.changes.clear();
            return;
        }
        if pending.reset {
            return; // The reset proposes everything anyway.
        }
        for change in changes {
            pending
                .changes
                .entry(ChannelKey {
                    app: change.app,
                    channel: change.channel,
                })
                .or_insert(change.present);
        }
    }
}

/// Proposes this node's interest changes, one proposal at a time, until the runtime stops.
pub(crate) async fn submit_interest(core: Arc<Core>) {
    let queue = &core.interest_queue;
    let mut retry = FIRST_RETRY;
    loop {
        let Some(request) = queue.take(core.node_id()) else {
            queue.wake.notified().await;
            continue;
        };
        match propose(&core, request.clone()).await {
            Ok(_) => retry = FIRST_RETRY,
            Err(e) => {
                tracing::debug!(error = %e, "cannot record this node's channel interest yet");
                queue.put_back(request);
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(MAX_RETRY);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(request: Request) -> (bool, Vec<(String, bool)>) {
        let Request::UpdateInterest { reset, changes, .. } = request else {
            panic!("not an interest update: {request:?}");
        };
        let changes = changes
            .into_iter()
            .map(|c| (c.channel, c.present))
            .collect();
        (reset, changes)
    }

    #[test]
    fn the_first_proposal_resets_then_changes_coalesce_and_survive_a_failure() {
        let queue = InterestQueue::default();
        queue.declare("1", "news", true);
        queue.declare("1", "gone", true);
        queue.declare("1", "gone", false);
        let reset = queue.take(7).unwrap();
        assert_eq!(changes(reset.clone()), (true, vec![("news".into(), true)]));
        assert!(queue.take(7).is_none(), "nothing changed since");

        queue.put_back(reset);
        queue.declare("1", "sport", true);
        assert_eq!(
            changes(queue.take(7).unwrap()),
            (true, vec![("news".into(), true), ("sport".into(), true)]),
            "a failed reset is made again, with what the node has by then"
        );

        queue.declare("1", "flap", true);
        queue.declare("1", "flap", false);
        queue.declare("1", "news", false);
        let update = queue.take(7).unwrap();
        assert_eq!(
            changes(update.clone()),
            (false, vec![("flap".into(), false), ("news".into(), false)])
        );
        queue.declare("1", "news", true);
        queue.put_back(update);
        assert_eq!(
            changes(queue.take(7).unwrap()),
            (false, vec![("flap".into(), false), ("news".into(), true)]),
            "a change declared after the failed proposal wins over it"
        );

        queue.declare("1", "late", true);
        queue.redeclare();
        assert_eq!(
            changes(queue.take(7).unwrap()),
            (
                true,
                vec![
                    ("late".into(), true),
                    ("news".into(), true),
                    ("sport".into(), true)
                ]
            ),
            "a re-declaration resets to everything the node has"
        );
    }
}
