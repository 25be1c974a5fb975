//! Raft's state machine: applies committed entries to the [`ReplicatedState`] in memory, hands out
//! snapshot builders, installs snapshots received from the leader, and lets the rest of the node
//! read the state through a [`StateReader`].

use std::io::Cursor;
use std::sync::Arc;

use chorus_storage::Store;
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, Snapshot, StoredMembership};
use parking_lot::RwLock;

use crate::interest_index::{InterestIndex, Touched};
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
    /// (Raft then re-applies the committed entries after it).
    pub fn new(store: &Store) -> Result<StateMachineStore, RaftStorageError> {
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
        Ok(StateMachineStore {
            store: store.clone(),
            applied: Arc::new(RwLock::new(applied)),
            interest,
        })
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
}

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
        let mut applied = self.applied.write();
        let responses = entries
            .into_iter()
            .map(|entry| {
                applied.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => Response::Applied,
                    EntryPayload::Normal(request) => {
                        let touched = Touched::by(&request, &applied.state);
                        let response = applied.state.apply(request);
                        self.interest.refresh(&applied.state, touched);
                        response
                    }
                    EntryPayload::Membership(membership) => {
                        applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                        Response::Applied
                    }
                }
            })
            .collect();
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
        snapshot::save(&self.store, meta, &data).await?;
        let mut applied = self.applied.write();
        self.interest.rebuild(&state);
        *applied = AppliedState {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            state,
        };
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, RaftStorageError> {
        snapshot::load(&self.store)
    }
}
