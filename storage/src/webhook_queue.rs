//! Webhooks waiting to be sent, on disk until their receiver answers.
//!
//! One queue per (app, webhook URL, stream): the node's own events (client events, cache misses) and
//! the cluster's (occupancy and membership changes derived from the Raft log) wait apart, because
//! different nodes send them. An entry's key is its queue and its position, so a range scan reads
//! a queue in order and writing the same position twice (a log entry applied again after a
//! restart) stores it once. The value is when the entry was queued and the event's bytes; the
//! crate does not read them.
//!
//! A queue is bounded: pushing onto a full one drops its oldest entries, and says how many, so a
//! receiver that is down for a day cannot fill the disk.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::{Result, StorageError};

/// Where an entry stands in its queue: the log index of the change it came from (or a local
/// sequence number) and its place among that index's entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub index: u64,
    pub seq: u32,
}

impl Position {
    fn to_bytes(self) -> [u8; 12] {
        let mut bytes = [0; 12];
        bytes[..8].copy_from_slice(&self.index.to_be_bytes());
        bytes[8..].copy_from_slice(&self.seq.to_be_bytes());
        bytes
    }

    fn from_bytes(bytes: &[u8]) -> Option<Position> {
        Some(Position {
            index: u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?),
            seq: u32::from_be_bytes(bytes.get(8..12)?.try_into().ok()?),
        })
    }
}

/// An entry read back from a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedWebhook {
    pub position: Position,
    /// When it was queued, in ms since the Unix epoch.
    pub queued_ms: u64,
    pub payload: Vec<u8>,
}

/// The tree that holds every webhook queue of the node.
#[derive(Clone)]
pub struct WebhookQueues {
    tree: sled::Tree,
}

impl WebhookQueues {
    pub(crate) fn open(db: &sled::Db) -> Result<WebhookQueues> {
        Ok(WebhookQueues {
            tree: db.open_tree("webhook_queue")?,
        })
    }

    /// The queue of `app`'s webhook to `url`, stream `stream`, holding at most `max_len`
    /// entries. Counts what it holds once, here.
    pub fn queue(&self, app: &str, url: &str, stream: u8, max_len: u64) -> Result<WebhookQueue> {
        let mut prefix = Vec::with_capacity(app.len() + url.len() + 5);
        for name in [app, url] {
            let len = u16::try_from(name.len()).map_err(|_| StorageError::Unencodable {
                what: "a webhook queue's name".to_owned(),
                reason: format!("{} bytes, longer than 65535", name.len()),
            })?;
            prefix.extend_from_slice(&len.to_be_bytes());
            prefix.extend_from_slice(name.as_bytes());
        }
        prefix.push(stream);
        let len = self.tree.scan_prefix(&prefix).count() as u64;
        Ok(WebhookQueue {
            tree: self.tree.clone(),
            prefix,
            max_len: max_len.max(1),
            len: Arc::new(AtomicU64::new(len)),
            highest_removed: Arc::default(),
        })
    }
}

/// One queue. Clones share it.
#[derive(Clone)]
pub struct WebhookQueue {
    tree: sled::Tree,
    prefix: Vec<u8>,
    max_len: u64,
    len: Arc<AtomicU64>,
    /// The furthest position removed since the queue was opened.
    highest_removed: Arc<Mutex<Option<Position>>>,
}

impl WebhookQueue {
    fn key(&self, position: Position) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.prefix.len() + 12);
        key.extend_from_slice(&self.prefix);
        key.extend_from_slice(&position.to_bytes());
        key
    }

    fn decode(&self, key: &[u8], value: &[u8]) -> Result<QueuedWebhook> {
        let corrupt = |reason: &str| StorageError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: reason.to_owned(),
        };
        let position = Position::from_bytes(&key[self.prefix.len()..])
            .ok_or_else(|| corrupt("key shorter than its position"))?;
        let queued: [u8; 8] = value
            .get(..8)
            .and_then(|t| t.try_into().ok())
            .ok_or_else(|| corrupt("value shorter than its timestamp"))?;
        Ok(QueuedWebhook {
            position,
            queued_ms: u64::from_be_bytes(queued),
            payload: value[8..].to_vec(),
        })
    }

    /// How many entries wait.
    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The position of the newest entry, if any.
    pub fn last_position(&self) -> Result<Option<Position>> {
        match self.tree.scan_prefix(&self.prefix).next_back() {
            Some(entry) => {
                let (key, value) = entry?;
                Ok(Some(self.decode(&key, &value)?.position))
            }
            None => Ok(None),
        }
    }

    /// Queues `payload` at `position` (a position already held is replaced, not added again).
    /// When the queue is full its oldest entries go first; returns them, so they are counted.
    pub fn push(
        &self,
        position: Position,
        queued_ms: u64,
        payload: &[u8],
    ) -> Result<Vec<QueuedWebhook>> {
        let mut value = Vec::with_capacity(8 + payload.len());
        value.extend_from_slice(&queued_ms.to_be_bytes());
        value.extend_from_slice(payload);
        if self.tree.insert(self.key(position), value)?.is_none() {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
        let mut dropped = Vec::new();
        while self.len() > self.max_len {
            let Some(oldest) = self.first(1)?.pop() else {
                break;
            };
            if self.remove(oldest.position)? {
                dropped.push(oldest);
            }
        }
        Ok(dropped)
    }

    /// Up to `limit` entries from the oldest.
    pub fn first(&self, limit: usize) -> Result<Vec<QueuedWebhook>> {
        self.tree
            .scan_prefix(&self.prefix)
            .take(limit)
            .map(|entry| {
                let (key, value) = entry?;
                self.decode(&key, &value)
            })
            .collect()
    }

    /// Removes the entry at `position`; says whether it was there.
    pub fn remove(&self, position: Position) -> Result<bool> {
        let removed = self.tree.remove(self.key(position))?.is_some();
        if removed {
            self.len.fetch_sub(1, Ordering::Relaxed);
            self.removed(position);
        }
        Ok(removed)
    }

    /// The furthest position removed since the queue was opened, if any.
    pub fn highest_removed(&self) -> Option<Position> {
        *self
            .highest_removed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn removed(&self, position: Position) {
        let mut highest = self
            .highest_removed
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if highest.is_none_or(|h| h < position) {
            *highest = Some(position);
        }
    }

    /// Removes every entry up to and including `position`; returns how many.
    pub fn remove_through(&self, position: Position) -> Result<u64> {
        let end = self.key(position);
        let mut removed = 0;
        for entry in self.tree.range(self.prefix.clone()..=end) {
            let (key, _) = entry?;
            if self.tree.remove(&key)?.is_some() {
                self.len.fetch_sub(1, Ordering::Relaxed);
                removed += 1;
            }
        }
        if removed > 0 {
            self.removed(position);
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queues() -> WebhookQueues {
        let db = sled::Config::new().temporary(true).open().unwrap();
        WebhookQueues::open(&db).unwrap()
    }

    fn at(index: u64) -> Position {
        Position { index, seq: 0 }
    }

    #[test]
    fn entries_come_back_in_position_order_and_a_position_is_stored_once() {
        let q = queues().queue("app", "u", b'c', 100).unwrap();
        q.push(at(300), 1, b"c").unwrap();
        q.push(at(2), 2, b"a").unwrap();
        q.push(Position { index: 2, seq: 1 }, 3, b"b").unwrap();
        q.push(at(2), 2, b"a").unwrap();
        let all: Vec<_> = q
            .first(10)
            .unwrap()
            .into_iter()
            .map(|e| e.payload)
            .collect();
        assert_eq!(all, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        assert_eq!(q.len(), 3);
        assert_eq!(q.last_position().unwrap(), Some(at(300)));
    }

    #[test]
    fn queues_of_other_apps_targets_and_streams_are_apart() {
        let all = queues();
        let a = all.queue("app", "u", b'c', 10).unwrap();
        let prefix_app = all.queue("ap", "u", b'c', 10).unwrap();
        let other_target = all.queue("app", "v", b'c', 10).unwrap();
        let other_stream = all.queue("app", "u", b'l', 10).unwrap();
        a.push(at(1), 0, b"x").unwrap();
        for q in [&prefix_app, &other_target, &other_stream] {
            assert!(q.first(10).unwrap().is_empty());
        }
        assert_eq!(all.queue("app", "u", b'c', 10).unwrap().len(), 1);
    }

    #[test]
    fn a_full_queue_drops_its_oldest() {
        let q = queues().queue("app", "u", b'l', 3).unwrap();
        for i in 1..=3 {
            assert!(q.push(at(i), 0, b"e").unwrap().is_empty());
        }
        let dropped = q.push(at(4), 0, b"e").unwrap();
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].position, at(1));
        assert_eq!(q.first(1).unwrap()[0].position, at(2));
        assert_eq!(q.len(), 3);
    }

    #[test]
    fn removal_through_a_position_keeps_what_follows() {
        let q = queues().queue("app", "u", b'c', 10).unwrap();
        for i in 1..=5 {
            q.push(at(i), 0, b"e").unwrap();
        }
        assert_eq!(q.remove_through(at(3)).unwrap(), 3);
        assert_eq!(q.remove_through(at(3)).unwrap(), 0);
        assert!(q.remove(at(5)).unwrap());
        assert!(!q.remove(at(5)).unwrap());
        assert_eq!(q.first(10).unwrap()[0].position, at(4));
        assert_eq!(q.len(), 1);
        assert_eq!(q.highest_removed(), Some(at(5)));
    }
}
