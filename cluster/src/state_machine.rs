//! Raft's state machine: applies committed entries to the [`ReplicatedState`] in memory, stores
//! committed history events in the node's sled history and hands what each entry changed to the
//! node through the feed ([`crate::feed`], [`crate::changes`]), hands out snapshot builders,
//! installs snapshots received from the leader, and lets the rest of the node read the state
//! through a [`StateReader`].

use std::io::Cursor;
use std::sync::Arc;

use chorus_storage::Store;
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, Snapshot, StorageIOError, StoredMembership};
use parking_lot::RwLock;

use crate::changes::{Change, Committed};
use crate::feed::{CommitFeed, FeedSender};
use crate::history_repair::HistoryGaps;
use crate::interest_index::InterestIndex;
use crate::snapshot::{self, SnapshotBuilder, SnapshotMeta};
use crate::state::ReplicatedState;
use crate::types::{Entry, LogId, Node, NodeId, RaftStorageError, Response, TypeConfig};

/// The replicated state with where it stands in the log.
#[derive(Debug, Clone, Default)]
pub(crate) struct AppliedState {
    pub(crate) last_applied: Option<LogId>,
    pub(crate) membership: StoredMembership<NodeId, Node>,
    pub(crate) state: ReplicatedState,
}

/// The node's state machine; handed to `openraft::Raft::new`.
pub struct StateMachineStore {
    store: Store,
    applied: Arc<RwLock<AppliedState>>,
    interest: InterestIndex,
    feed: FeedSender,
    history_gaps: HistoryGaps,
}

/// Read access to the replicated state for the rest of the node; cheap to clone.
#[derive(Clone)]
pub struct StateReader {
    applied: Arc<RwLock<AppliedState>>,
}

impl StateReader {
    /// Runs `f` on the state as last applied (keep it short: applying waits for it).
    pub fn read<R>(&self, f: impl FnOnce(&ReplicatedState) -> R) -> R {
        f(&self.applied.read().state)
    }

    /// The last log entry applied.
    pub fn last_applied(&self) -> Option<LogId> {
        self.applied.read().last_applied
    }
}

impl StateMachineStore {
    /// The state machine of the node whose database is `store`, starting from its last snapshot
    /// (Raft then re-applies the committed entries after it), storing history but handing
    /// nothing over.
    pub fn new(store: &Store) -> Result<StateMachineStore, RaftStorageError> {
        StateMachineStore::with_feed(store).map(|(state_machine, _)| state_machine)
    }

    /// As [`StateMachineStore::new`], handing what each entry changed over the feed returned
    /// beside it.
    pub fn with_feed(store: &Store) -> Result<(StateMachineStore, CommitFeed), RaftStorageError> {
        let applied = match snapshot::load(store)? {
            Some(snapshot) => AppliedState {
                last_applied: snapshot.meta.last_log_id,
                membership: snapshot.meta.last_membership.clone(),
                state: snapshot::decode(&snapshot.meta, snapshot.snapshot.get_ref())?,
            },
            None => AppliedState::default(),
        };
        let interest = InterestIndex::default();
        interest.rebuild(&applied.state);
        let (sender, feed) = crate::feed::feed();
        let state_machine = StateMachineStore {
            store: store.clone(),
            applied: Arc::new(RwLock::new(applied)),
            interest,
            feed: sender,
            history_gaps: HistoryGaps::default(),
        };
        Ok((state_machine, feed))
    }

    /// The channels whose history this state machine skipped by installing a snapshot.
    pub fn history_gaps(&self) -> HistoryGaps {
        self.history_gaps.clone()
    }

    /// The interest index this state machine keeps up to date as it applies entries.
    pub fn interest_index(&self) -> InterestIndex {
        self.interest.clone()
    }

    /// A reader of the state that stays valid after the state machine is handed to Raft.
    pub fn reader(&self) -> StateReader {
        StateReader {
            applied: self.applied.clone(),
        }
    }

    /// Applies `entries` to the state in memory; returns the responses and what changed.
    fn apply_to_state(
        &self,
        entries: impl Iterator<Item = Entry>,
    ) -> (Vec<Response>, Vec<Committed>) {
        let mut committed = Vec::new();
        let mut applied = self.applied.write();
        let responses = entries
            .map(|entry| {
                applied.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => Response::Applied,
                    EntryPayload::Normal(request) => {
                        let done = crate::changes::apply(&mut applied.state, request);
                        self.interest
                            .refresh(&applied.state, &done.interest_touched);
                        let index = entry.log_id.index;
                        committed.extend(
                            (done.changes.into_iter()).map(|change| Committed { index, change }),
                        );
                        done.response
                    }
                    EntryPayload::Membership(membership) => {
                        applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                        Response::Applied
                    }
                }
            })
            .collect();
        (responses, committed)
    }

    /// Makes `state`, which a snapshot described by `meta` holds, the state applied; returns
    /// what changed, as of the snapshot's last entry.
    fn replace_state(&self, meta: &SnapshotMeta, state: ReplicatedState) -> Vec<Committed> {
        let mut applied = self.applied.write();
        self.interest.rebuild(&state);
        let index = meta.last_log_id.map_or(0, |log_id| log_id.index);
        let committed = crate::changes::between(&applied.state, &state)
            .into_iter()
            .map(|change| Committed { index, change })
            .collect();
        *applied = AppliedState {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            state,
        };
        committed
    }

    /// Stores the committed history events in the node's history, in log order.
    fn store_history(&self, committed: &[Committed]) -> Result<(), RaftStorageError> {
        for c in committed {
            if let Change::History(c) = &c.change {
                self.store
                    .history()
                    .place(&c.app, &c.channel, &c.epoch, c.first_offset, &c.events)
                    .map_err(|e| StorageIOError::write_state_machine(&e))?;
            }
        }
        Ok(())
    }
}

#[allow(
    clippy::await_holding_lock,
    reason = "the order lock is held until the node has taken the batch (see `crate::feed`); its \
              guard is Send, and nothing on the Raft runtime waits for it"
)]
impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<NodeId, Node>), RaftStorageError> {
        let applied = self.applied.read();
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Held from changing the state to the node having taken what changed: a reader holding
        // it sees a state whose every change the node has taken (see `crate::feed`).
        let feed = self.feed.clone();
        let _in_order = feed.order_lock().lock();
        let (responses, committed) = self.apply_to_state(entries.into_iter());
        self.store_history(&committed)?;
        feed.hand_over(committed).await;
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            store: self.store.clone(),
            applied: self.applied.read().clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, RaftStorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), RaftStorageError> {
        let data = snapshot.into_inner();
        let state = snapshot::decode(meta, &data)?;
        {
            // This node skipped the entries the snapshot covers: its history of each channel
            // starts again where the cluster's stands, unless it already holds all of it.
            let _in_order = self.feed.order_lock().lock();
            for (key, position) in state.history_positions() {
                let started_again = self
                    .store
                    .history()
                    .align(
                        &key.app,
                        &key.channel,
                        &position.epoch,
                        position.next_offset,
                    )
                    .map_err(|e| StorageIOError::write_state_machine(&e))?;
                if started_again {
                    self.history_gaps.record(key.clone());
                }
            }
        }
        snapshot::save(&self.store, meta, &data).await?;
        let feed = self.feed.clone();
        let _in_order = feed.order_lock().lock();
        let committed = self.replace_state(meta, state);
        feed.hand_over_installed(committed).await;
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, RaftStorageError> {
        snapshot::load(&self.store)
    }
}
