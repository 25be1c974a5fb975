//! Where this node learns which nodes its cluster should have: a static peer list, a DNS name
//! whose address records are the nodes, or a members file ([`crate::desired`]: the last good
//! content this node read, and once proposed the desired members in the replicated state, which
//! every node then agrees on). Bootstrap and the leader's membership round
//! ([`crate::membership`]), the election gate ([`crate::election_gate`]) and removals
//! ([`crate::removal`]) read it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use crate::desired::DesiredMembers;
use crate::peers::Peers;
use crate::resolve::Names;
use crate::state_machine::StateReader;
use crate::types::NodeId;

pub(crate) struct Roster {
    peers: Option<Peers>,
    members_file: Option<PathBuf>,
    /// The last good content of the members file, if the node follows one.
    file: Mutex<Option<DesiredMembers>>,
    names: Names,
    state: StateReader,
}

impl Roster {
    pub(crate) fn new(
        peers: Option<Peers>,
        members_file: Option<(PathBuf, DesiredMembers)>,
        names: Names,
        state: StateReader,
    ) -> Roster {
        let (members_file, file) = members_file.unzip();
        Roster {
            peers,
            members_file,
            file: Mutex::new(file),
            names,
            state,
        }
    }

    /// The static peer list or DNS name, if the node has one.
    pub(crate) fn peers(&self) -> Option<&Peers> {
        self.peers.as_ref()
    }

    /// Whether the peers are a DNS name's records.
    pub(crate) fn by_dns(&self) -> bool {
        matches!(self.peers, Some(Peers::Dns { .. }))
    }

    /// The members file the node follows, if any.
    pub(crate) fn members_file(&self) -> Option<&Path> {
        self.members_file.as_deref()
    }

    /// The resolver of the peers' names.
    pub(crate) fn names(&self) -> &Names {
        &self.names
    }

    /// The members file was read again: its content, good.
    pub(crate) fn file_read(&self, members: DesiredMembers) {
        *self.file.lock() = Some(members);
    }

    /// The desired members in the replicated state, if a members file put them there.
    pub(crate) fn desired(&self) -> Option<DesiredMembers> {
        self.state.read(|state| state.desired().cloned())
    }

    /// The nodes this node is told of by id: a static peer list, or with a members file the
    /// desired members once replicated, else the file as this node last read it. `None` with a
    /// DNS name or no peers.
    pub(crate) fn listed_nodes(&self) -> Option<BTreeMap<NodeId, String>> {
        if self.members_file.is_some() {
            let desired = self.desired().map(|d| d.members);
            return desired.or_else(|| self.file.lock().as_ref().map(|d| d.members.clone()));
        }
        match &self.peers {
            Some(Peers::Static(nodes)) => Some(nodes.clone()),
            _ => None,
        }
    }

    /// The addresses of every node but `me` that any source names: the desired members, the
    /// members file, a static peer list.
    pub(crate) fn known_addresses(&self, me: NodeId) -> Vec<String> {
        let desired = self.desired().map(|d| d.members).unwrap_or_default();
        let file = self.file.lock().as_ref().map(|d| d.members.clone());
        let listed = match &self.peers {
            Some(Peers::Static(nodes)) => nodes.clone(),
            _ => BTreeMap::new(),
        };
        desired
            .into_iter()
            .chain(file.unwrap_or_default())
            .chain(listed)
            .filter(|(id, _)| *id != me)
            .map(|(_, addr)| addr)
            .collect()
    }

    /// The revision of the desired members, when the cluster follows a members file: in the
    /// replicated state, else in the file as this node last read it.
    pub(crate) fn file_revision(&self) -> Option<u64> {
        let replicated = self.desired().map(|d| d.revision);
        match (replicated, &self.members_file) {
            (Some(revision), _) => Some(revision),
            (None, Some(_)) => self.file.lock().as_ref().map(|d| d.revision),
            (None, None) => None,
        }
    }
}
