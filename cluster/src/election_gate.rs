//! Whether this node may call elections.
//!
//! A node taken out of the voters, and back later with its old log (a StatefulSet scaled 5 -> 3
//! -> 5 keeps its volumes), still counts itself a voter of the membership it last knew. Left
//! alone it would call elections the others refuse, raising its term each time, and the first
//! append the leader sends it once it is wanted again would be answered with that higher term,
//! deposing a healthy leader. So a node starts with its elections off, and [`gate_elections`]
//! allows them only while nothing says the node was removed:
//! - it leads, or it accepted an append from a leader within [`RECENT_CONTACT`] (it follows a
//!   leader that counts it: when that leader dies it must be able to stand at once);
//! - or, hearing from no leader, it asks every node it knows of, and none that says it leads
//!   leaves this node out of its voters (no leader at all: a cluster starting, or one that lost
//!   its leader, needs this node's elections).
//!
//! A node that is stopping ([`crate::Cluster::hand_over_before_stopping`]) never elects again.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use crate::contact::LeaderContact;
use crate::peer_request::PeerRequests;
use crate::roster::Roster;
use crate::status::Role;
use crate::types::{NodeId, Raft};

/// How often the gate looks.
const ROUND: Duration = Duration::from_millis(250);

/// How long a node shut out by the leader waits before asking again.
const SHUT_OUT_ROUND: Duration = Duration::from_secs(1);

/// A node that accepted an append this recently follows a live leader. Well under the 1.8 s a
/// follower waits for its leader before standing, so a node the leader stopped sending to is
/// stopped before it can stand.
const RECENT_CONTACT: Duration = Duration::from_millis(500);

/// How long another node has to answer.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// What the gate looks at.
pub(crate) struct Gate {
    pub(crate) me: NodeId,
    pub(crate) raft: Raft,
    pub(crate) contact: Arc<LeaderContact>,
    pub(crate) roster: Arc<Roster>,
    pub(crate) client: PeerRequests,
}

/// Turns this node's elections on and off as the module documentation says; until the runtime
/// stops.
pub(crate) async fn gate_elections(gate: Gate) {
    let mut allowed = false;
    loop {
        let verdict = gate.may_elect().await;
        if verdict != allowed {
            gate.raft.runtime_config().elect(verdict);
            allowed = verdict;
            if verdict {
                tracing::debug!("elections allowed");
            } else if !gate.contact.stopping() {
                tracing::warn!(
                    "the leader does not count this node among its voters: it calls no \
                     election until it is taken back"
                );
            }
        }
        tokio::time::sleep(if allowed { ROUND } else { SHUT_OUT_ROUND }).await;
    }
}

impl Gate {
    /// Whether this node may call elections now.
    async fn may_elect(&self) -> bool {
        if self.contact.stopping() {
            return false;
        }
        let me = self.me;
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        if !membership.voter_ids().any(|id| id == me) {
            // Not a voter: openraft elects nothing; allowed, so a promotion takes effect at once.
            return true;
        }
        if metrics.current_leader == Some(me) || self.contact.heard_within(RECENT_CONTACT) {
            return true;
        }
        let mut addresses: BTreeSet<String> = membership
            .nodes()
            .filter(|(id, _)| **id != me)
            .map(|(_, node)| node.addr.clone())
            .collect();
        addresses.extend(self.roster.known_addresses(me));
        !self.shut_out_by_a_leader(addresses).await
    }

    /// Whether a node at one of `addresses` says it leads and does not count this node among
    /// its voters.
    async fn shut_out_by_a_leader(&self, addresses: BTreeSet<String>) -> bool {
        let mut probes = JoinSet::new();
        for addr in addresses {
            let client = self.client.clone();
            probes.spawn(async move { client.status(&addr, PROBE_TIMEOUT).await });
        }
        while let Some(answer) = probes.join_next().await {
            let Ok(Ok(status)) = answer else { continue };
            if status.state == Role::Leader && !status.voters().any(|member| member.id == self.me) {
                return true;
            }
        }
        false
    }
}
