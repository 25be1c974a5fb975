//! What this node declares of itself in the replicated state (the channels it has subscribers
//! of, the users it has connections of in presence channels), on its way there.
//!
//! The broker declares a change when it happens ([`Declared::declare`]: a short lock, never a
//! wait on Raft). A task on the Raft runtime ([`submit`]) proposes what changed since its last
//! proposal, as one request; changes made while a proposal is under way wait for the next one,
//! so a key that flaps is written once, with its last value. The first proposal of a run resets
//! the node's part of the state to exactly what it has, so a restarted node leaves nothing stale
//! (and [`Declared::declare_all_again`] does the same for a node taken back into the members
//! after it was declared dead: see [`crate::readmission`]). A failed proposal is retried until
//! the cluster has a leader to take it.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::error::ClusterError;
use crate::types::Response;

/// The first wait after a failed proposal; doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(1);

/// A proposal's worth of declarations: whether it resets, and each key's value (`None`: gone).
pub(crate) type Proposal<K, V> = (bool, Vec<(K, Option<V>)>);

/// The node's declared values and what of them is not proposed yet.
pub(crate) struct Declared<K, V> {
    pending: Mutex<Pending<K, V>>,
    wake: Notify,
}

struct Pending<K, V> {
    /// Every key the node has now, with its value.
    local: BTreeMap<K, V>,
    /// The last value of each key that changed since the last proposal.
    changes: BTreeMap<K, Option<V>>,
    /// The node's part is to be reset to `local` (at start, and until that succeeds).
    reset: bool,
}

impl<K: Ord + Clone, V: Clone> Default for Declared<K, V> {
    fn default() -> Self {
        Declared {
            pending: Mutex::new(Pending {
                local: BTreeMap::new(),
                changes: BTreeMap::new(),
                reset: true,
            }),
            wake: Notify::new(),
        }
    }
}

impl<K: Ord + Clone, V: Clone> Declared<K, V> {
    /// The node now has `key` with `value`, or (`None`) no longer has it.
    pub(crate) fn declare(&self, key: K, value: Option<V>) {
        let mut pending = self.pending.lock();
        match &value {
            Some(v) => pending.local.insert(key.clone(), v.clone()),
            None => pending.local.remove(&key),
        };
        if !pending.reset {
            pending.changes.insert(key, value);
        }
        drop(pending);
        self.wake.notify_one();
    }

    /// Declares everything the node has again, as a reset (it was removed from the state).
    pub(crate) fn declare_all_again(&self) {
        let mut pending = self.pending.lock();
        pending.reset = true;
        pending.changes.clear();
        drop(pending);
        self.wake.notify_one();
    }

    /// The next proposal to make, if any: the reset, or the changes since the last one.
    fn take(&self) -> Option<Proposal<K, V>> {
        let mut pending = self.pending.lock();
        if pending.reset {
            pending.reset = false;
            pending.changes.clear();
            let all = pending
                .local
                .iter()
                .map(|(key, value)| (key.clone(), Some(value.clone())))
                .collect();
            Some((true, all))
        } else if pending.changes.is_empty() {
            None
        } else {
            Some((
                false,
                std::mem::take(&mut pending.changes).into_iter().collect(),
            ))
        }
    }

    /// Puts back a proposal that failed, under any change declared since.
    fn put_back(&self, (reset, changes): Proposal<K, V>) {
        let mut pending = self.pending.lock();
        if reset {
            pending.reset = true;
            pending.changes.clear();
            return;
        }
        if pending.reset {
            return; // The reset proposes everything anyway.
        }
        for (key, value) in changes {
            pending.changes.entry(key).or_insert(value);
        }
    }
}

/// Proposes the node's declared changes with `propose`, one proposal at a time, until the
/// runtime stops.
pub(crate) async fn submit<K, V, F, P>(declared: &Declared<K, V>, what: &str, propose: P)
where
    K: Ord + Clone,
    V: Clone,
    F: Future<Output = Result<Response, ClusterError>>,
    P: Fn(Proposal<K, V>) -> F,
{
    let mut retry = FIRST_RETRY;
    loop {
        let Some(proposal) = declared.take() else {
            declared.wake.notified().await;
            continue;
        };
        match propose(proposal.clone()).await {
            Ok(_) => retry = FIRST_RETRY,
            Err(e) => {
                tracing::debug!(error = %e, "cannot record this node's {what} yet");
                declared.put_back(proposal);
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(MAX_RETRY);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_proposal_resets_then_changes_coalesce_and_survive_a_failure() {
        let declared: Declared<&str, u32> = Declared::default();
        declared.declare("ann", Some(1));
        declared.declare("gone", Some(2));
        declared.declare("gone", None);
        let reset = declared.take().unwrap();
        assert_eq!(reset, (true, vec![("ann", Some(1))]));
        assert!(declared.take().is_none(), "nothing changed since");

        declared.put_back(reset);
        declared.declare("bob", Some(3));
        assert_eq!(
            declared.take().unwrap(),
            (true, vec![("ann", Some(1)), ("bob", Some(3))]),
            "a failed reset is made again, with what the node has by then"
        );

        declared.declare("flap", Some(4));
        declared.declare("flap", None);
        declared.declare("ann", None);
        let update = declared.take().unwrap();
        assert_eq!(update, (false, vec![("ann", None), ("flap", None)]));
        declared.declare("ann", Some(5));
        declared.put_back(update);
        assert_eq!(
            declared.take().unwrap(),
            (false, vec![("ann", Some(5)), ("flap", None)]),
            "a change declared after the failed proposal wins over it"
        );

        declared.declare_all_again();
        assert_eq!(
            declared.take().unwrap(),
            (true, vec![("ann", Some(5)), ("bob", Some(3))]),
            "taken back, the node declares all it has again"
        );
    }
}
