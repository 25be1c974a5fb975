//! Runs a node: binds its listeners (public and cluster, each over TLS when the node has a
//! certificate for it; metrics, always plain), marks it ready, and shuts it down gracefully on SIGTERM or SIGINT: it stops being ready, tells clients 4200 so they reconnect
//! elsewhere, hands its Raft leadership to another voter if it leads, lets the listeners drain,
//! then stops Raft.

use std::net::SocketAddr;
use std::time::Duration;

use actix_codec::{AsyncRead, AsyncWrite};
use actix_http::body::BoxBody;
use actix_http::h1::ExpectHandler;
use actix_http::{HttpService, Response, TlsAcceptorConfig};
use actix_service::{map_config, IntoServiceFactory as _, ServiceFactoryExt as _};
use actix_tls::accept::rustls_0_23::TlsStream;
use actix_web::dev::{AppConfig, Server};
use actix_web::{web, App as HttpApp, HttpServer};
use anyhow::Context as _;
use chorus_cluster::http::Authorized;
use chorus_cluster::{ForwardBatch, HandOver, DELIVER_PATH, STREAM_PATH};
use tokio::net::TcpStream;

use crate::actors::messages::Disconnect;
use crate::config::{Config, CLUSTER_SECRET_FILE};
use crate::http;
use crate::http::edge::Edge;
use crate::http::upgrade::{AppFactory, UpgradeFactory};
use crate::node::Node;
use crate::tls;

/// Serves until a shutdown signal, then returns once connections have closed or the deadline
/// passed.
pub async fn run(mut config: Config) -> anyhow::Result<()> {
    let cluster_listener = bind_cluster_port(&mut config)?;
    keep_secret_for_commands(&config)?;
    let node = web::Data::new(Node::new(config)?);
    spawn_retention(node.clone().into_inner());
    node.start_webhooks();
    crate::http::peers::start_subscription_counts(&node.apps);
    let cfg = &node.config;
    tls::watch(cfg.tls.watched());
    let workers = if cfg.workers == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        cfg.workers
    };
    let public = public_server(&node, workers)?;
    let metrics = metrics_server(&node)?;
    let cluster_server = cluster_server(&node, cluster_listener)?;

    let public_handle = public.handle();
    let metrics_handle = metrics.handle();
    let cluster_handle = cluster_server.handle();
    let public_task = actix_rt::spawn(public);
    let metrics_task = actix_rt::spawn(metrics);
    let cluster_task = actix_rt::spawn(cluster_server);
    node.set_ready(true);
    tracing::info!(
        host = %cfg.host,
        port = cfg.port,
        metrics_port = cfg.metrics_port,
        cluster_port = cfg.cluster_port(),
        tls = cfg.tls.public.is_some(),
        cluster_tls = cfg.tls.cluster.is_some(),
        node_id = node.cluster.node_id(),
        workers,
        "chorus is serving"
    );

    let signal = shutdown_signal().await?;
    tracing::info!(signal, "shutting down: telling clients to reconnect");
    shut_down(&node, [public_handle, metrics_handle], cluster_handle).await;
    let _ = public_task.await;
    let _ = metrics_task.await;
    let _ = cluster_task.await;
    if let Err(e) = node.store.flush_blocking() {
        tracing::warn!(error = %e, "could not flush the store on the way out");
    }
    tracing::info!("stopped");
    Ok(())
}

/// The public port: WebSocket, SSE, the HTTP API and health, over TLS when the node has a
/// certificate for it. Served as actix-web's `HttpServer` serves an app, with one difference:
/// upgrade requests go to [`UpgradeFactory`], which takes an accepted WebSocket out of the
/// HTTP/1 dispatcher (see `http/upgrade.rs`).
fn public_server(node: &web::Data<Node>, workers: usize) -> anyhow::Result<Server> {
    let cfg = &node.config;
    let addr = SocketAddr::new(cfg.host, cfg.port);
    let listener = listen(addr, PUBLIC_BACKLOG)
        .with_context(|| format!("binding the public port {}:{}", cfg.host, cfg.port))?;
    // Handshakes in progress per worker (actix-web's `max_connection_rate`).
    actix_tls::accept::max_concurrent_tls_connect(2_048);
    let builder = actix_server::Server::build()
        .workers(workers)
        .backlog(PUBLIC_BACKLOG)
        .max_concurrent_connections(100_000)
        .shutdown_timeout(cfg.shutdown_timeout_secs)
        .disable_signals();
    let public = Public {
        node: node.clone(),
        edge: web::Data::new(Edge::new(cfg)),
        addr,
        keep_alive: Duration::from_secs(cfg.keep_alive_secs),
        shutdown: builder.graceful_shutdown_signal(),
    };
    let builder = match &cfg.tls.public {
        Some(certificate) => {
            let tls = tls::server_config(certificate.clone());
            builder.listen("chorus-public", listener, move || {
                public
                    .http::<TlsStream<TcpStream>>()
                    .rustls_0_23_with_config(tls.clone(), TlsAcceptorConfig::default())
            })
        }
        None => builder.listen("chorus-public", listener, move || public.http().tcp()),
    };
    let builder = builder.with_context(|| format!("serving the public port {addr}"))?;
    Ok(builder.run())
}

/// Connections the public port lets wait to be accepted.
const PUBLIC_BACKLOG: u32 = 4096;

/// What each worker of the public port serves with.
#[derive(Clone)]
struct Public {
    node: web::Data<Node>,
    edge: web::Data<Edge>,
    addr: SocketAddr,
    keep_alive: Duration,
    shutdown: actix_server::GracefulShutdownSignal,
}

impl Public {
    /// One worker's HTTP service over `T` (TCP or TLS), set as actix-web's `HttpServer` sets
    /// it, with what the public port changes.
    fn http<T>(&self) -> HttpService<T, AppFactory, BoxBody, ExpectHandler, UpgradeFactory>
    where
        T: AsyncRead + AsyncWrite + Unpin + 'static,
    {
        let shutdown = self.shutdown.clone();
        HttpService::build()
            .graceful_shutdown_signal(move || {
                let shutdown = shutdown.clone();
                async move { shutdown.notified().await }
            })
            // Idle keep-alive connections stay open longer than clients keep theirs idle, so a
            // client never reuses one the server is closing.
            .keep_alive(self.keep_alive)
            // A request head must arrive within this (slowloris: 408 and closed).
            .client_request_timeout(Duration::from_secs(5))
            .client_disconnect_timeout(Duration::from_secs(1))
            // A client that closes its side has gone: an SSE stream it held is dropped at once
            // rather than at the next failed write.
            .h1_allow_half_closed(false)
            .local_addr(self.addr)
            .upgrade(UpgradeFactory(self.app()))
            .finish(self.app())
    }

    /// The app of the public port's routes, as actix-http calls it.
    fn app(&self) -> AppFactory {
        let app = HttpApp::new()
            .app_data(self.node.clone())
            .app_data(self.edge.clone())
            .configure(http::public_routes);
        // actix-web's own server gives the app its address and scheme here, which only
        // `connection_info` and `url_for` read; no route of the node does.
        let app = map_config(app.into_factory(), |_| AppConfig::default())
            .map(Response::from)
            .map_err(|e: actix_web::Error| Response::from(e.error_response()));
        actix_service::boxed::factory(app)
    }
}

/// The metrics port, always plain (scraped from inside the cluster).
fn metrics_server(node: &web::Data<Node>) -> anyhow::Result<Server> {
    let cfg = &node.config;
    let metrics_node = node.clone();
    let metrics = HttpServer::new(move || {
        HttpApp::new()
            .app_data(metrics_node.clone())
            .configure(http::metrics_routes)
    })
    .workers(1)
    .shutdown_timeout(1)
    .disable_signals()
    .bind((cfg.host, cfg.metrics_port))
    .with_context(|| format!("binding the metrics port {}:{}", cfg.host, cfg.metrics_port))?;
    Ok(metrics.run())
}

/// The cluster port on `listener`: over TLS alone when the node has a cluster certificate.
fn cluster_server(
    node: &web::Data<Node>,
    listener: std::net::TcpListener,
) -> anyhow::Result<Server> {
    let cfg = &node.config;
    let cluster = web::Data::new(node.cluster.clone());
    let cluster_node = node.clone();
    let senders = web::Data::new(http::forwarded::Senders::default());
    let server = HttpServer::new(move || {
        HttpApp::new()
            .app_data(cluster.clone())
            .app_data(cluster_node.clone())
            .app_data(senders.clone())
            .route(STREAM_PATH, web::post().to(http::forwarded::stream))
            .route(DELIVER_PATH, web::post().to(deliver))
            .configure(http::peers::cluster_port_routes)
            .configure(chorus_cluster::http::cluster_routes)
    })
    .workers(CLUSTER_WORKERS)
    .shutdown_timeout(1)
    .disable_signals();
    let server = match &cfg.tls.cluster {
        Some(cluster_tls) => {
            server.listen_rustls_0_23(listener, tls::server_config(cluster_tls.served.clone()))
        }
        None => server.listen(listener),
    };
    let server = server.with_context(|| {
        format!(
            "serving the cluster port {}:{}",
            cfg.host,
            cfg.cluster_port()
        )
    })?;
    Ok(server.run())
}

/// The graceful end: not ready, clients told 4200, leadership handed over, the public and
/// metrics listeners drained, then the cluster port closed before Raft stops (what the others
/// still send this node, a proposal from one that has not heard of the new leader yet, finds it
/// closed and goes elsewhere, rather than finding Raft stopped).
async fn shut_down(
    node: &Node,
    listeners: [actix_web::dev::ServerHandle; 2],
    cluster_port: actix_web::dev::ServerHandle,
) {
    node.set_ready(false);
    for app in node.apps.iter() {
        app.disconnect_all(Disconnect::shutdown());
    }
    hand_over_leadership(&node.cluster).await;
    // Graceful: stop accepting, let the closes go out, wait for connections to end.
    for listener in listeners {
        listener.stop(true).await;
    }
    cluster_port.stop(true).await;
    node.cluster.shutdown();
}

/// The longest a stopping leader spends handing over (a lease and a few round trips).
const HAND_OVER_TIMEOUT: Duration = Duration::from_secs(6);

/// Hands Raft leadership to another voter if this node leads, so the cluster goes on with
/// hardly a moment without a leader; the node calls no election from here on.
async fn hand_over_leadership(cluster: &chorus_cluster::Cluster) {
    match tokio::time::timeout(HAND_OVER_TIMEOUT, cluster.hand_over_before_stopping()).await {
        Ok(Ok(HandOver::NotLeader | HandOver::Alone)) => {}
        Ok(Ok(HandOver::HandedTo { node, took })) => {
            tracing::info!(node, took_ms = took.as_millis() as u64, "leadership handed over");
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "the others will elect a leader by themselves"),
        Err(_) => tracing::warn!(
            "no hand-over within {HAND_OVER_TIMEOUT:?}: the others will elect a leader by themselves"
        ),
    }
}

/// Keeps the cluster secret where `chorus cluster` commands on this machine find it, when it
/// was made at random (mode 0600, in the data directory); removes a stale one otherwise.
fn keep_secret_for_commands(config: &Config) -> anyhow::Result<()> {
    let path = config.data_dir.join(CLUSTER_SECRET_FILE);
    let secret = match (&config.cluster_secret, config.cluster_secret_generated) {
        (Some(secret), true) => secret,
        _ => {
            let _ = std::fs::remove_file(&path);
            return Ok(());
        }
    };
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
    let written = crate::secret_file::write_private(&path, secret);
    written.with_context(|| format!("writing the cluster secret to {}", path.display()))
}

/// Binds the cluster port before the node starts, so the node advertises the port it has.
///
/// A node without peers whose cluster port is not configured and finds the default taken (by
/// another node on this machine) takes a free port instead, with a warning: nothing but
/// `chorus cluster status` needs to find it. With peers, or a configured port, a port that cannot
/// be bound stops start-up.
fn bind_cluster_port(config: &mut Config) -> anyhow::Result<std::net::TcpListener> {
    let wanted = SocketAddr::new(config.host, config.cluster_port());
    let listener = match listen(wanted, CLUSTER_BACKLOG) {
        Ok(listener) => listener,
        Err(e)
            if config.cluster_port.is_none()
                && config.peers().is_none()
                && config.members_file.is_none() =>
        {
            let listener = listen(SocketAddr::new(config.host, 0), CLUSTER_BACKLOG)
                .with_context(|| format!("binding a free cluster port on {}", config.host))?;
            tracing::warn!(
                wanted = %wanted,
                error = %e,
                "the default cluster port is taken: this node alone serves its cluster port on \
                 a free port instead (set cluster_port to choose it)"
            );
            listener
        }
        Err(e) => return Err(e).with_context(|| format!("binding the cluster port {wanted}")),
    };
    config.cluster_port = Some(listener.local_addr()?.port());
    Ok(listener)
}

/// Connections the cluster port lets wait to be accepted.
const CLUSTER_BACKLOG: u32 = 1024;

/// A listener on `addr`, letting `backlog` connections wait, that can be bound again at once
/// after the node dies (`SO_REUSEADDR`, as actix binds the metrics port).
fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)?.into_std()
}

/// `POST /cluster/deliver` on the cluster port: a batch of frames another node forwarded, for
/// this node's subscribers (a node of an earlier version, which has no forwarding stream).
async fn deliver(
    _: Authorized,
    node: web::Data<Node>,
    batch: web::Json<ForwardBatch>,
) -> actix_web::HttpResponse {
    let ForwardBatch { from, frames } = batch.into_inner();
    node.cluster.forwarder().received(from, frames.len());
    let delivered = crate::router::deliver_forwarded(&node.apps, from, frames);
    actix_web::HttpResponse::Ok().json(serde_json::json!({ "delivered": delivered }))
}

/// Worker threads of the cluster port: Raft RPCs are small and handed to the Raft runtime.
const CLUSTER_WORKERS: usize = 2;

/// How often history channels are trimmed to their retention.
const RETENTION_INTERVAL: Duration = Duration::from_secs(30);

/// Trims history in the background, on a thread of its own (sled calls block).
fn spawn_retention(node: std::sync::Arc<Node>) {
    std::thread::Builder::new()
        .name("chorus-retention".into())
        .spawn(move || loop {
            std::thread::sleep(RETENTION_INTERVAL);
            match node.enforce_retention() {
                Ok(0) => {}
                Ok(removed) => tracing::debug!(removed, "history trimmed"),
                Err(e) => tracing::error!(error = %e, "trimming history failed"),
            }
        })
        .expect("spawn the retention thread");
}

/// Waits for SIGTERM or SIGINT and names the one that came.
async fn shutdown_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}
