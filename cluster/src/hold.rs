//! Holding back the leader's appends to chosen followers, for a leadership hand-over
//! ([`crate::handover`]): a follower that hears nothing from its leader for a leader lease grants
//! its vote to another candidate, one that hears a heartbeat refuses it. While a follower is
//! held, the network client sends it no append (heartbeats are appends) and no snapshot chunk,
//! answering openraft at once that it is unreachable; it counts the appends already on their way,
//! so that the hand-over knows when the last one has arrived.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::types::NodeId;

/// The followers held back, and the appends under way to each node.
#[derive(Default)]
pub(crate) struct Hold {
    state: Mutex<HoldState>,
}

#[derive(Default)]
struct HoldState {
    held: BTreeSet<NodeId>,
    in_flight: BTreeMap<NodeId, usize>,
}

/// An append under way to a node; dropped once it was answered (or failed).
pub(crate) struct InFlight {
    hold: Arc<Hold>,
    target: NodeId,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.hold.state.lock();
        if let Some(count) = state.in_flight.get_mut(&self.target) {
            *count -= 1;
            if *count == 0 {
                state.in_flight.remove(&self.target);
            }
        }
    }
}

/// Releases the followers held when dropped, however the hand-over ends.
pub(crate) struct Holding {
    hold: Arc<Hold>,
}

impl Drop for Holding {
    fn drop(&mut self) {
        self.hold.state.lock().held.clear();
    }
}

impl Hold {
    /// An append to `target` is about to be sent: `None` when `target` is held (send nothing),
    /// else the append counted under way until the returned value is dropped.
    pub(crate) fn sending(self: &Arc<Hold>, target: NodeId) -> Option<InFlight> {
        let mut state = self.state.lock();
        if state.held.contains(&target) {
            return None;
        }
        *state.in_flight.entry(target).or_default() += 1;
        Some(InFlight {
            hold: self.clone(),
            target,
        })
    }

    /// Holds back every append to `targets` until the returned value is dropped.
    pub(crate) fn hold(self: &Arc<Hold>, targets: &BTreeSet<NodeId>) -> Holding {
        self.state.lock().held.extend(targets);
        Holding { hold: self.clone() }
    }

    /// Whether no append to any of `targets` is under way.
    pub(crate) fn drained(&self, targets: &BTreeSet<NodeId>) -> bool {
        let state = self.state.lock();
        targets.iter().all(|id| !state.in_flight.contains_key(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_node_is_sent_nothing_and_the_appends_under_way_are_counted() {
        let hold = Arc::new(Hold::default());
        let first = hold.sending(2).expect("not held");
        let second = hold.sending(2).expect("not held");
        let targets = BTreeSet::from([2]);
        let holding = hold.hold(&targets);
        assert!(hold.sending(2).is_none(), "held");
        assert!(hold.sending(3).is_some(), "another node is not");
        assert!(!hold.drained(&targets));
        drop(first);
        assert!(!hold.drained(&targets));
        drop(second);
        assert!(hold.drained(&targets));
        drop(holding);
        assert!(hold.sending(2).is_some(), "released");
    }
}
