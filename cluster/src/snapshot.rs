//! Snapshots of the replicated state: the JSON of a [`ReplicatedState`] with Raft's snapshot
//! metadata, built from the state as last applied and kept (the last one only) in sled.
//!
//! Applying does not write the state to disk: the snapshot is the state's durable form, so a
//! snapshot is flushed before it is reported built or installed, and a restarting node starts from
//! it and re-applies the committed log after it.

use std::io::Cursor;
use std::time::{SystemTime, UNIX_EPOCH};

use chorus_storage::Store;
use openraft::{RaftSnapshotBuilder, Snapshot, StorageIOError};

use crate::state::ReplicatedState;
use crate::state_machine::AppliedState;
use crate::types::{LogId, Node, NodeId, RaftStorageError, TypeConfig};

/// Raft's description of a snapshot: up to which log entry, with which membership.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;

/// Builds a snapshot of the state as it was when Raft asked for the builder.
pub struct SnapshotBuilder {
    pub(crate) store: Store,
    pub(crate) applied: AppliedState,
}

/// A name no other snapshot of this node has: where it ends, and when it was taken.
fn snapshot_id(last_log_id: Option<LogId>) -> String {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    match last_log_id {
        Some(log_id) => format!("{log_id}-{micros}"),
        None => format!("empty-{micros}"),
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, RaftStorageError> {
        let data = serde_json::to_vec(&self.applied.state)
            .map_err(|e| StorageIOError::read_state_machine(&e))?;
        let meta = SnapshotMeta {
            last_log_id: self.applied.last_applied,
            last_membership: self.applied.membership.clone(),
            snapshot_id: snapshot_id(self.applied.last_applied),
        };
        save(&self.store, &meta, &data).await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

/// Makes `data` the node's snapshot, durably.
pub(crate) async fn save(
    store: &Store,
    meta: &SnapshotMeta,
    data: &[u8],
) -> Result<(), RaftStorageError> {
    let failed = |e| StorageIOError::write_snapshot(Some(meta.signature()), &e);
    store.raft().set_snapshot(meta, data).map_err(failed)?;
    store.flush().await.map_err(failed)?;
    Ok(())
}

/// The node's last snapshot, if it has one.
pub(crate) fn load(store: &Store) -> Result<Option<Snapshot<TypeConfig>>, RaftStorageError> {
    let stored = store
        .raft()
        .snapshot::<SnapshotMeta>()
        .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
    Ok(stored.map(|stored| Snapshot {
        meta: stored.meta,
        snapshot: Box::new(Cursor::new(stored.data)),
    }))
}

/// The state a snapshot holds.
pub(crate) fn decode(
    meta: &SnapshotMeta,
    data: &[u8],
) -> Result<ReplicatedState, RaftStorageError> {
    Ok(serde_json::from_slice(data)
        .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?)
}
