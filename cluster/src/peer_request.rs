//! Requests to other nodes' cluster ports outside Raft's RPCs (a status, a join, a proposal, a
//! question): sent with the cluster secret, answered 200 with JSON, or refused.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::ClusterError;
use crate::outbound::ClusterClient;
use crate::secret::{ClusterSecret, SECRET_HEADER};
use crate::status::{fetch_status, ClusterStatus};

/// Sends `request` (to the cluster port at `addr`) with the secret, within `timeout`, and decodes
/// the JSON answer.
pub(crate) async fn send_to_peer<T: DeserializeOwned>(
    request: reqwest::RequestBuilder,
    addr: &str,
    secret: &ClusterSecret,
    timeout: Duration,
) -> Result<T, ClusterError> {
    let unreachable = |source| ClusterError::Unreachable {
        addr: addr.to_owned(),
        source,
    };
    let response = request
        .header(SECRET_HEADER, secret.as_str())
        .timeout(timeout)
        .send()
        .await
        .map_err(unreachable)?;
    let status = response.status().as_u16();
    if status != 200 {
        return Err(ClusterError::Refused {
            addr: addr.to_owned(),
            status,
            body: response.text().await.unwrap_or_default(),
        });
    }
    response.json().await.map_err(unreachable)
}

/// How this node asks the others: its client for cluster traffic (plain HTTP or TLS, see
/// [`crate::outbound`]) and the cluster secret. Cheap to clone.
#[derive(Clone)]
pub(crate) struct PeerRequests {
    http: ClusterClient,
    secret: ClusterSecret,
}

impl PeerRequests {
    pub(crate) fn new(http: ClusterClient, secret: ClusterSecret) -> PeerRequests {
        PeerRequests { http, secret }
    }

    /// POSTs `body` as JSON to `path` on the cluster port at `addr`; the JSON answer, within
    /// `timeout`.
    pub(crate) async fn post<Q: Serialize + ?Sized, A: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        body: &Q,
        timeout: Duration,
    ) -> Result<A, ClusterError> {
        let request = self.http.post(addr, path).json(body);
        send_to_peer(request, addr, &self.secret, timeout).await
    }

    /// As [`PeerRequests::post`], with a body already encoded as JSON.
    pub(crate) async fn post_encoded<A: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<A, ClusterError> {
        let request = self
            .http
            .post(addr, path)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        send_to_peer(request, addr, &self.secret, timeout).await
    }

    /// What the node at `addr` says of itself and its cluster (`GET /cluster`).
    pub(crate) async fn status(
        &self,
        addr: &str,
        timeout: Duration,
    ) -> Result<ClusterStatus, ClusterError> {
        fetch_status(&self.http, addr, &self.secret, timeout).await
    }
}
