//! Every write this node makes to the Raft log as its leader: proposals, members recorded and
//! declared dead, learners added, voters promoted and removed. Each holds the write gate shared;
//! a leadership hand-over ([`crate::handover`]) takes it alone, so the log stops growing while
//! the next leader catches up. Membership rounds and hand-overs also hold, for all of their
//! course, the lock of membership changes, so that one never runs inside the other.

use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::ClientWriteResponse;
use openraft::{BasicNode, ChangeMembers};
use tokio::sync::{Mutex, MutexGuard, RwLock, RwLockWriteGuard};

use crate::types::{Node, NodeId, Raft, Request, TypeConfig};

/// Why the leader could not write (it may no longer lead: see `forward_to_leader`).
pub(crate) type WriteError = RaftError<NodeId, ClientWriteError<NodeId, Node>>;

/// This node's writes to the log as the leader.
pub(crate) struct LeaderWrites {
    raft: Raft,
    gate: RwLock<()>,
    membership_changes: Mutex<()>,
}

impl LeaderWrites {
    pub(crate) fn new(raft: Raft) -> LeaderWrites {
        LeaderWrites {
            raft,
            gate: RwLock::new(()),
            membership_changes: Mutex::new(()),
        }
    }

    /// The Raft instance, for its metrics.
    pub(crate) fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Writes `request` to the log and waits until it is committed and applied here.
    pub(crate) async fn write(
        &self,
        request: Request,
    ) -> Result<ClientWriteResponse<TypeConfig>, WriteError> {
        let _writing = self.gate.read().await;
        self.raft.client_write(request).await
    }

    /// Adds node `id`, at cluster address `addr`, as a learner.
    pub(crate) async fn add_learner(&self, id: NodeId, addr: &str) -> Result<(), WriteError> {
        let _writing = self.gate.read().await;
        let added = self.raft.add_learner(id, BasicNode::new(addr), false);
        added.await.map(|_| ())
    }

    /// Changes the membership, without waiting for learners to catch up.
    pub(crate) async fn change_membership(
        &self,
        changes: ChangeMembers<NodeId, Node>,
        retain: bool,
    ) -> Result<(), WriteError> {
        let _writing = self.gate.read().await;
        let changed = self.raft.change_membership(changes, retain);
        changed.await.map(|_| ())
    }

    /// Stops every write from here on, once those under way have ended, until the guard is
    /// dropped.
    pub(crate) async fn pause(&self) -> RwLockWriteGuard<'_, ()> {
        self.gate.write().await
    }

    /// Runs no other membership round or hand-over until the guard is dropped.
    pub(crate) async fn membership_change(&self) -> MutexGuard<'_, ()> {
        self.membership_changes.lock().await
    }

    /// As [`LeaderWrites::membership_change`], or `None` when one is under way.
    pub(crate) fn try_membership_change(&self) -> Option<MutexGuard<'_, ()>> {
        self.membership_changes.try_lock().ok()
    }
}
