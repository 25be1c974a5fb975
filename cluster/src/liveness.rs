//! Failure detection: the leader declares dead a member that stopped answering.
//!
//! Every Raft RPC this node sends and gets an answer to (the leader's heartbeats and appends,
//! every 100 ms per follower; votes; snapshot chunks) counts as having heard from its target
//! ([`Liveness::heard`], called by the network client). The leader checks, every
//! [`CHECK_EVERY`], each node of the replicated members: one not heard from for `dead_after` is
//! declared dead, and the leader commits `RemoveMember` for it, which drops it from the members
//! with its channel interest and presence connections (each node then tells its subscribers the
//! users that left). A newly elected leader has heard from no one yet: its clock starts at its
//! election, so every member gets a full `dead_after` from then, and a member that died under
//! the previous leader is declared by the new one. Likewise when this node itself stalled (it was
//! stopped, or starved of CPU, and sent no heartbeats): the count starts again.
//!
//! This is the broker's member set only: the node stays a Raft voter, so the quorum does not
//! change because a node is down. A declared node is in the members no more, so it is declared
//! once per death; it is taken back ([`crate::membership`] writes `AddMember` again) once it has
//! answered within [`ANSWERED_RECENTLY`], and it then declares its state again
//! ([`crate::readmission`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus::IntCounter;

use crate::leader_writes::LeaderWrites;
use crate::state_machine::StateReader;
use crate::types::{Departure, NodeId, Request, Response};

/// The shortest `dead_after` accepted: a follower calls an election after 0.6-1.2 s without a
/// heartbeat, and openraft retries an unreachable node after 250 ms, then 500 ms, 1 s: below
/// 2 s, one slow round would remove a node that is alive.
pub const MIN_DEAD_AFTER: Duration = Duration::from_secs(2);

/// The `dead_after` of a node not configured otherwise: 20 heartbeats missed, well above the
/// election timeout, so a short stall removes no one; a dead follower's presence members are
/// gone about 5 s after its death, a dead leader's 5 s after the next election (measured: 3-4 s
/// after the death).
pub const DEFAULT_DEAD_AFTER: Duration = Duration::from_secs(5);

/// How often the leader looks for silent members.
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// A check this late means this node was not running in between.
const STALLED: Duration = Duration::from_secs(1);

/// A removed node is taken back once it answered this recently (it is sent a heartbeat every
/// 100 ms while it answers).
pub(crate) const ANSWERED_RECENTLY: Duration = Duration::from_secs(1);

/// A voter counts as answering, for a decision that would be unsafe if it did not (removing
/// another voter, choosing the next leader), when it answered this recently: three heartbeats.
/// Counting too few is safe (the change waits); counting a dead node would block a membership
/// change until it comes back.
pub(crate) const ANSWERS_NOW: Duration = Duration::from_millis(300);

/// When this node last heard from each other node, and how long a silence means death.
pub(crate) struct Liveness {
    dead_after: Duration,
    last_heard: Mutex<HashMap<NodeId, Instant>>,
}

impl Liveness {
    pub(crate) fn new(dead_after: Duration) -> Liveness {
        Liveness {
            dead_after,
            last_heard: Mutex::default(),
        }
    }

    /// Node `id` just answered an RPC.
    pub(crate) fn heard(&self, id: NodeId) {
        self.last_heard.lock().insert(id, Instant::now());
    }

    /// True when node `id` answered within `within`.
    pub(crate) fn answered_within(&self, id: NodeId, within: Duration) -> bool {
        self.last_heard
            .lock()
            .get(&id)
            .is_some_and(|heard| heard.elapsed() < within)
    }

    /// The voters of `voters` that answer now (see [`ANSWERS_NOW`]); `me` among them.
    pub(crate) fn live_voters(&self, me: NodeId, voters: &BTreeSet<NodeId>) -> BTreeSet<NodeId> {
        voters
            .iter()
            .copied()
            .filter(|id| *id == me || self.answered_within(*id, ANSWERS_NOW))
            .collect()
    }

    /// True when node `id` has not answered for `dead_after`, counting from `since` at the
    /// earliest (when this node started to lead).
    fn is_dead(&self, id: NodeId, since: Instant) -> bool {
        let heard = self.last_heard.lock().get(&id).copied();
        let silent_since = heard.map_or(since, |heard| heard.max(since));
        silent_since.elapsed() >= self.dead_after
    }
}

/// What the leader's search for silent members uses.
pub(crate) struct DeathWatch {
    pub(crate) me: NodeId,
    pub(crate) writes: Arc<LeaderWrites>,
    pub(crate) state: StateReader,
    pub(crate) liveness: Arc<Liveness>,
    pub(crate) declared_dead: IntCounter,
}

/// While this node leads, declares dead every member that stopped answering; until the
/// runtime stops.
pub(crate) async fn declare_the_dead(watch: DeathWatch) {
    let me = watch.me;
    // The term this node leads in, and since when.
    let mut leading: Option<(u64, Instant)> = None;
    let mut last_check = Instant::now();
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        if last_check.elapsed() > STALLED {
            // This node itself did not run (stopped, starved): it sent no heartbeats, so the
            // others' silence says nothing. Count again from now.
            leading = None;
        }
        last_check = Instant::now();
        let (term, leader, applied_term) = {
            let metrics = watch.writes.raft().metrics();
            let metrics = metrics.borrow();
            (
                metrics.current_term,
                metrics.current_leader,
                metrics.last_applied.map(|log_id| log_id.leader_id.term),
            )
        };
        if leader != Some(me) {
            leading = None;
            continue;
        }
        let since = match leading {
            Some((led, since)) if led == term => since,
            _ => {
                let now = Instant::now();
                leading = Some((term, now));
                now
            }
        };
        if applied_term != Some(term) {
            // The members as applied here may still list a node the previous leader removed:
            // wait until this term's first entry is applied.
            continue;
        }
        let dead: Vec<NodeId> = watch.state.read(|state| {
            state
                .members()
                .keys()
                .copied()
                .filter(|id| *id != me && watch.liveness.is_dead(*id, since))
                .collect()
        });
        for id in dead {
            if !watch.declare_dead(id).await {
                break;
            }
        }
    }
}

impl DeathWatch {
    /// Commits the removal of member `id`; false when it could not be written.
    async fn declare_dead(&self, id: NodeId) -> bool {
        let silent = self.liveness.dead_after.as_secs();
        let removal = Request::RemoveMember {
            id,
            why: Departure::DeclaredDead,
        };
        match self.writes.write(removal).await {
            Ok(written) => {
                self.declared_dead.inc();
                let users_left = match written.data {
                    Response::MemberRemoved { users_left } => users_left.len(),
                    _ => 0,
                };
                tracing::warn!(
                    node = id,
                    silent_secs = silent,
                    users_left,
                    "node declared dead: removed from the members"
                );
                true
            }
            Err(e) => {
                if e.forward_to_leader().is_some() {
                    tracing::debug!(node = id, error = %e, "no longer the leader: not declared dead");
                } else {
                    tracing::warn!(node = id, error = %e, "cannot declare a node dead; retrying");
                }
                false
            }
        }
    }
}
