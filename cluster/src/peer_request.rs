//! A request to another node's cluster port outside Raft's RPCs (its status, a join): sent with
//! the cluster secret, answered 200 with JSON, or refused.

use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::error::ClusterError;
use crate::secret::{ClusterSecret, SECRET_HEADER};

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
