//! The HTTP API of real `chorus` processes in a three-node cluster answers for the whole cluster
//! from any node: channels are the union of the nodes' channels, subscription counts are summed,
//! presence users are the union (a user connected on two nodes counts once). A user's
//! connections are terminated on every node, and an event sent to a user (`sendToUser` publishes
//! on `#server-to-user-{id}`) reaches the user's connection on another node. A node that does
//! not answer in time (paused) or at all (killed) is left out, the API answers promptly with the
//! others' views, and the node counts it. The cluster-port routes behind this want the secret and
//! a well-formed question.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::cluster::{ClusterNode, TestCluster, CLUSTER_SECRET};
use support::Client;

/// A signed `GET path` of node's HTTP API with `params`: the status and the JSON body.
async fn api_get(node: &ClusterNode, path: &str, params: &[(&str, &str)]) -> (u16, Value) {
    let url = support::signed_url(node.port, "GET", path, params, b"");
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// The ids of `/users` of `channel` as node answers them.
async fn user_ids(node: &ClusterNode, channel: &str) -> BTreeSet<String> {
    let path = format!("/apps/1/channels/{channel}/users");
    let (status, body) = api_get(node, &path, &[]).await;
    assert_eq!(status, 200, "{body}");
    body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|user| user["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Connects `count` clients to `node`, each subscribed to `channel`.
async fn subscribers(node: &ClusterNode, channel: &str, count: usize) -> Vec<Client> {
    let mut clients = Vec::with_capacity(count);
    for _ in 0..count {
        let mut client = node.connect().await;
        client.subscribe(channel).await;
        clients.push(client);
    }
    clients
}

/// A signed API request (path and query parameters) and the answer expected.
type Expected = (&'static str, &'static [(&'static str, &'static str)], Value);

/// Three nodes that agree on a leader, their members recorded.
async fn three_nodes(name: &str) -> TestCluster {
    let cluster = TestCluster::start(name, 3).await;
    cluster
        .agreed_leader(&[1, 2, 3], 3, Duration::from_secs(20))
        .await;
    cluster
}

/// A client of `node` in presence channel `channel` as `user`.
async fn member(node: &ClusterNode, channel: &str, user: &str) -> Client {
    let mut client = node.connect().await;
    client
        .subscribe_presence(channel, user, serde_json::json!({}))
        .await;
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_counts_and_users_are_the_whole_clusters_from_any_node() {
    let cluster = three_nodes("api-union").await;
    let _news = [
        subscribers(cluster.node(1), "news", 1).await,
        subscribers(cluster.node(2), "news", 2).await,
        subscribers(cluster.node(3), "news", 1).await,
    ];
    let _sport = subscribers(cluster.node(3), "sport", 1).await;
    let _room = [
        member(cluster.node(1), "presence-room", "ann").await,
        member(cluster.node(2), "presence-room", "bob").await,
        member(cluster.node(3), "presence-room", "ann").await,
        member(cluster.node(3), "presence-room", "cid").await,
    ];

    let answers: [Expected; 6] = [
        (
            "/apps/1/channels",
            &[("info", "subscription_count")],
            json!({"channels": {
                "news": {"subscription_count": 4},
                "presence-room": {"subscription_count": 4},
                "sport": {"subscription_count": 1},
            }}),
        ),
        (
            "/apps/1/channels",
            &[
                ("filter_by_prefix", "presence-"),
                ("info", "user_count,subscription_count"),
            ],
            json!({"channels": {"presence-room": {"user_count": 3, "subscription_count": 4}}}),
        ),
        (
            "/apps/1/channels/news",
            &[("info", "subscription_count")],
            json!({"occupied": true, "subscription_count": 4}),
        ),
        ("/apps/1/channels/sport", &[], json!({"occupied": true})),
        (
            "/apps/1/channels/nobody-here",
            &[("info", "subscription_count")],
            json!({"occupied": false, "subscription_count": 0}),
        ),
        (
            "/apps/1/channels/presence-room",
            &[("info", "user_count,subscription_count")],
            json!({"occupied": true, "user_count": 3, "subscription_count": 4}),
        ),
    ];
    for id in [1, 2, 3] {
        let node = cluster.node(id);
        for (path, params, expected) in &answers {
            let (status, answer) = api_get(node, path, params).await;
            assert_eq!(status, 200, "node {id}, {path}: {answer}");
            assert_eq!(&answer, expected, "node {id}, {path} {params:?}");
        }
        let expected: BTreeSet<String> = ["ann", "bob", "cid"].map(String::from).into();
        assert_eq!(user_ids(node, "presence-room").await, expected, "node {id}");
    }

    let unanswered = "chorus_cluster_query_unanswered_total";
    for id in [1, 2, 3] {
        let metrics = reqwest::get(format!(
            "http://127.0.0.1:{}/metrics",
            cluster.node(id).metrics_port
        ))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
        assert!(
            !metrics.lines().any(|line| line.starts_with(unanswered)),
            "every question was answered on node {id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_on_node_3_gets_send_to_user_from_node_2_and_is_terminated_from_node_1() {
    let cluster = three_nodes("api-users").await;
    let mut alice = cluster.node(3).connect().await;
    alice.sign_in("alice").await;
    let mut bob = cluster.node(3).connect().await;
    bob.sign_in("bob").await;
    cluster
        .await_interest(2, "#server-to-user-alice", &[3], Duration::from_secs(5))
        .await;

    // What the server SDKs' sendToUser does: an event on the user's channel.
    let body = json!({"name": "note", "channel": "#server-to-user-alice", "data": "for alice"});
    let (status, answer) =
        support::post(cluster.node(2).port, "/apps/1/events", body.to_string()).await;
    assert_eq!(status, 200, "{answer}");
    let note = alice.expect("note").await;
    assert_eq!(note["channel"], "#server-to-user-alice");
    assert_eq!(note["data"], "for alice");

    let (status, answer) = support::post(
        cluster.node(1).port,
        "/apps/1/users/alice/terminate_connections",
        "{}",
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let error = alice.expect("pusher:error").await;
    assert_eq!(support::data(&error)["code"], 4009, "{error}");
    assert_eq!(alice.close_code().await, Some(4009));
    bob.ping().await;
}

/// The subscription count of `news` as node `id` answers it, and how long it took.
async fn news_count(cluster: &TestCluster, id: u64) -> (u64, Duration) {
    let started = Instant::now();
    let (status, news) = api_get(
        cluster.node(id),
        "/apps/1/channels/news",
        &[("info", "subscription_count")],
    )
    .await;
    assert_eq!(status, 200, "{news}");
    (
        news["subscription_count"].as_u64().unwrap(),
        started.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_does_not_answer_is_left_out_promptly_and_counted() {
    let mut cluster = three_nodes("api-silent").await;
    let _news = [
        subscribers(cluster.node(1), "news", 1).await,
        subscribers(cluster.node(2), "news", 2).await,
        subscribers(cluster.node(3), "news", 4).await,
    ];
    assert_eq!(news_count(&cluster, 1).await.0, 7);

    cluster.freeze(3);
    answers_without(&cluster, (3, "timeout"), 3, Duration::from_millis(2500)).await;
    cluster.thaw(3);
    assert_eq!(news_count(&cluster, 1).await.0, 7, "node 3 answers again");
    cluster.kill_hard(2);
    answers_without(&cluster, (2, "unreachable"), 5, Duration::from_millis(1500)).await;
}

/// Node 1 answers `news`'s subscription count as `count`, within `within`, without `missing`'s
/// node, whose missing answer it counted once for `missing`'s reason.
async fn answers_without(
    cluster: &TestCluster,
    missing: (u64, &str),
    count: u64,
    within: Duration,
) {
    let (node, reason) = missing;
    let (answered, took) = news_count(cluster, 1).await;
    assert_eq!(answered, count, "without node {node} ({reason})");
    assert!(took < within, "answered after {took:?} without node {node}");
    let series =
        format!(r#"chorus_cluster_query_unanswered_total{{peer="{node}",reason="{reason}"}}"#);
    assert_eq!(cluster.metric(1, &series).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_port_query_routes_want_the_secret_and_a_well_formed_question() {
    let cluster = TestCluster::start("api-routes", 1).await;
    cluster
        .agreed_leader(&[1], 1, Duration::from_secs(10))
        .await;
    let node = cluster.node(1);
    let _news = subscribers(node, "news", 2).await;
    let client = reqwest::Client::new();
    let post = |path: &str, secret: Option<&str>, body: &str| {
        let mut request = client
            .post(node.cluster_url(path))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(secret) = secret {
            request = request.header(chorus_cluster::SECRET_HEADER, secret);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.expect("a JSON answer");
            (status, body)
        }
    };
    let query = r#"{"app":"1","selection":{"prefix":""},"users":false}"#;
    let terminate = r#"{"app":"1","user_id":"alice"}"#;
    for (path, good) in [
        ("/cluster/channels", query),
        ("/cluster/terminate_user", terminate),
    ] {
        let (status, body) = post(path, None, good).await;
        assert_eq!(status, 401, "{path} without the secret: {body}");
        let (status, body) = post(path, Some("not-the-cluster-secret"), good).await;
        assert_eq!(status, 401, "{path} with a wrong secret: {body}");
        for bad in ["", "{", "[]", r#"{"app":1}"#, "\u{0}\u{ff}"] {
            let (status, body) = post(path, Some(CLUSTER_SECRET), bad).await;
            assert_eq!(status, 400, "{path} with {bad:?}: {body}");
            assert!(body["error"].is_string(), "{body}");
        }
        let huge = format!(r#"{{"app":"{}"}}"#, "x".repeat(100_000));
        let (status, body) = post(path, Some(CLUSTER_SECRET), &huge).await;
        assert_eq!(status, 413, "{path} with a huge body: {body}");
        let unknown_app = good.replace(r#""app":"1""#, r#""app":"9""#);
        let (status, body) = post(path, Some(CLUSTER_SECRET), &unknown_app).await;
        assert_eq!(status, 404, "{path} for an unknown app: {body}");
    }
    let (status, body) = post("/cluster/channels", Some(CLUSTER_SECRET), query).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"channels": {"news": {"subscription_count": 2, "users": []}}})
    );
    let bad_user = r#"{"app":"1","user_id":""}"#;
    let (status, body) = post("/cluster/terminate_user", Some(CLUSTER_SECRET), bad_user).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = post("/cluster/terminate_user", Some(CLUSTER_SECRET), terminate).await;
    assert_eq!((status, body), (200, json!({"terminated": 0})));

    // A one-node cluster answers the HTTP API on the same path, asking no one.
    let (status, all) = api_get(node, "/apps/1/channels", &[("info", "subscription_count")]).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(
        all,
        json!({"channels": {"news": {"subscription_count": 2}}})
    );
}
