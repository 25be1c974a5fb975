//! History channels: which of an app's channels keep a durable history (its `[[apps.history]]`
//! rules), the store they are kept in, and what a subscriber that joins one is told and sent:
//! the channel's position and, when it resumes from an earlier one, what it missed. The HTTP API
//! decides by these rules which events go through the cluster's log (`http/api.rs`); the node
//! stores them as they are committed (`crate::commits`).

use chorus_storage::{ChannelHistory, Retention, StorageError, Store};
use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::config::HistoryRule;
use crate::protocol::confirmation::HistoryPosition;
use crate::protocol::frame::{self, Frame};
use crate::protocol::since::Since;
use crate::recent_keys::RecentKeys;

/// An app's history rules and store, and the idempotency keys this node took for its
/// publishes to channels without history (the history channels' are in the cluster's state).
pub struct Histories {
    globs: GlobSet,
    retention: Vec<Retention>,
    pub store: Store,
    pub recent_keys: RecentKeys,
}

/// What a new subscriber of a history channel is to get.
#[derive(Debug)]
pub enum Recovery {
    /// Confirm it with `position`, then send `replay`: every event it missed or, when
    /// `more_after` says where the rest starts, the first part of them.
    Ready {
        position: HistoryPosition,
        replay: Vec<Frame>,
        more_after: Option<u64>,
    },
    /// It resumes from `offset` of `epoch`, the channel's epoch here, but this node has not
    /// stored that far yet (it may be behind its cluster): it may wait for the node to catch up.
    /// `position` is the answer if it does not (`recovered: false`).
    Ahead {
        position: HistoryPosition,
        epoch: String,
        offset: u64,
    },
}

impl Recovery {
    /// The answer without waiting: an `Ahead` subscriber is told it was not recovered.
    pub fn without_waiting(self) -> Recovery {
        match self {
            Recovery::Ahead { position, .. } => Recovery::Ready {
                position,
                replay: Vec::new(),
                more_after: None,
            },
            ready => ready,
        }
    }
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
            recent_keys: RecentKeys::default(),
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

    /// Where `channel` stands: its epoch (`None` before its first event) and newest offset.
    pub fn position(&self, app: &str, channel: &str) -> Result<HistoryPosition, StorageError> {
        let current = self.store.history().channel(app, channel)?;
        Ok(position_of(current.as_ref()))
    }

    /// What a new subscriber of a history channel gets: the current epoch and offset and, when
    /// it gave `since`, whether it is recovered and the events after it. A subscriber told epoch
    /// `null` (no history yet) resumes with epoch `""` and offset 0. Recovery fails (the client
    /// must re-fetch its state) when the epoch differs, history no longer holds everything after
    /// the offset, or the offset is past what this node stored (then [`Recovery::Ahead`]: in
    /// this node's epoch, the node may only be behind). At most `budget` bytes of missed events
    /// are read. The caller holds the node's order lock (`crate::order`), so no event is stored
    /// between this read and the subscription: nothing is missed and nothing comes twice.
    pub fn recovery(
        &self,
        app: &str,
        channel: &str,
        since: Option<&Since>,
        budget: usize,
    ) -> Result<Recovery, StorageError> {
        let current = self.store.history().channel(app, channel)?;
        let mut position = position_of(current.as_ref());
        let (Some(since), Some(c)) = (since, &current) else {
            position.recovered = since.map(|s| s.epoch.is_empty() && s.offset == 0);
            return Ok(Recovery::Ready {
                position,
                replay: Vec::new(),
                more_after: None,
            });
        };
        // An empty epoch is where a subscriber started when the channel had no history yet:
        // whatever epoch exists now began after it, so it missed all of it.
        let recovered = if since.epoch.is_empty() {
            since.offset == 0 && c.covers_after(0)
        } else {
            c.epoch == since.epoch && c.covers_after(since.offset)
        };
        position.recovered = Some(recovered);
        if recovered {
            let missed = self.missed(app, channel, &c.epoch, since.offset, budget)?;
            return Ok(Recovery::Ready {
                position,
                replay: missed.frames,
                more_after: missed.more.then_some(missed.last),
            });
        }
        if c.epoch == since.epoch && since.offset >= c.next_offset {
            return Ok(Recovery::Ahead {
                position,
                epoch: c.epoch.clone(),
                offset: since.offset,
            });
        }
        Ok(Recovery::Ready {
            position,
            replay: Vec::new(),
            more_after: None,
        })
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

/// Where a channel whose history is `current` stands.
fn position_of(current: Option<&ChannelHistory>) -> HistoryPosition {
    HistoryPosition {
        epoch: current.map(|c| c.epoch.clone()),
        offset: current.map_or(0, |c| c.next_offset - 1),
        recovered: None,
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
