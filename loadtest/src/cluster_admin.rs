//! What the harness needs of a Chorus cluster beyond the Pusher protocol: which node leads (the
//! cluster port's `GET /cluster`, authenticated by the `x-chorus-cluster-secret` header), and the
//! process of each node, to kill the leader. Nodes are named by their Raft node id:
//! `--cluster-node ID=HOST:PORT` (the cluster port) and `--pid ID=PID`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::error::{Error, Result};

/// The header that carries the cluster secret.
pub const SECRET_HEADER: &str = "x-chorus-cluster-secret";

/// `ID=VALUE`, as `--cluster-node` and `--pid` take it.
pub fn parse_id_pair(s: &str) -> std::result::Result<(u64, String), String> {
    let (id, value) = s
        .split_once('=')
        .ok_or_else(|| format!("expected ID=VALUE, got {s:?}"))?;
    let id = id
        .trim()
        .parse()
        .map_err(|_| format!("the node id in {s:?} is not a number"))?;
    Ok((id, value.trim().to_owned()))
}

/// The part of a node's `GET /cluster` answer the harness reads.
#[derive(Debug, Clone, Deserialize)]
pub struct NodeView {
    pub leader_id: Option<u64>,
}

/// The cluster ports of the nodes and the secret to ask them with.
#[derive(Clone)]
pub struct ClusterAdmin {
    client: reqwest::Client,
    /// Node id to `host:port` of its cluster port.
    pub nodes: BTreeMap<u64, String>,
    secret: String,
}

impl ClusterAdmin {
    pub fn new(nodes: BTreeMap<u64, String>, secret: String) -> Result<ClusterAdmin> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_millis(500))
            .build()?;
        Ok(ClusterAdmin {
            client,
            nodes,
            secret,
        })
    }

    /// Node `addr`'s view of the cluster.
    pub async fn view(&self, addr: &str) -> Result<NodeView> {
        let url = format!("http://{addr}/cluster");
        let response = self
            .client
            .get(&url)
            .header(SECRET_HEADER, &self.secret)
            .send()
            .await?;
        let bytes = crate::pusher::rest::success_body(response, url).await?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// The leader as the first node that knows one says, skipping the nodes in `except`.
    pub async fn leader(&self, except: &[u64]) -> Option<u64> {
        for (id, addr) in &self.nodes {
            if except.contains(id) {
                continue;
            }
            if let Ok(NodeView {
                leader_id: Some(leader),
                ..
            }) = self.view(addr).await
            {
                return Some(leader);
            }
        }
        None
    }

    /// Waits until a node other than those in `except` names a leader that is not in `except`;
    /// polls every `every`. `None` when `until` passes first.
    pub async fn wait_for_leader(
        &self,
        except: &[u64],
        every: Duration,
        until: Instant,
    ) -> Option<(u64, Instant)> {
        loop {
            if let Some(leader) = self.leader(except).await {
                if !except.contains(&leader) {
                    return Some((leader, Instant::now()));
                }
            }
            if Instant::now() + every > until {
                return None;
            }
            tokio::time::sleep(every).await;
        }
    }
}

/// Sends SIGKILL to `pid`.
pub fn kill_process(pid: u32) -> Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| Error::Args(format!("process id {pid} out of range")))?;
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
        return Err(Error::Io(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_id_pairs() {
        assert_eq!(
            parse_id_pair("2=127.0.0.1:6202"),
            Ok((2, "127.0.0.1:6202".into()))
        );
        assert_eq!(parse_id_pair(" 3 = 4711 "), Ok((3, "4711".into())));
        assert!(parse_id_pair("x=1").is_err());
        assert!(parse_id_pair("12").is_err());
    }

    #[test]
    fn reads_a_node_view() {
        let v: NodeView = serde_json::from_str(
            r#"{"node_id":2,"state":"follower","leader_id":1,"term":3,"members":[]}"#,
        )
        .unwrap();
        assert_eq!(v.leader_id, Some(1));
        let v: NodeView = serde_json::from_str(r#"{"node_id":2,"leader_id":null}"#).unwrap();
        assert_eq!(v.leader_id, None);
    }
}
