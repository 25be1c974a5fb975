//! What the cluster crate's in-process tests share: free ports, and actix servers in the test's
//! actix system.

#![allow(dead_code)] // each test file uses its own part

use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::{web, App, HttpServer};
use chorus_cluster::Cluster;

/// A loopback port nothing listens on right now.
pub fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap()
}

/// Serves the apps `app` makes on `port`, in this actix system.
pub fn serve<F, A>(port: u16, app: F)
where
    F: Fn() -> App<A> + Send + Clone + 'static,
    A: ServiceFactory<
            ServiceRequest,
            Config = (),
            Response = ServiceResponse,
            Error = actix_web::Error,
            InitError = (),
        > + 'static,
{
    let server = HttpServer::new(app)
        .workers(1)
        .disable_signals()
        .bind(("127.0.0.1", port))
        .unwrap()
        .run();
    actix_web::rt::spawn(server);
}

/// Serves the cluster port of `cluster` on `port`, in this actix system.
pub fn serve_cluster_port(cluster: &Cluster, port: u16) {
    let data = web::Data::new(cluster.clone());
    serve(port, move || {
        App::new()
            .app_data(data.clone())
            .configure(chorus_cluster::http::cluster_routes)
    });
}
