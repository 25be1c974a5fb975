//! The Server-Sent Events endpoint `GET /app/{key}/sse?channels=a,b`: listen-only clients.
//!
//! Everything is checked before the stream starts, so a refused request gets an HTTP status and a
//! JSON message: the app key, the origin, the channel list, the token for private and presence
//! channels, the cursor (`Last-Event-ID` or `last_event_id`) and the app's connection quota.
//! Then a connection actor joins the channels and the response streams what its outbox writes
//! (the wire format is in `protocol/sse.rs`).
//!
//! Private, encrypted and presence channels need `auth={key}:{hex HMAC-SHA256}` and
//! `expires={unix seconds}`, signed by the app's backend over
//! `sse:{channels}:{expires}[:{channel_data}]`; presence channels also need `channel_data`
//! (`{"user_id", "user_info"?}`), the member the stream joins as. A token is checked when a
//! stream opens (and on every reconnect), so it should outlive the page that uses it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use actix::{AsyncContext, Recipient};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, HttpResponseBuilder};
use bytes::Bytes;
use futures_util::Stream;
use serde::Deserialize;

use crate::actors::connection::{Accepted, Connection};
use crate::actors::messages::Disconnect;
use crate::apps::App;
use crate::http::edge::Edge;
use crate::node::Node;
use crate::outbox::{Outbox, OutboxBody, Transport};
use crate::protocol::channel::{self, Access, ChannelKind};
use crate::protocol::code;
use crate::protocol::presence::{parse_member, Member};
use crate::protocol::signature;
use crate::protocol::sse::{self, Cursor};
use crate::subscriptions::Join;

/// A request refused before its stream started.
struct Refused {
    status: StatusCode,
    message: String,
}

fn refused(status: StatusCode, message: impl Into<String>) -> Refused {
    Refused {
        status,
        message: message.into(),
    }
}

#[derive(Debug, Deserialize)]
struct Params {
    channels: Option<String>,
    auth: Option<String>,
    expires: Option<String>,
    channel_data: Option<String>,
    last_event_id: Option<String>,
}

/// What a checked request streams.
struct Opened {
    app: Arc<App>,
    joins: Vec<Join>,
    cursor: Cursor,
}

pub async fn stream(
    req: HttpRequest,
    key: web::Path<String>,
    node: web::Data<Node>,
    edge: web::Data<Edge>,
) -> HttpResponse {
    let app = node.apps.by_key(&key);
    let cors = cors_origin(&req, app.map(|a| a.as_ref()));
    if !node.is_serving() {
        // Shutting down: a stream that ends at once makes EventSource reconnect after its retry
        // time (to another node, or to this one restarted); an error status would stop it.
        let body = [
            sse::preamble(),
            sse::closing(code::RECONNECT, "server shutting down, reconnect"),
        ]
        .concat();
        return event_stream_response(cors).body(body);
    }
    let slot = match edge.admit(&req, &node.metrics) {
        Ok(slot) => slot,
        Err(e) => {
            let mut response = HttpResponse::TooManyRequests();
            add_cors(&mut response, cors);
            return response.json(serde_json::json!({ "error": e.to_string() }));
        }
    };
    let opened = match open(&node, &req, &key) {
        Ok(opened) => opened,
        Err(r) => {
            let mut response = HttpResponse::build(r.status);
            add_cors(&mut response, cors);
            return response.json(serde_json::json!({ "error": r.message }));
        }
    };
    let (outbox, body) = Outbox::new(
        Transport::EventStream {
            cursor: opened.cursor,
        },
        node.config.max_outbound_bytes,
        opened.app.metrics.publish_to_write.clone(),
    );
    let ctx = actix::Context::new();
    let connection = ctx.address();
    let accepted = Accepted {
        socket_id: node.socket_ids.next(),
        app: opened.app,
        order: node.order.clone(),
        outbox,
        timeouts: node.timeouts(),
        slot,
    };
    ctx.run(Connection::event_stream(
        accepted,
        opened.joins,
        connection.clone(),
    ));
    event_stream_response(cors).streaming(Body {
        preamble: Some(sse::preamble()),
        body,
        connection: connection.recipient(),
    })
}

/// `OPTIONS`: a browser's CORS preflight.
pub async fn preflight(
    req: HttpRequest,
    key: web::Path<String>,
    node: web::Data<Node>,
) -> HttpResponse {
    let mut response = HttpResponse::NoContent();
    add_cors(
        &mut response,
        cors_origin(&req, node.apps.by_key(&key).map(|a| a.as_ref())),
    );
    response
        .insert_header(("access-control-allow-methods", "GET, OPTIONS"))
        .insert_header((
            "access-control-allow-headers",
            "last-event-id, cache-control",
        ))
        .insert_header(("access-control-max-age", "600"))
        .finish()
}

/// Checks everything about a request before its stream starts, and takes a connection slot.
fn open(node: &Node, req: &HttpRequest, key: &str) -> Result<Opened, Refused> {
    let app = node
        .apps
        .by_key(key)
        .ok_or_else(|| refused(StatusCode::NOT_FOUND, format!("unknown app key {key}")))?;
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok());
    if !app.origin_allowed(origin) {
        return Err(refused(
            StatusCode::FORBIDDEN,
            "origin not allowed for this app",
        ));
    }
    let params = web::Query::<Params>::from_query(req.query_string())
        .map_err(|e| refused(StatusCode::BAD_REQUEST, format!("bad query: {e}")))?
        .into_inner();
    let raw_channels = params.channels.as_deref().unwrap_or("");
    let names = channel_list(raw_channels, app)?;
    let member = authorize(&params, raw_channels, &names, app)?;
    let mut cursor = match cursor_text(req, &params) {
        Some(text) => Cursor::decode(&app.id, text).map_err(|e| {
            refused(
                StatusCode::BAD_REQUEST,
                format!("Last-Event-ID refused: {e}"),
            )
        })?,
        None => Cursor::new(&app.id),
    };
    cursor.retain(&names);
    let joins = names
        .iter()
        .map(|&name| Join {
            channel: name.to_owned(),
            member: ChannelKind::of(name)
                .is_presence()
                .then(|| member.clone())
                .flatten(),
            since: app
                .history
                .keeps(name)
                .then(|| cursor.since(name))
                .flatten(),
        })
        .collect();
    if !app.admit_connection() {
        return Err(refused(
            StatusCode::TOO_MANY_REQUESTS,
            "app is over its connection quota",
        ));
    }
    Ok(Opened {
        app: app.clone(),
        joins,
        cursor,
    })
}

/// The channels of `channels=a,b`: each a valid name, no repeats, at most the app's
/// subscriptions per connection.
fn channel_list<'a>(raw: &'a str, app: &App) -> Result<Vec<&'a str>, Refused> {
    let bad = |message: String| refused(StatusCode::BAD_REQUEST, message);
    if raw.is_empty() {
        return Err(bad("give the channels to stream: ?channels=a,b".into()));
    }
    let max = app.limits.max_subscriptions_per_connection;
    let mut names: Vec<&str> = Vec::new();
    for name in raw.split(',') {
        if names.len() == max {
            return Err(bad(format!("at most {max} channels per stream")));
        }
        channel::validate_channel_name(name, app.limits.max_channel_name_len)
            .map_err(|e| bad(format!("invalid channel name {name:?}: {e}")))?;
        if ChannelKind::of(name).access == Access::User {
            return Err(bad(format!(
                "{name}: user channels need a WebSocket connection that signed in"
            )));
        }
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// Checks the token when a channel needs one; gives the presence member it names.
fn authorize(
    params: &Params,
    raw_channels: &str,
    names: &[&str],
    app: &App,
) -> Result<Option<Member>, Refused> {
    let kinds: Vec<ChannelKind> = names.iter().map(|n| ChannelKind::of(n)).collect();
    if kinds.iter().all(|k| k.access == Access::Public) {
        return Ok(None);
    }
    let unauthorized = |message: &str| refused(StatusCode::UNAUTHORIZED, message);
    let (Some(auth), Some(expires)) = (params.auth.as_deref(), params.expires.as_deref()) else {
        return Err(unauthorized(
            "private and presence channels need auth and expires (see the README)",
        ));
    };
    let expires: u64 = expires
        .parse()
        .map_err(|_| unauthorized("expires must be a Unix time in seconds"))?;
    if expires < crate::history::now_ms() / 1000 {
        return Err(unauthorized("the token has expired"));
    }
    let channel_data = params.channel_data.as_deref();
    let to_sign = sse::token_string(raw_channels, expires, channel_data);
    if !signature::verify_auth(&app.key, &app.secret, auth, &to_sign) {
        return Err(unauthorized("invalid signature"));
    }
    if !kinds.iter().any(|k| k.is_presence()) {
        return Ok(None);
    }
    let data = channel_data.ok_or_else(|| {
        refused(
            StatusCode::BAD_REQUEST,
            "presence channels need channel_data",
        )
    })?;
    parse_member(
        data,
        app.limits.max_user_id_len,
        app.limits.max_user_info_bytes,
    )
    .map(Some)
    .map_err(|e| refused(StatusCode::BAD_REQUEST, e))
}

/// The cursor a reconnecting client sent: the `Last-Event-ID` header (a browser's own
/// reconnect), else the `last_event_id` parameter.
fn cursor_text<'a>(req: &'a HttpRequest, params: &'a Params) -> Option<&'a str> {
    req.headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or(params.last_event_id.as_deref())
        .filter(|t| !t.trim().is_empty())
}

/// The origin to allow in CORS headers: the request's, when its app allows it.
fn cors_origin(req: &HttpRequest, app: Option<&App>) -> Option<HeaderValue> {
    let origin = req.headers().get(header::ORIGIN)?;
    app?.origin_allowed(origin.to_str().ok())
        .then(|| origin.clone())
}

fn add_cors(response: &mut HttpResponseBuilder, origin: Option<HeaderValue>) {
    response.insert_header((header::VARY, "Origin"));
    if let Some(origin) = origin {
        response.insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin));
    }
}

fn event_stream_response(cors: Option<HeaderValue>) -> HttpResponseBuilder {
    let mut response = HttpResponse::Ok();
    response
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        // Tells nginx not to buffer the stream.
        .insert_header(("x-accel-buffering", "no"));
    add_cors(&mut response, cors);
    response
}

/// The response body: the stream's preamble, then what the connection's outbox writes. When
/// the client goes away, actix drops it, and the connection actor is told to stop.
struct Body {
    preamble: Option<Bytes>,
    body: OutboxBody,
    connection: Recipient<Disconnect>,
}

impl Stream for Body {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(preamble) = self.preamble.take() {
            return Poll::Ready(Some(Ok(preamble)));
        }
        Pin::new(&mut self.body).poll_next(cx)
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        self.connection.do_send(Disconnect::client_gone());
    }
}
