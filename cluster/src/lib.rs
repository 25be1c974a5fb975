//! Chorus's cluster: the state every node agrees on, replicated with Raft (openraft).
//!
//! The replicated state ([`ReplicatedState`]) holds the members and their cluster addresses,
//! channel interest, presence sets and the position of every history channel; it changes only by
//! applying a [`Request`] committed in the Raft log. Raft's log, vote and snapshots live in the
//! node's sled database ([`chorus_storage::Store`]) beside the history: [`LogStore`] and
//! [`StateMachineStore`] are the two storage halves `openraft::Raft::new` takes.
//!
//! A node runs Raft through a [`Cluster`] handle: openraft on a runtime thread of its own, talking
//! to the other nodes over HTTP on their cluster ports (`network` is the client, [`http`] the
//! endpoints the node serves), forming the cluster and following the peer list by itself
//! ([`membership`]), declaring dead the members that stop answering ([`liveness`]) and taking
//! them back when they answer again (`readmission`).
//!
//! What the cluster commits reaches the node as a feed ([`feed`]) of typed changes
//! ([`changes`]): history stored, users joining and leaving presence channels, channels occupied
//! and vacated, nodes admitted and gone; cluster-wide, once per change, in log order, each with
//! its log index. The data plane: the node declares its channel interest and its presence users
//! (`declarations`, through the leader with [`propose`]), and [`forward`] sends a published
//! frame to every other node with interest in its channel, read from the [`InterestIndex`] kept
//! beside the state. [`query`] asks every other member the same question at once, for answers
//! that cover the whole cluster.

#![allow(
    clippy::result_large_err,
    reason = "openraft's storage traits return its large StorageError; our helpers pass it through"
)]

pub mod changes;
pub mod cluster;
mod contact;
mod declarations;
mod declared;
pub mod desired;
mod election_gate;
pub mod error;
pub mod feed;
mod flusher;
pub mod forward;
mod forward_stream;
pub mod forward_wire;
pub mod handover;
pub mod history_batch;
pub mod history_repair;
mod hold;
pub mod http;
pub mod interest_index;
pub mod join;
mod leader_writes;
pub mod liveness;
pub mod log_store;
pub mod membership;
mod metrics;
mod network;
mod outbound;
mod peer_request;
pub mod peers;
pub mod propose;
pub mod query;
mod raft_view;
mod readmission;
pub mod removal;
pub mod resolve;
mod roster;
pub mod secret;
pub mod snapshot;
pub mod state;
pub mod state_machine;
pub mod status;
pub mod types;
pub mod webhook_marks;

pub use changes::{Change, Committed, HistoryCommit};
pub use cluster::{Cluster, ClusterSettings, DEFAULT_SNAPSHOT_EVERY};
pub use desired::{read_members_file, DesiredMembers, MembersFileError};
pub use error::ClusterError;
pub use feed::{Batch, CommitFeed, OrderLock};
pub use forward::{ForwardBatch, ForwardedFrame, Forwarder, DELIVER_PATH};
pub use forward_stream::STREAM_PATH;
pub use handover::HandOver;
pub use interest_index::InterestIndex;
pub use liveness::{DEFAULT_DEAD_AFTER, MIN_DEAD_AFTER};
pub use log_store::{LogReader, LogStore};
pub use outbound::{operator_client, ClusterClient};
pub use peers::{ordinal_of_hostname, Peers, PeersError};
pub use query::Answers;
pub use removal::{RemoveOutcome, RemoveRequest};
pub use secret::{ClusterSecret, SECRET_HEADER};
pub use snapshot::{SnapshotBuilder, SnapshotMeta};
pub use state::{ChannelKey, HistoryPosition, PresenceMember, ReplicatedState};
pub use state_machine::{StateMachineStore, StateReader};
pub use status::{fetch_status, ClusterStatus, MemberStatus, Role};
pub use types::{
    Departure, Entry, InterestChange, LogId, Node, NodeId, PresenceChange, PresenceEvent,
    PresenceUserRef, Raft, RaftStorageError, Request, Response, TypeConfig,
};
pub use webhook_marks::{WebhookMark, WebhookMarks, WebhookTarget};
