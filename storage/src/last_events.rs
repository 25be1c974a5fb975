//! The last event of each cache channel, so that a node restarted within the cache's lifetime
//! still answers a new subscriber with it. One record per (app, channel): when it was published
//! and the encoded frame, replaced by every publish and expired by age.

use std::time::Duration;

use crate::history::prefix;
use crate::{Result, StorageError};

/// The last-event tree.
#[derive(Clone)]
pub struct LastEvents {
    tree: sled::Tree,
}

/// A channel's last event: when it was published (ms since the Unix epoch) and its frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastEvent {
    pub time_ms: u64,
    pub frame: String,
}

impl LastEvents {
    pub(crate) fn open(db: &sled::Db) -> Result<LastEvents> {
        Ok(LastEvents {
            tree: db.open_tree("last_events")?,
        })
    }

    /// Replaces the channel's last event.
    pub fn put(&self, app: &str, channel: &str, event: &LastEvent) -> Result<()> {
        let mut value = Vec::with_capacity(8 + event.frame.len());
        value.extend_from_slice(&event.time_ms.to_be_bytes());
        value.extend_from_slice(event.frame.as_bytes());
        self.tree.insert(prefix(app, channel), value)?;
        Ok(())
    }

    /// The channel's last event, if one was published.
    pub fn get(&self, app: &str, channel: &str) -> Result<Option<LastEvent>> {
        let key = prefix(app, channel);
        let Some(value) = self.tree.get(&key)? else {
            return Ok(None);
        };
        let corrupt = |reason: &str| StorageError::Corrupt {
            key: String::from_utf8_lossy(&key).into_owned(),
            reason: reason.to_owned(),
        };
        let time: [u8; 8] = value
            .get(..8)
            .and_then(|t| t.try_into().ok())
            .ok_or_else(|| corrupt("shorter than its timestamp"))?;
        let frame = std::str::from_utf8(&value[8..]).map_err(|_| corrupt("frame is not UTF-8"))?;
        Ok(Some(LastEvent {
            time_ms: u64::from_be_bytes(time),
            frame: frame.to_owned(),
        }))
    }

    /// Drops the events older than `max_age` at `now_ms`; returns how many.
    pub fn expire(&self, max_age: Duration, now_ms: u64) -> Result<u64> {
        let cutoff = now_ms.saturating_sub(max_age.as_millis() as u64);
        let mut removed = 0;
        for item in self.tree.iter() {
            let (key, value) = item?;
            let time = value
                .get(..8)
                .and_then(|t| <[u8; 8]>::try_from(t).ok())
                .map_or(0, u64::from_be_bytes);
            if time < cutoff {
                self.tree.remove(key)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;

    fn event(time_ms: u64, frame: &str) -> LastEvent {
        LastEvent {
            time_ms,
            frame: frame.to_owned(),
        }
    }

    #[test]
    fn the_last_put_wins_per_channel_and_old_ones_expire() {
        let store = Store::temporary().unwrap();
        let last = store.last_events();
        assert_eq!(last.get("1", "cache-a").unwrap(), None);
        last.put("1", "cache-a", &event(1_000, "first")).unwrap();
        last.put("1", "cache-a", &event(2_000, "second")).unwrap();
        last.put("1", "cache-b", &event(9_000, "b")).unwrap();
        last.put("2", "cache-a", &event(9_000, "other app"))
            .unwrap();
        assert_eq!(
            last.get("1", "cache-a").unwrap(),
            Some(event(2_000, "second"))
        );
        assert_eq!(
            last.get("2", "cache-a").unwrap().unwrap().frame,
            "other app"
        );
        assert_eq!(last.expire(Duration::from_secs(5), 10_000).unwrap(), 1);
        assert_eq!(last.get("1", "cache-a").unwrap(), None);
        assert!(last.get("1", "cache-b").unwrap().is_some());
    }

    #[test]
    fn it_survives_reopening() {
        let dir = std::env::temp_dir().join(format!("chorus-last-events-{}", std::process::id()));
        {
            let store = Store::open(&dir).unwrap();
            store
                .last_events()
                .put("1", "cache-x", &event(5, "kept"))
                .unwrap();
            store.flush_blocking().unwrap();
        }
        let store = Store::open(&dir).unwrap();
        assert_eq!(
            store
                .last_events()
                .get("1", "cache-x")
                .unwrap()
                .unwrap()
                .frame,
            "kept"
        );
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
