//! The node's HTTP listeners: the public port (WebSocket, HTTP API, health; its upgrade requests
//! through [`upgrade`]) and the metrics port;
//! [`peers`] adds the broker's questions to the cluster port.

pub mod api;
pub mod body;
pub mod client_frames;
pub mod client_ip;
pub mod edge;
pub mod forwarded;
pub mod peers;
pub mod per_ip;
pub mod publish;
pub mod socket_writer;
pub mod sse;
pub mod upgrade;
pub mod websocket;

use std::time::Instant;

use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::node::{Node, Readiness};

/// Routes of the public port.
pub fn public_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/app/{key}", web::get().to(websocket::connect))
        .route("/app/{key}/sse", web::get().to(sse::stream))
        .route(
            "/app/{key}/sse",
            web::method(Method::OPTIONS).to(sse::preflight),
        )
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .service(
            web::scope("/apps/{app_id}")
                .wrap_fn(observe)
                .route("/events", web::post().to(api::events))
                .route("/batch_events", web::post().to(api::batch_events))
                .route("/channels", web::get().to(api::channels))
                .route("/channels/{channel_name}", web::get().to(api::channel))
                .route(
                    "/channels/{channel_name}/users",
                    web::get().to(api::channel_users),
                )
                .route(
                    "/channels/{channel_name}/history",
                    web::get().to(api::channel_history),
                )
                .route(
                    "/users/{user_id}/terminate_connections",
                    web::post().to(api::terminate_connections),
                )
                .default_service(web::to(api::not_found)),
        )
        .default_service(web::to(not_found));
}

/// Counts and times every HTTP API request under its route pattern (never the concrete path,
/// which holds channel names).
fn observe<S>(
    req: ServiceRequest,
    service: &S,
) -> impl std::future::Future<Output = Result<ServiceResponse, actix_web::Error>>
where
    S: Service<ServiceRequest, Response = ServiceResponse, Error = actix_web::Error>,
{
    let started = Instant::now();
    let response = service.call(req);
    async move {
        let response = response.await?;
        let request = response.request();
        if let Some(node) = request.app_data::<web::Data<Node>>() {
            let route = request
                .match_pattern()
                .unwrap_or_else(|| "unmatched".into());
            node.metrics.http_request(
                &route,
                response.status().as_u16(),
                started.elapsed().as_secs_f64(),
            );
        }
        Ok(response)
    }
}

/// Routes of the metrics port.
pub fn metrics_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(metrics))
        .default_service(web::to(not_found));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Ready: serving, and a member of a cluster that has a leader (see [`Node::readiness`]).
async fn readyz(node: web::Data<Node>) -> HttpResponse {
    match node.readiness() {
        Readiness::Ready => HttpResponse::Ok().json(json!({"status": "ready"})),
        not => HttpResponse::ServiceUnavailable()
            .json(json!({"status": "not ready", "reason": not.reason()})),
    }
}

async fn metrics(node: web::Data<Node>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(node.metrics.render())
}

async fn not_found() -> HttpResponse {
    HttpResponse::NotFound().json(json!({"error": "not found"}))
}
