//! History channels: which of an app's channels keep a durable history (its `[[apps.history]]`
//! rules), and the store they are kept in. The publish path that uses it is in `router.rs`.

use chorus_storage::{Retention, Store};
use globset::{Glob, GlobSet, GlobSetBuilder};
use parking_lot::Mutex;

use crate::config::HistoryRule;

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
