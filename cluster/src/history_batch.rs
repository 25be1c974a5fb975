//! The history events of one publish request as one log entry ([`crate::Request::HistoryBatch`]):
//! runs of events of one channel, placed all together when the entry is applied, and the
//! idempotency keys that make a publish repeated within a window placed once.
//!
//! A key names one published event on each of its channels. Applying an entry, an event whose
//! key was already placed on its channel within the window is not placed again: it is answered
//! with the offset it got then, and neither stored nor delivered a second time. The window is
//! measured in the times the proposers wrote into the entries, never the applying node's clock,
//! so every node recognises the same repeats; and it lives in the replicated state, so it holds
//! across nodes, leader changes and snapshots. Each app keeps at most [`MAX_KEYS_PER_APP`]
//! keys, the oldest forgotten first.

use std::collections::{BTreeMap, BTreeSet};

use chorus_storage::StoredEvent;
use serde::{Deserialize, Serialize};

/// The most idempotency keys the replicated state remembers per app.
pub const MAX_KEYS_PER_APP: usize = 100_000;

/// Events of one channel with the same socket left out, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRun {
    pub channel: String,
    /// The epoch the channel takes if it has no history yet (drawn by the proposer at random,
    /// so applying stays deterministic).
    pub fresh_epoch: String,
    pub events: Vec<StoredEvent>,
    /// The socket id of a connection that is not to receive the events live.
    #[serde(default)]
    pub except: Option<String>,
    /// The idempotency key of each event, if it has one: as many as `events`, or none at all.
    #[serde(default)]
    pub keys: Vec<Option<String>>,
}

impl HistoryRun {
    /// The key of event `i`, if it has one.
    pub fn key(&self, i: usize) -> Option<&str> {
        self.keys.get(i).and_then(|k| k.as_deref())
    }
}

/// Where an event of a [`HistoryRun`] is: its channel's epoch and its offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub epoch: String,
    pub offset: u64,
    /// Its key was placed before, within the window: the offset is the one it got then, and the
    /// event was not placed again.
    #[serde(default)]
    pub repeat: bool,
}

/// Where an event with a key was placed on one of its channels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPlacement {
    pub channel: String,
    pub epoch: String,
    pub offset: u64,
}

/// A key the state remembers: when it was first placed (the proposer's time) and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownKey {
    pub key: String,
    pub time_ms: u64,
    pub placed: Vec<KeyPlacement>,
}

/// The idempotency keys of one app, with the index that finds the oldest. Written as the list
/// of its keys; the index is rebuilt when it is read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Vec<KnownKey>", into = "Vec<KnownKey>")]
pub struct PublishedKeys {
    keys: BTreeMap<String, KnownKey>,
    by_age: BTreeSet<(u64, String)>,
}

impl From<Vec<KnownKey>> for PublishedKeys {
    fn from(list: Vec<KnownKey>) -> PublishedKeys {
        let mut keys = PublishedKeys::default();
        for known in list {
            keys.by_age.insert((known.time_ms, known.key.clone()));
            keys.keys.insert(known.key.clone(), known);
        }
        keys
    }
}

impl From<PublishedKeys> for Vec<KnownKey> {
    fn from(keys: PublishedKeys) -> Vec<KnownKey> {
        keys.keys.into_values().collect()
    }
}

impl PublishedKeys {
    /// Forgets the keys placed `window_ms` or longer before `now_ms`.
    pub fn forget_expired(&mut self, now_ms: u64, window_ms: u64) {
        while let Some((time_ms, key)) = self.by_age.first().cloned() {
            if time_ms.saturating_add(window_ms) > now_ms {
                break;
            }
            self.by_age.pop_first();
            self.keys.remove(&key);
        }
    }

    /// Where `key` was placed on `channel`, if it was (and is not forgotten).
    pub fn placed(&self, key: &str, channel: &str) -> Option<&KeyPlacement> {
        self.keys
            .get(key)?
            .placed
            .iter()
            .find(|p| p.channel == channel)
    }

    /// Remembers that `key` was placed at `placement`, first at `time_ms`; the oldest keys are
    /// forgotten past [`MAX_KEYS_PER_APP`].
    pub fn remember(&mut self, key: &str, time_ms: u64, placement: KeyPlacement) {
        if let Some(known) = self.keys.get_mut(key) {
            known.placed.push(placement);
            return;
        }
        self.keys.insert(
            key.to_owned(),
            KnownKey {
                key: key.to_owned(),
                time_ms,
                placed: vec![placement],
            },
        );
        self.by_age.insert((time_ms, key.to_owned()));
        while self.keys.len() > MAX_KEYS_PER_APP {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            self.keys.remove(&oldest);
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(channel: &str, offset: u64) -> KeyPlacement {
        KeyPlacement {
            channel: channel.into(),
            epoch: "e".into(),
            offset,
        }
    }

    #[test]
    fn keys_expire_by_the_times_given_and_the_oldest_go_first_past_the_bound() {
        let mut keys = PublishedKeys::default();
        keys.remember("a", 1_000, at("chat", 1));
        keys.remember("a", 1_000, at("log", 7));
        keys.remember("b", 2_000, at("chat", 2));
        assert_eq!(keys.placed("a", "log"), Some(&at("log", 7)));
        assert_eq!(keys.placed("a", "other"), None);
        keys.forget_expired(1_999, 1_000);
        assert_eq!(keys.len(), 2, "a is 999 ms old: still known");
        keys.forget_expired(2_000, 1_000);
        assert_eq!(keys.len(), 1, "a is 1000 ms old: forgotten");
        assert!(keys.placed("b", "chat").is_some());

        for n in 0..MAX_KEYS_PER_APP as u64 {
            keys.remember(&format!("k{n}"), 3_000 + n, at("chat", n));
        }
        assert_eq!(keys.len(), MAX_KEYS_PER_APP);
        assert!(keys.placed("b", "chat").is_none(), "the oldest went first");
        assert!(keys.placed("k0", "chat").is_some());
    }

    #[test]
    fn keys_are_written_as_a_list_and_read_back_with_their_index() {
        let mut keys = PublishedKeys::default();
        keys.remember("a", 5, at("chat", 1));
        keys.remember("b", 3, at("chat", 2));
        let json = serde_json::to_string(&keys).unwrap();
        let mut read: PublishedKeys = serde_json::from_str(&json).unwrap();
        assert_eq!(read, keys);
        read.forget_expired(10, 6);
        assert_eq!(
            read.len(),
            1,
            "b, the oldest, is forgotten by the rebuilt index"
        );
        assert!(read.placed("a", "chat").is_some());
    }
}
