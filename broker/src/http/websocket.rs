//! The WebSocket endpoint `/app/{key}`: admission checks, then a connection actor per socket.

use std::sync::Arc;

use actix::{Actor, AsyncContext};
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason};

use crate::actors::connection::{Accepted, Connection};
use crate::apps::App;
use crate::node::Node;
use crate::outbox::{Outbox, Transport};
use crate::protocol::code;
use crate::protocol::frame;

/// Frames above this size close the connection (1009); smaller over-limit frames get an error.
const HARD_FRAME_LIMIT: usize = 256 * 1024;

/// Why a connection is refused right after the handshake.
struct Refusal {
    code: u16,
    message: String,
}

fn refusal(code: u16, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

/// Checks protocol version, app key, origin and connection quota.
fn admit(node: &Node, req: &HttpRequest, key: &str) -> Result<Arc<App>, Refusal> {
    let query = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map(|q| q.into_inner())
        .unwrap_or_default();
    let protocol = query.iter().find(|(k, _)| k == "protocol").map(|(_, v)| v);
    match protocol.map(|p| p.parse::<u32>()) {
        None => return Err(refusal(code::NO_PROTOCOL, "no protocol version given")),
        Some(Ok(5..=7)) => {}
        Some(_) => {
            return Err(refusal(
                code::UNSUPPORTED_PROTOCOL,
                "unsupported protocol version; use 7",
            ))
        }
    }
    let app = node.apps.by_key(key).ok_or_else(|| {
        refusal(
            code::APP_UNKNOWN,
            format!("app key {key} not in this cluster"),
        )
    })?;
    let origin = req
        .headers()
        .get(actix_web::http::header::ORIGIN)
        .and_then(|o| o.to_str().ok());
    if !app.origin_allowed(origin) {
        return Err(refusal(
            code::UNAUTHORIZED,
            "origin not allowed for this app",
        ));
    }
    if !app.admit_connection() {
        return Err(refusal(
            code::OVER_QUOTA,
            "app is over its connection quota",
        ));
    }
    Ok(app.clone())
}

pub async fn connect(
    req: HttpRequest,
    body: web::Payload,
    key: web::Path<String>,
    node: web::Data<Node>,
) -> Result<HttpResponse, actix_web::Error> {
    if !node.is_serving() {
        // Shutting down: a plain refusal sends the client to another node after its backoff.
        return Ok(HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({"error": "node is shutting down"})));
    }
    let (response, mut session, stream) = match actix_ws::handle(&req, body) {
        Ok(handled) => handled,
        Err(e) => {
            let message = format!("not a WebSocket upgrade: {e}");
            return Ok(HttpResponse::BadRequest().json(serde_json::json!({ "error": message })));
        }
    };
    let app = match admit(&node, &req, &key) {
        Ok(app) => app,
        Err(r) => {
            actix_rt::spawn(async move {
                let _ = session
                    .text(frame::error(Some(r.code), &r.message).text)
                    .await;
                let reason = CloseReason {
                    code: CloseCode::Other(r.code),
                    description: Some(r.message),
                };
                let _ = session.close(Some(reason)).await;
            });
            return Ok(response);
        }
    };
    let outbox = Outbox::new(
        Transport::WebSocket(session),
        node.config.max_outbound_bytes,
        app.metrics.publish_to_write.clone(),
    );
    let stream = stream
        .max_frame_size(HARD_FRAME_LIMIT)
        .aggregate_continuations()
        .max_continuation_size(HARD_FRAME_LIMIT);
    let accepted = Accepted {
        socket_id: node.socket_ids.next(),
        app,
        order: node.order.clone(),
        outbox,
        timeouts: node.timeouts(),
    };
    Connection::create(move |ctx| {
        ctx.add_stream(stream);
        Connection::websocket(accepted, ctx.address())
    });
    Ok(response)
}
