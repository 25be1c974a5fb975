//! What this node's Raft says of the cluster's nodes, read from openraft's metrics: the nodes of
//! its membership (voters and learners) and their cluster addresses.

use crate::types::{NodeId, Raft};

/// The cluster address of node `id`, if it is in the membership as this node last saw it.
pub(crate) fn node_addr(raft: &Raft, id: NodeId) -> Option<String> {
    raft.metrics()
        .borrow()
        .membership_config
        .membership()
        .get_node(&id)
        .map(|node| node.addr.clone())
}

/// The nodes of the membership other than `me`, with their cluster addresses; the leader first.
pub(crate) fn other_nodes(raft: &Raft, me: NodeId) -> Vec<(NodeId, String)> {
    let metrics = raft.metrics().borrow().clone();
    let mut nodes: Vec<(NodeId, String)> = metrics
        .membership_config
        .membership()
        .nodes()
        .filter(|(id, _)| **id != me)
        .map(|(id, node)| (*id, node.addr.clone()))
        .collect();
    nodes.sort_by_key(|(id, _)| Some(*id) != metrics.current_leader);
    nodes
}
