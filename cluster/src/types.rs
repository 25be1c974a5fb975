//! The cluster's Raft type configuration and what goes through the log: the requests the state
//! machine applies and the responses it gives back.

use std::io::Cursor;

use chorus_storage::StoredEvent;
use serde::{Deserialize, Serialize};

/// A node's id in the cluster.
pub type NodeId = u64;

/// A node as Raft's membership knows it: its cluster-port address.
pub type Node = openraft::BasicNode;

openraft::declare_raft_types!(
    /// Chorus's Raft types: [`Request`] in, [`Response`] out, `u64` node ids, nodes known by
    /// their cluster address, snapshots as bytes in memory.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = Node,
        SnapshotData = Cursor<Vec<u8>>,
);

/// A log entry of this cluster.
pub type Entry = openraft::Entry<TypeConfig>;

/// A log id of this cluster.
pub type LogId = openraft::LogId<NodeId>;

/// The error every storage method returns.
pub type RaftStorageError = openraft::StorageError<NodeId>;

/// A change to the replicated state. Plain data: it is written to the log as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// A node joined the cluster and serves forwarding on `addr` (its cluster port).
    AddMember { id: NodeId, addr: String },
    /// A node left or was declared dead: it is dropped from the members, and its interest and
    /// presence members with it.
    RemoveMember { id: NodeId },
    /// `node` has (`present`) or no longer has local subscribers of `channel`.
    SetInterest {
        node: NodeId,
        app: String,
        channel: String,
        present: bool,
    },
    /// Several interest changes of one node at once, in order. With `reset`, the node's interest
    /// is first cleared: a node that starts declares all it has, so nothing stale of an earlier
    /// run stays.
    UpdateInterest {
        node: NodeId,
        reset: bool,
        changes: Vec<InterestChange>,
    },
    /// A connection of `user_id` on `node` joined a presence channel. `user_info` is the
    /// application's JSON text, kept as the user's first connection gave it.
    PresenceJoin {
        app: String,
        channel: String,
        user_id: String,
        user_info: String,
        node: NodeId,
    },
    /// A connection of `user_id` on `node` left a presence channel.
    PresenceLeave {
        app: String,
        channel: String,
        user_id: String,
        node: NodeId,
    },
    /// Events published to a history channel, in order. `fresh_epoch` is the epoch the channel
    /// takes if it has no history yet (the proposer draws it at random, so applying stays
    /// deterministic). Every node stores them at the offsets applying gives them, then delivers
    /// them to its subscribers.
    HistoryAppend {
        app: String,
        channel: String,
        fresh_epoch: String,
        events: Vec<StoredEvent>,
        /// The socket id of a connection that is not to receive the events live.
        #[serde(default)]
        except: Option<String>,
    },
}

/// A channel of an app that a node now has (`present`) or no longer has local subscribers of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterestChange {
    pub app: String,
    pub channel: String,
    pub present: bool,
}

/// What applying a log entry did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Nothing to report: a blank or membership entry, a member added, interest set.
    Applied,
    /// A member was removed; these users had their last connection on it and left their
    /// presence channels (each node tells its subscribers `member_removed`).
    MemberRemoved { users_left: Vec<PresenceUserRef> },
    /// A presence join or leave. `user_changed` is true when the user's first connection joined
    /// or its last one left, cluster-wide: when subscribers are to be told.
    Presence { user_changed: bool },
    /// History events were placed: the channel's epoch and the offset of the first event (the
    /// others follow densely).
    HistoryAppended { epoch: String, first_offset: u64 },
}

/// A user of a presence channel.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PresenceUserRef {
    pub app: String,
    pub channel: String,
    pub user_id: String,
}
