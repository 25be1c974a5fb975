//! The cluster port's endpoints, for the node's actix server: the Raft RPCs (POST, a body in the
//! binary encoding or JSON by its Content-Type ([`RpcBody`]), JSON out), `POST /cluster/join` (a new node asking the leader to take it), `POST /cluster/propose`
//! (a node asking the leader to write a change to the replicated state), `GET /cluster`, this
//! node's view of the cluster, `GET /cluster/interest`, which nodes have subscribers of which
//! channel as this node last applied it, `POST /cluster/history`, history events for a node
//! that skipped them (see [`crate::history_repair`]), `POST /cluster/elect`, the leader asking
//! this node to stand (see [`crate::handover`]), and `POST /cluster/remove`, an operator's
//! removal of a node (see [`crate::removal`]). (The broker adds `POST /cluster/deliver`, forwarded
//! frames, which it delivers.) Every one of them, `/cluster` included, requires the cluster
//! secret in the `x-chorus-cluster-secret` header and answers 401 without it: the port is for the
//! nodes and their operators only, and `/cluster` lists the nodes' internal addresses.
//!
//! A body that is not the JSON a route takes is answered 400 (413 when too large) with a JSON
//! `{"error": ...}` ([`bad_body`]); a Raft RPC's body in neither encoding, 415. The routes expect the node's [`Cluster`] as
//! `web::Data<Cluster>`.

use std::future::Future;
use std::pin::Pin;

use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use crate::cluster::Cluster;
use crate::error::ClusterError;
use crate::handover::{ElectRequest, ELECT_PATH};
use crate::history_repair::{HistoryQuestion, HISTORY_PATH};
use crate::join::{JoinRequest, JOIN_PATH};
use crate::network::{APPEND_PATH, BINARY_BODY, SNAPSHOT_PATH, VOTE_PATH};
use crate::propose::PROPOSE_PATH;
use crate::removal::{RemoveOutcome, RemoveRequest, REMOVE_PATH};
use crate::secret::SECRET_HEADER;
use crate::types::{NodeId, Raft, Request, TypeConfig};

/// Largest RPC body: a full batch of log entries, or a snapshot chunk as JSON.
const MAX_RPC_BYTES: usize = 64 * 1024 * 1024;

/// Adds the cluster port's routes to an actix app that has `web::Data<Cluster>`.
pub fn cluster_routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(MAX_RPC_BYTES)
            .error_handler(bad_body),
    )
    .route("/cluster", web::get().to(status))
    .service(rpc_route(APPEND_PATH).route(web::post().to(append_entries)))
    .service(rpc_route(VOTE_PATH).route(web::post().to(vote)))
    .service(rpc_route(SNAPSHOT_PATH).route(web::post().to(install_snapshot)))
    .route(JOIN_PATH, web::post().to(join))
    .route(PROPOSE_PATH, web::post().to(propose))
    .route("/cluster/interest", web::get().to(interest))
    .route(HISTORY_PATH, web::post().to(history))
    .route(ELECT_PATH, web::post().to(elect))
    .route(REMOVE_PATH, web::post().to(remove))
    .default_service(web::to(not_found));
}

/// The resource of a Raft RPC: bodies up to [`MAX_RPC_BYTES`].
fn rpc_route(path: &str) -> actix_web::Resource {
    web::resource(path).app_data(web::PayloadConfig::new(MAX_RPC_BYTES))
}

/// How a Raft RPC's body is encoded, by its Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpcEncoding {
    /// postcard ([`BINARY_BODY`]).
    Binary,
    /// `application/json`.
    Json,
}

impl RpcEncoding {
    /// The encoding a Content-Type names, if it names one this node reads.
    pub fn of(content_type: Option<&str>) -> Option<RpcEncoding> {
        let essence = content_type?.split(';').next()?.trim();
        if essence.eq_ignore_ascii_case(BINARY_BODY) {
            Some(RpcEncoding::Binary)
        } else if essence.eq_ignore_ascii_case("application/json") {
            Some(RpcEncoding::Json)
        } else {
            None
        }
    }
}

impl RpcEncoding {
    /// The Content-Type of a body in this encoding.
    pub fn content_type(self) -> &'static str {
        match self {
            RpcEncoding::Binary => BINARY_BODY,
            RpcEncoding::Json => "application/json",
        }
    }
}

/// Encodes a Raft RPC's body.
pub fn encode_rpc_body<T: Serialize>(
    encoding: RpcEncoding,
    request: &T,
) -> Result<Vec<u8>, String> {
    match encoding {
        RpcEncoding::Binary => postcard::to_allocvec(request).map_err(|e| e.to_string()),
        RpcEncoding::Json => serde_json::to_vec(request).map_err(|e| e.to_string()),
    }
}

/// Decodes a Raft RPC's body; a binary body must be read whole (nothing left over).
pub fn decode_rpc_body<T: DeserializeOwned>(
    encoding: RpcEncoding,
    body: &[u8],
) -> Result<T, String> {
    match encoding {
        RpcEncoding::Binary => match postcard::take_from_bytes(body) {
            Ok((value, [])) => Ok(value),
            Ok((_, rest)) => Err(format!("{} bytes after the request", rest.len())),
            Err(e) => Err(e.to_string()),
        },
        RpcEncoding::Json => serde_json::from_slice(body).map_err(|e| e.to_string()),
    }
}

/// A Raft RPC's request, from a body in either encoding: 415 for another Content-Type (before
/// the body is read), 413 past [`MAX_RPC_BYTES`], 400 when it does not decode; each with
/// `{"error": ...}`.
pub struct RpcBody<T>(pub T);

impl<T: DeserializeOwned + 'static> FromRequest for RpcBody<T> {
    type Error = actix_web::Error;
    type Future = Pin<Box<dyn Future<Output = Result<RpcBody<T>, actix_web::Error>>>>;

    fn from_request(req: &HttpRequest, payload: &mut actix_web::dev::Payload) -> Self::Future {
        let content_type = req
            .headers()
            .get(actix_web::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let encoding = RpcEncoding::of(content_type);
        let body = web::Bytes::from_request(req, payload);
        Box::pin(async move {
            let refuse = |status: actix_web::http::StatusCode, error: String| {
                let answer = HttpResponse::build(status).json(json!({ "error": error }));
                actix_web::error::InternalError::from_response("refused RPC body", answer).into()
            };
            let Some(encoding) = encoding else {
                let wanted = format!("Content-Type must be application/json or {BINARY_BODY}");
                return Err(refuse(
                    actix_web::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    wanted,
                ));
            };
            let body = body
                .await
                .map_err(|e| refuse(e.as_response_error().status_code(), e.to_string()))?;
            decode_rpc_body(encoding, &body)
                .map(RpcBody)
                .map_err(|e| refuse(actix_web::http::StatusCode::BAD_REQUEST, e))
        })
    }
}

/// Answers a body that is not the JSON the route takes: 413 when it is too large, else 400,
/// with `{"error": ...}` (use it as a `web::JsonConfig`'s error handler).
pub fn bad_body(error: actix_web::error::JsonPayloadError, _: &HttpRequest) -> actix_web::Error {
    use actix_web::error::JsonPayloadError;
    let mut answer = match error {
        JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
            HttpResponse::PayloadTooLarge()
        }
        _ => HttpResponse::BadRequest(),
    };
    let refusal = answer.json(json!({"error": error.to_string()}));
    actix_web::error::InternalError::from_response(error, refusal).into()
}

/// Proof that a request carried the cluster secret; extracting it answers 401 otherwise.
pub struct Authorized;

impl FromRequest for Authorized {
    type Error = actix_web::Error;
    type Future = std::future::Ready<Result<Authorized, actix_web::Error>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let admitted = req.app_data::<web::Data<Cluster>>().is_some_and(|cluster| {
            req.headers()
                .get(SECRET_HEADER)
                .is_some_and(|presented| cluster.secret().admits(presented.as_bytes()))
        });
        std::future::ready(if admitted {
            Ok(Authorized)
        } else {
            let refusal = HttpResponse::Unauthorized()
                .json(json!({"error": format!("missing or wrong {SECRET_HEADER}")}));
            Err(actix_web::error::InternalError::from_response("unauthorized", refusal).into())
        })
    }
}

async fn status(_: Authorized, cluster: web::Data<Cluster>) -> HttpResponse {
    HttpResponse::Ok().json(cluster.status())
}

/// The RPC's answer as JSON (the target's `Result`, which the client decodes), or 503 when the
/// Raft runtime is gone.
fn answer<T: Serialize>(outcome: Result<T, ClusterError>) -> HttpResponse {
    match outcome {
        Ok(result) => HttpResponse::Ok().json(result),
        Err(e) => HttpResponse::ServiceUnavailable().json(json!({"error": e.to_string()})),
    }
}

/// Runs a Raft call on the Raft runtime and answers what it returned.
async fn relay<T, Call>(cluster: &Cluster, call: impl FnOnce(Raft) -> Call) -> HttpResponse
where
    T: Serialize + Send + 'static,
    Call: Future<Output = T> + Send + 'static,
{
    answer(cluster.on_raft_runtime(call(cluster.raft().clone())).await)
}

/// An append this node accepts (any answer but a higher vote) comes from its leader: the
/// election gate and readiness count on hearing from it.
async fn append_entries(
    _: Authorized,
    cluster: web::Data<Cluster>,
    rpc: RpcBody<AppendEntriesRequest<TypeConfig>>,
) -> HttpResponse {
    let heard = cluster.clone();
    relay(&cluster, |raft| async move {
        let answer = raft.append_entries(rpc.0).await;
        if matches!(&answer, Ok(response) if !matches!(response, AppendEntriesResponse::HigherVote(_)))
        {
            heard.heard_from_leader();
        }
        answer
    })
    .await
}

async fn vote(
    _: Authorized,
    cluster: web::Data<Cluster>,
    rpc: RpcBody<VoteRequest<NodeId>>,
) -> HttpResponse {
    relay(&cluster, |raft| async move { raft.vote(rpc.0).await }).await
}

async fn install_snapshot(
    _: Authorized,
    cluster: web::Data<Cluster>,
    rpc: RpcBody<InstallSnapshotRequest<TypeConfig>>,
) -> HttpResponse {
    relay(&cluster, |raft| async move {
        raft.install_snapshot(rpc.0).await
    })
    .await
}

async fn join(
    _: Authorized,
    cluster: web::Data<Cluster>,
    request: web::Json<JoinRequest>,
) -> HttpResponse {
    answer(cluster.admit(request.into_inner()).await)
}

async fn propose(
    _: Authorized,
    cluster: web::Data<Cluster>,
    request: web::Json<Request>,
) -> HttpResponse {
    answer(cluster.write_as_leader(request.into_inner()).await)
}

async fn elect(
    _: Authorized,
    cluster: web::Data<Cluster>,
    request: web::Json<ElectRequest>,
) -> HttpResponse {
    answer(cluster.stand(request.into_inner()).await)
}

/// An operator's removal: 200 with the voters left, 409 with the reason it is refused.
async fn remove(
    _: Authorized,
    cluster: web::Data<Cluster>,
    request: web::Json<RemoveRequest>,
) -> HttpResponse {
    match cluster.remove(request.id).await {
        Ok(RemoveOutcome::Refused { reason }) => {
            HttpResponse::Conflict().json(json!({"error": reason}))
        }
        outcome => answer(outcome),
    }
}

/// One channel's interest, as `GET /cluster/interest` lists it.
#[derive(Serialize)]
struct ChannelInterest {
    app: String,
    channel: String,
    nodes: Vec<NodeId>,
}

async fn interest(_: Authorized, cluster: web::Data<Cluster>) -> HttpResponse {
    let channels: Vec<ChannelInterest> = cluster.state().read(|state| {
        state
            .interest()
            .map(|(key, nodes)| ChannelInterest {
                app: key.app.clone(),
                channel: key.channel.clone(),
                nodes: nodes.iter().copied().collect(),
            })
            .collect()
    });
    HttpResponse::Ok().json(channels)
}

/// Events of a channel's history before an offset, for a node that skipped them.
async fn history(
    _: Authorized,
    cluster: web::Data<Cluster>,
    question: web::Json<HistoryQuestion>,
) -> HttpResponse {
    if !question.is_plausible() {
        return HttpResponse::BadRequest()
            .json(json!({"error": "app id or channel name too long"}));
    }
    match cluster.history_page(&question) {
        Ok(page) => HttpResponse::Ok().json(page),
        Err(e) => HttpResponse::InternalServerError().json(json!({"error": e.to_string()})),
    }
}

async fn not_found(_: Authorized) -> HttpResponse {
    HttpResponse::NotFound().json(json!({"error": "no such endpoint on the cluster port"}))
}
