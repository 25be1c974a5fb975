//! Chorus's cluster: the state every node agrees on, replicated with Raft (openraft).
//!
//! The replicated state ([`ReplicatedState`]) holds the members and their cluster addresses,
//! channel interest, presence sets and the position of every history channel; it changes only by
//! applying a [`Request`] committed in the Raft log. Raft's log, vote and snapshots live in the
//! node's sled database ([`chorus_storage::Store`]) beside the history: [`LogStore`] and
//! [`StateMachineStore`] are the two storage halves `openraft::Raft::new` takes.

#![allow(
    clippy::result_large_err,
    reason = "openraft's storage traits return its large StorageError; our helpers pass it through"
)]

mod flusher;
pub mod log_store;
pub mod snapshot;
pub mod state;
pub mod state_machine;
pub mod types;

pub use log_store::{LogReader, LogStore};
pub use snapshot::{SnapshotBuilder, SnapshotMeta};
pub use state::{ChannelKey, HistoryPosition, PresenceMember, ReplicatedState};
pub use state_machine::{StateMachineStore, StateReader};
pub use types::{
    Entry, LogId, Node, NodeId, PresenceUserRef, RaftStorageError, Request, Response, TypeConfig,
};
