//! The Raft network client: each RPC is an HTTP POST to the target's cluster port, carrying the
//! cluster secret, answered with the JSON of the target's `Result`.
//!
//! The request body is in the compact binary encoding (postcard, Content-Type [`BINARY_BODY`]),
//! about half the bytes of its JSON and far cheaper to write and read. A node of an earlier
//! version takes only JSON: it refuses the binary body (400, the content type its JSON extractor
//! wants; this version answers an unknown type 415), and the client then sends that RPC again
//! as JSON and keeps to JSON with that target for [`RETRY_BINARY_AFTER`] before it tries binary
//! again (the target may have been upgraded since), so a cluster keeps working through a rolling
//! upgrade.
//!
//! Every answer counts as having heard from the target ([`Liveness`]: failure detection). A
//! target that cannot be reached (refused, timed out, wrong secret) is reported
//! `Unreachable`, so openraft backs off before the next try instead of spinning. A follower
//! held back for a leadership hand-over ([`Hold`]) is sent no append: openraft is told it is
//! unreachable.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use prometheus::IntCounterVec;
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::hold::Hold;
use crate::http::{encode_rpc_body, RpcEncoding};
use crate::liveness::Liveness;
use crate::outbound::ClusterClient;
use crate::secret::{ClusterSecret, SECRET_HEADER};
use crate::types::{Node, NodeId, TypeConfig};

/// The paths of the RPCs on the cluster port.
pub(crate) const APPEND_PATH: &str = "/raft/append";
pub(crate) const VOTE_PATH: &str = "/raft/vote";
pub(crate) const SNAPSHOT_PATH: &str = "/raft/snapshot";

/// How long a target that refused a binary body is sent JSON before binary is tried again.
const RETRY_BINARY_AFTER: Duration = Duration::from_secs(60);

/// The Content-Type of a request body in the binary encoding.
pub const BINARY_BODY: &str = "application/x-chorus-postcard";

/// How long openraft waits before calling an unreachable node again: 250 ms, doubling up to 2 s
/// while it stays unreachable (openraft logs every failed call).
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Makes a [`PeerClient`] per target; handed to `openraft::Raft::new`.
pub(crate) struct HttpNetwork {
    pub(crate) client: ClusterClient,
    pub(crate) secret: ClusterSecret,
    pub(crate) rpc_errors: IntCounterVec,
    pub(crate) liveness: Arc<Liveness>,
    pub(crate) hold: Arc<Hold>,
}

/// The RPC client of one target node.
pub(crate) struct PeerClient {
    target: NodeId,
    addr: String,
    client: ClusterClient,
    secret: ClusterSecret,
    rpc_errors: IntCounterVec,
    liveness: Arc<Liveness>,
    hold: Arc<Hold>,
    /// When the target last refused a binary body, if it did.
    refused_binary_at: Option<Instant>,
}

impl RaftNetworkFactory<TypeConfig> for HttpNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerClient {
        PeerClient {
            target,
            addr: node.addr.clone(),
            client: self.client.clone(),
            secret: self.secret.clone(),
            rpc_errors: self.rpc_errors.clone(),
            liveness: self.liveness.clone(),
            hold: self.hold.clone(),
            refused_binary_at: None,
        }
    }
}

/// An RPC's failure, before it is typed for the RPC at hand.
enum Failure {
    Unreachable(Unreachable),
    Network(NetworkError),
}

impl PeerClient {
    /// Sends an RPC; an append or a snapshot chunk (`holdable`) not while the target is held
    /// back for a hand-over.
    async fn post<Req, Resp, E>(
        &mut self,
        rpc: &'static str,
        path: &str,
        request: &Req,
        option: &RPCOption,
        holdable: bool,
    ) -> Result<Resp, RPCError<NodeId, Node, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let in_flight = self.hold.sending(self.target);
        if holdable && in_flight.is_none() {
            let held = std::io::Error::other("held back for a leadership hand-over");
            return Err(RPCError::Unreachable(Unreachable::new(&held)));
        }
        let answer = self
            .exchange::<Req, Result<Resp, RaftError<NodeId, E>>>(path, request, option)
            .await;
        if answer.is_ok() {
            self.liveness.heard(self.target);
        }
        match answer {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(remote)) => Err(RPCError::RemoteError(RemoteError::new(self.target, remote))),
            Err(Failure::Unreachable(e)) => {
                self.rpc_errors
                    .with_label_values(&[rpc, "unreachable"])
                    .inc();
                Err(RPCError::Unreachable(e))
            }
            Err(Failure::Network(e)) => {
                self.rpc_errors.with_label_values(&[rpc, "network"]).inc();
                Err(RPCError::Network(e))
            }
        }
    }

    /// Sends `request` in the binary encoding, or as JSON to a target that refused it.
    async fn exchange<Req: Serialize, Answer: DeserializeOwned>(
        &mut self,
        path: &str,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Answer, Failure> {
        let encoding = match self.refused_binary_at {
            Some(at) if at.elapsed() < RETRY_BINARY_AFTER => RpcEncoding::Json,
            _ => RpcEncoding::Binary,
        };
        let mut response = self.send(path, request, option, encoding).await?;
        let refused = matches!(
            response.status(),
            StatusCode::BAD_REQUEST | StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        if encoding == RpcEncoding::Binary && refused {
            self.refused_binary_at = Some(Instant::now());
            response = self.send(path, request, option, RpcEncoding::Json).await?;
        } else if encoding == RpcEncoding::Binary {
            self.refused_binary_at = None;
        }
        let status = response.status();
        if !status.is_success() {
            let refused = std::io::Error::other(format!(
                "node {} at {} answered {status}",
                self.target, self.addr
            ));
            return Err(Failure::Unreachable(Unreachable::new(&refused)));
        }
        response
            .json()
            .await
            .map_err(|e| Failure::Network(NetworkError::new(&e)))
    }

    async fn send<Req: Serialize>(
        &self,
        path: &str,
        request: &Req,
        option: &RPCOption,
        encoding: RpcEncoding,
    ) -> Result<reqwest::Response, Failure> {
        let body = encode_rpc_body(encoding, request)
            .map_err(|e| Failure::Network(NetworkError::new(&std::io::Error::other(e))))?;
        self.client
            .post(&self.addr, path)
            .header(SECRET_HEADER, self.secret.as_str())
            .header(reqwest::header::CONTENT_TYPE, encoding.content_type())
            .timeout(option.hard_ttl())
            .body(body)
            .send()
            .await
            .map_err(|e| Failure::Unreachable(Unreachable::new(&e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.post("append_entries", APPEND_PATH, &rpc, &option, true)
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.post("install_snapshot", SNAPSHOT_PATH, &rpc, &option, true)
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.post("vote", VOTE_PATH, &rpc, &option, false).await
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::successors(Some(FIRST_BACKOFF), |last| {
            Some((*last * 2).min(MAX_BACKOFF))
        }))
    }
}
