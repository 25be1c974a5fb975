//! The feed of committed changes: how the state machine hands what it applied
//! ([`crate::changes`]) to the rest of the node, in log order, one [`Batch`] per call to apply.
//!
//! A batch is handed over under the node's [`OrderLock`], and the state machine goes on only once
//! the node has dropped it: applying an entry, storing its history and the node taking its
//! changes are one step for anyone who holds the lock. So a reader that takes the lock (a
//! subscriber reading the history it missed, or a presence channel's members, before it joins)
//! sees a state whose every change the node has taken already, or taken none of: it gets each
//! event once, replayed or live. The node's consumer must therefore never take the order lock
//! itself (it runs while the state machine holds it on its behalf), nor block: it hands the
//! changes on and drops the batch.
//!
//! Raft re-applies the entries committed since the last snapshot as it starts
//! (`openraft::Raft::new`), before [`crate::Cluster::start`] returns and so before the node can
//! read its feed: their changes are not waited for but kept, and the node takes them first
//! ([`CommitFeed::take_replayed`]), before it serves anyone. No one can have read what the state
//! machine wrote by then, so they need no lock.
//!
//! A node with no consumer drops its [`CommitFeed`]: the state machine then stores history and
//! hands nothing over. A feed kept but never read stops the state machine, and Raft with it.

use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use tokio::sync::{mpsc, oneshot};

use crate::changes::Committed;

/// The node's order lock: held by the state machine from changing the state to the node having
/// taken the changes, and by whoever reads what the state machine writes and must not miss or
/// repeat a change. Its guard may be held across an await. Cheap to clone.
#[derive(Clone, Default)]
pub struct OrderLock(Arc<Mutex<()>>);

impl OrderLock {
    pub fn lock(&self) -> MutexGuard<'_, ()> {
        self.0.lock()
    }

    /// The lock if no one holds it, without waiting.
    pub fn try_lock(&self) -> Option<MutexGuard<'_, ()>> {
        self.0.try_lock()
    }
}

/// The changes of one call to apply (or of one snapshot installed), in log order. The state
/// machine waits until it is dropped.
pub struct Batch {
    pub changes: Vec<Committed>,
    /// Whether these are the net changes of a snapshot installed (all at its last index)
    /// rather than entries applied one by one.
    pub from_snapshot: bool,
    /// Never sent: dropping it tells the state machine the batch was taken.
    _taken: oneshot::Sender<()>,
}

/// Where the state machine keeps what it applies while Raft starts (`None` the rest of the time).
type Replaying = Arc<Mutex<Option<Vec<Committed>>>>;

/// The node's end of the feed.
pub struct CommitFeed {
    batches: mpsc::Receiver<Batch>,
    order: OrderLock,
    replaying: Replaying,
    /// What Raft re-applied as it started, for the node to take first.
    replayed: Vec<Committed>,
}

impl CommitFeed {
    /// The lock batches are handed over under.
    pub fn order_lock(&self) -> OrderLock {
        self.order.clone()
    }

    /// From now until [`CommitFeed::end_replay`], the state machine keeps what it applies for
    /// [`CommitFeed::take_replayed`] instead of waiting for the node to take it.
    pub(crate) fn start_replay(&self) {
        *self.replaying.lock() = Some(Vec::new());
    }

    /// Raft has started: from now on the state machine hands over and waits.
    pub(crate) fn end_replay(&mut self) {
        let replayed = self.replaying.lock().take().unwrap_or_default();
        self.replayed.extend(replayed);
    }

    /// The changes of the entries Raft re-applied as it started, in log order; empty after the
    /// first call. Take them before reading batches, and before anyone can read the state.
    pub fn take_replayed(&mut self) -> Vec<Committed> {
        std::mem::take(&mut self.replayed)
    }

    /// The next batch, waiting for it on a thread that is not running async code; `None` once
    /// the state machine is gone.
    pub fn blocking_next(&mut self) -> Option<Batch> {
        self.batches.blocking_recv()
    }

    /// The next batch; `None` once the state machine is gone.
    pub async fn next(&mut self) -> Option<Batch> {
        self.batches.recv().await
    }
}

/// The state machine's end of the feed.
#[derive(Clone)]
pub(crate) struct FeedSender {
    batches: mpsc::Sender<Batch>,
    order: OrderLock,
    replaying: Replaying,
}

impl FeedSender {
    pub(crate) fn order_lock(&self) -> &OrderLock {
        &self.order
    }

    /// Hands `changes` to the node and waits until it has taken them; at once when there are
    /// none or no one reads the feed, or keeps them while Raft starts. Call it with the order
    /// lock held.
    pub(crate) async fn hand_over(&self, changes: Vec<Committed>) {
        self.send(changes, false).await
    }

    /// As [`FeedSender::hand_over`], for the net changes of a snapshot installed.
    pub(crate) async fn hand_over_installed(&self, changes: Vec<Committed>) {
        self.send(changes, true).await
    }

    async fn send(&self, changes: Vec<Committed>, from_snapshot: bool) {
        if changes.is_empty() || self.batches.is_closed() {
            return;
        }
        if let Some(replayed) = self.replaying.lock().as_mut() {
            replayed.extend(changes);
            return;
        }
        let (taken, dropped) = oneshot::channel();
        let batch = Batch {
            changes,
            from_snapshot,
            _taken: taken,
        };
        if self.batches.send(batch).await.is_ok() {
            // Err once the batch is dropped, which is how it is taken.
            let _ = dropped.await;
        }
    }
}

/// A new feed: the state machine's end and the node's.
pub(crate) fn feed() -> (FeedSender, CommitFeed) {
    let (sender, batches) = mpsc::channel(1);
    let order = OrderLock::default();
    let replaying = Replaying::default();
    let feed = CommitFeed {
        batches,
        order: order.clone(),
        replaying: replaying.clone(),
        replayed: Vec::new(),
    };
    let sender = FeedSender {
        batches: sender,
        order,
        replaying,
    };
    (sender, feed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changes::Change;
    use crate::state::ChannelKey;

    fn occupied(index: u64) -> Committed {
        Committed {
            index,
            change: Change::ChannelOccupied(ChannelKey::new("1", "news")),
        }
    }

    #[tokio::test]
    async fn a_batch_is_handed_over_until_the_node_drops_it() {
        let (sender, mut feed) = feed();
        let handing = tokio::spawn({
            let sender = sender.clone();
            async move { sender.hand_over(vec![occupied(7)]).await }
        });
        let batch = feed.next().await.unwrap();
        assert_eq!(batch.changes, vec![occupied(7)]);
        tokio::task::yield_now().await;
        assert!(!handing.is_finished(), "the node still holds the batch");
        drop(batch);
        handing.await.unwrap();

        // Nothing to hand over: no batch at all.
        sender.hand_over(Vec::new()).await;
        drop(sender);
        assert!(feed.next().await.is_none());
    }

    #[tokio::test]
    async fn what_is_applied_while_raft_starts_is_kept_for_the_node_to_take_first() {
        let (sender, mut feed) = feed();
        feed.start_replay();
        sender.hand_over(vec![occupied(3)]).await;
        sender.hand_over(vec![occupied(4)]).await;
        feed.end_replay();
        let live = tokio::spawn({
            let sender = sender.clone();
            async move { sender.hand_over(vec![occupied(5)]).await }
        });
        assert_eq!(feed.take_replayed(), vec![occupied(3), occupied(4)]);
        assert!(feed.take_replayed().is_empty());
        let batch = feed.next().await.unwrap();
        assert_eq!(batch.changes, vec![occupied(5)]);
        drop(batch);
        live.await.unwrap();
    }

    #[tokio::test]
    async fn without_a_reader_nothing_waits() {
        let (sender, feed) = feed();
        drop(feed);
        sender.hand_over(vec![occupied(1)]).await;
    }
}
