//! The node's Raft log, its metadata and its last state-machine snapshot, in sled.
//!
//! Three trees of the node's database: `raft_log` holds the log entries keyed by their index as a
//! big-endian `u64` (so key order is log order and a range scan reads a slice of the log),
//! `raft_meta` holds the vote, the last committed and the last purged log ids, and
//! `raft_snapshot` holds the last snapshot's metadata and bytes. The values are whatever the
//! caller serialises: log entries in the compact binary encoding of [`crate::codec`] (entries an
//! earlier version wrote as JSON are still read), the meta records and the snapshot's metadata as
//! JSON. This crate knows nothing of Raft's types, only how to keep them.
//!
//! Nothing here uses sled batches or transactions (see the crate docs for why): every change is a
//! sequence of single-key writes ordered so that any prefix of it is a consistent state.
//!
//! Writes are not durable when a method returns; [`crate::Store::flush`] makes everything written
//! so far durable. sled keeps writes in order, so after a crash the database holds a prefix of them:
//! a value found on disk implies every write made before it is there too.

use std::ops::RangeBounds;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{codec, Result, StorageError};

/// The one record of the snapshot tree: metadata length (u32 BE), metadata, then the bytes.
const SNAPSHOT: &[u8] = b"snapshot";

/// The records of the `raft_meta` tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RaftMeta {
    /// The last vote this node saved.
    Vote,
    /// The last log id known to be committed.
    Committed,
    /// The last log id removed from the front of the log.
    LastPurged,
}

impl RaftMeta {
    fn key(self) -> &'static [u8] {
        match self {
            RaftMeta::Vote => b"vote",
            RaftMeta::Committed => b"committed",
            RaftMeta::LastPurged => b"last_purged",
        }
    }
}

/// A snapshot as stored: its metadata (decoded) and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSnapshot<M> {
    pub meta: M,
    pub data: Vec<u8>,
}

/// Handle on the Raft trees of the node's database; cheap to clone.
#[derive(Clone)]
pub struct RaftStore {
    log: sled::Tree,
    meta: sled::Tree,
    snapshot: sled::Tree,
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn encode<T: Serialize>(what: &str, value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| StorageError::Unencodable {
        what: what.to_owned(),
        reason: e.to_string(),
    })
}

fn decode<T: DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T> {
    serde_json::from_slice(value).map_err(|e| StorageError::Corrupt {
        key: format!("{key:?}"),
        reason: e.to_string(),
    })
}

impl RaftStore {
    pub(crate) fn open(db: &sled::Db) -> Result<RaftStore> {
        Ok(RaftStore {
            log: db.open_tree("raft_log")?,
            meta: db.open_tree("raft_meta")?,
            snapshot: db.open_tree("raft_snapshot")?,
        })
    }

    /// Writes log entries, each under its index, in the order given (replacing any entry already
    /// at that index); after a crash a prefix of them is there. Not yet durable: see
    /// [`crate::Store::flush`].
    pub fn append<T: Serialize>(&self, entries: impl IntoIterator<Item = (u64, T)>) -> Result<()> {
        for (index, entry) in entries {
            self.log
                .insert(index_key(index), codec::encode("raft log entry", &entry)?)?;
        }
        Ok(())
    }

    /// Writes records already encoded, each under its index, as [`RaftStore::append`] does: by
    /// [`crate::codec::encode`], or as JSON (what a version before the binary encoding wrote;
    /// tests and tools write these).
    pub fn append_encoded(&self, records: impl IntoIterator<Item = (u64, Vec<u8>)>) -> Result<()> {
        for (index, record) in records {
            self.log.insert(index_key(index), record)?;
        }
        Ok(())
    }

    /// The entries whose indexes are in `range`, in log order.
    pub fn entries<T: DeserializeOwned>(&self, range: impl RangeBounds<u64>) -> Result<Vec<T>> {
        let start = range.start_bound().map(|i| index_key(*i));
        let end = range.end_bound().map(|i| index_key(*i));
        let mut out = Vec::new();
        for item in self.log.range((start, end)) {
            let (key, value) = item?;
            out.push(codec::decode(&key, &value)?);
        }
        Ok(out)
    }

    /// The entry with the highest index, if the log holds any.
    pub fn last_entry<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        match self.log.last()? {
            Some((key, value)) => Ok(Some(codec::decode(&key, &value)?)),
            None => Ok(None),
        }
    }

    /// Removes every entry from `index` on (inclusive), last first, so the log stays contiguous
    /// whenever a crash interrupts it.
    pub fn truncate_from(&self, index: u64) -> Result<()> {
        for key in self.log.range(index_key(index)..).keys().rev() {
            self.log.remove(key?)?;
        }
        Ok(())
    }

    /// Removes every entry up to `index` (inclusive), first first, so the log stays contiguous
    /// whenever a crash interrupts it.
    pub fn purge_through(&self, index: u64) -> Result<()> {
        for key in self.log.range(..=index_key(index)).keys() {
            self.log.remove(key?)?;
        }
        Ok(())
    }

    /// A record of the meta tree, if it was ever written.
    pub fn meta<T: DeserializeOwned>(&self, record: RaftMeta) -> Result<Option<T>> {
        match self.meta.get(record.key())? {
            Some(value) => Ok(Some(decode(record.key(), &value)?)),
            None => Ok(None),
        }
    }

    /// Writes a record of the meta tree. Not yet durable: see [`crate::Store::flush`].
    pub fn set_meta<T: Serialize>(&self, record: RaftMeta, value: &T) -> Result<()> {
        self.meta
            .insert(record.key(), encode("raft meta record", value)?)?;
        Ok(())
    }

    /// The last snapshot written, if any.
    pub fn snapshot<M: DeserializeOwned>(&self) -> Result<Option<StoredSnapshot<M>>> {
        let Some(value) = self.snapshot.get(SNAPSHOT)? else {
            return Ok(None);
        };
        let corrupt = |reason: &str| StorageError::Corrupt {
            key: "raft_snapshot/snapshot".to_owned(),
            reason: reason.to_owned(),
        };
        let meta_len = value
            .get(..4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(|b| u32::from_be_bytes(b) as usize)
            .ok_or_else(|| corrupt("shorter than its header"))?;
        let meta = value
            .get(4..4 + meta_len)
            .ok_or_else(|| corrupt("shorter than its metadata"))?;
        Ok(Some(StoredSnapshot {
            meta: decode(SNAPSHOT, meta)?,
            data: value[4 + meta_len..].to_vec(),
        }))
    }

    /// Replaces the stored snapshot: metadata and bytes in one record, so they change together.
    /// Not yet durable: see [`crate::Store::flush`].
    pub fn set_snapshot<M: Serialize>(&self, meta: &M, data: &[u8]) -> Result<()> {
        let meta = encode("raft snapshot metadata", meta)?;
        let meta_len = u32::try_from(meta.len()).map_err(|_| StorageError::Unencodable {
            what: "raft snapshot metadata".to_owned(),
            reason: "over 4 GiB".to_owned(),
        })?;
        let mut value = Vec::with_capacity(4 + meta.len() + data.len());
        value.extend_from_slice(&meta_len.to_be_bytes());
        value.extend_from_slice(&meta);
        value.extend_from_slice(data);
        self.snapshot.insert(SNAPSHOT, value)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;
    use std::ops::Bound;

    fn entry(index: u64) -> (u64, String) {
        (index, format!("entry {index}"))
    }

    fn read(raft: &RaftStore, range: impl RangeBounds<u64>) -> Vec<String> {
        raft.entries(range).unwrap()
    }

    #[test]
    fn entries_come_back_in_index_order_for_any_range() {
        let store = Store::temporary().unwrap();
        let raft = store.raft();
        // Out of order on purpose, and past 255 so that byte order must be numeric order.
        raft.append([entry(300), entry(2), entry(1), entry(256), entry(3)])
            .unwrap();
        assert_eq!(
            read(raft, ..),
            ["entry 1", "entry 2", "entry 3", "entry 256", "entry 300"]
        );
        assert_eq!(read(raft, 2..=256), ["entry 2", "entry 3", "entry 256"]);
        assert_eq!(
            read(raft, (Bound::Excluded(3), Bound::Excluded(300))),
            ["entry 256"]
        );
        assert!(read(raft, (Bound::Excluded(3), Bound::Excluded(3))).is_empty());
        assert!(read(raft, 4..256).is_empty());
        assert!(read(raft, 3..3).is_empty());
        assert!(read(raft, (Bound::Included(256), Bound::Excluded(3))).is_empty());
        assert!(read(raft, (Bound::Excluded(300), Bound::Included(300))).is_empty());
        assert_eq!(
            raft.last_entry::<String>().unwrap().as_deref(),
            Some("entry 300")
        );
    }

    #[test]
    fn entries_are_written_binary_and_json_entries_of_an_earlier_version_still_read() {
        let store = Store::temporary().unwrap();
        let raft = store.raft();
        raft.append([entry(2)]).unwrap();
        let written = raft.log.get(index_key(2)).unwrap().unwrap();
        assert_eq!(written[0], codec::BINARY);
        raft.append_encoded([(1, serde_json::to_vec(&entry(1).1).unwrap())])
            .unwrap();
        assert_eq!(read(raft, ..), ["entry 1", "entry 2"]);
        raft.append_encoded([(3, b"{not json".to_vec())]).unwrap();
        assert!(matches!(
            raft.entries::<String>(3..),
            Err(StorageError::Corrupt { .. })
        ));
    }

    #[test]
    fn truncate_and_purge_remove_one_end_each() {
        let store = Store::temporary().unwrap();
        let raft = store.raft();
        raft.append((1..=10).map(entry)).unwrap();
        raft.truncate_from(8).unwrap();
        raft.purge_through(3).unwrap();
        assert_eq!(
            read(raft, ..),
            (4..=7).map(|i| entry(i).1).collect::<Vec<_>>(),
            "7 is kept by the truncation at 8, 4 by the purge through 3"
        );
        raft.truncate_from(0).unwrap();
        assert_eq!(raft.last_entry::<String>().unwrap(), None);
    }

    #[test]
    fn meta_and_snapshot_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let raft = store.raft();
            raft.set_meta(RaftMeta::Vote, &(3u64, 7u64)).unwrap();
            raft.set_meta(RaftMeta::Committed, &Some(12u64)).unwrap();
            raft.set_snapshot(&"snap-1".to_owned(), b"\x00\xffbytes")
                .unwrap();
            raft.append([entry(1)]).unwrap();
            store.flush_blocking().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let raft = store.raft();
        assert_eq!(raft.meta(RaftMeta::Vote).unwrap(), Some((3u64, 7u64)));
        assert_eq!(
            raft.meta::<Option<u64>>(RaftMeta::Committed).unwrap(),
            Some(Some(12))
        );
        assert_eq!(raft.meta::<u64>(RaftMeta::LastPurged).unwrap(), None);
        assert_eq!(
            raft.snapshot::<String>().unwrap(),
            Some(StoredSnapshot {
                meta: "snap-1".to_owned(),
                data: b"\x00\xffbytes".to_vec()
            })
        );
        assert_eq!(
            raft.last_entry::<String>().unwrap().as_deref(),
            Some("entry 1")
        );
    }

    #[test]
    fn unencodable_and_corrupt_values_are_typed_errors() {
        let store = Store::temporary().unwrap();
        let raft = store.raft();
        // JSON objects need string keys: a map keyed by pairs cannot be written.
        let bad: std::collections::BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into();
        assert!(matches!(
            raft.set_meta(RaftMeta::Vote, &bad),
            Err(StorageError::Unencodable { .. })
        ));
        raft.set_meta(RaftMeta::Vote, &"not a number").unwrap();
        assert!(matches!(
            raft.meta::<u64>(RaftMeta::Vote),
            Err(StorageError::Corrupt { .. })
        ));
    }

    #[test]
    fn raft_trees_leave_history_alone() {
        let store = Store::temporary().unwrap();
        store
            .history()
            .place(
                "1",
                "c",
                "e1",
                1,
                &[crate::StoredEvent {
                    event: "e".into(),
                    data: "d".into(),
                    time_ms: 0,
                }],
            )
            .unwrap();
        store.raft().append((1..=3).map(entry)).unwrap();
        store.raft().truncate_from(0).unwrap();
        assert_eq!(
            store
                .history()
                .replay("1", "c", 0, 10)
                .unwrap()
                .unwrap()
                .events
                .len(),
            1
        );
    }
}
