//! What can go wrong starting or asking the cluster.

use crate::types::{NodeId, RaftStorageError};

/// Why the cluster could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("invalid raft configuration: {0}")]
    Config(String),
    #[error("cannot register the raft metrics: {0}")]
    Metrics(#[source] prometheus::Error),
    #[error("cannot start the raft runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot open the raft storage: {0}")]
    Storage(#[source] Box<RaftStorageError>),
    #[error("raft stopped: {0}")]
    Fatal(#[source] Box<openraft::error::Fatal<NodeId>>),
    #[error("cannot encode a question to the other nodes: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("the raft runtime has stopped")]
    Stopped,
    #[error("the cluster has no leader to write to")]
    NoLeader,
    #[error("history: {0}")]
    History(String),
    #[error("not committed within {0:?}: the leader cannot reach a majority")]
    Uncommitted(std::time::Duration),
    #[error("cannot change the membership: {0}")]
    MembershipChange(String),
    #[error("leadership not handed over: {0}")]
    HandOver(String),
    #[error("cannot reach the cluster port at {addr}: {source}")]
    Unreachable {
        addr: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{addr} answered {status}: {body}")]
    Refused {
        addr: String,
        status: u16,
        body: String,
    },
}
