//! Raft's state machine: applies committed entries to the [`ReplicatedState`] in memory, stores
//! committed history events in the node's sled history and hands them to the node to deliver
//! ([`crate::delivery`]), hands out snapshot builders, installs snapshots received from the
//! leader, and lets the rest of the node read the state through a [`StateReader`].

use std::io::Cursor;
use std::sync::Arc;

use chorus_storage::Store;
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, Snapshot, StorageIOError, StoredMembership};
use parking_lot::RwLock;

use crate::delivery::{Committed, Delivery, HistoryCommit};
use crate::history_repair::HistoryGaps;
use crate::interest_index::{InterestIndex, Touched};
use crate::snapshot::{self, SnapshotBuilder, SnapshotMeta};
use crate::state::{ChannelKey, ReplicatedState};
use crate::types::{
    Entry, LogId, Node, NodeId, PresenceEvent, RaftStorageError, Request, Response, TypeConfig,
};

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
    delivery: Delivery,
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
    /// (Raft then re-applies the committed entries after it), storing history but delivering
    /// nothing.
    pub fn new(store: &Store) -> Result<StateMachineStore, RaftStorageError> {
        StateMachineStore::delivering(store, Delivery::store_only())
    }

    /// As [`StateMachineStore::new`], handing each commit to `delivery`.
    pub fn delivering(
        store: &Store,
        delivery: Delivery,
    ) -> Result<StateMachineStore, RaftStorageError> {
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
            delivery,
            history_gaps: HistoryGaps::default(),
        })
    }

    /// The channels whose history this state machine skipped by installing a snapshot.
    pub fn history_gaps(&self) -> HistoryGaps {
        self.history_gaps.clone()
    }

    /// Stores each commit's history in the node's history and hands it to the node, in log
    /// order. The caller holds the delivery order lock.
    fn store_and_deliver(&self, commits: Vec<Committed>) -> Result<(), RaftStorageError> {
        for committed in commits {
            if let Committed::History(c) = &committed {
                self.store
                    .history()
                    .place(&c.app, &c.channel, &c.epoch, c.first_offset, &c.events)
                    .map_err(|e| StorageIOError::write_state_machine(&e))?;
            }
            (self.delivery.deliver)(&committed);
        }
        Ok(())
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

/// The presence changes an applied request made, if any.
fn presence_events(response: &Response) -> Option<Vec<PresenceEvent>> {
    let events = match response {
        Response::Presence { events } => events.clone(),
        Response::MemberRemoved { users_left } => users_left
            .iter()
            .map(|user| PresenceEvent {
                app: user.app.clone(),
                channel: user.channel.clone(),
                user_id: user.user_id.clone(),
                joined: None,
            })
            .collect(),
        _ => return None,
    };
    (!events.is_empty()).then_some(events)
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
        // Held from changing the state to handing over what changed: a reader holding it sees a
        // state whose every change the node was told of.
        let delivery = self.delivery.clone();
        let _in_order = delivery.order.lock();
        let mut commits = Vec::new();
        let mut applied = self.applied.write();
        let responses = entries
            .into_iter()
            .map(|entry| {
                applied.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => Response::Applied,
                    EntryPayload::Normal(Request::HistoryAppend {
                        app,
                        channel,
                        fresh_epoch,
                        events,
                        except,
                    }) => {
                        let key = ChannelKey { app, channel };
                        let (epoch, first_offset) =
                            applied
                                .state
                                .place_history(key.clone(), fresh_epoch, events.len());
                        commits.push(Committed::History(HistoryCommit {
                            app: key.app,
                            channel: key.channel,
                            epoch: epoch.clone(),
                            first_offset,
                            events,
                            except,
                        }));
                        Response::HistoryAppended {
                            epoch,
                            first_offset,
                        }
                    }
                    EntryPayload::Normal(request) => {
                        let touched = Touched::by(&request, &applied.state);
                        let response = applied.state.apply(request);
                        self.interest.refresh(&applied.state, touched);
                        if let Some(events) = presence_events(&response) {
                            commits.push(Committed::Presence(events));
                        }
                        response
                    }
                    EntryPayload::Membership(membership) => {
                        applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                        Response::Applied
                    }
                }
            })
            .collect();
        drop(applied);
        self.store_and_deliver(commits)?;
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
            let _in_order = self.delivery.order.lock();
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
        let delivery = self.delivery.clone();
        let _in_order = delivery.order.lock();
        let mut applied = self.applied.write();
        self.interest.rebuild(&state);
        // The presence changes the skipped entries made, as the node's subscribers see them.
        let presence = applied.state.presence_changes_to(&state);
        *applied = AppliedState {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            state,
        };
        drop(applied);
        if !presence.is_empty() {
            (delivery.deliver)(&Committed::Presence(presence));
        }
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, RaftStorageError> {
        snapshot::load(&self.store)
    }
}
