//! The cluster's Raft type configuration and what goes through the log: the requests the state
//! machine applies and the responses it gives back.

use std::io::Cursor;

use chorus_storage::StoredEvent;
use serde::{Deserialize, Serialize};

use crate::desired::DesiredMembers;
use crate::history_batch::{HistoryRun, Placement};
use crate::webhook_marks::{WebhookMark, WebhookTarget};

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

/// The Raft instance of this cluster.
pub type Raft = openraft::Raft<TypeConfig>;

/// The error every storage method returns.
pub type RaftStorageError = openraft::StorageError<NodeId>;

/// A change to the replicated state. Plain data: it is written to the log as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// A node joined the cluster and serves forwarding on `addr` (its cluster port).
    AddMember { id: NodeId, addr: String },
    /// A node was declared dead or removed from the cluster (`why`): it is dropped from the
    /// members, and its interest and presence members with it.
    RemoveMember {
        id: NodeId,
        /// Entries written before the cause was recorded read as a declared death.
        #[serde(default)]
        why: Departure,
    },
    /// Several interest changes of one node at once, in order. With `reset`, the node's interest
    /// is first cleared: a node that starts declares all it has, so nothing stale of an earlier
    /// run stays.
    UpdateInterest {
        node: NodeId,
        reset: bool,
        changes: Vec<InterestChange>,
    },
    /// Which users `node` has connections of in presence channels, as changed since its last
    /// update. With `reset`, the node's presence is first cleared: a node that starts, or comes
    /// back after it was declared dead, declares all it has, so nothing stale of it stays.
    UpdatePresence {
        node: NodeId,
        reset: bool,
        changes: Vec<PresenceChange>,
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
    /// All the history events of one publish request, as one entry: placed together, all or
    /// none, run by run in order (see [`crate::history_batch`]). `time_ms` is the proposer's
    /// clock when it proposed, the only time the idempotency window of `key_window_ms` is
    /// measured in. Every node stores the events at the offsets applying gives them, then
    /// delivers them to its subscribers; an event whose key was placed on its channel within
    /// the window is neither (it is answered with its first offset).
    HistoryBatch {
        app: String,
        time_ms: u64,
        #[serde(default)]
        key_window_ms: u64,
        runs: Vec<HistoryRun>,
    },
    /// The members the cluster should have, from a members file: adopted when its revision is
    /// newer than the one the state has, else ignored. The leader reconciles the Raft voters
    /// to it. (On the wire: `{"SetDesiredMembers": {"revision": 7, "members": {...}}}`.)
    SetDesiredMembers(DesiredMembers),
    /// An operator took node `id` out of the cluster (`chorus cluster remove`, `retired`), so
    /// that a static peer list that still names it does not bring it back; or it asked to join
    /// afresh (not `retired`).
    SetRetired { id: NodeId, retired: bool },
    /// The leader's webhook `target` has everything committed up to `through` (sent, or dropped
    /// for good): every node drops what it queued for it up to there (see
    /// [`crate::webhook_marks`]).
    WebhooksSent {
        target: WebhookTarget,
        through: WebhookMark,
    },
}

/// The longest app id or channel name a request may carry (the broker's own limits are far
/// lower); the store keys names by a 16-bit length.
pub const LONGEST_NAME: usize = 1024;

impl Request {
    /// Whether every app id and channel name in it fits [`LONGEST_NAME`]: the leader writes no
    /// other request into the log, where applying it on every node could not store it.
    pub fn is_plausible(&self) -> bool {
        let fits =
            |app: &str, channel: &str| app.len() <= LONGEST_NAME && channel.len() <= LONGEST_NAME;
        match self {
            Request::AddMember { addr, .. } => addr.len() <= LONGEST_NAME,
            Request::RemoveMember { .. } | Request::SetRetired { .. } => true,
            Request::SetDesiredMembers(desired) => desired.is_plausible(),
            Request::HistoryAppend { app, channel, .. } => fits(app, channel),
            Request::HistoryBatch { app, runs, .. } => runs.iter().all(|run| {
                fits(app, &run.channel)
                    && run.keys.iter().flatten().all(|k| k.len() <= LONGEST_NAME)
            }),
            Request::UpdateInterest { changes, .. } => {
                changes.iter().all(|c| fits(&c.app, &c.channel))
            }
            Request::UpdatePresence { changes, .. } => {
                changes.iter().all(|c| fits(&c.app, &c.channel))
            }
            Request::WebhooksSent { target, .. } => fits(&target.app, &target.url),
        }
    }
}

/// Why a node left the members.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Departure {
    /// The leader heard nothing from it for `dead_after` ([`crate::liveness`]); it is taken back
    /// once it answers again.
    #[default]
    DeclaredDead,
    /// It was taken out of the Raft membership: by an operator, or because the members file no
    /// longer lists it ([`crate::removal`]).
    Removed,
}

/// A channel of an app that a node now has (`present`) or no longer has local subscribers of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterestChange {
    pub app: String,
    pub channel: String,
    pub present: bool,
}

/// A user of a presence channel that a node now has connections of (`user_info` is the
/// application's JSON text its first connection gave) or, with `None`, no longer has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceChange {
    pub app: String,
    pub channel: String,
    pub user_id: String,
    pub user_info: Option<String>,
}

/// A user joined (`joined` is its info) or left (`None`) a presence channel, cluster-wide: its
/// first connection on any node arrived, or its last one anywhere went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceEvent {
    pub app: String,
    pub channel: String,
    pub user_id: String,
    pub joined: Option<String>,
}

/// What applying a log entry did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Nothing to report: a blank or membership entry, a member added, interest set.
    Applied,
    /// A member was removed; these users had their last connection on it and left their
    /// presence channels (each node tells its subscribers `member_removed`).
    MemberRemoved { users_left: Vec<PresenceUserRef> },
    /// Presence changed; these users joined or left, cluster-wide (each node tells its
    /// subscribers).
    Presence { events: Vec<PresenceEvent> },
    /// History events were placed: the channel's epoch and the offset of the first event (the
    /// others follow densely).
    HistoryAppended { epoch: String, first_offset: u64 },
    /// The events of a history batch were placed: where each is, run by run, event by event.
    HistoryBatchPlaced { runs: Vec<Vec<Placement>> },
}

/// A user of a presence channel.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PresenceUserRef {
    pub app: String,
    pub channel: String,
    pub user_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_with_names_too_long_to_store_are_not_plausible() {
        let history = |channel: String| Request::HistoryAppend {
            app: "1".into(),
            channel,
            fresh_epoch: "e".into(),
            events: Vec::new(),
            except: None,
        };
        assert!(history("chat".into()).is_plausible());
        assert!(history("c".repeat(LONGEST_NAME)).is_plausible());
        assert!(!history("c".repeat(70_000)).is_plausible());
        let presence = Request::UpdatePresence {
            node: 1,
            reset: false,
            changes: vec![PresenceChange {
                app: "a".repeat(LONGEST_NAME + 1),
                channel: "presence-x".into(),
                user_id: "u".into(),
                user_info: None,
            }],
        };
        assert!(!presence.is_plausible());
        let removal = Request::RemoveMember {
            id: 3,
            why: Departure::Removed,
        };
        assert!(removal.is_plausible());
    }

    #[test]
    fn a_removal_logged_before_its_cause_was_recorded_reads_as_a_declared_death() {
        let logged: Request = serde_json::from_str(r#"{"RemoveMember":{"id":3}}"#).unwrap();
        assert_eq!(
            logged,
            Request::RemoveMember {
                id: 3,
                why: Departure::DeclaredDead
            }
        );
    }
}
