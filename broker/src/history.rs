//! History channels: which of an app's channels keep a durable history (its `[[apps.history]]`
//! rules), and the store they are kept in. The publish path that uses it is in `router.rs`.

use std::sync::Arc;

use chorus_storage::{Retention, StorageError, Store};
use globset::{Glob, GlobSet, GlobSetBuilder};
use parking_lot::Mutex;

use crate::actors::channel::Recovery;
use crate::config::HistoryRule;
use crate::protocol::frame::{self, Frame, Since};

/// An app's history rules and store.
pub struct Histories {
    globs: GlobSet,
    retention: Vec<Retention>,
    pub store: Store,
    /// Held while committed events are stored and handed to their channel (by the cluster's
    /// state machine, see `chorus_cluster::delivery`), and while a subscriber's missed events
    /// are read and it joins the channel. One lock for the node, shared by its apps.
    pub order: Arc<Mutex<()>>,
}

impl Histories {
    /// The rules were validated with the configuration.
    pub fn new(rules: &[HistoryRule], store: Store, order: Arc<Mutex<()>>) -> Histories {
        let mut globs = GlobSetBuilder::new();
        for rule in rules {
            globs.add(Glob::new(&rule.channels).expect("validated with the configuration"));
        }
        Histories {
            globs: globs.build().expect("validated with the configuration"),
            retention: rules
                .iter()
                .map(|r| Retention {
                    max_events: r.max_events,
                    max_age: std::time::Duration::from_secs(r.max_age_secs),
                })
                .collect(),
            store,
            order,
        }
    }

    /// The retention of `channel`, if it keeps history: the first rule that matches.
    pub fn retention(&self, channel: &str) -> Option<Retention> {
        self.globs
            .matches(channel)
            .into_iter()
            .min()
            .map(|i| self.retention[i])
    }

    pub fn keeps(&self, channel: &str) -> bool {
        self.globs.is_match(channel)
    }

    /// What a new subscriber of a history channel is told: the current epoch and offset and, when
    /// it gave `since`, whether it is recovered and the events after it. A subscriber told epoch
    /// `null` (no history yet) resumes with epoch `""` and offset 0. Recovery fails (the client
    /// must re-fetch its state) when the epoch differs, history no longer holds everything after
    /// the offset, or the offset is in the future. At most `budget` bytes of missed events are
    /// read; when more remain, [`Recovery::more_after`] says where the rest starts. The caller
    /// holds [`Histories::order`], so no event is stored between this read and the
    /// subscription: nothing is missed and nothing comes twice.
    pub fn recovery(
        &self,
        app: &str,
        channel: &str,
        since: Option<&Since>,
        budget: usize,
    ) -> Result<Recovery, StorageError> {
        let current = self.store.history().channel(app, channel)?;
        let mut fields = serde_json::Map::new();
        let last = current.as_ref().map_or(0, |c| c.next_offset - 1);
        fields.insert(
            "epoch".into(),
            current.as_ref().map(|c| c.epoch.clone()).into(),
        );
        fields.insert("offset".into(), last.into());
        let mut recovery = Recovery::default();
        if let Some(since) = since {
            // An empty epoch is where a subscriber started when the channel had no history yet:
            // whatever epoch exists now began after it, so it missed all of it.
            let recovered = match &current {
                Some(c) if since.epoch.is_empty() => since.offset == 0 && c.covers_after(0),
                Some(c) => c.epoch == since.epoch && c.covers_after(since.offset),
                None => since.epoch.is_empty() && since.offset == 0,
            };
            if let (true, Some(c)) = (recovered, &current) {
                let missed = self.missed(app, channel, &c.epoch, since.offset, budget)?;
                recovery.replay = missed.frames;
                recovery.more_after = missed.more.then_some(missed.last);
            }
            fields.insert("recovered".into(), recovered.into());
        }
        recovery.fields = Some(fields);
        Ok(recovery)
    }

    /// The next part of a subscriber's catch-up: the events after `after`, at most `budget`
    /// bytes. `None` when the channel is no longer in `epoch` or no longer holds them all.
    pub fn catch_up(
        &self,
        app: &str,
        channel: &str,
        epoch: &str,
        after: u64,
        budget: usize,
    ) -> Result<Option<Missed>, StorageError> {
        match self.store.history().channel(app, channel)? {
            Some(c) if c.epoch == epoch && c.covers_after(after) => {
                self.missed(app, channel, epoch, after, budget).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// Reads the events after `after` as frames, up to `budget` bytes (at least one event).
    fn missed(
        &self,
        app: &str,
        channel: &str,
        epoch: &str,
        after: u64,
        budget: usize,
    ) -> Result<Missed, StorageError> {
        const PAGE: usize = 1024;
        let history = self.store.history();
        let mut missed = Missed {
            frames: Vec::new(),
            last: after,
            more: false,
        };
        let mut bytes = 0;
        loop {
            let Some(page) = history.replay(app, channel, missed.last, PAGE)? else {
                return Ok(missed);
            };
            let full = page.events.len() == PAGE;
            for (offset, e) in page.events {
                let f = frame::history_event(channel, &e.event, &e.data, offset, epoch);
                if bytes + f.len() > budget && !missed.frames.is_empty() {
                    missed.more = true;
                    return Ok(missed);
                }
                bytes += f.len();
                missed.last = offset;
                missed.frames.push(f);
            }
            if !full {
                return Ok(missed);
            }
        }
    }
}

/// Missed events of a history channel, as frames ready to send.
#[derive(Debug)]
pub struct Missed {
    pub frames: Vec<Frame>,
    /// The offset of the last frame (the position asked for when there are none).
    pub last: u64,
    /// More events follow `last`.
    pub more: bool,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_matching_rule_wins() {
        let rule = |channels: &str, max_events| HistoryRule {
            channels: channels.into(),
            max_events,
            max_age_secs: 60,
        };
        let h = Histories::new(
            &[rule("chat-vip-*", 5), rule("chat-*", 10)],
            Store::temporary().unwrap(),
            Arc::default(),
        );
        assert_eq!(h.retention("chat-vip-1").unwrap().max_events, 5);
        assert_eq!(h.retention("chat-room").unwrap().max_events, 10);
        assert!(h.retention("news").is_none());
        assert!(!h.keeps("private-chat-x"));
    }
}
