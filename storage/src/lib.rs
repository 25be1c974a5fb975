//! Everything a Chorus node keeps on disk, in one sled database in its data directory.
//!
//! Today that is per-channel history ([`history`]): every event of a history channel, keyed so
//! that a range scan is a replay, with an epoch that changes whenever the history is lost or
//! reset. The crate knows nothing of HTTP, actors or the protocol: it stores bytes and offsets.

pub mod history;

use std::path::Path;

pub use history::{ChannelHistory, History, Replay, Retention, StoredEvent};

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt record under {key}: {reason}")]
    Corrupt { key: String, reason: String },
}

pub type Result<T> = std::result::Result<T, StorageError>;

/// The node's database.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    history: History,
}

impl Store {
    /// Opens (or creates) the database under `dir`.
    pub fn open(dir: &Path) -> Result<Store> {
        let db = sled::Config::new()
            .path(dir.join("chorus.sled"))
            .mode(sled::Mode::HighThroughput)
            .open()?;
        let history = History::open(&db)?;
        Ok(Store { db, history })
    }

    /// A database that lives in memory and disappears when dropped (for tests).
    pub fn temporary() -> Result<Store> {
        let db = sled::Config::new().temporary(true).open()?;
        let history = History::open(&db)?;
        Ok(Store { db, history })
    }

    pub fn history(&self) -> &History {
        &self.history
    }

    /// Makes everything written so far durable.
    pub async fn flush(&self) -> Result<()> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Blocking form of [`Store::flush`].
    pub fn flush_blocking(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }
}
