//! What this node declares of itself in the replicated state, on its way there: the channels it
//! has local subscribers of (proposed as `UpdateInterest`) and the users it has connections of
//! in presence channels (`UpdatePresence`). The broker declares a change when a local count
//! crosses zero ([`crate::Cluster::declare_interest`], [`crate::Cluster::declare_presence`],
//! never a wait on Raft); [`submit_interest`] and [`submit_presence`] propose what changed, in
//! order, the first proposal of a run (or of a re-admission, see [`crate::readmission`])
//! resetting the node's part to exactly what it has ([`crate::declared`]).
//!
//! The first presence reset this node proposes in a run marks where it has caught up with its
//! cluster: once it has applied that entry, its view of presence is of this run and current.

use tokio::sync::watch;

use crate::declared::Declared;
use crate::propose::Proposer;
use crate::state::ChannelKey;
use crate::types::{InterestChange, NodeId, PresenceChange, Request};

pub(crate) struct Declarations {
    /// The channels this node has local subscribers of.
    interest: Declared<ChannelKey, ()>,
    /// The users this node has connections of, per presence channel, with their info.
    presence: Declared<(ChannelKey, String), String>,
    /// The log index of this run's first presence reset, once committed (0 until then).
    caught_up_at: watch::Sender<u64>,
}

impl Default for Declarations {
    fn default() -> Declarations {
        Declarations {
            interest: Declared::default(),
            presence: Declared::default(),
            caught_up_at: watch::Sender::new(0),
        }
    }
}

impl Declarations {
    /// The node now has (`present`) or no longer has local subscribers of `key`.
    pub(crate) fn declare_interest(&self, key: ChannelKey, present: bool) {
        self.interest.declare(key, present.then_some(()));
    }

    /// The node now has connections of `user_id` in `key` (with its info) or, with `None`, no
    /// longer has any.
    pub(crate) fn declare_presence(&self, key: ChannelKey, user_id: String, info: Option<String>) {
        self.presence.declare((key, user_id), info);
    }

    /// The node was taken back into the members: it declares all it has again, as resets.
    pub(crate) fn declare_all_again(&self) {
        self.interest.declare_all_again();
        self.presence.declare_all_again();
    }

    /// The log index of this run's first presence reset, once committed (0 until then).
    pub(crate) fn caught_up_at(&self) -> u64 {
        *self.caught_up_at.borrow()
    }

    /// Changes when that index is known.
    pub(crate) fn watch_caught_up_at(&self) -> watch::Receiver<u64> {
        self.caught_up_at.subscribe()
    }
}

/// Proposes node `me`'s interest changes as `UpdateInterest`, one proposal at a time, until the
/// runtime stops.
pub(crate) async fn submit_interest(me: NodeId, declarations: &Declarations, proposer: Proposer) {
    crate::declared::submit(
        &declarations.interest,
        "channel interest",
        |(reset, changes)| {
            let request = Request::UpdateInterest {
                node: me,
                reset,
                changes: changes
                    .into_iter()
                    .map(|(key, present)| InterestChange {
                        app: key.app,
                        channel: key.channel,
                        present: present.is_some(),
                    })
                    .collect(),
            };
            let proposer = proposer.clone();
            async move { proposer.propose(request).await }
        },
    )
    .await;
}

/// Proposes node `me`'s presence changes as `UpdatePresence`, one proposal at a time, until the
/// runtime stops; records where the first reset was committed.
pub(crate) async fn submit_presence(me: NodeId, declarations: &Declarations, proposer: Proposer) {
    crate::declared::submit(&declarations.presence, "presence", |(reset, changes)| {
        let request = Request::UpdatePresence {
            node: me,
            reset,
            changes: changes
                .into_iter()
                .map(|((key, user_id), user_info)| PresenceChange {
                    app: key.app,
                    channel: key.channel,
                    user_id,
                    user_info,
                })
                .collect(),
        };
        let proposer = proposer.clone();
        async move {
            let (response, log_index) = proposer.propose_logged(request).await?;
            if reset {
                declarations.caught_up_at.send_if_modified(|at| {
                    let first = *at == 0;
                    if first {
                        *at = log_index;
                    }
                    first
                });
            }
            Ok(response)
        }
    })
    .await;
}
