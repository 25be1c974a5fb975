//! Channel interest as the publish path reads it: for each channel of an app, the nodes with
//! local subscribers, kept beside the replicated state and updated as entries are applied.
//!
//! A publish asks it once per event, so a lookup is a hash lookup by `&str` under a read lock
//! held only for that lookup (no allocation, no wait on Raft): the replicated state's own lock is
//! held for whole batches of applied entries, the index's write lock only for one channel at a
//! time.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::state::{ChannelKey, ReplicatedState};
use crate::types::NodeId;

/// Nodes with interest, by app, then channel.
type Table = HashMap<String, HashMap<String, Arc<[NodeId]>>>;

/// The interest index; cheap to clone (all clones are the same index).
#[derive(Clone, Default)]
pub struct InterestIndex {
    table: Arc<RwLock<Table>>,
}

impl InterestIndex {
    /// The nodes with local subscribers of `channel` of `app` (this node too, if it has them).
    pub fn nodes(&self, app: &str, channel: &str) -> Option<Arc<[NodeId]>> {
        self.table.read().get(app)?.get(channel).cloned()
    }

    /// Makes the index say what `state` says, for the channels `touched` (see
    /// [`ReplicatedState::interest_touched_by`]).
    pub(crate) fn refresh(&self, state: &ReplicatedState, touched: &[ChannelKey]) {
        for key in touched {
            let nodes = state.interested_nodes(&key.app, &key.channel);
            self.set(key, nodes);
        }
    }

    /// Makes the index say what `state` says, for every channel.
    pub(crate) fn rebuild(&self, state: &ReplicatedState) {
        let mut table = Table::new();
        for (key, nodes) in state.interest() {
            table
                .entry(key.app.clone())
                .or_default()
                .insert(key.channel.clone(), nodes.iter().copied().collect());
        }
        *self.table.write() = table;
    }

    fn set(&self, key: &ChannelKey, nodes: Vec<NodeId>) {
        let mut table = self.table.write();
        if nodes.is_empty() {
            if let Some(channels) = table.get_mut(&key.app) {
                channels.remove(&key.channel);
                if channels.is_empty() {
                    table.remove(&key.app);
                }
            }
        } else {
            table
                .entry(key.app.clone())
                .or_default()
                .insert(key.channel.clone(), nodes.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Departure, InterestChange, Request};

    fn apply(index: &InterestIndex, state: &mut ReplicatedState, request: Request) {
        let touched = state.interest_touched_by(&request);
        state.apply(&request);
        index.refresh(state, &touched);
    }

    fn nodes(index: &InterestIndex, channel: &str) -> Vec<NodeId> {
        index
            .nodes("1", channel)
            .map(|nodes| nodes.to_vec())
            .unwrap_or_default()
    }

    #[test]
    fn the_index_follows_every_kind_of_interest_change() {
        let index = InterestIndex::default();
        let mut state = ReplicatedState::default();
        let set = |node, channel: &str, present| Request::UpdateInterest {
            node,
            reset: false,
            changes: vec![InterestChange {
                app: "1".into(),
                channel: channel.into(),
                present,
            }],
        };
        apply(&index, &mut state, set(1, "news", true));
        apply(&index, &mut state, set(2, "news", true));
        apply(&index, &mut state, set(2, "sport", true));
        assert_eq!(nodes(&index, "news"), [1, 2]);
        apply(&index, &mut state, set(1, "news", false));
        assert_eq!(nodes(&index, "news"), [2]);

        apply(
            &index,
            &mut state,
            Request::UpdateInterest {
                node: 2,
                reset: true,
                changes: vec![InterestChange {
                    app: "1".into(),
                    channel: "chat".into(),
                    present: true,
                }],
            },
        );
        assert_eq!(nodes(&index, "news"), Vec::<NodeId>::new());
        assert_eq!(nodes(&index, "sport"), Vec::<NodeId>::new());
        assert_eq!(nodes(&index, "chat"), [2]);

        apply(&index, &mut state, set(3, "chat", true));
        let removal = Request::RemoveMember {
            id: 2,
            why: Departure::DeclaredDead,
        };
        apply(&index, &mut state, removal);
        assert_eq!(nodes(&index, "chat"), [3]);
        assert!(index.nodes("2", "chat").is_none(), "apps are apart");

        let rebuilt = InterestIndex::default();
        rebuilt.rebuild(&state);
        assert_eq!(*rebuilt.table.read(), *index.table.read());
    }
}
