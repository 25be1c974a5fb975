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
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use crate::cluster::Core;
use crate::status::{fetch_status, Role};
use crate::types::NodeId;

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

/// Turns this node's elections on and off as the module documentation says; until the runtime
/// stops.
pub(crate) async fn gate_elections(core: Arc<Core>) {
    let mut allowed = false;
    loop {
        let verdict = may_elect(&core).await;
        if verdict != allowed {
            core.raft.runtime_config().elect(verdict);
            allowed = verdict;
            if verdict {
                tracing::debug!("elections allowed");
            } else if !core.stopping.load(Ordering::Relaxed) {
                tracing::warn!(
                    "the leader does not count this node among its voters: it calls no \
                     election until it is taken back"
                );
            }
        }
        tokio::time::sleep(if allowed { ROUND } else { SHUT_OUT_ROUND }).await;
    }
}

/// Whether this node may call elections now.
async fn may_elect(core: &Core) -> bool {
    if core.stopping.load(Ordering::Relaxed) {
        return false;
    }
    let me = core.node_id();
    let metrics = core.raft.metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    if !membership.voter_ids().any(|id| id == me) {
        // Not a voter: openraft elects nothing; allowed, so a promotion takes effect at once.
        return true;
    }
    if metrics.current_leader == Some(me) || core.leader_heard_within(RECENT_CONTACT) {
        return true;
    }
    let mut addresses: BTreeSet<String> = membership
        .nodes()
        .filter(|(id, _)| **id != me)
        .map(|(_, node)| node.addr.clone())
        .collect();
    addresses.extend(known_addresses(core, me));
    !shut_out_by_a_leader(core, addresses).await
}

/// The other nodes this node knows of besides its membership: the desired members, the members
/// file, a static peer list.
fn known_addresses(core: &Core, me: NodeId) -> Vec<String> {
    let desired = core
        .state
        .read(|state| state.desired().map(|d| d.members.clone()))
        .unwrap_or_default();
    let file = core
        .file_members
        .lock()
        .as_ref()
        .map(|d| d.members.clone())
        .unwrap_or_default();
    let listed = match &core.settings.peers {
        Some(crate::peers::Peers::Static(nodes)) => nodes.clone(),
        _ => Default::default(),
    };
    desired
        .into_iter()
        .chain(file)
        .chain(listed)
        .filter(|(id, _)| *id != me)
        .map(|(_, addr)| addr)
        .collect()
}

/// Whether a node at one of `addresses` says it leads and does not count this node among its
/// voters.
async fn shut_out_by_a_leader(core: &Core, addresses: BTreeSet<String>) -> bool {
    let me = core.node_id();
    let mut probes = JoinSet::new();
    for addr in addresses {
        let client = core.client.clone();
        let secret = core.settings.secret.clone();
        probes.spawn(async move { fetch_status(&client, &addr, &secret, PROBE_TIMEOUT).await });
    }
    while let Some(answer) = probes.join_next().await {
        let Ok(Ok(status)) = answer else { continue };
        if status.state == Role::Leader && !status.voters().any(|member| member.id == me) {
            return true;
        }
    }
    false
}
