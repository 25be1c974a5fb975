//! Everything a Chorus node keeps on disk, in one sled database in its data directory.
//!
//! Per-channel history ([`history`]): every event of a history channel, keyed so that a range
//! scan is a replay, with an epoch that changes whenever the history is lost or reset. The last
//! event of each cache channel ([`last_events`]). Webhooks waiting for their receiver
//! ([`webhook_queue`]). And the cluster's Raft log, vote and snapshot
//! ([`raft_store`]). The crate knows nothing of HTTP, actors, Raft or the protocol: it stores
//! bytes, offsets and serialised records.
//!
//! No sled batch or transaction is ever used. In sled 0.34 the first one switches every later
//! operation onto a global reader-writer lock, and a flush holds that lock as a reader while it
//! waits for the log flusher, which queues behind the batch's writer: under concurrent publishes
//! and flushes the node deadlocked. Each change is instead a sequence of single-key writes,
//! ordered so that any prefix of it (what a crash leaves) is a consistent state.

pub mod codec;
mod flusher;
pub mod history;
pub mod last_events;
pub mod raft_store;
pub mod webhook_queue;

use std::path::Path;
use std::sync::Arc;

use flusher::Flusher;

pub use history::{fresh_epoch, ChannelHistory, History, Replay, Retention, StoredEvent};
pub use last_events::{LastEvent, LastEvents};
pub use raft_store::{RaftMeta, RaftStore, StoredSnapshot};
pub use webhook_queue::{Position, QueuedWebhook, WebhookQueue, WebhookQueues};

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt record under {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("cannot encode {what}: {reason}")]
    Unencodable { what: String, reason: String },
}

pub type Result<T> = std::result::Result<T, StorageError>;

/// The node's database.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    history: History,
    last_events: LastEvents,
    raft: RaftStore,
    webhooks: WebhookQueues,
    flusher: Arc<Flusher>,
}

impl Store {
    /// Opens (or creates) the database under `dir`. A database this process has just dropped
    /// keeps its file lock until sled's background writes for it finish, a moment later: opening
    /// waits up to 2 s for that lock before giving up.
    pub fn open(dir: &Path) -> Result<Store> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let db = loop {
            let opened = sled::Config::new()
                .path(dir.join("chorus.sled"))
                .mode(sled::Mode::HighThroughput)
                .open();
            match opened {
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other?,
            }
        };
        Store::on(db)
    }

    /// A database that lives in memory and disappears when dropped (for tests).
    pub fn temporary() -> Result<Store> {
        Store::on(sled::Config::new().temporary(true).open()?)
    }

    /// The trees and the flush thread of an open database.
    fn on(db: sled::Db) -> Result<Store> {
        Ok(Store {
            history: History::open(&db)?,
            last_events: LastEvents::open(&db)?,
            raft: RaftStore::open(&db)?,
            webhooks: WebhookQueues::open(&db)?,
            flusher: Arc::new(Flusher::start(db.clone())?),
            db,
        })
    }

    pub fn history(&self) -> &History {
        &self.history
    }

    /// The last event of each cache channel.
    pub fn last_events(&self) -> &LastEvents {
        &self.last_events
    }

    /// The Raft log, vote and snapshot of this node's cluster membership.
    pub fn raft(&self) -> &RaftStore {
        &self.raft
    }

    /// The webhooks waiting for their receivers.
    pub fn webhooks(&self) -> &WebhookQueues {
        &self.webhooks
    }

    /// Makes everything written so far durable. Concurrent callers share flushes (one thread
    /// does them all; see `flusher.rs`).
    pub async fn flush(&self) -> Result<()> {
        self.flusher.flush().await
    }

    /// Blocking form of [`Store::flush`].
    pub fn flush_blocking(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }
}
