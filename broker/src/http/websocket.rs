//! The WebSocket endpoint `/app/{key}`: admission checks, then a connection actor per socket.
//! actix-ws makes the handshake; the response body after it is the connection's outbox (see
//! [`crate::outbox`]), which writes the server's frames, and the client's frames are read by
//! [`ClientFrames`], which refuses an over-long message at its header.

use std::sync::Arc;

use actix::{Actor, AsyncContext};
use actix_web::body::{BodyStream, BoxBody};
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};

use crate::actors::connection::{message_limit, Accepted, Connection};
use crate::apps::App;
use crate::http::client_frames::ClientFrames;
use crate::http::edge::Edge;
use crate::http::per_ip::Slot;
use crate::node::Node;
use crate::outbox::{Outbox, OutboxBody, Transport};
use crate::protocol::code;
use crate::protocol::frame;

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

/// Checks the client address's limits, protocol version, app key, origin and connection quota.
fn admit(
    node: &Node,
    edge: &Edge,
    req: &HttpRequest,
    key: &str,
) -> Result<(Arc<App>, Slot), Refusal> {
    // 4100 (over capacity): pusher-js retries after its backoff, as it should once the address
    // is under its limits again; a 4000-4099 code would stop it for good.
    let slot = edge
        .admit(req, &node.metrics)
        .map_err(|e| refusal(code::OVER_CAPACITY, e.to_string()))?;
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
    Ok((app.clone(), slot))
}

pub async fn connect(
    req: HttpRequest,
    body: web::Payload,
    key: web::Path<String>,
    node: web::Data<Node>,
    edge: web::Data<Edge>,
) -> Result<HttpResponse, actix_web::Error> {
    if !node.is_serving() {
        // Shutting down: a plain refusal sends the client to another node after its backoff.
        return Ok(HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({"error": "node is shutting down"})));
    }
    // actix-ws is given no payload: it would read ahead without bound. The client's frames are
    // read from `body` by a reader of ours. Of what it gives, only the handshake is kept: the
    // response's body is the outbox's.
    let no_payload = web::Payload::from_request(&req, &mut actix_web::dev::Payload::None).await?;
    let handshake = match actix_ws::handle(&req, no_payload) {
        Ok((handshake, _, _)) => handshake,
        Err(e) => {
            let message = format!("not a WebSocket upgrade: {e}");
            return Ok(HttpResponse::BadRequest().json(serde_json::json!({ "error": message })));
        }
    };
    let (app, slot) = match admit(&node, &edge, &req, &key) {
        Ok(admitted) => admitted,
        Err(r) => {
            let (outbox, outgoing) = Outbox::refusal(Transport::WebSocket);
            let _ = outbox.push_protocol(frame::error(Some(r.code), &r.message));
            outbox.close(r.code, &r.message);
            return Ok(streaming(handshake, outgoing));
        }
    };
    let (outbox, outgoing) = Outbox::new(
        Transport::WebSocket,
        node.config.max_outbound_bytes,
        app.metrics.publish_to_write.clone(),
    );
    let frames = ClientFrames::new(body.into_inner(), message_limit(&app));
    let accepted = Accepted {
        socket_id: node.socket_ids.next(),
        app,
        order: node.order.clone(),
        outbox,
        timeouts: node.timeouts(),
        slot,
    };
    Connection::create(move |ctx| {
        ctx.add_stream(frames);
        Connection::websocket(accepted, ctx.address())
    });
    Ok(streaming(handshake, outgoing))
}

/// The handshake's response, streaming what the outbox writes.
fn streaming(handshake: HttpResponse, body: OutboxBody) -> HttpResponse {
    handshake.set_body(BoxBody::new(BodyStream::new(body)))
}
