//! History channels: which of an app's channels keep a durable history (its `[[apps.history]]`
//! rules), and the store they are kept in. The publish path that uses it is in `router.rs`.

use chorus_storage::{Retention, StorageError, Store};
use globset::{Glob, GlobSet, GlobSetBuilder};
use parking_lot::Mutex;

use crate::actors::channel::Recovery;
use crate::config::HistoryRule;
use crate::protocol::frame::{self, Since};

/// An app's history rules and store.
pub struct Histories {
    globs: GlobSet,
    retention: Vec<Retention>,
    pub store: Store,
    /// Held while an event is stored and handed to its channel, so that local delivery happens
    /// in offset order.
    pub order: Mutex<()>,
}

impl Histories {
    /// The rules were validated with the configuration.
    pub fn new(rules: &[HistoryRule], store: Store) -> Histories {
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
            order: Mutex::new(()),
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
    /// `null` (no history yet) resumes with epoch `""` and offset 0. Recovery fails (the
    /// client must re-fetch its state) when the epoch differs, history no longer holds
    /// everything after the offset, the offset is in the future, or the missed events are more
    /// than `budget` bytes. The caller holds [`Histories::order`], so no event is stored between
    /// this read and the subscription: nothing is missed and nothing comes twice.
    pub fn recovery(
        &self,
        app: &str,
        channel: &str,
        since: Option<&Since>,
        budget: usize,
    ) -> Result<Recovery, StorageError> {
        let history = self.store.history();
        let current = history.channel(app, channel)?;
        let mut fields = serde_json::Map::new();
        let last = current.as_ref().map_or(0, |c| c.next_offset - 1);
        fields.insert(
            "epoch".into(),
            current.as_ref().map(|c| c.epoch.clone()).into(),
        );
        fields.insert("offset".into(), last.into());
        let Some(since) = since else {
            return Ok(Recovery {
                fields,
                replay: Vec::new(),
            });
        };
        let mut replay = Vec::new();
        // An empty epoch is where a subscriber started when the channel had no history yet:
        // whatever epoch exists now began after it, so it missed all of it.
        let mut recovered = match &current {
            Some(c) if since.epoch.is_empty() => since.offset == 0 && c.covers_after(0),
            Some(c) => c.epoch == since.epoch && c.covers_after(since.offset),
            None => since.epoch.is_empty() && since.offset == 0,
        };
        if recovered && since.offset < last {
            let missed = history
                .replay(app, channel, since.offset, usize::MAX)?
                .map(|r| r.events)
                .unwrap_or_default();
            let epoch = current.as_ref().map_or("", |c| c.epoch.as_str());
            let mut bytes = 0;
            for (offset, e) in missed {
                let f = frame::history_event(channel, &e.event, &e.data, offset, epoch);
                bytes += f.len();
                if bytes > budget {
                    recovered = false;
                    replay.clear();
                    break;
                }
                replay.push(f);
            }
        }
        fields.insert("recovered".into(), recovered.into());
        Ok(Recovery { fields, replay })
    }
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
        );
        assert_eq!(h.retention("chat-vip-1").unwrap().max_events, 5);
        assert_eq!(h.retention("chat-room").unwrap().max_events, 10);
        assert!(h.retention("news").is_none());
        assert!(!h.keeps("private-chat-x"));
    }
}
