//! Asking every other member at once, in one process: a one-node cluster asks no one; with other
//! members in its Raft membership (learners, as joining nodes are), the node gets the answer of
//! the one that answers (which sees the cluster secret) and leaves out, within the timeout, the
//! one that never answers, the one nothing listens for and the one that refuses, counting each by
//! its reason.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse};
use chorus_cluster::http::Authorized;
use chorus_cluster::{Cluster, ClusterSecret, ClusterSettings, Node, Peers, Role};
use chorus_storage::Store;
use prometheus::{Encoder, Registry, TextEncoder};
use serde_json::{json, Value};

use support::{serve, serve_cluster_port, unused_port};

const SECRET: &str = "in-process-cluster-secret";

/// Answers what it was asked, if the cluster secret came with it.
async fn echo(_: Authorized, question: web::Json<Value>) -> HttpResponse {
    HttpResponse::Ok().json(json!({"asked": question.into_inner()}))
}

/// The lines of `registry`'s text exposition that start with `series`.
fn exposed(registry: &Registry, series: &str) -> Vec<String> {
    let mut text = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut text)
        .unwrap();
    String::from_utf8(text)
        .unwrap()
        .lines()
        .filter(|line| line.starts_with(series))
        .map(str::to_owned)
        .collect()
}

#[test]
fn answers_come_from_the_members_that_answer_in_time_and_the_others_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let registry = Registry::new();
    let port = unused_port();
    let settings = ClusterSettings {
        node_id: 1,
        advertise_addr: format!("127.0.0.1:{port}"),
        peers: Some(Peers::Static(BTreeMap::from([(
            1,
            format!("127.0.0.1:{port}"),
        )]))),
        secret: ClusterSecret::new(SECRET),
        dead_after: chorus_cluster::DEFAULT_DEAD_AFTER,
        snapshot_every: chorus_cluster::DEFAULT_SNAPSHOT_EVERY,
        local_address: None,
        tls: None,
        members_file: None,
    };
    actix_web::rt::System::new().block_on(async {
        // No one takes what it commits: the feed is dropped.
        let (cluster, _) = Cluster::start(settings, &store, &registry).unwrap();
        serve_cluster_port(&cluster, port);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let status = cluster.status();
            if status.state == Role::Leader && status.members.iter().all(|m| m.recorded) {
                break;
            }
            assert!(Instant::now() < deadline, "no one-node cluster: {status:?}");
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
        let timeout = Duration::from_millis(500);

        let alone = cluster
            .ask_others::<_, Value>("/echo", &json!({"n": 1}), timeout)
            .await
            .unwrap();
        assert!(alone.answered.is_empty() && alone.unanswered.is_empty());

        let answering = unused_port();
        // The secret is checked against the asking node's, as its peers would.
        let echo_data = web::Data::new(cluster.clone());
        serve(answering, move || {
            App::new()
                .app_data(echo_data.clone())
                .route("/echo", web::post().to(echo))
        });
        // Accepts connections (the kernel does) and never answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let refusing = unused_port();
        serve(refusing, App::new);
        let members = [
            (2, answering),
            (3, silent.local_addr().unwrap().port()),
            (4, unused_port()),
            (5, refusing),
        ];
        for (id, port) in members {
            let node = Node::new(format!("127.0.0.1:{port}"));
            let raft = cluster.raft().clone();
            cluster
                .on_raft_runtime(async move { raft.add_learner(id, node, false).await })
                .await
                .unwrap()
                .unwrap();
        }

        let started = Instant::now();
        let answers = cluster
            .ask_others::<_, Value>("/echo", &json!({"n": 2}), timeout)
            .await
            .unwrap();
        let took = started.elapsed();
        assert_eq!(
            answers.answered,
            BTreeMap::from([(2, json!({"asked": {"n": 2}}))])
        );
        assert_eq!(answers.unanswered, vec![3, 4, 5]);
        assert!(
            took >= timeout && took < timeout * 3,
            "the silent member was waited for {took:?}"
        );
        assert_eq!(
            exposed(&registry, "chorus_cluster_query_unanswered_total{"),
            [
                r#"chorus_cluster_query_unanswered_total{peer="3",reason="timeout"} 1"#,
                r#"chorus_cluster_query_unanswered_total{peer="4",reason="unreachable"} 1"#,
                r#"chorus_cluster_query_unanswered_total{peer="5",reason="refused"} 1"#,
            ]
        );
        drop(silent);
        cluster.shutdown();
    });
}
