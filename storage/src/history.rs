//! Per-channel history: events placed at the offsets the cluster gave them, replay from an
//! offset, retention, and what a node that skipped entries does (align, backfill).
//!
//! One sled tree holds every channel. A channel's records share a prefix (its app and name, each
//! length-prefixed); under it, `0x00` is the channel's metadata (epoch and offsets) and `0x01`
//! followed by a big-endian `u64` offset is a chunk: the events placed together (one committed
//! run), the first at that offset and the others after it, so a range scan from the chunk
//! holding an offset is a replay in order. One record per run, not per event, keeps the writes
//! and the bytes per event low; a record an earlier version wrote for a single event (as JSON)
//! reads as a chunk of one. Chunks never overlap below `next_offset`; one may straddle
//! `first_offset` (what retention trimmed of it is not served). Offsets are dense, starting at 1, and given by the cluster's replicated state with
//! the channel's epoch ([`fresh_epoch`] draws one when a channel's history begins or begins
//! again): a client holding an offset from another epoch can tell it missed history it cannot
//! get back.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{codec, Result, StorageError};

const META: u8 = 0x00;
const EVENT: u8 = 0x01;

/// One stored event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub event: String,
    pub data: String,
    /// When it was stored, in milliseconds since the Unix epoch.
    pub time_ms: u64,
}

/// What is known of a channel's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelHistory {
    pub epoch: String,
    /// The oldest offset still held (equal to `next_offset` when none is).
    pub first_offset: u64,
    /// The offset the next event will get; the newest held is `next_offset - 1`.
    pub next_offset: u64,
}

/// A new epoch, drawn at random.
pub fn fresh_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

impl ChannelHistory {
    /// Whether every event after `offset` is still held.
    pub fn covers_after(&self, offset: u64) -> bool {
        offset.saturating_add(1) >= self.first_offset && offset < self.next_offset
    }
}

/// A replay: the channel's state and the events after the requested offset, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    pub channel: ChannelHistory,
    pub events: Vec<(u64, StoredEvent)>,
}

/// How much of a channel's history to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_events: u64,
    pub max_age: Duration,
}

/// The history tree.
#[derive(Clone)]
pub struct History {
    tree: sled::Tree,
    /// Writers read and write a channel's metadata: one at a time.
    writer: Arc<Mutex<()>>,
}

fn push_str(key: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).expect("app ids and channel names are short");
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(s.as_bytes());
}

pub(crate) fn prefix(app: &str, channel: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + app.len() + channel.len() + 9);
    push_str(&mut key, app);
    push_str(&mut key, channel);
    key
}

fn meta_key(app: &str, channel: &str) -> Vec<u8> {
    let mut key = prefix(app, channel);
    key.push(META);
    key
}

/// The first key past every chunk of the channel.
fn chunks_end(app: &str, channel: &str) -> Vec<u8> {
    let mut key = prefix(app, channel);
    key.push(EVENT + 1);
    key
}

/// The offset a chunk's key starts at.
fn chunk_offset(key: &[u8]) -> Result<u64> {
    let bytes: [u8; 8] = key
        .get(key.len().saturating_sub(8)..)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| corrupt(key, "chunk key without an offset"))?;
    Ok(u64::from_be_bytes(bytes))
}

/// A chunk's events: written as a list in the binary encoding, or (by an earlier version) one
/// event as JSON.
fn decode_chunk(key: &[u8], value: &[u8]) -> Result<Vec<StoredEvent>> {
    if value.first() == Some(&codec::BINARY) {
        decode(key, value)
    } else {
        Ok(vec![decode(key, value)?])
    }
}

fn event_key(app: &str, channel: &str, offset: u64) -> Vec<u8> {
    let mut key = prefix(app, channel);
    key.push(EVENT);
    key.extend_from_slice(&offset.to_be_bytes());
    key
}

fn corrupt(key: &[u8], reason: impl ToString) -> StorageError {
    StorageError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: reason.to_string(),
    }
}

fn decode<T: for<'de> Deserialize<'de>>(key: &[u8], value: &[u8]) -> Result<T> {
    codec::decode(key, value).map_err(|e| match e {
        StorageError::Corrupt { reason, .. } => corrupt(key, reason),
        other => other,
    })
}

/// A record in the binary encoding of [`crate::codec`] (records an earlier version wrote as JSON
/// are still read).
fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    codec::encode("history record", value).expect("records always serialise")
}

/// Splits a metadata key back into app and channel.
fn parse_meta_key(key: &[u8]) -> Option<(String, String)> {
    let take = |rest: &[u8]| -> Option<(String, usize)> {
        let len = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize;
        let s = std::str::from_utf8(rest.get(2..2 + len)?).ok()?;
        Some((s.to_owned(), 2 + len))
    };
    let (app, used) = take(key)?;
    let (channel, used2) = take(&key[used..])?;
    (key.get(used + used2) == Some(&META) && key.len() == used + used2 + 1)
        .then_some((app, channel))
}

impl History {
    pub(crate) fn open(db: &sled::Db) -> Result<History> {
        Ok(History {
            tree: db.open_tree("history")?,
            writer: Arc::new(Mutex::new(())),
        })
    }

    /// The channel's state, if it has ever been written.
    pub fn channel(&self, app: &str, channel: &str) -> Result<Option<ChannelHistory>> {
        let key = meta_key(app, channel);
        match self.tree.get(&key)? {
            Some(v) => Ok(Some(decode(&key, &v)?)),
            None => Ok(None),
        }
    }

    /// Stores `events` at the offsets the cluster gave them: the first at `first_offset`, the
    /// others after it, in the channel's `epoch`. Idempotent, so a node that applies the same
    /// committed entry twice (re-applying its log after a restart) changes nothing:
    /// - events this node already holds, or has trimmed since, are left alone;
    /// - a different epoch means the channel's history was lost and began again: what this node
    ///   held of the old epoch is dropped;
    /// - events starting past this node's next offset leave a gap it cannot fill (it installed a
    ///   snapshot instead of the entries between): its history then starts at `first_offset`, so
    ///   a subscriber asking for what lies in the gap is told it cannot recover.
    ///
    /// The events are written first and the metadata last, so after a crash an event past
    /// `next_offset` is one that was never acknowledged: it is never read, and placing it again
    /// overwrites it. Not yet durable: see [`crate::Store::flush`].
    pub fn place(
        &self,
        app: &str,
        channel: &str,
        epoch: &str,
        first_offset: u64,
        events: &[StoredEvent],
    ) -> Result<()> {
        let _writer = self.writer.lock().expect("history writer lock");
        let end = first_offset + events.len() as u64;
        let (mut meta, starts_again) = match self.channel(app, channel)? {
            Some(meta) if meta.epoch == epoch && meta.next_offset >= first_offset => (meta, false),
            _ => {
                let meta = ChannelHistory {
                    epoch: epoch.to_owned(),
                    first_offset,
                    next_offset: first_offset,
                };
                (meta, true)
            }
        };
        if end <= meta.next_offset {
            return Ok(());
        }
        let skip = (meta.next_offset - first_offset) as usize;
        self.write_chunk(app, channel, meta.next_offset, &events[skip..])?;
        meta.next_offset = end;
        self.tree.insert(meta_key(app, channel), encode(&meta))?;
        if starts_again {
            self.remove_all_below(app, channel, first_offset)?;
        }
        Ok(())
    }

    /// Writes `events` as one chunk at `from`, the channel's next offset. Whatever lies past it
    /// was never acknowledged (a crash between a chunk and its metadata, or an earlier epoch):
    /// it goes first, so no old chunk can shadow part of the new one.
    fn write_chunk(
        &self,
        app: &str,
        channel: &str,
        from: u64,
        events: &[StoredEvent],
    ) -> Result<()> {
        let past = event_key(app, channel, from.saturating_add(1));
        for key in self.tree.range(past..chunks_end(app, channel)).keys() {
            self.tree.remove(key?)?;
        }
        self.tree
            .insert(event_key(app, channel, from), encode(&events))?;
        Ok(())
    }

    /// Brings the channel to where the cluster says it stands (a snapshot this node installed):
    /// when this node is in another epoch or behind `next_offset`, it cannot serve what lies
    /// between, so its history of the channel starts again, empty, at `next_offset`, and this
    /// answers true (what came before can be fetched from another node: [`History::backfill`]).
    pub fn align(&self, app: &str, channel: &str, epoch: &str, next_offset: u64) -> Result<bool> {
        let _writer = self.writer.lock().expect("history writer lock");
        match self.channel(app, channel)? {
            Some(meta) if meta.epoch == epoch && meta.next_offset >= next_offset => Ok(false),
            _ => {
                let meta = ChannelHistory {
                    epoch: epoch.to_owned(),
                    first_offset: next_offset,
                    next_offset,
                };
                self.tree.insert(meta_key(app, channel), encode(&meta))?;
                self.remove_all_below(app, channel, next_offset)?;
                Ok(true)
            }
        }
    }

    /// Adds events older than the oldest this node holds, as another node of the cluster holds
    /// them: `events` must be in `epoch`, dense, and end just before the channel's first offset.
    /// The events are written first and the first offset lowered last. Answers whether they were
    /// taken (not when the channel moved to another epoch, or they do not fit).
    pub fn backfill(
        &self,
        app: &str,
        channel: &str,
        epoch: &str,
        events: &[(u64, StoredEvent)],
    ) -> Result<bool> {
        let _writer = self.writer.lock().expect("history writer lock");
        let Some(mut meta) = self.channel(app, channel)? else {
            return Ok(false);
        };
        let Some(&(first, _)) = events.first() else {
            return Ok(false);
        };
        let dense = events
            .iter()
            .zip(first..)
            .all(|((offset, _), expected)| *offset == expected);
        let fits = first + events.len() as u64 == meta.first_offset;
        if meta.epoch != epoch || !dense || !fits {
            return Ok(false);
        }
        let chunk: Vec<StoredEvent> = events.iter().map(|(_, event)| event.clone()).collect();
        self.tree
            .insert(event_key(app, channel, first), encode(&chunk))?;
        meta.first_offset = first;
        self.tree.insert(meta_key(app, channel), encode(&meta))?;
        Ok(true)
    }

    /// The channel's state and up to `limit` events with offsets after `after`, oldest first.
    /// `None` when the channel was never written.
    pub fn replay(
        &self,
        app: &str,
        channel: &str,
        after: u64,
        limit: usize,
    ) -> Result<Option<Replay>> {
        let Some(meta) = self.channel(app, channel)? else {
            return Ok(None);
        };
        let mut events = Vec::new();
        if after < u64::MAX {
            let from = after.saturating_add(1).max(meta.first_offset);
            self.read_events(app, channel, from, meta.next_offset, |offset, event| {
                events.push((offset, event));
                events.len() < limit
            })?;
        }
        Ok(Some(Replay {
            channel: meta,
            events,
        }))
    }

    /// Calls `each` with the channel's events from offset `from` up to (not including) `until`,
    /// in order, while it answers true.
    fn read_events(
        &self,
        app: &str,
        channel: &str,
        from: u64,
        until: u64,
        mut each: impl FnMut(u64, StoredEvent) -> bool,
    ) -> Result<()> {
        if from >= until {
            return Ok(());
        }
        // The chunk holding `from` starts at or before it.
        let start = self
            .tree
            .range(event_key(app, channel, 0)..=event_key(app, channel, from))
            .keys()
            .next_back()
            .transpose()?
            .map_or_else(|| event_key(app, channel, from), |key| key.to_vec());
        let end = event_key(app, channel, until);
        let mut wanted = from;
        for item in self.tree.range(start..end) {
            let (key, value) = item?;
            let first = chunk_offset(&key)?;
            for (offset, event) in (first..).zip(decode_chunk(&key, &value)?) {
                if offset >= until {
                    return Ok(());
                }
                if offset >= wanted {
                    wanted = offset + 1;
                    if !each(offset, event) {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    /// Removes the oldest events of a channel beyond `retention`; returns how many.
    pub fn trim(&self, app: &str, channel: &str, retention: Retention, now_ms: u64) -> Result<u64> {
        let _writer = self.writer.lock().expect("history writer lock");
        let key = meta_key(app, channel);
        let Some(mut meta) = self.channel(app, channel)? else {
            return Ok(0);
        };
        let oldest_kept_time = now_ms.saturating_sub(retention.max_age.as_millis() as u64);
        // Too many go whatever their age; then the oldest of the rest while too old (an event
        // missing from the store counts as too old).
        let next = meta.next_offset;
        let from = meta
            .first_offset
            .max(next.saturating_sub(retention.max_events));
        let mut first = next;
        self.read_events(app, channel, from, next, |offset, event| {
            if event.time_ms < oldest_kept_time {
                true
            } else {
                first = offset;
                false
            }
        })?;
        let removed = first - meta.first_offset;
        if removed > 0 {
            // Unreachable first, then gone.
            meta.first_offset = first;
            self.tree.insert(key, encode(&meta))?;
        }
        self.remove_below(app, channel, first)?;
        Ok(removed)
    }

    /// Removes a channel's chunks that hold only events below `first` (one that straddles it
    /// stays whole).
    fn remove_below(&self, app: &str, channel: &str, first: u64) -> Result<()> {
        let start = event_key(app, channel, 0);
        let end = event_key(app, channel, first);
        let last = match self
            .tree
            .range(start..end.clone())
            .next_back()
            .transpose()?
        {
            Some((key, value)) => {
                let ends = chunk_offset(&key)? + decode_chunk(&key, &value)?.len() as u64;
                (ends > first).then_some(key)
            }
            None => None,
        };
        for item in self.tree.range(event_key(app, channel, 0)..end).keys() {
            let key = item?;
            if Some(&key) != last.as_ref() {
                self.tree.remove(key)?;
            }
        }
        Ok(())
    }

    /// Removes every chunk of a channel that starts below `first` (its history starts again).
    fn remove_all_below(&self, app: &str, channel: &str, first: u64) -> Result<()> {
        let start = event_key(app, channel, 0);
        let end = event_key(app, channel, first);
        for key in self.tree.range(start..end).keys() {
            self.tree.remove(key?)?;
        }
        Ok(())
    }

    /// Every channel that has history: (app, channel).
    /// Each channel's chunks are skipped, not read: the cost grows with the channels, not with
    /// the events held.
    pub fn channels(&self) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        let mut from = Vec::new();
        while let Some(key) = self.tree.range(from.clone()..).keys().next().transpose()? {
            from = match parse_meta_key(&key) {
                Some((app, channel)) => {
                    let past = chunks_end(&app, &channel);
                    out.push((app, channel));
                    past
                }
                // A chunk with no metadata before it (never expected): step over it.
                None => [&key[..], &[0]].concat(),
            };
        }
        Ok(out)
    }

    /// Applies `policy` to every channel (channels it returns `None` for are left alone);
    /// returns how many events were removed. The broker runs this in the background.
    pub fn enforce_retention(
        &self,
        now_ms: u64,
        policy: impl Fn(&str, &str) -> Option<Retention>,
    ) -> Result<u64> {
        let mut removed = 0;
        for (app, channel) in self.channels()? {
            if let Some(retention) = policy(&app, &channel) {
                removed += self.trim(&app, &channel, retention, now_ms)?;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;

    fn ev(n: u64, time_ms: u64) -> StoredEvent {
        StoredEvent {
            event: "e".into(),
            data: format!("{n}"),
            time_ms,
        }
    }

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    #[test]
    fn an_event_left_past_next_offset_by_a_crash_is_never_read_and_is_overwritten() {
        let (_dir, store) = open();
        let h = store.history();
        h.place("1", "chat-a", "e1", 1, &[ev(1, 1)]).unwrap();
        // What a crash between writing an event and its channel's metadata leaves.
        h.tree
            .insert(
                event_key("1", "chat-a", 2),
                encode(&vec![ev(99, 2), ev(100, 2)]),
            )
            .unwrap();
        let r = h.replay("1", "chat-a", 0, 10).unwrap().unwrap();
        assert_eq!(r.events.len(), 1);
        h.place("1", "chat-a", "e1", 2, &[ev(2, 3)]).unwrap();
        let r = h.replay("1", "chat-a", 0, 10).unwrap().unwrap();
        assert_eq!(r.events[1], (2, ev(2, 3)));
    }

    #[test]
    fn records_are_written_binary_and_json_records_of_an_earlier_version_still_read() {
        let (_dir, store) = open();
        let h = store.history();
        h.place("1", "c", "e1", 1, &[ev(1, 1)]).unwrap();
        let written = h.tree.get(event_key("1", "c", 1)).unwrap().unwrap();
        assert_eq!(written[0], codec::BINARY);
        // What a version before the binary encoding wrote: a channel and two events as JSON.
        let meta = ChannelHistory {
            epoch: "old".into(),
            first_offset: 1,
            next_offset: 3,
        };
        fn json<T: Serialize>(value: &T) -> Vec<u8> {
            serde_json::to_vec(value).unwrap()
        }
        h.tree.insert(meta_key("1", "old"), json(&meta)).unwrap();
        for n in 1..=2 {
            h.tree
                .insert(event_key("1", "old", n), json(&ev(n, n)))
                .unwrap();
        }
        h.place("1", "old", "old", 3, &[ev(3, 3)]).unwrap();
        let r = h.replay("1", "old", 0, 10).unwrap().unwrap();
        assert_eq!(r.events, [(1, ev(1, 1)), (2, ev(2, 2)), (3, ev(3, 3))]);
        assert_eq!(
            (r.channel.epoch.as_str(), r.channel.next_offset),
            ("old", 4)
        );
    }

    #[test]
    fn concurrent_places_flushes_trims_and_raft_writes_never_deadlock() {
        let (_dir, store) = open();
        let (done, finished) = std::sync::mpsc::channel();
        let mut workers = Vec::new();
        for t in 0..3u64 {
            let (store, done) = (store.clone(), done.clone());
            workers.push(std::thread::spawn(move || {
                let channel = format!("chat-{t}");
                for n in 0..300 {
                    let first = n * 5 + 1;
                    let batch: Vec<StoredEvent> = (first..first + 5).map(|i| ev(i, n)).collect();
                    store
                        .history()
                        .place("1", &channel, "e", first, &batch)
                        .unwrap();
                    store.flush_blocking().unwrap();
                    if n % 50 == 0 {
                        let retention = Retention {
                            max_events: 100,
                            max_age: Duration::from_secs(3600),
                        };
                        store.history().trim("1", &channel, retention, n).unwrap();
                    }
                }
                done.send(()).unwrap();
            }));
        }
        {
            let (store, done) = (store.clone(), done.clone());
            workers.push(std::thread::spawn(move || {
                for n in 1..300u64 {
                    store.raft().append([(n, format!("entry {n}"))]).unwrap();
                    store.raft().set_snapshot(&n, b"state").unwrap();
                    store.raft().purge_through(n.saturating_sub(10)).unwrap();
                    store.flush_blocking().unwrap();
                }
                done.send(()).unwrap();
            }));
        }
        drop(done);
        for _ in 0..4 {
            finished
                .recv_timeout(Duration::from_secs(120))
                .expect("the store deadlocked: writers and flushes stopped making progress");
        }
        for w in workers {
            w.join().unwrap();
        }
        let r = store
            .history()
            .replay("1", "chat-0", 0, 1000)
            .unwrap()
            .unwrap();
        assert_eq!(r.channel.next_offset, 1501);
        // Trimmed to 100 at the last trim (n = 250), then 49 more batches of 5.
        assert_eq!(r.events.len(), 100 + 49 * 5);
    }

    #[test]
    fn many_concurrent_async_flushes_all_complete() {
        let (_dir, store) = open();
        let (done, finished) = std::sync::mpsc::channel();
        let publishers = 64;
        for t in 0..publishers {
            let (store, done) = (store.clone(), done.clone());
            std::thread::spawn(move || {
                let channel = format!("chat-{t}");
                for n in 1..=20 {
                    store
                        .history()
                        .place("1", &channel, "e", n, &[ev(n, n)])
                        .unwrap();
                    futures_executor::block_on(store.flush()).unwrap();
                }
                done.send(()).unwrap();
            });
        }
        for _ in 0..publishers {
            finished
                .recv_timeout(Duration::from_secs(120))
                .expect("flushes stopped completing");
        }
    }

    #[test]
    fn place_then_replay_in_order_from_any_offset() {
        let (_dir, store) = open();
        let h = store.history();
        let batch: Vec<StoredEvent> = (1..=100).map(|n| ev(n, n)).collect();
        h.place("1", "chat-a", "e1", 1, &batch).unwrap();
        let r = h.replay("1", "chat-a", 0, 1000).unwrap().unwrap();
        assert_eq!(r.channel.epoch, "e1");
        assert_eq!(
            r.events.iter().map(|e| e.0).collect::<Vec<_>>(),
            (1..=100).collect::<Vec<_>>()
        );
        assert_eq!(r.channel.next_offset, 101);
        let r = h.replay("1", "chat-a", 90, 5).unwrap().unwrap();
        assert_eq!(
            r.events.iter().map(|e| e.0).collect::<Vec<_>>(),
            vec![91, 92, 93, 94, 95]
        );
        assert_eq!(r.events[0].1, ev(91, 91));
        assert!(h
            .replay("1", "chat-a", 100, 10)
            .unwrap()
            .unwrap()
            .events
            .is_empty());
        assert!(h
            .replay("1", "chat-a", u64::MAX, 10)
            .unwrap()
            .unwrap()
            .events
            .is_empty());
        assert!(h.replay("1", "never", 0, 10).unwrap().is_none());
    }

    #[test]
    fn channels_and_apps_are_separate_even_with_shared_prefixes() {
        let (_dir, store) = open();
        let h = store.history();
        h.place("1", "a", "e-1-a", 1, &[ev(1, 0)]).unwrap();
        h.place("1", "ab", "e-1-ab", 1, &[ev(2, 0)]).unwrap();
        h.place("12", "a", "e-12-a", 1, &[ev(3, 0)]).unwrap();
        h.place("1", "a", "e-1-a", 2, &[ev(4, 0)]).unwrap();
        let data = |app, ch| {
            h.replay(app, ch, 0, 10)
                .unwrap()
                .unwrap()
                .events
                .into_iter()
                .map(|e| (e.0, e.1.data))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            data("1", "a"),
            vec![(1, "1".to_owned()), (2, "4".to_owned())]
        );
        assert_eq!(data("1", "ab"), vec![(1, "2".to_owned())]);
        assert_eq!(data("12", "a"), vec![(1, "3".to_owned())]);
        let mut channels = h.channels().unwrap();
        channels.sort();
        assert_eq!(
            channels,
            [("1", "a"), ("1", "ab"), ("12", "a")].map(|(a, c)| (a.to_owned(), c.to_owned()))
        );
        for (app, channel) in channels {
            let epoch = h.channel(&app, &channel).unwrap().unwrap().epoch;
            assert_eq!(epoch, format!("e-{app}-{channel}"));
        }
    }

    #[test]
    fn retention_by_count_and_by_age() {
        let (_dir, store) = open();
        let h = store.history();
        let batch: Vec<StoredEvent> = (1..=10).map(|n| ev(n, n * 1000)).collect();
        h.place("1", "c", "e1", 1, &batch).unwrap();
        let keep = |max_events, secs| Retention {
            max_events,
            max_age: Duration::from_secs(secs),
        };
        assert_eq!(h.trim("1", "c", keep(7, 1_000_000), 10_000).unwrap(), 3);
        let r = h.replay("1", "c", 0, 100).unwrap().unwrap();
        assert_eq!(r.channel.first_offset, 4);
        assert_eq!(r.events.first().unwrap().0, 4);
        assert!(r.channel.covers_after(3));
        assert!(
            !r.channel.covers_after(u64::MAX),
            "no overflow on hostile offsets"
        );
        assert!(!r.channel.covers_after(2), "offset 3 is gone");
        // Age: at t = 15 s, keep 6 s -> events stored before 9 s go (offsets 4..8).
        let removed = h
            .enforce_retention(15_000, |_, ch| (ch == "c").then_some(keep(100, 6)))
            .unwrap();
        assert_eq!(removed, 5);
        let r = h.replay("1", "c", 0, 100).unwrap().unwrap();
        assert_eq!(
            r.events.iter().map(|e| e.0).collect::<Vec<_>>(),
            vec![9, 10]
        );
        assert_eq!(r.channel.epoch, "e1", "trimming keeps the epoch");
    }

    #[test]
    fn a_run_is_one_record_and_trimming_drops_whole_records_keeping_one_it_cuts() {
        let (_dir, store) = open();
        let h = store.history();
        for first in [1, 6, 11] {
            let run: Vec<StoredEvent> = (first..first + 5).map(|n| ev(n, n)).collect();
            h.place("1", "c", "e1", first, &run).unwrap();
        }
        h.place("1", "d", "e1", 1, &[ev(1, 1)]).unwrap();
        let records = |h: &History| h.tree.scan_prefix(prefix("1", "c")).count();
        assert_eq!(records(h), 1 + 3, "the metadata and one record per run");
        let keep = Retention {
            max_events: 7,
            max_age: Duration::from_secs(3600),
        };
        assert_eq!(h.trim("1", "c", keep, 15).unwrap(), 8);
        assert_eq!(
            records(h),
            1 + 2,
            "the run of 6..10 holds 9 and 10: it stays"
        );
        let r = h.replay("1", "c", 0, 100).unwrap().unwrap();
        assert_eq!(
            r.events.iter().map(|e| e.0).collect::<Vec<_>>(),
            (9..=15).collect::<Vec<_>>()
        );
        assert_eq!(
            h.replay("1", "c", 11, 2).unwrap().unwrap().events[0],
            (12, ev(12, 12))
        );
        let mut channels = h.channels().unwrap();
        channels.sort();
        assert_eq!(
            channels,
            [("1".into(), "c".into()), ("1".into(), "d".into())]
        );
    }

    #[test]
    fn reopening_keeps_offsets_epochs_and_events() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .history()
                .place("1", "c", "e1", 1, &[ev(1, 5), ev(2, 6)])
                .unwrap();
            store.flush_blocking().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let r = store.history().replay("1", "c", 0, 10).unwrap().unwrap();
        assert_eq!(r.channel.epoch, "e1");
        assert_eq!(r.events, vec![(1, ev(1, 5)), (2, ev(2, 6))]);
        assert_eq!(r.channel.next_offset, 3);
        store
            .history()
            .place("1", "c", "e1", 3, &[ev(3, 7)])
            .unwrap();
        let r = store.history().replay("1", "c", 2, 10).unwrap().unwrap();
        assert_eq!(r.events, vec![(3, ev(3, 7))]);
    }

    #[test]
    fn fresh_epochs_differ() {
        assert_ne!(
            fresh_epoch(),
            fresh_epoch(),
            "a history that begins again is another history"
        );
    }

    #[test]
    fn placing_at_given_offsets_is_idempotent_and_a_gap_starts_history_again() {
        let (_dir, store) = open();
        let h = store.history();
        let events = [ev(1, 1), ev(2, 2), ev(3, 3)];
        h.place("1", "c", "e1", 1, &events[..2]).unwrap();
        // Applied again (a restart re-applying its log), and overlapping: nothing doubles.
        h.place("1", "c", "e1", 1, &events[..2]).unwrap();
        h.place("1", "c", "e1", 2, &events[1..]).unwrap();
        let r = h.replay("1", "c", 0, 10).unwrap().unwrap();
        assert_eq!(r.channel.epoch, "e1");
        assert_eq!((r.channel.first_offset, r.channel.next_offset), (1, 4));
        let offsets: Vec<u64> = r.events.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, [1, 2, 3]);
        assert_eq!(r.events[2].1, ev(3, 3));

        // A gap: this node never got offsets 4..9; it serves only from 10 on.
        h.place("1", "c", "e1", 10, &[ev(10, 10)]).unwrap();
        let c = h.channel("1", "c").unwrap().unwrap();
        assert_eq!((c.first_offset, c.next_offset), (10, 11));
        assert!(!c.covers_after(3));
        assert!(c.covers_after(9));
        assert_eq!(h.replay("1", "c", 0, 10).unwrap().unwrap().events.len(), 1);

        // Another epoch: the old history is gone.
        h.place("1", "c", "e2", 1, &[ev(1, 20)]).unwrap();
        let r = h.replay("1", "c", 0, 10).unwrap().unwrap();
        assert_eq!(r.channel.epoch, "e2");
        assert_eq!(r.events, [(1, ev(1, 20))]);
        // Trimmed events are not brought back by applying them again.
        h.place("1", "c", "e2", 2, &[ev(2, 21), ev(3, 22)]).unwrap();
        h.trim(
            "1",
            "c",
            Retention {
                max_events: 1,
                max_age: Duration::from_secs(3600),
            },
            22,
        )
        .unwrap();
        h.place("1", "c", "e2", 1, &[ev(1, 20), ev(2, 21), ev(3, 22)])
            .unwrap();
        let r = h.replay("1", "c", 0, 10).unwrap().unwrap();
        assert_eq!(r.events, [(3, ev(3, 22))]);
    }

    #[test]
    fn aligning_to_a_snapshot_keeps_what_matches_and_restarts_what_does_not_then_backfills() {
        let (_dir, store) = open();
        let h = store.history();
        h.place("1", "c", "e1", 1, &[ev(1, 1), ev(2, 2)]).unwrap();
        assert!(!h.align("1", "c", "e1", 3).unwrap());
        assert_eq!(h.replay("1", "c", 0, 10).unwrap().unwrap().events.len(), 2);
        assert!(h.align("1", "c", "e1", 7).unwrap());
        let r = h.replay("1", "c", 0, 10).unwrap().unwrap();
        assert_eq!((r.channel.first_offset, r.channel.next_offset), (7, 7));
        assert!(r.events.is_empty());
        assert!(h.align("1", "new", "e9", 5).unwrap());
        assert_eq!(h.channel("1", "new").unwrap().unwrap().epoch, "e9");

        // What the snapshot skipped comes back from another node, newest part first.
        let older = |from: u64, to: u64| -> Vec<(u64, StoredEvent)> {
            (from..to).map(|n| (n, ev(n, n))).collect()
        };
        assert!(
            !h.backfill("1", "c", "e2", &older(4, 7)).unwrap(),
            "another epoch"
        );
        assert!(
            !h.backfill("1", "c", "e1", &older(3, 6)).unwrap(),
            "does not reach 7"
        );
        assert!(!h
            .backfill(
                "1",
                "c",
                "e1",
                &[(5, ev(5, 5)), (6, ev(6, 6)), (4, ev(4, 4))]
            )
            .unwrap());
        assert!(h.backfill("1", "c", "e1", &older(4, 7)).unwrap());
        assert!(h.backfill("1", "c", "e1", &older(1, 4)).unwrap());
        h.place("1", "c", "e1", 7, &[ev(7, 7)]).unwrap();
        let r = h.replay("1", "c", 0, 10).unwrap().unwrap();
        assert_eq!((r.channel.first_offset, r.channel.next_offset), (1, 8));
        assert_eq!(r.events, older(1, 8));
    }

    #[test]
    fn meta_keys_parse_back() {
        assert_eq!(
            parse_meta_key(&meta_key("1", "chat")),
            Some(("1".into(), "chat".into()))
        );
        assert_eq!(parse_meta_key(&event_key("1", "chat", 5)), None);
        assert_eq!(parse_meta_key(b"\x00"), None);
    }
}
