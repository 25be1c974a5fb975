//! Raft's log storage on the node's sled database: log entries, vote, committed and last purged
//! log ids, through [`chorus_storage::RaftStore`].
//!
//! Appends are written at once (so readers see them when `append` returns) and made durable by the
//! [`LogFlusher`] thread, which calls each append's callback only after a flush that covers it. A
//! vote is flushed before `save_vote` returns, as Raft requires. Truncation, purge and the committed log id are
//! not flushed on their own: sled keeps writes in order, so any later flush carries them, and
//! losing them in a crash is safe (the entries come back, or less of the log is re-applied).

use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;

use chorus_storage::{RaftMeta, RaftStore, Store};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, StorageIOError, Vote};

use crate::flusher::LogFlusher;
use crate::types::{Entry, LogId, NodeId, RaftStorageError, TypeConfig};

/// The node's Raft log; handed to `openraft::Raft::new`.
pub struct LogStore {
    store: Store,
    flusher: LogFlusher,
}

/// A reader of the log, for Raft's replication tasks; cheap to clone.
#[derive(Clone)]
pub struct LogReader {
    raft: RaftStore,
}

impl LogStore {
    /// The log kept in `store`, with its flusher thread (which ends when the `LogStore` is
    /// dropped).
    pub fn new(store: &Store) -> io::Result<LogStore> {
        Ok(LogStore {
            store: store.clone(),
            flusher: LogFlusher::start(store)?,
        })
    }

    fn raft(&self) -> &RaftStore {
        self.store.raft()
    }
}

fn read_entries(
    raft: &RaftStore,
    range: impl RangeBounds<u64>,
) -> Result<Vec<Entry>, RaftStorageError> {
    Ok(raft
        .entries(range)
        .map_err(|e| StorageIOError::read_logs(&e))?)
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        read_entries(&self.raft, range)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        read_entries(self.raft(), range)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, RaftStorageError> {
        let last = self
            .raft()
            .last_entry::<Entry>()
            .map_err(|e| StorageIOError::read_logs(&e))?
            .map(|entry| entry.log_id);
        let last_purged_log_id = self
            .raft()
            .meta::<LogId>(RaftMeta::LastPurged)
            .map_err(|e| StorageIOError::read_logs(&e))?;
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last.or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        LogReader {
            raft: self.raft().clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), RaftStorageError> {
        self.raft()
            .set_meta(RaftMeta::Vote, vote)
            .map_err(|e| StorageIOError::write_vote(&e))?;
        self.store
            .flush()
            .await
            .map_err(|e| StorageIOError::write_vote(&e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, RaftStorageError> {
        Ok(self
            .raft()
            .meta(RaftMeta::Vote)
            .map_err(|e| StorageIOError::read_vote(&e))?)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), RaftStorageError> {
        self.raft()
            .set_meta(RaftMeta::Committed, &committed)
            .map_err(|e| StorageIOError::write(&e))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, RaftStorageError> {
        Ok(self
            .raft()
            .meta::<Option<LogId>>(RaftMeta::Committed)
            .map_err(|e| StorageIOError::read(&e))?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.raft()
            .append(entries.into_iter().map(|entry| (entry.log_id.index, entry)))
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.flusher
            .flush_then(callback)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        self.raft()
            .truncate_from(log_id.index)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        // The purge point first: a crash between the two leaves entries below it, never a log
        // that starts later than it says.
        self.raft()
            .set_meta(RaftMeta::LastPurged, &log_id)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.raft()
            .purge_through(log_id.index)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}
