//! The HTTP API's answers for the whole cluster: what a node asks the other nodes on their
//! cluster ports, and the cluster-port routes with which it answers them.
//!
//! - `POST /cluster/channels` takes a [`ChannelQuery`] and answers this node's [`ChannelView`];
//!   [`cluster_view`] asks every other node at once and merges their views into this node's.
//! - `POST /cluster/terminate_user` takes a [`TerminateUser`], closes the user's connections on
//!   this node and answers how many it closed; [`terminate_everywhere`] does it here and asks
//!   every other node to.
//!
//! Each other node has [`PEER_TIMEOUT`] to answer. One that does not is left out, and the API
//! answers with what the others said (see `chorus_cluster::query`, which logs and counts it). A
//! one-node cluster asks no one. Both routes require the cluster secret; a body that is not the
//! JSON they take is answered 400 (413 over [`MAX_QUESTION_BYTES`]), an app this node does not
//! serve 404, an invalid user id 400, each with a JSON `{"error": ...}`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpResponse};
use chorus_cluster::http::{bad_body, Authorized};
use chorus_cluster::Answers;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::apps::{App, Apps};
use crate::channel_view::{local_view, ChannelQuery, ChannelView, Selection};
use crate::node::Node;
use crate::protocol::channel;
use crate::webhooks::subscription_counts::send_counts;

/// The cluster-port path of channel queries.
pub const CHANNELS_PATH: &str = "/cluster/channels";

/// The cluster-port path that terminates a user's connections.
pub const TERMINATE_PATH: &str = "/cluster/terminate_user";

/// How long another node has to answer.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(1);

/// Largest body of a question (a query names at most a trigger's channels).
pub const MAX_QUESTION_BYTES: usize = 64 * 1024;

/// A request to close a user's connections.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TerminateUser {
    pub app: String,
    pub user_id: String,
}

/// How many of the user's connections a node closed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Terminated {
    pub terminated: usize,
}

/// Adds the routes other nodes ask to the cluster port's actix app (which has `web::Data<Node>`
/// and `web::Data<Cluster>`).
pub fn cluster_port_routes(cfg: &mut web::ServiceConfig) {
    let json = || {
        web::JsonConfig::default()
            .limit(MAX_QUESTION_BYTES)
            .error_handler(bad_body)
    };
    cfg.service(
        web::resource(CHANNELS_PATH)
            .app_data(json())
            .route(web::post().to(answer_channels)),
    )
    .service(
        web::resource(TERMINATE_PATH)
            .app_data(json())
            .route(web::post().to(answer_terminate)),
    );
}

/// The channels `query` selects of `app`, across the cluster: this node's view merged with every
/// other node's that answered in time.
pub async fn cluster_view(app: &App, query: &ChannelQuery) -> ChannelView {
    let (mut view, others) = futures_util::future::join(
        local_view(app, query),
        ask_others::<_, ChannelView>(app, CHANNELS_PATH, query),
    )
    .await;
    for other in others {
        view.merge(other);
    }
    view
}

/// Starts, for each app, the task that sends its `subscription_count` webhooks with the counts of
/// the whole cluster (see [`crate::webhooks::subscription_counts`]); it ends at once for an app
/// whose webhooks do not want them.
pub fn start_subscription_counts(apps: &Apps) {
    for app in apps.iter() {
        let count = {
            let app = app.clone();
            move |channels| subscription_counts(app.clone(), channels)
        };
        actix_rt::spawn(send_counts(app.webhooks.clone(), count));
    }
}

/// How many subscriptions each of `channels` of `app` has in the whole cluster.
async fn subscription_counts(app: Arc<App>, channels: Vec<String>) -> BTreeMap<String, usize> {
    let query = ChannelQuery {
        app: app.id.clone(),
        selection: Selection::Names(channels),
        users: false,
    };
    let view = cluster_view(&app, &query).await;
    (view.channels.into_iter())
        .map(|(name, occupancy)| (name, occupancy.subscription_count))
        .collect()
}

/// Closes every connection of `user` of `app` on every node that answers in time; returns how
/// many were closed.
pub async fn terminate_everywhere(app: &App, user: &str) -> usize {
    let here = app.terminate_user(user);
    let request = TerminateUser {
        app: app.id.clone(),
        user_id: user.to_owned(),
    };
    let there = ask_others::<_, Terminated>(app, TERMINATE_PATH, &request).await;
    here + there.iter().map(|t| t.terminated).sum::<usize>()
}

/// What the other nodes answered to `question` on `path` in time, in node order; nothing when
/// the cluster's runtime has stopped.
async fn ask_others<Q: Serialize, A: DeserializeOwned + Send + 'static>(
    app: &App,
    path: &str,
    question: &Q,
) -> Vec<A> {
    match app.cluster.ask_others(path, question, PEER_TIMEOUT).await {
        Ok(Answers { answered, .. }) => answered.into_values().collect(),
        Err(e) => {
            tracing::warn!(path, error = %e, "cannot ask the other nodes");
            Vec::new()
        }
    }
}

/// `POST /cluster/channels`: this node's view of the channels the query selects.
async fn answer_channels(
    _: Authorized,
    node: web::Data<Node>,
    query: web::Json<ChannelQuery>,
) -> HttpResponse {
    let Some(app) = node.apps.by_id(&query.app) else {
        return unknown_app(&query.app);
    };
    HttpResponse::Ok().json(local_view(app, &query).await)
}

/// `POST /cluster/terminate_user`: closes the user's connections on this node.
async fn answer_terminate(
    _: Authorized,
    node: web::Data<Node>,
    request: web::Json<TerminateUser>,
) -> HttpResponse {
    let Some(app) = node.apps.by_id(&request.app) else {
        return unknown_app(&request.app);
    };
    if let Err(e) = channel::validate_user_id(&request.user_id, app.limits.max_user_id_len) {
        return HttpResponse::BadRequest().json(json!({"error": format!("invalid user id: {e}")}));
    }
    let terminated = app.terminate_user(&request.user_id);
    HttpResponse::Ok().json(Terminated { terminated })
}

fn unknown_app(app: &str) -> HttpResponse {
    HttpResponse::NotFound().json(json!({"error": format!("this node serves no app {app:?}")}))
}
