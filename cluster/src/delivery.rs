//! What the node does with committed entries its clients must see: the state machine stores a
//! committed history batch in the node's sled history, then hands it to the node, which delivers
//! it to its local subscribers.
//!
//! Both happen under [`Delivery::order`], a lock the node also holds while it reads what a
//! subscriber missed and adds the subscriber to the channel: an event is never both replayed
//! and delivered live to one subscriber, and never neither.

use std::sync::Arc;

use chorus_storage::StoredEvent;
use parking_lot::Mutex;

/// History events committed in one log entry, as every node applies them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryCommit {
    pub app: String,
    pub channel: String,
    pub epoch: String,
    /// The offset of the first event; the others follow densely.
    pub first_offset: u64,
    pub events: Vec<StoredEvent>,
    /// The socket id of the connection the publisher asked to leave out, if any.
    pub except: Option<String>,
}

/// A committed change the node's clients are to be told of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    /// History events, already stored in this node's history when the node is told.
    History(HistoryCommit),
}

/// How the state machine tells the node: called in log order, on Raft's runtime, with
/// [`Delivery::order`] held. It must not block (hand the frames to the subscribers' outboxes and
/// return).
pub type Deliver = Arc<dyn Fn(&Committed) + Send + Sync>;

/// The node's side of applying: its ordering lock and what it does with each commit.
#[derive(Clone)]
pub struct Delivery {
    pub order: Arc<Mutex<()>>,
    pub deliver: Deliver,
}

impl Delivery {
    /// For a node with no clients (tests of the cluster alone): history is stored, nothing is
    /// delivered.
    pub fn store_only() -> Delivery {
        Delivery {
            order: Arc::new(Mutex::new(())),
            deliver: Arc::new(|_| {}),
        }
    }
}
