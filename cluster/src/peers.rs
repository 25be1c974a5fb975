//! Who the cluster's nodes are: a static list of `id@host:port`, or a DNS name whose address
//! records are the nodes (as the headless Service of a StatefulSet gives).
//!
//! With a static list every node's id and cluster address are known up front. With a DNS name
//! only the addresses are: a node's id is what that node says it is, asked over its cluster port
//! (`GET /cluster` answers `node_id`), so ids come from each node's own `CHORUS_NODE_ID` or
//! hostname ordinal and never from the order of the records.

use std::collections::BTreeMap;

use crate::types::NodeId;

/// Where the peers come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peers {
    /// Every node by id, with its cluster address (`host:port`); this node is among them.
    Static(BTreeMap<NodeId, String>),
    /// The address records of `name` are the nodes, each serving its cluster port on `port`.
    Dns { name: String, port: u16 },
}

/// Why a peer list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeersError {
    #[error("{0:?} is not `id@host:port`: the id must be a number")]
    BadId(String),
    #[error("{0:?} is not `id@host:port`: the port is missing or not a number")]
    BadAddress(String),
    #[error("node id {0} is listed twice")]
    DuplicateId(NodeId),
    #[error("mixes `id@host:port` entries with a DNS name; give one or the other")]
    Mixed,
    #[error("{0:?} is not a host name")]
    BadName(String),
    #[error("does not list this node (id {0}); add `{0}@host:port`")]
    MissingSelf(NodeId),
}

/// Checks a `host:port` address: a host, and a port number after the last colon.
fn check_address(entry: &str, address: &str) -> Result<(), PeersError> {
    match address.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0) => {
            Ok(())
        }
        _ => Err(PeersError::BadAddress(entry.to_owned())),
    }
}

impl Peers {
    /// Parses `CHORUS_PEERS`: a comma list of `id@host:port`, or one DNS name (`name` or
    /// `name:port`; the port defaults to `default_port`, this node's cluster port). An empty text
    /// is no peers at all: `None`.
    pub fn parse(text: &str, default_port: u16) -> Result<Option<Peers>, PeersError> {
        let entries: Vec<&str> = text
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect();
        if entries.is_empty() {
            return Ok(None);
        }
        if !entries.iter().any(|e| e.contains('@')) {
            if entries.len() > 1 {
                return Err(PeersError::BadId(entries[1].to_owned()));
            }
            return Peers::parse_dns(entries[0], default_port).map(Some);
        }
        let mut nodes = BTreeMap::new();
        for entry in entries {
            let Some((id, address)) = entry.split_once('@') else {
                return Err(PeersError::Mixed);
            };
            let id: NodeId = id
                .parse()
                .map_err(|_| PeersError::BadId(entry.to_owned()))?;
            check_address(entry, address)?;
            if nodes.insert(id, address.to_owned()).is_some() {
                return Err(PeersError::DuplicateId(id));
            }
        }
        Ok(Some(Peers::Static(nodes)))
    }

    fn parse_dns(entry: &str, default_port: u16) -> Result<Peers, PeersError> {
        let (name, port) = match entry.rsplit_once(':') {
            Some((name, port)) => (
                name,
                port.parse::<u16>()
                    .map_err(|_| PeersError::BadAddress(entry.to_owned()))?,
            ),
            None => (entry, default_port),
        };
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !valid_name {
            return Err(PeersError::BadName(entry.to_owned()));
        }
        Ok(Peers::Dns {
            name: name.to_owned(),
            port,
        })
    }

    /// Checks that a static list names this node; a DNS name always may.
    pub fn check_lists(&self, node_id: NodeId) -> Result<(), PeersError> {
        match self {
            Peers::Static(nodes) if !nodes.contains_key(&node_id) => {
                Err(PeersError::MissingSelf(node_id))
            }
            _ => Ok(()),
        }
    }
}

/// The node id a StatefulSet pod's hostname gives: the number after its last `-`
/// (`chorus-2` is 2), or `None` when the name does not end so.
pub fn ordinal_of_hostname(hostname: &str) -> Option<NodeId> {
    let (_, ordinal) = hostname.trim().rsplit_once('-')?;
    if ordinal.is_empty() || !ordinal.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    ordinal.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_static_list_gives_ids_and_addresses() {
        let peers = Peers::parse(" 1@10.0.0.1:6002, 2@node-2:7002 ,3@[::1]:6002", 6002).unwrap();
        assert_eq!(
            peers,
            Some(Peers::Static(BTreeMap::from([
                (1, "10.0.0.1:6002".to_owned()),
                (2, "node-2:7002".to_owned()),
                (3, "[::1]:6002".to_owned()),
            ])))
        );
        assert_eq!(
            peers.unwrap().check_lists(4),
            Err(PeersError::MissingSelf(4))
        );
    }

    #[test]
    fn a_name_without_ids_is_a_dns_name() {
        assert_eq!(
            Peers::parse("chorus-headless.default.svc", 6002).unwrap(),
            Some(Peers::Dns {
                name: "chorus-headless.default.svc".into(),
                port: 6002
            })
        );
        assert_eq!(
            Peers::parse("chorus:7000", 6002).unwrap(),
            Some(Peers::Dns {
                name: "chorus".into(),
                port: 7000
            })
        );
        assert_eq!(Peers::parse(" , ", 6002).unwrap(), None);
    }

    #[test]
    fn malformed_lists_are_refused_with_the_entry() {
        let cases = [
            ("x@h:1", PeersError::BadId("x@h:1".into())),
            ("1@h", PeersError::BadAddress("1@h".into())),
            ("1@h:0", PeersError::BadAddress("1@h:0".into())),
            ("1@:6002", PeersError::BadAddress("1@:6002".into())),
            ("1@a:1,1@b:1", PeersError::DuplicateId(1)),
            ("1@a:1,b:1", PeersError::Mixed),
            ("a b", PeersError::BadName("a b".into())),
            ("a,b", PeersError::BadId("b".into())),
        ];
        for (text, expected) in cases {
            assert_eq!(Peers::parse(text, 6002), Err(expected), "{text}");
        }
    }

    #[test]
    fn a_statefulset_hostname_gives_its_ordinal() {
        assert_eq!(ordinal_of_hostname("chorus-2"), Some(2));
        assert_eq!(ordinal_of_hostname("chorus-broker-10\n"), Some(10));
        assert_eq!(ordinal_of_hostname("chorus"), None);
        assert_eq!(ordinal_of_hostname("chorus-"), None);
        assert_eq!(ordinal_of_hostname("chorus-a1"), None);
    }
}
