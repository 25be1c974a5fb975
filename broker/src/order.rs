//! The node's order lock: the one lock that puts what the cluster commits and the subscribers
//! that join in a single order, and the operations that must run under it.
//!
//! - **Store and hand over** (the cluster's state machine, `chorus_cluster::feed`): the state
//!   machine applies committed entries (the replicated state), stores their history in the
//!   node's history and hands what changed to this node's commit consumer (`crate::commits`),
//!   holding the lock until the consumer has taken the batch: history events go to the
//!   subscribers, presence changes to the presence actors, with the lock held. What Raft
//!   re-applies as the node starts is delivered before the node serves anyone, without the
//!   lock: no one can read yet (`chorus_cluster::CommitFeed::take_replayed`).
//! - **Read what was missed and join** ([`Order::join`], [`Order::catch_up`]): a subscriber of
//!   a history channel reads the events it missed and joins the channel with the lock held, so
//!   no event is stored in between: it gets each event once, replayed or live, never both and
//!   never neither.
//! - **Read the committed members and join** ([`Order::join`] on a presence channel): the same
//!   for a presence channel's members, so a member is listed or announced, never both, never
//!   neither.
//! - **Wait for history this node has not stored yet** ([`Order::join`] answers
//!   [`Joined::Ahead`]): a client resuming from an offset this node has not stored yet (it is a
//!   few entries behind its cluster) is registered with the lock held, and woken as the node
//!   stores that far ([`Order::stored`], called by the commit consumer).
//!
//! The lock order, for the whole node (a lock is never taken while a later one is held):
//!
//! 1. this order lock (`chorus_cluster::OrderLock`; the cluster's feed makes it);
//! 2. the cluster's replicated state (`chorus_cluster::StateReader`): written by the state
//!    machine as it applies entries, read here for a presence channel's committed members, and
//!    released before anything below is taken;
//! 3. an app's registry table (`crate::registry`), which sends to the channels' actors, so they
//!    see subscribers and frames in the order of this lock; and the waiting resumes' lock;
//! 4. inside the cluster, the queues of declared interest and presence (the registry declares a
//!    channel's first subscriber and its last while it holds its table).
//!
//! Why this order: committing is the source of the order, so applying takes the order lock
//! first and the state second; a joiner takes the order lock first too, so it never waits for
//! the order lock while holding anything a delivery needs. The commit consumer runs on a thread
//! of its own while the state machine holds the order lock on its behalf: it takes only locks of
//! 3 and 4 and never the order lock itself, never blocks, and runs on no thread a joiner may
//! block, so the state machine always gets its batch back.

use std::collections::HashMap;
use std::sync::Arc;

use chorus_cluster::{OrderLock, Role};
use chorus_storage::StorageError;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::actors::messages::{Subscribe, Subscriber};
use crate::apps::App;
use crate::history::{Missed, Recovery};
use crate::protocol::channel::ChannelKind;
use crate::protocol::confirmation::Confirmation;
use crate::protocol::frame::Frame;
use crate::protocol::presence::Member;
use crate::protocol::since::Since;

/// The node's order lock; one for the node, shared by its apps. Cheap to clone.
#[derive(Clone)]
pub struct Order(Arc<Inner>);

struct Inner {
    lock: OrderLock,
    /// Subscribers waiting for this node to store a history channel further: by app, then
    /// channel.
    resumes: Mutex<HashMap<String, HashMap<String, Vec<Resume>>>>,
}

/// A subscriber waiting for the node to store `offset` of `epoch`.
struct Resume {
    epoch: String,
    offset: u64,
    wake: oneshot::Sender<()>,
}

/// A subscriber about to join a channel it may join.
pub struct Joining {
    pub channel: String,
    pub subscriber: Subscriber,
    pub member: Option<Member>,
    pub since: Option<Since>,
    /// The most bytes of missed events it is sent at once (half its outbound bound).
    pub budget: usize,
}

/// How a join went.
pub enum Joined {
    /// It is the channel's subscriber: the channel confirms it and sends what it missed.
    Live,
    /// It missed more than one part: confirm it with `confirmation`, send it `first`, then the
    /// events after `after` of `epoch` part by part ([`Order::catch_up`]); it joins live with
    /// the last part.
    CatchingUp {
        confirmation: Confirmation,
        first: Vec<Frame>,
        epoch: String,
        after: u64,
    },
    /// It resumes from an offset this node has not stored yet; the receiver completes once the
    /// node has stored that far (or the channel's history began again). Join again then, or
    /// once tired of waiting, without waiting.
    Ahead {
        stored: oneshot::Receiver<()>,
        /// For a leader that had not applied all it committed: the last index it had committed.
        /// Once it has applied that far it has stored all a client can have seen.
        committed: Option<u64>,
    },
}

/// The next part of a catch-up.
pub enum CatchUp {
    /// Send these; the part ends at offset `last`.
    Part { frames: Vec<Frame>, last: u64 },
    /// The last part went with the join: the subscriber is live.
    Joined,
}

impl Order {
    /// The order over `lock`, the one the cluster's state machine holds as it hands over what
    /// it commits (`chorus_cluster::CommitFeed::order_lock`).
    pub fn new(lock: OrderLock) -> Order {
        Order(Arc::new(Inner {
            lock,
            resumes: Mutex::default(),
        }))
    }

    /// Joins `joining` to its channel of `app`. On a history channel it reads what the
    /// subscriber missed, on a presence channel the committed members, and joins, under the
    /// lock. When it resumes from an offset this node has not stored yet and `may_wait`, it
    /// joins nothing and answers [`Joined::Ahead`].
    pub fn join(
        &self,
        app: &App,
        joining: Joining,
        may_wait: bool,
    ) -> Result<Joined, StorageError> {
        let Joining {
            channel,
            subscriber,
            member,
            since,
            budget,
        } = joining;
        let presence = ChannelKind::of(&channel).is_presence();
        let keeps_history = app.history.keeps(&channel);
        let mut msg = Subscribe {
            subscriber,
            confirmation: Some(Confirmation::default()),
            replay: Vec::new(),
            cached: None,
            member,
            members: None,
        };
        if !keeps_history && !presence {
            app.channels.subscribe(&channel, msg);
            return Ok(Joined::Live);
        }
        let in_order = self.0.lock.lock();
        let behind = match may_wait && keeps_history && since.is_some() {
            true => behind(app),
            false => Behind::No,
        };
        if keeps_history {
            let mut recovery = app
                .history
                .recovery(&app.id, &channel, since.as_ref(), budget)?;
            if matches!(behind, Behind::No) {
                recovery = recovery.without_waiting();
            }
            let (position, replay, more_after) = match recovery {
                Recovery::Ahead { epoch, offset, .. } => {
                    let stored = self.await_stored(&app.id, &channel, epoch, offset);
                    let committed = match behind {
                        Behind::Through(index) => Some(index),
                        _ => None,
                    };
                    return Ok(Joined::Ahead { stored, committed });
                }
                Recovery::Ready {
                    position,
                    replay,
                    more_after,
                } => (position, replay, more_after),
            };
            match more_after {
                // A presence channel's confirmation comes from its actor: no replay in parts.
                Some(_) if presence => {
                    msg.confirmation = Some(Confirmation::of_history(position.unrecovered()));
                }
                Some(after) => {
                    drop(in_order);
                    return Ok(Joined::CatchingUp {
                        epoch: position.epoch.clone().unwrap_or_default(),
                        confirmation: Confirmation::of_history(position),
                        first: replay,
                        after,
                    });
                }
                None => {
                    msg.confirmation = Some(Confirmation::of_history(position));
                    msg.replay = replay;
                }
            }
        }
        if presence {
            msg.members = Some(committed_members(app, &channel));
        }
        app.channels.subscribe(&channel, msg);
        Ok(Joined::Live)
    }

    /// The next part of a subscriber's catch-up on `channel` of `app`: the events of `epoch`
    /// after `after`. Far from the end a part is read without the lock (publishing goes on
    /// meanwhile); the last one is read under it and the subscriber joins live with it, so
    /// nothing lands between the read and the join. If the channel's history was lost
    /// meanwhile, it joins confirmed again, unrecovered.
    pub fn catch_up(
        &self,
        app: &App,
        channel: &str,
        subscriber: &Subscriber,
        (epoch, after): (&str, u64),
        budget: usize,
    ) -> Result<CatchUp, StorageError> {
        let history = &app.history;
        let part = |missed: Missed| CatchUp::Part {
            frames: missed.frames,
            last: missed.last,
        };
        if let Some(missed) = history.catch_up(&app.id, channel, epoch, after, budget)? {
            if missed.more {
                return Ok(part(missed));
            }
        }
        let _in_order = self.0.lock.lock();
        let (confirmation, replay) =
            match history.catch_up(&app.id, channel, epoch, after, budget)? {
                Some(missed) if missed.more => return Ok(part(missed)),
                Some(missed) => (None, missed.frames),
                None => {
                    let position = history.position(&app.id, channel)?.unrecovered();
                    (Some(Confirmation::of_history(position)), Vec::new())
                }
            };
        let msg = Subscribe {
            subscriber: subscriber.clone(),
            confirmation,
            replay,
            cached: None,
            member: None,
            members: None,
        };
        app.channels.subscribe(channel, msg);
        Ok(CatchUp::Joined)
    }

    /// Registers a subscriber waiting for `offset` of `epoch` of `channel`; the caller holds the
    /// lock, so no store happens between its read and this.
    fn await_stored(
        &self,
        app: &str,
        channel: &str,
        epoch: String,
        offset: u64,
    ) -> oneshot::Receiver<()> {
        let (wake, woken) = oneshot::channel();
        let mut resumes = self.0.resumes.lock();
        let waiting = resumes
            .entry(app.to_owned())
            .or_default()
            .entry(channel.to_owned())
            .or_default();
        // Those that stopped waiting (timed out, or their connection closed) go now.
        waiting.retain(|r| !r.wake.is_closed());
        waiting.push(Resume {
            epoch,
            offset,
            wake,
        });
        woken
    }

    /// This node stored `channel` of `app` through offset `last` of `epoch`: wakes the
    /// subscribers waiting for it, and those waiting in another epoch (their history is gone:
    /// they are to be told so). Called by the commit consumer, while the state machine holds
    /// the lock.
    pub fn stored(&self, app: &str, channel: &str, epoch: &str, last: u64) {
        let mut resumes = self.0.resumes.lock();
        let Some(by_channel) = resumes.get_mut(app) else {
            return;
        };
        let Some(waiting) = by_channel.get_mut(channel) else {
            return;
        };
        let (due, still): (Vec<Resume>, Vec<Resume>) = std::mem::take(waiting)
            .into_iter()
            .partition(|r| r.epoch != epoch || r.offset <= last);
        for resume in due {
            let _ = resume.wake.send(());
        }
        *waiting = still;
        if waiting.is_empty() {
            by_channel.remove(channel);
            if by_channel.is_empty() {
                resumes.remove(app);
            }
        }
    }
}

/// How far behind its cluster this node may be, for a client resuming from an offset it has not
/// stored yet.
enum Behind {
    /// A leader that applied all it committed: it has stored every offset a client can have
    /// seen (a node alone is its whole cluster).
    No,
    /// A follower (it hears of commits after the leader, or is cut off): no telling how far.
    Unknown,
    /// A leader that committed through this index and has not applied it all yet.
    Through(u64),
}

/// How far behind this node may be. What it applied is read from the state machine: the caller
/// holds the lock, so it is applying nothing.
fn behind(app: &App) -> Behind {
    let status = app.cluster.status();
    let applied = app
        .cluster
        .state()
        .last_applied()
        .map(|log_id| log_id.index);
    match (status.state, status.commit_index) {
        (Role::Leader, Some(committed)) if Some(committed) > applied => Behind::Through(committed),
        (Role::Leader, _) => Behind::No,
        _ => Behind::Unknown,
    }
}

/// A presence channel's members as this node last applied them (the caller holds the lock, so
/// none is applied meanwhile), with their info.
fn committed_members(app: &App, channel: &str) -> Vec<(String, Value)> {
    app.cluster.state().read(|state| {
        state
            .presence_members(&app.id, channel)
            .into_iter()
            .flatten()
            .map(|(user_id, member)| {
                let info = serde_json::from_str(&member.user_info)
                    .unwrap_or_else(|_| Value::String(member.user_info.clone()));
                (user_id.clone(), info)
            })
            .collect()
    })
}
