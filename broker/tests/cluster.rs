//! Real `chorus` processes forming a Raft cluster: three nodes started with the same peer list
//! agree on one leader with no further command; after `kill -9` of the leader the other two
//! elect a new one; the killed node, restarted on its data directory, rejoins and catches up. The
//! cluster port refuses requests without the secret, and `chorus cluster status` reads it.
//!
//! The data plane: a REST publish to one node reaches raw WebSocket subscribers on the others, in
//! order, and stops going to a node once its last subscriber left; a client event reaches the
//! other nodes' subscribers and not its sender; a node killed and restarted leaves no interest
//! of its earlier run.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::json;
use support::cluster::{TestCluster, CLUSTER_SECRET};
use support::Client;

/// Reads the next `count` events named `event` on `channel`, skipping nothing else, and returns
/// their data.
async fn events(client: &mut Client, channel: &str, event: &str, count: usize) -> Vec<String> {
    let mut seen = Vec::with_capacity(count);
    while seen.len() < count {
        let frame = client
            .next()
            .await
            .unwrap_or_else(|| panic!("socket closed after {} events", seen.len()));
        assert_eq!(frame["event"], event, "{frame}");
        assert_eq!(frame["channel"], channel, "{frame}");
        seen.push(match &frame["data"] {
            serde_json::Value::String(text) => text.clone(),
            other => other.to_string(),
        });
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rest_publish_reaches_the_other_nodes_in_order_until_their_subscribers_leave() {
    let cluster = TestCluster::start("forward", 3).await;
    cluster
        .agreed_leader(&[1, 2, 3], 3, Duration::from_secs(20))
        .await;
    let mut on_2 = cluster.node(2).connect().await;
    let mut on_3 = cluster.node(3).connect().await;
    on_2.subscribe("news").await;
    on_3.subscribe("news").await;
    cluster
        .await_interest(1, "news", &[2, 3], Duration::from_secs(5))
        .await;

    let published: Vec<String> = (0..500).map(|n| n.to_string()).collect();
    for data in &published {
        assert!(cluster.node(1).publish("news", data).await);
    }
    assert_eq!(events(&mut on_2, "news", "e", 500).await, published);
    assert_eq!(events(&mut on_3, "news", "e", 500).await, published);
    let forwarded_to = |peer: u64| format!("chorus_forwarded_frames_total{{peer=\"{peer}\"}}");
    for peer in [2, 3] {
        // Counted once the peer answered the batch, which may be just after it delivered it.
        cluster
            .await_metric(1, &forwarded_to(peer), 500.0, Duration::from_secs(2))
            .await;
        let dropped = format!("chorus_forward_dropped_total{{peer=\"{peer}\"}}");
        assert_eq!(cluster.metric_or_zero(1, &dropped).await, 0.0);
        let received = "chorus_forward_received_frames_total{peer=\"1\"}";
        assert_eq!(cluster.metric(peer, received).await, 500.0);
    }

    on_3.send_json(json!({"event": "pusher:unsubscribe", "data": {"channel": "news"}}))
        .await;
    cluster
        .await_interest(1, "news", &[2], Duration::from_secs(5))
        .await;
    let more: Vec<String> = (500..520).map(|n| n.to_string()).collect();
    for data in &more {
        assert!(cluster.node(1).publish("news", data).await);
    }
    assert_eq!(events(&mut on_2, "news", "e", 20).await, more);
    cluster
        .await_metric(1, &forwarded_to(2), 520.0, Duration::from_secs(2))
        .await;
    // Nothing more was forwarded to node 3: a control event on a channel it does watch goes
    // after the 20 on the same ordered stream, is the next event its client gets, and is
    // counted alone (521 would mean the others went too).
    on_3.subscribe("control").await;
    cluster
        .await_interest(1, "control", &[3], Duration::from_secs(5))
        .await;
    assert!(cluster.node(1).publish("control", "after leaving").await);
    assert_eq!(
        events(&mut on_3, "control", "e", 1).await,
        ["after leaving"]
    );
    cluster
        .await_metric(1, &forwarded_to(3), 501.0, Duration::from_secs(2))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_events_cross_nodes_and_a_restarted_node_leaves_no_stale_interest() {
    let mut cluster = TestCluster::start("client-events", 3).await;
    cluster
        .agreed_leader(&[1, 2, 3], 3, Duration::from_secs(20))
        .await;
    let channel = "private-chat";
    let mut sender = cluster.node(2).connect().await;
    let mut on_1 = cluster.node(1).connect().await;
    let mut on_3 = cluster.node(3).connect().await;
    for client in [&mut sender, &mut on_1, &mut on_3] {
        client.subscribe_private(channel).await;
    }
    cluster
        .await_interest(2, channel, &[1, 2, 3], Duration::from_secs(5))
        .await;

    let sent: Vec<String> = (0..5).map(|n| json!({"n": n}).to_string()).collect();
    for data in &sent {
        sender
            .send_text(format!(
                r#"{{"event":"client-typing","channel":"{channel}","data":{data}}}"#
            ))
            .await;
    }
    assert_eq!(events(&mut on_3, channel, "client-typing", 5).await, sent);
    assert_eq!(events(&mut on_1, channel, "client-typing", 5).await, sent);
    sender
        .send_json(json!({"event": "pusher:ping", "data": {}}))
        .await;
    let answer = sender.next().await.expect("the sender's socket is open");
    assert_eq!(
        answer["event"], "pusher:pong",
        "the sender gets none of its own events back: {answer}"
    );

    cluster.kill_hard(3);
    cluster.restart(3).await;
    cluster
        .await_interest(2, channel, &[1, 2], Duration::from_secs(15))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_a_cluster_survive_the_leaders_death_and_take_it_back() {
    let mut cluster = TestCluster::start("failover", 3).await;
    let (first_leader, statuses) = cluster
        .agreed_leader(&[1, 2, 3], 3, Duration::from_secs(20))
        .await;
    for (id, status) in &statuses {
        assert_eq!(status.node_id, *id);
        let addresses: Vec<(u64, String)> = status
            .members
            .iter()
            .map(|m| (m.id, m.addr.clone()))
            .collect();
        let expected: Vec<(u64, String)> = cluster
            .nodes
            .values()
            .map(|node| (node.id, node.cluster_addr()))
            .collect();
        assert_eq!(addresses, expected, "node {id}'s members");
    }
    let applied_before_kill = statuses[&first_leader]
        .applied_index
        .expect("the leader applied its entries");

    cluster.kill_hard(first_leader);
    let survivors: Vec<u64> = [1, 2, 3]
        .into_iter()
        .filter(|id| *id != first_leader)
        .collect();
    let (second_leader, statuses) = cluster
        .agreed_leader(&survivors, 3, Duration::from_secs(10))
        .await;
    assert_ne!(second_leader, first_leader);
    assert!(statuses[&second_leader].term > 1, "a new term");
    let applied_by_new_leader = statuses[&second_leader].applied_index.unwrap();
    let metric = |name| cluster.metric(second_leader, name);
    assert_eq!(metric("chorus_raft_is_leader").await, 1.0);
    assert_eq!(
        metric("chorus_raft_term").await,
        statuses[&second_leader].term as f64
    );
    assert!(
        metric("chorus_raft_leader_changes_total").await >= 2.0,
        "node {second_leader} saw node {first_leader} lead, then itself"
    );
    assert!(metric("chorus_raft_applied_index").await >= applied_by_new_leader as f64);
    let unreachable = r#"chorus_raft_rpc_errors_total{kind="unreachable",rpc="append_entries"}"#;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while cluster.metric_or_zero(second_leader, unreachable).await == 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the new leader counts its failed appends to the dead node"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        applied_by_new_leader > applied_before_kill,
        "the new leader committed its term's first entry while node {first_leader} was down"
    );

    cluster.restart(first_leader).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let rejoined = cluster.status(first_leader).await;
        let leader = cluster.status(second_leader).await.unwrap();
        if let Some(rejoined) = &rejoined {
            if rejoined.leader_id == Some(second_leader)
                && rejoined.applied_index >= leader.applied_index
            {
                assert!(rejoined.applied_index >= Some(applied_by_new_leader));
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node {first_leader} did not rejoin and catch up: it says {rejoined:#?}, the leader \
             says {leader:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster
        .agreed_leader(&[1, 2, 3], 3, Duration::from_secs(10))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_to_the_list_later_joins_as_a_voter() {
    let mut cluster = TestCluster::start("join", 3).await;
    let (leader, _) = cluster
        .agreed_leader(&[1, 2, 3], 3, Duration::from_secs(20))
        .await;
    assert_eq!(cluster.add_node().await, 4);
    let (leader_after, statuses) = cluster
        .agreed_leader(&[1, 2, 3, 4], 4, Duration::from_secs(20))
        .await;
    assert_eq!(leader_after, leader, "joining needs no election");
    let addresses = |id: u64| -> Vec<(u64, String, bool)> {
        statuses[&id]
            .members
            .iter()
            .map(|m| (m.id, m.addr.clone(), m.voter))
            .collect()
    };
    let expected: Vec<(u64, String, bool)> = cluster
        .nodes
        .values()
        .map(|node| (node.id, node.cluster_addr(), true))
        .collect();
    for id in 1..=4 {
        assert_eq!(addresses(id), expected, "node {id}'s members");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_port_wants_the_secret_and_the_status_command_reads_it() {
    let cluster = TestCluster::start("secret", 1).await;
    let (leader, _) = cluster
        .agreed_leader(&[1], 1, Duration::from_secs(10))
        .await;
    assert_eq!(leader, 1, "a node alone forms a one-node cluster");
    let node = cluster.node(1);
    let client = reqwest::Client::new();

    let without = client
        .get(node.cluster_url("/cluster"))
        .send()
        .await
        .unwrap();
    assert_eq!(without.status(), 401);
    let wrong = client
        .get(node.cluster_url("/cluster"))
        .header(chorus_cluster::SECRET_HEADER, "not-the-cluster-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let vote = client
        .post(node.cluster_url("/raft/vote"))
        .json(&serde_json::json!({"vote": {"leader_id": {"term": 99, "node_id": 7}, "committed": false}, "last_log_id": null}))
        .send()
        .await
        .unwrap();
    assert_eq!(vote.status(), 401, "a vote without the secret is refused");
    let status = cluster.status(1).await.unwrap();
    assert_eq!(status.term, 1, "the refused vote changed nothing");

    let status_command = |secret: &str| {
        Command::new(env!("CARGO_BIN_EXE_chorus"))
            .args(["cluster", "status", "--addr", &node.cluster_addr()])
            .args(["--secret", secret])
            .env("CHORUS_LOG", "error")
            .output()
            .unwrap()
    };
    let output = status_command(CLUSTER_SECRET);
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{text}");
    assert!(
        text.starts_with("node 1: leader, term 1\nleader: node 1\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "1  voter    {}  (leader, this node",
            node.cluster_addr()
        )),
        "{text}"
    );

    let refused = status_command("not-the-cluster-secret");
    assert!(!refused.status.success());
    let error = String::from_utf8(refused.stderr).unwrap();
    assert!(error.contains("401"), "{error}");
}
