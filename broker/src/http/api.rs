//! The Pusher HTTP API under `/apps/{app_id}`: publish events, query channels and users,
//! terminate a user's connections. Every request is signed; every error is JSON. Channels,
//! their counts and users, and terminations cover the whole cluster (see [`super::peers`]).
//!
//! A publish is all or nothing, and may be idempotent: an event with an idempotency key
//! (`idempotency_key` in its body, or `X-Idempotency-Key` for `POST /events`) that repeats one
//! published within the app's `limits.idempotency_window_secs` is answered as that one was, with
//! the same offsets on history channels, and delivered once: cluster-wide on history channels, by
//! the node that took it on the others (see [`super::publish`] and `crate::recent_keys`). The
//! answer lists where each history event was placed (`"history": [{"channel", "epoch",
//! "offset"}]`).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::http::header::TRANSFER_ENCODING;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde_json::{json, Map, Value};

use crate::apps::App;
use crate::channel_view::{ChannelQuery, ChannelView, Selection};
use crate::http::body;
use crate::http::edge::BodyDeadline;
use crate::http::peers;
use crate::http::publish::{answer, Pending};
use crate::node::Node;
use crate::protocol::channel::{self, ChannelKind};
use crate::protocol::publish::{
    parse_batch, parse_event, validate_key, InfoWanted, PublishError, Trigger,
};
use crate::protocol::signature::{self, RequestAuthError, SignedQuery};

/// An API error: an HTTP status and a message, answered as `{"error": message}`.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    status: StatusCode,
    message: String,
    /// The connection is closed after the answer: the rest of the request was not read.
    close: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            close: false,
        }
    }

    /// An answer given before the body was read (or while reading it): the connection closes.
    fn closing(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            close: true,
            ..ApiError::new(status, message)
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> ApiError {
        let status = match e {
            PublishError::BadRequest(_) => StatusCode::BAD_REQUEST,
            PublishError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        };
        ApiError::new(status, e.to_string())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if self.close {
            response.force_close();
        }
        response.json(json!({"error": self.message}))
    }
}

type ApiResult = Result<HttpResponse, ApiError>;

/// A verified request: the app it is for, its query parameters and body.
struct Verified {
    app: Arc<App>,
    params: Vec<(String, String)>,
    body: web::Bytes,
}

impl Verified {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Finds the app and checks the signature of the query, which covers the body's MD5, before
/// anything of the body is read: a declared length over the limit is refused (413), and so is a
/// request not signed by the app (401). Then the body is read within its deadline (408) and
/// checked against the signed MD5.
async fn verify(
    node: &Node,
    req: &HttpRequest,
    app_id: &str,
    payload: web::Payload,
) -> Result<Verified, ApiError> {
    let limit = node.config.max_request_bytes;
    let declared =
        body::declared_len(req, limit).map_err(|e| ApiError::closing(e.status(), e.to_string()))?;
    // Answered before its body is read, a request with one closes its connection.
    let unread = declared.map_or(req.headers().contains_key(TRANSFER_ENCODING), |n| n > 0);
    let early = |status: StatusCode, message: String| ApiError {
        close: unread,
        ..ApiError::new(status, message)
    };
    let app = node
        .apps
        .by_id(app_id)
        .ok_or_else(|| early(StatusCode::NOT_FOUND, format!("unknown app id {app_id}")))?
        .clone();
    let params = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map_err(|e| {
            early(
                StatusCode::BAD_REQUEST,
                format!("invalid query string: {e}"),
            )
        })?
        .into_inner();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let query = SignedQuery {
        method: req.method().as_str(),
        path: req.uri().path(),
        params: &params,
    };
    let unauthorized = |e: RequestAuthError| early(StatusCode::UNAUTHORIZED, e.to_string());
    let signed_body =
        signature::verify_query(&query, &app.key, &app.secret, now).map_err(unauthorized)?;
    if signed_body.must_be_empty() && unread {
        return Err(unauthorized(RequestAuthError::Missing("body_md5")));
    }
    let deadline = BodyDeadline::of(&node.config);
    let body = body::read(payload, declared, limit, deadline)
        .await
        .map_err(|e| ApiError::closing(e.status(), e.to_string()))?;
    signed_body
        .check(&body)
        .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, e.to_string()))?;
    Ok(Verified { app, params, body })
}

/// The attributes of channel `name`, as the API reports them, from the cluster's view of it.
fn channel_info(view: &ChannelView, name: &str, wanted: InfoWanted) -> Map<String, Value> {
    let mut info = Map::new();
    let occupancy = view.get(name);
    if wanted.subscription_count {
        let count = occupancy.map_or(0, |o| o.subscription_count);
        info.insert("subscription_count".into(), count.into());
    }
    if wanted.user_count && ChannelKind::of(name).is_presence() {
        let count = occupancy.map_or(0, |o| o.users.len());
        info.insert("user_count".into(), count.into());
    }
    info
}

/// The cluster's view of the channels `selection` names in `app`, with their presence users
/// when `users`.
async fn view_of(app: &App, selection: Selection, users: bool) -> ChannelView {
    let query = ChannelQuery {
        app: app.id.clone(),
        selection,
        users,
    };
    peers::cluster_view(app, &query).await
}

/// The info `t` asked for, per channel, from the cluster's view once it was published.
async fn info_of(app: &App, t: &Trigger) -> Map<String, Value> {
    let mut channels = Map::new();
    if t.info.any() {
        let view = view_of(app, Selection::Names(t.channels.clone()), t.info.user_count).await;
        for c in &t.channels {
            let info = channel_info(&view, c, t.info);
            channels.insert(c.clone(), Value::Object(info));
        }
    }
    channels
}

/// The header that may carry a single event's idempotency key.
const IDEMPOTENCY_KEY_HEADER: &str = "x-idempotency-key";

/// The idempotency key of `X-Idempotency-Key`, into `t`: refused when it is not a valid key or
/// the body gives another.
fn key_from_header(req: &HttpRequest, t: &mut Trigger) -> Result<(), ApiError> {
    let Some(header) = req.headers().get(IDEMPOTENCY_KEY_HEADER) else {
        return Ok(());
    };
    let key = header
        .to_str()
        .map_err(|_| ApiError::bad_request("X-Idempotency-Key is not visible ASCII"))?;
    validate_key(key)?;
    match &t.key {
        Some(given) if given != key => Err(ApiError::bad_request(
            "X-Idempotency-Key and the body's idempotency_key differ",
        )),
        _ => {
            t.key = Some(key.to_owned());
            Ok(())
        }
    }
}

pub(crate) fn storage_error(e: chorus_storage::StorageError) -> ApiError {
    tracing::error!(error = %e, "history store failed");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("could not store the event: {e}"),
    )
}

/// `POST /apps/{app_id}/events`: one event, on one channel or several, all or none (see
/// [`Pending::settle`]).
pub async fn events(
    node: web::Data<Node>,
    req: HttpRequest,
    app_id: web::Path<String>,
    payload: web::Payload,
) -> ApiResult {
    let v = verify(&node, &req, &app_id, payload).await?;
    let mut trigger = parse_event(&v.app.limits, &v.body)?;
    key_from_header(&req, &mut trigger)?;
    let mut pending = Pending::new(&v.app);
    pending.stage(&v.app, &trigger)?;
    let placed = pending.settle(&node, &v.app).await?;
    let mut body = Map::new();
    if trigger.info.any() {
        let channels = info_of(&v.app, &trigger).await;
        body.insert("channels".into(), Value::Object(channels));
    }
    Ok(answer(body, placed))
}

/// `POST /apps/{app_id}/batch_events`: every event is validated, then the batch is published
/// as one request, all or none (see [`Pending::settle`]): an invalid event refuses the whole batch (400,
/// 413), and so does a channel too far behind to admit one of its events (429). Each event may
/// carry its own `idempotency_key`; the header is refused here, as it could not say which.
pub async fn batch_events(
    node: web::Data<Node>,
    req: HttpRequest,
    app_id: web::Path<String>,
    payload: web::Payload,
) -> ApiResult {
    let v = verify(&node, &req, &app_id, payload).await?;
    if req.headers().contains_key(IDEMPOTENCY_KEY_HEADER) {
        return Err(ApiError::bad_request(
            "X-Idempotency-Key is for single events: give each event of a batch its idempotency_key",
        ));
    }
    let triggers = parse_batch(&v.app.limits, &v.body)?;
    let mut pending = Pending::new(&v.app);
    for t in &triggers {
        pending.stage(&v.app, t)?;
    }
    let placed = pending.settle(&node, &v.app).await?;
    let mut body = Map::new();
    if triggers.iter().any(|t| t.info.any()) {
        let mut answers = Vec::with_capacity(triggers.len());
        for t in &triggers {
            let mut info = info_of(&v.app, t).await;
            answers.push(info.remove(&t.channels[0]).unwrap_or_else(|| json!({})));
        }
        body.insert("batch".into(), Value::Array(answers));
    }
    Ok(answer(body, placed))
}

/// `GET /apps/{app_id}/channels`
pub async fn channels(
    node: web::Data<Node>,
    req: HttpRequest,
    app_id: web::Path<String>,
    payload: web::Payload,
) -> ApiResult {
    let v = verify(&node, &req, &app_id, payload).await?;
    let prefix = v.param("filter_by_prefix").unwrap_or("");
    let wanted = InfoWanted::parse(v.param("info"))?;
    if wanted.user_count && !prefix.starts_with("presence-") {
        return Err(ApiError::bad_request(
            "info=user_count needs filter_by_prefix=presence-",
        ));
    }
    let view = view_of(
        &v.app,
        Selection::Prefix(prefix.to_owned()),
        wanted.user_count,
    )
    .await;
    let channels: Map<String, Value> = view
        .channels
        .keys()
        .map(|name| {
            (
                name.clone(),
                Value::Object(channel_info(&view, name, wanted)),
            )
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "channels": channels })))
}

/// `GET /apps/{app_id}/channels/{channel_name}`
pub async fn channel(
    node: web::Data<Node>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> ApiResult {
    let (app_id, name) = path.into_inner();
    let v = verify(&node, &req, &app_id, payload).await?;
    channel::validate_channel_name(&name, v.app.limits.max_channel_name_len)
        .map_err(|e| ApiError::bad_request(format!("invalid channel name: {e}")))?;
    let wanted = InfoWanted::parse(v.param("info"))?;
    if wanted.user_count && !ChannelKind::of(&name).is_presence() {
        return Err(ApiError::bad_request(
            "info=user_count is only for presence channels",
        ));
    }
    let view = view_of(
        &v.app,
        Selection::Names(vec![name.clone()]),
        wanted.user_count,
    )
    .await;
    let mut info = channel_info(&view, &name, wanted);
    let occupied = view.get(&name).is_some_and(|o| o.subscription_count > 0);
    info.insert("occupied".into(), occupied.into());
    Ok(HttpResponse::Ok().json(Value::Object(info)))
}

/// `GET /apps/{app_id}/channels/{channel_name}/users`
pub async fn channel_users(
    node: web::Data<Node>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> ApiResult {
    let (app_id, name) = path.into_inner();
    let v = verify(&node, &req, &app_id, payload).await?;
    if !ChannelKind::of(&name).is_presence() {
        return Err(ApiError::bad_request(
            "users are listed only for presence channels",
        ));
    }
    let mut view = view_of(&v.app, Selection::Names(vec![name.clone()]), true).await;
    let ids = view.channels.remove(&name).unwrap_or_default().users;
    let users: Vec<Value> = ids.into_iter().map(|id| json!({ "id": id })).collect();
    Ok(HttpResponse::Ok().json(json!({ "users": users })))
}

/// `POST /apps/{app_id}/users/{user_id}/terminate_connections`
pub async fn terminate_connections(
    node: web::Data<Node>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> ApiResult {
    let (app_id, user_id) = path.into_inner();
    let v = verify(&node, &req, &app_id, payload).await?;
    channel::validate_user_id(&user_id, v.app.limits.max_user_id_len)
        .map_err(|e| ApiError::bad_request(format!("invalid user id: {e}")))?;
    peers::terminate_everywhere(&v.app, &user_id).await;
    Ok(HttpResponse::Ok().json(json!({})))
}

/// `GET /apps/{app_id}/channels/{channel_name}/history?after=N&limit=M`: the stored events after
/// offset N (default 0), oldest first, at most M (default and maximum 1000).
pub async fn channel_history(
    node: web::Data<Node>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> ApiResult {
    const MAX_LIMIT: usize = 1000;
    let (app_id, name) = path.into_inner();
    let v = verify(&node, &req, &app_id, payload).await?;
    channel::validate_channel_name(&name, v.app.limits.max_channel_name_len)
        .map_err(|e| ApiError::bad_request(format!("invalid channel name: {e}")))?;
    if !v.app.history.keeps(&name) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("channel {name} keeps no history (no [[apps.history]] rule matches it)"),
        ));
    }
    let number = |param: &str, default: u64| -> Result<u64, ApiError> {
        v.param(param).map_or(Ok(default), |s| {
            s.parse().map_err(|_| {
                ApiError::bad_request(format!("{param} must be a non-negative integer"))
            })
        })
    };
    let after = number("after", 0)?;
    let limit = number("limit", MAX_LIMIT as u64)?.min(MAX_LIMIT as u64) as usize;
    let replay = v
        .app
        .history
        .store
        .history()
        .replay(&v.app.id, &name, after, limit)
        .map_err(storage_error)?;
    let (epoch, events) = match replay {
        Some(r) => (Value::String(r.channel.epoch), r.events),
        None => (Value::Null, Vec::new()),
    };
    let events: Vec<Value> = events
        .into_iter()
        .map(|(offset, e)| {
            json!({"offset": offset, "event": e.event, "data": e.data, "time_ms": e.time_ms})
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "epoch": epoch, "events": events })))
}

/// Any other path under `/apps/`: 404 with a JSON message.
pub async fn not_found(req: HttpRequest) -> ApiResult {
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {} {}", req.method(), req.path()),
    ))
}
