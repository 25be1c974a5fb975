//! The members the cluster should have, as declared from outside: a members file that every
//! node reads, as Kubernetes mounts a ConfigMap (refreshed in place, by an atomic symlink swap).
//!
//! ```toml
//! revision = 7      # a node adopts a newer revision, never an older one
//! peers = "0@chorus-0.chorus-headless.ns.svc.cluster.local:6002,1@...,2@..."
//! ```
//!
//! Every node re-reads its file every [`REREAD_EVERY`] ([`follow_members_file`]). A node whose
//! file has a newer revision than the one in the replicated state proposes it
//! (`SetDesiredMembers`), so every node, and every future leader, agrees on one desired set
//! whatever the moment each node's copy of the file was refreshed. The leader then reconciles
//! the Raft voters to it ([`crate::membership`], [`crate::removal`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::peers::{Peers, PeersError};
use crate::propose::Proposer;
use crate::roster::Roster;
use crate::types::{NodeId, Raft, Request, LONGEST_NAME};

/// How often the members file is read again.
pub const REREAD_EVERY: Duration = Duration::from_secs(2);

/// The most members a desired set may list.
pub const MOST_MEMBERS: usize = 1000;

/// A desired member set: every node by id, with its cluster address, and the revision that
/// declared it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredMembers {
    pub revision: u64,
    pub members: BTreeMap<NodeId, String>,
}

impl DesiredMembers {
    /// Whether it fits what the store and the log take (addresses no longer than
    /// [`LONGEST_NAME`], at most [`MOST_MEMBERS`] members, at least one).
    pub fn is_plausible(&self) -> bool {
        !self.members.is_empty()
            && self.members.len() <= MOST_MEMBERS
            && self.members.values().all(|addr| addr.len() <= LONGEST_NAME)
    }
}

/// Why a members file was refused.
#[derive(Debug, thiserror::Error)]
pub enum MembersFileError {
    #[error("cannot read the members file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("members file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("members file {path}: key `peers`: {source}")]
    Peers { path: PathBuf, source: PeersError },
    #[error("members file {path}: key `peers`: {problem}")]
    Members { path: PathBuf, problem: String },
}

/// The file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MembersFileText {
    revision: u64,
    peers: String,
}

/// Reads and checks the members file at `path`.
pub fn read_members_file(path: &Path) -> Result<DesiredMembers, MembersFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| MembersFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_members_file(path, &text)
}

/// Parses the text of the members file at `path` (named in errors).
pub fn parse_members_file(path: &Path, text: &str) -> Result<DesiredMembers, MembersFileError> {
    let parsed: MembersFileText = toml::from_str(text).map_err(|e| MembersFileError::Parse {
        path: path.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })?;
    let members_problem = |problem: &str| MembersFileError::Members {
        path: path.to_owned(),
        problem: problem.to_owned(),
    };
    // The default port is never used: a DNS name is refused below.
    let peers = Peers::parse(&parsed.peers, 0).map_err(|source| MembersFileError::Peers {
        path: path.to_owned(),
        source,
    })?;
    let members = match peers {
        Some(Peers::Static(members)) => members,
        Some(Peers::Dns { .. }) => {
            return Err(members_problem(
                "must list every node as `id@host:port`, not a DNS name",
            ))
        }
        None => return Err(members_problem("lists no node")),
    };
    let desired = DesiredMembers {
        revision: parsed.revision,
        members,
    };
    if !desired.is_plausible() {
        return Err(members_problem(&format!(
            "at most {MOST_MEMBERS} nodes, each address at most {LONGEST_NAME} bytes"
        )));
    }
    Ok(desired)
}

/// What following the members file uses.
pub(crate) struct FileFollower {
    pub(crate) path: PathBuf,
    pub(crate) roster: Arc<Roster>,
    /// To tell whether the node belongs to a cluster with a leader.
    pub(crate) raft: Raft,
    pub(crate) proposer: Proposer,
}

/// Reads the members file every [`REREAD_EVERY`], keeps its last good content for this node's
/// bootstrap, and proposes it when it is newer than the replicated one; until the runtime stops.
/// A file that cannot be read, or an older revision than the cluster's, is reported once (until
/// it changes) and otherwise ignored: the node keeps the desired set it has.
pub(crate) async fn follow_members_file(follower: FileFollower) {
    let path = &follower.path;
    let mut reported: Option<String> = None;
    loop {
        match read_members_file(path) {
            Ok(file) => {
                if reported.take().is_some() {
                    tracing::info!(path = %path.display(), "the members file is readable again");
                }
                follower.roster.file_read(file.clone());
                if let Some(problem) = follower.propose_if_newer(file).await {
                    if reported.as_deref() != Some(problem.as_str()) {
                        tracing::warn!(path = %path.display(), "{problem}");
                        reported = Some(problem);
                    }
                }
            }
            Err(e) => {
                let problem = e.to_string();
                if reported.as_deref() != Some(problem.as_str()) {
                    tracing::warn!(
                        error = %problem,
                        "keeping the desired members the node has; reading the file again"
                    );
                    reported = Some(problem);
                }
            }
        }
        tokio::time::sleep(REREAD_EVERY).await;
    }
}

impl FileFollower {
    /// Proposes `file` if it is newer than the replicated desired set and this node belongs to
    /// a cluster; returns a problem to report when it is not adopted for a reason an operator
    /// should know (an older revision, or the same revision with other members).
    async fn propose_if_newer(&self, file: DesiredMembers) -> Option<String> {
        if let Some(replicated) = self.roster.desired() {
            if replicated.revision > file.revision {
                return Some(format!(
                    "the members file has revision {}, older than the cluster's {}: ignored",
                    file.revision, replicated.revision
                ));
            }
            if replicated.revision == file.revision {
                return (replicated.members != file.members).then(|| {
                    format!(
                        "the members file lists other members than the cluster under the same \
                         revision {}: ignored (raise the revision)",
                        file.revision
                    )
                });
            }
        }
        let metrics = self.raft.metrics().borrow().clone();
        let in_cluster = metrics.membership_config.membership().voter_ids().count() > 0;
        if !in_cluster || metrics.current_leader.is_none() {
            return None; // Proposed by a member, or by this node once it is one.
        }
        let revision = file.revision;
        match self
            .proposer
            .propose(Request::SetDesiredMembers(file))
            .await
        {
            Ok(_) => tracing::info!(revision, "desired members proposed from the members file"),
            Err(e) => {
                tracing::debug!(revision, error = %e, "cannot propose the desired members yet")
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DesiredMembers, String> {
        parse_members_file(Path::new("members.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_members_file_gives_a_revision_and_addresses_by_id() {
        let desired = parse(
            "revision = 7\npeers = \"0@chorus-0.chorus-headless.ns.svc.cluster.local:6002, \
             1@chorus-1.chorus-headless.ns.svc.cluster.local:6002\"\n",
        )
        .unwrap();
        assert_eq!(desired.revision, 7);
        assert_eq!(
            desired.members,
            BTreeMap::from([
                (
                    0,
                    "chorus-0.chorus-headless.ns.svc.cluster.local:6002".to_owned()
                ),
                (
                    1,
                    "chorus-1.chorus-headless.ns.svc.cluster.local:6002".to_owned()
                ),
            ])
        );
    }

    #[test]
    fn a_bad_members_file_names_the_key() {
        let cases = [
            ("peers = \"0@a:1\"", "revision"),
            ("revision = 1", "peers"),
            ("revision = -1\npeers = \"0@a:1\"", "revision"),
            ("revision = 1\npeers = \"0@a:1\"\nreplicas = 3", "replicas"),
            ("revision = 1\npeers = \"\"", "lists no node"),
            (
                "revision = 1\npeers = \"chorus-headless\"",
                "not a DNS name",
            ),
            ("revision = 1\npeers = \"0@a:1,0@b:1\"", "listed twice"),
            ("revision = 1\npeers = \"x@a:1\"", "the id must be a number"),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err();
            assert!(
                err.contains(expected) && err.contains("members.toml"),
                "{text}: {err}"
            );
        }
        let long = format!("revision = 1\npeers = \"0@{}:1\"", "a".repeat(LONGEST_NAME));
        assert!(parse(&long).unwrap_err().contains("at most"));
    }
}
