//! Fetching the history a node skipped by installing a snapshot.
//!
//! A follower too far behind the leader's log gets a snapshot of the replicated state instead
//! of the entries it missed, and with those entries the history events they carried. Installing
//! the snapshot starts each such channel's local history again, empty, where the cluster stands
//! (`History::align`), and records the channel here. [`repair_history`] then asks another node
//! (`POST /cluster/history` on its cluster port) for the events before the oldest one this node
//! holds, page by page, newest first, and adds them below it (`History::backfill`), until it
//! holds as much as that node does. Until then a client resuming from an older offset on this
//! node is told `recovered: false`; afterwards it recovers as on any other node.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chorus_storage::{StorageError, Store, StoredEvent};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::error::ClusterError;
use crate::peer_request::PeerRequests;
use crate::raft_view::other_nodes;
use crate::state::ChannelKey;
use crate::types::{NodeId, Raft, LONGEST_NAME};

/// The path of a history question on the cluster port.
pub(crate) const HISTORY_PATH: &str = "/cluster/history";

/// How many events one answer carries at most.
const PAGE: usize = 1000;

/// How long another node has to answer one page.
const PAGE_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the channels left to repair are looked at.
const ROUND: Duration = Duration::from_secs(1);

/// The channels whose history this node skipped, shared by the state machine (which records
/// them when it installs a snapshot) and [`repair_history`].
#[derive(Clone, Default)]
pub struct HistoryGaps(Arc<Mutex<BTreeSet<ChannelKey>>>);

impl HistoryGaps {
    pub(crate) fn record(&self, key: ChannelKey) {
        self.0.lock().insert(key);
    }

    fn take(&self) -> BTreeSet<ChannelKey> {
        std::mem::take(&mut *self.0.lock())
    }
}

/// Another node asks for the events of a channel before `before`, at most `limit`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct HistoryQuestion {
    pub(crate) app: String,
    pub(crate) channel: String,
    pub(crate) before: u64,
    pub(crate) limit: usize,
}

impl HistoryQuestion {
    /// Names no app or channel could have are refused before they reach the store.
    pub(crate) fn is_plausible(&self) -> bool {
        self.app.len() <= LONGEST_NAME && self.channel.len() <= LONGEST_NAME
    }
}

/// The channel's epoch here (`None`: no history here) and the newest events before the asked
/// offset, oldest first.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct HistoryAnswer {
    pub(crate) epoch: Option<String>,
    pub(crate) events: Vec<(u64, StoredEvent)>,
}

/// This node's answer to a history question.
pub(crate) fn answer(
    store: &Store,
    question: &HistoryQuestion,
) -> Result<HistoryAnswer, StorageError> {
    let history = store.history();
    let Some(here) = history.channel(&question.app, &question.channel)? else {
        return Ok(HistoryAnswer {
            epoch: None,
            events: Vec::new(),
        });
    };
    let limit = question.limit.min(PAGE) as u64;
    let before = question.before.min(here.next_offset);
    let from = before.saturating_sub(limit).max(here.first_offset);
    let mut events = Vec::new();
    if from < before {
        let wanted = (before - from) as usize;
        if let Some(replay) = history.replay(&question.app, &question.channel, from - 1, wanted)? {
            events = replay.events;
        }
    }
    Ok(HistoryAnswer {
        epoch: Some(here.epoch),
        events,
    })
}

/// What the repair of skipped history uses.
pub(crate) struct Repair {
    pub(crate) me: NodeId,
    /// For the other nodes of the membership.
    pub(crate) raft: Raft,
    pub(crate) store: Store,
    pub(crate) gaps: HistoryGaps,
    pub(crate) client: PeerRequests,
}

/// Fetches the skipped history of every recorded channel from another node, until the runtime
/// stops; a channel that could not be finished is tried again at the next round.
pub(crate) async fn repair_history(repair: Repair) {
    loop {
        tokio::time::sleep(ROUND).await;
        for key in repair.gaps.take() {
            match repair.channel(&key).await {
                Ok(added) if added > 0 => {
                    tracing::info!(app = %key.app, channel = %key.channel, added, "history the snapshot skipped fetched from another node");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(app = %key.app, channel = %key.channel, error = %e, "cannot fetch skipped history yet");
                    repair.gaps.record(key);
                }
            }
        }
    }
}

impl Repair {
    /// Adds the events before this node's oldest, page by page, from the first other node that
    /// has them; returns how many it added.
    async fn channel(&self, key: &ChannelKey) -> Result<u64, ClusterError> {
        let mut added = 0;
        let mut answered = false;
        let history = self.store.history();
        for (peer, addr) in other_nodes(&self.raft, self.me) {
            loop {
                let here = history
                    .channel(&key.app, &key.channel)
                    .map_err(|e| ClusterError::History(e.to_string()))?;
                let Some(here) = here.filter(|here| here.first_offset > 1) else {
                    return Ok(added);
                };
                let question = HistoryQuestion {
                    app: key.app.clone(),
                    channel: key.channel.clone(),
                    before: here.first_offset,
                    limit: PAGE,
                };
                let asked = self
                    .client
                    .post(&addr, HISTORY_PATH, &question, PAGE_TIMEOUT);
                let page: HistoryAnswer = match asked.await {
                    Ok(page) => {
                        answered = true;
                        page
                    }
                    Err(e) => {
                        tracing::debug!(peer, error = %e, "no skipped history from this node");
                        break;
                    }
                };
                if page.epoch.as_deref() != Some(here.epoch.as_str()) || page.events.is_empty() {
                    break; // This node has nothing older in this epoch; try another.
                }
                let count = page.events.len() as u64;
                let taken = history
                    .backfill(&key.app, &key.channel, &here.epoch, &page.events)
                    .map_err(|e| ClusterError::History(e.to_string()))?;
                if !taken {
                    break;
                }
                added += count;
            }
        }
        if answered {
            Ok(added)
        } else {
            Err(ClusterError::History("no other node answered".to_owned()))
        }
    }
}
