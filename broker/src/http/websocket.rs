//! The WebSocket endpoint `/app/{key}`: the handshake and the admission checks, answered as a
//! response that hands the connection over. Every upgrade request of the public port reaches the
//! app through [`crate::http::upgrade`]; a handshake this endpoint accepts (or refuses after the
//! handshake, with a Pusher code) carries a [`Handoff`], with which the upgrade takes the socket
//! out of the HTTP/1 dispatcher: the outbox is written straight to it
//! ([`crate::http::socket_writer`]) and the client's frames are read by [`ClientFrames`], which
//! refuses an over-long message at its header.

use std::sync::Arc;

use actix::{Actor, AsyncContext};
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use prometheus::IntGauge;
use tokio::io::AsyncRead;

use crate::actors::connection::{message_limit, Accepted, Connection};
use crate::apps::App;
use crate::http::client_frames::ClientFrames;
use crate::http::edge::Edge;
use crate::http::per_ip::Slot;
use crate::http::upgrade::Upgrading;
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

/// What an accepted handshake hands to the upgrade: the connection to start, or none when it
/// was refused after the handshake, and the outbox whose frames go to the socket.
pub struct Handoff {
    accepted: Option<(Accepted, usize)>,
    pub outbox: OutboxBody,
    /// Bytes held in connection buffers, node-wide.
    pub held: IntGauge,
}

impl Handoff {
    /// Starts the connection's actor, reading the client's frames from `socket` after
    /// `already_read` (what came after the handshake); a refused connection reads nothing.
    pub fn start<R>(&mut self, socket: R, already_read: &[u8])
    where
        R: AsyncRead + Unpin + 'static,
    {
        let Some((accepted, limit)) = self.accepted.take() else {
            return;
        };
        let frames = ClientFrames::new(socket, already_read, limit, self.held.clone());
        Connection::create(move |ctx| {
            ctx.add_stream(frames);
            Connection::websocket(accepted, ctx.address())
        });
    }
}

pub async fn connect(
    req: HttpRequest,
    key: web::Path<String>,
    node: web::Data<Node>,
    edge: web::Data<Edge>,
) -> HttpResponse {
    if !node.is_serving() {
        // Shutting down: a plain refusal sends the client to another node after its backoff.
        return HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({"error": "node is shutting down"}));
    }
    let mut handshake = match actix_http::ws::handshake(req.head()) {
        // Only an HTTP/1 upgrade can be taken over (never an HTTP/2 request).
        Ok(_) if !req.extensions().contains::<Upgrading>() => {
            let message = "not a WebSocket upgrade: not an HTTP/1.1 upgrade request";
            return HttpResponse::BadRequest().json(serde_json::json!({ "error": message }));
        }
        Ok(handshake) => handshake,
        Err(e) => {
            let message = format!("not a WebSocket upgrade: {e}");
            return HttpResponse::BadRequest().json(serde_json::json!({ "error": message }));
        }
    };
    let held = node.metrics.connection_buffers.clone();
    let (accepted, outbox) = match admit(&node, &edge, &req, &key) {
        Ok((app, slot)) => {
            let (outbox, outgoing) = Outbox::new(
                Transport::WebSocket,
                node.config.max_outbound_bytes,
                app.metrics.publish_to_write.clone(),
            );
            let limit = message_limit(&app);
            let accepted = Accepted {
                socket_id: node.socket_ids.next(),
                app,
                order: node.order.clone(),
                outbox,
                timeouts: node.timeouts(),
                slot,
            };
            (Some((accepted, limit)), outgoing)
        }
        Err(r) => {
            let (outbox, outgoing) = Outbox::refusal(Transport::WebSocket);
            let _ = outbox.push_protocol(frame::error(Some(r.code), &r.message));
            outbox.close(r.code, &r.message);
            (None, outgoing)
        }
    };
    let mut response = HttpResponse::from(handshake.finish().map_into_boxed_body());
    response.extensions_mut().insert(Handoff {
        accepted,
        outbox,
        held,
    });
    response
}
