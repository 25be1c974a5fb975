//! What the cluster crate's in-process tests share: free ports, a node's settings in a cluster
//! on loopback, actix servers in the test's actix system, and waiting for a condition.

#![allow(dead_code)] // each test file uses its own part

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::{web, App, HttpServer};
use chorus_cluster::{Cluster, ClusterSecret, ClusterSettings, NodeId, Peers};

/// The cluster secret of the in-process clusters.
pub const SECRET: &str = "in-process-cluster-secret";

/// The settings of node `id` among `peers` (each node's id and cluster port on 127.0.0.1).
pub fn settings(id: NodeId, peers: &[(NodeId, u16)]) -> ClusterSettings {
    let peers: BTreeMap<NodeId, String> = peers
        .iter()
        .map(|(id, port)| (*id, format!("127.0.0.1:{port}")))
        .collect();
    ClusterSettings {
        node_id: id,
        advertise_addr: peers[&id].clone(),
        peers: Some(Peers::Static(peers)),
        secret: ClusterSecret::new(SECRET),
        dead_after: chorus_cluster::DEFAULT_DEAD_AFTER,
        snapshot_every: chorus_cluster::DEFAULT_SNAPSHOT_EVERY,
        local_address: None,
        tls: None,
        members_file: None,
    }
}

/// Waits (at most 15 s) until `done` holds.
pub async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(Instant::now() < deadline, "not within 15 s: {what}");
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
}

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
