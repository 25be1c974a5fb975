//! Idempotent publishing against the real binary: a publish may carry an idempotency key (the
//! body's `idempotency_key`, per event in a batch, or the `X-Idempotency-Key` header); a repeat
//! within the app's window is answered as the first publish was and delivered once, while the
//! same publish without a key is delivered as often as it is sent.
//!
//! - One node: channels without history and history channels, single events and batches; keys
//!   over 64 bytes and a header that contradicts the body are refused (400, JSON).
//! - Three nodes: a history publish acknowledged by the leader, the leader killed with
//!   `kill -9`, the publish retried on another node: the same offset and epoch in the answer, and
//!   the event stored once in every survivor's history.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::cluster::TestCluster;
use support::{read_history, signed_url, Client, NodeAddr, Server};

const HISTORY: &str = "[[apps.history]]\nchannels = \"chat-*\"\n";

/// A signed POST of `body` to `path` of the node at `node`, with `X-Idempotency-Key: key` if
/// given: the status and the answer as JSON.
async fn post(
    node: impl Into<NodeAddr>,
    path: &str,
    body: &Value,
    header_key: Option<&str>,
) -> (u16, Value) {
    let body = body.to_string().into_bytes();
    let mut request = reqwest::Client::new()
        .post(signed_url(node, "POST", path, &[], &body))
        .header("content-type", "application/json")
        .timeout(Duration::from_secs(20));
    if let Some(key) = header_key {
        request = request.header("x-idempotency-key", key);
    }
    let response = request.body(body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn event(channel: &str, data: &str, key: Option<&str>) -> Value {
    let mut e = json!({"name": "e", "channel": channel, "data": data});
    if let Some(key) = key {
        e["idempotency_key"] = key.into();
    }
    e
}

/// The data of the events of `channel` that `client` receives until (and with) the one whose
/// data is `last`; those of other channels are left aside in `others`.
async fn received_until(
    client: &mut Client,
    channel: &str,
    last: &str,
    others: &mut Vec<String>,
) -> Vec<String> {
    let mut seen = Vec::new();
    while seen.last().is_none_or(|d| d != last) {
        let frame = client.expect("e").await;
        let data = frame["data"].as_str().unwrap().to_owned();
        if frame["channel"] == channel {
            seen.push(data);
        } else {
            others.push(data);
        }
    }
    seen
}

#[tokio::test]
async fn a_repeated_publish_is_answered_the_same_and_delivered_once() {
    let server = Server::start_with("idempotency-one-node", "", "", HISTORY).await;
    let mut client = server.connect(None).await;
    client.subscribe("plain").await;
    client.subscribe("chat-room").await;
    let port = server.port;

    // A channel without history: the key in the header, then in the body.
    let once = event("plain", "once", None);
    let first = post(port, "/apps/1/events", &once, Some("plain-1")).await;
    assert_eq!(first, (200, json!({})));
    assert_eq!(
        post(port, "/apps/1/events", &once, Some("plain-1")).await,
        first
    );
    let in_body = event("plain", "in-body", Some("plain-2"));
    assert_eq!(post(port, "/apps/1/events", &in_body, None).await, first);
    assert_eq!(post(port, "/apps/1/events", &in_body, None).await, first);
    // The control: without a key, sent twice, delivered twice.
    let control = event("plain", "control", None);
    for _ in 0..2 {
        assert_eq!(post(port, "/apps/1/events", &control, None).await, first);
    }
    assert!(server.publish("plain", "end").await);
    assert_eq!(
        received_until(&mut client, "plain", "end", &mut Vec::new()).await,
        ["once", "in-body", "control", "control", "end"]
    );

    // A history channel: the same offset and epoch in the answer, stored and delivered once.
    let kept = event("chat-room", "kept", Some("chat-1"));
    let (status, answer) = post(port, "/apps/1/events", &kept, None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["history"][0]["channel"], "chat-room");
    assert_eq!(answer["history"][0]["offset"], 1);
    assert!(answer["history"][0]["epoch"].is_string(), "{answer}");
    assert_eq!(
        post(port, "/apps/1/events", &kept, None).await,
        (200, answer.clone())
    );
    let control = event("chat-room", "control", None);
    let (_, c1) = post(port, "/apps/1/events", &control, None).await;
    let (_, c2) = post(port, "/apps/1/events", &control, None).await;
    assert_eq!(
        (&c1["history"][0]["offset"], &c2["history"][0]["offset"]),
        (&json!(2), &json!(3))
    );

    // A batch with a key per event, over both kinds of channel, sent twice.
    let batch = json!({"batch": [
        event("chat-room", "b1", Some("batch-1")),
        event("plain", "b2", Some("batch-2")),
        event("chat-log", "b3", Some("batch-3")),
        event("chat-room", "b4", None),
    ]});
    let (status, first) = post(port, "/apps/1/batch_events", &batch, None).await;
    assert_eq!(status, 200, "{first}");
    let (status, again) = post(port, "/apps/1/batch_events", &batch, None).await;
    assert_eq!(status, 200, "{again}");
    let offsets = |answer: &Value| -> Vec<(String, u64)> {
        answer["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                let channel = h["channel"].as_str().unwrap().to_owned();
                (channel, h["offset"].as_u64().unwrap())
            })
            .collect()
    };
    let placed = [
        ("chat-room".to_owned(), 4),
        ("chat-log".to_owned(), 1),
        ("chat-room".to_owned(), 5),
    ];
    assert_eq!(offsets(&first), placed);
    // The event without a key is placed again; the keyed ones are not.
    assert_eq!(offsets(&again)[..2], placed[..2]);
    assert_eq!(offsets(&again)[2], ("chat-room".to_owned(), 6));
    assert!(server.publish("plain", "end-2").await);
    let mut live_history = Vec::new();
    let plain = received_until(&mut client, "plain", "end-2", &mut live_history).await;
    assert_eq!(plain, ["b2", "end-2"]);
    assert!(server.publish("chat-room", "end-3").await);
    received_until(&mut client, "chat-room", "end-3", &mut Vec::new())
        .await
        .into_iter()
        .for_each(|d| live_history.push(d));
    assert_eq!(
        live_history,
        ["kept", "control", "control", "b1", "b4", "b4", "end-3"],
        "history events delivered live once"
    );
    let (_, room) = read_history(port, "chat-room").await;
    let room: Vec<&str> = room.iter().map(|(_, d)| d.as_str()).collect();
    assert_eq!(
        room,
        ["kept", "control", "control", "b1", "b4", "b4", "end-3"]
    );
    let (_, log) = read_history(port, "chat-log").await;
    assert_eq!(log, [(1, "b3".to_owned())]);

    // Keys over 64 bytes are refused, and so is a header that contradicts the body.
    let long = "k".repeat(65);
    let (status, error) = post(port, "/apps/1/events", &once, Some(&long)).await;
    assert_eq!(status, 400, "{error}");
    assert!(error["error"].as_str().unwrap().contains("64"), "{error}");
    let (status, error) = post(
        port,
        "/apps/1/batch_events",
        &json!({"batch": [event("plain", "x", Some(&long))]}),
        None,
    )
    .await;
    assert_eq!(status, 400, "{error}");
    let batch = json!({"batch": [event("plain", "x", None)]});
    let (status, error) = post(port, "/apps/1/batch_events", &batch, Some("k")).await;
    assert_eq!(status, 400, "{error}");
    assert!(
        error["error"].as_str().unwrap().contains("each event"),
        "{error}"
    );
    let (status, error) = post(port, "/apps/1/events", &in_body, Some("other")).await;
    assert_eq!(status, 400, "{error}");
    assert!(
        error["error"].as_str().unwrap().contains("differ"),
        "{error}"
    );
    assert_eq!(
        post(
            port,
            "/apps/1/events",
            &event("plain", "x", None),
            Some(&"k".repeat(64))
        )
        .await,
        (200, json!({})),
        "64 bytes are fine"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_the_leader_is_killed_gets_the_same_offset_and_is_stored_once() {
    const CHANNEL: &str = "history-retried";
    let mut cluster = TestCluster::start("idempotency-leader-kill", 3).await;
    let (leader, _) = cluster
        .agreed_leader(&[1, 2, 3], 3, Duration::from_secs(20))
        .await;
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|&id| id != leader).collect();

    let before = event(CHANNEL, "before", None);
    let (status, answer) = post(cluster.node(leader).port, "/apps/1/events", &before, None).await;
    assert_eq!(status, 200, "{answer}");
    let published = event(CHANNEL, "published", Some("retried-1"));
    let (status, first) = post(
        cluster.node(leader).port,
        "/apps/1/events",
        &published,
        None,
    )
    .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["history"][0]["offset"], 2, "{first}");

    cluster.kill_hard(leader);
    cluster
        .agreed_leader(&others, 3, Duration::from_secs(30))
        .await;
    // The retry, on another node (a follower's publish goes through the new leader).
    let retry_on = cluster.node(others[0]).port;
    let retried = post(retry_on, "/apps/1/events", &published, None).await;
    assert_eq!(retried, (200, first.clone()), "the same answer");
    // The control: the same publish without a key is stored again.
    let control = event(CHANNEL, "published", None);
    let (status, answer) = post(retry_on, "/apps/1/events", &control, None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["history"][0]["offset"], 3, "{answer}");

    let expected: Vec<(u64, String)> = vec![
        (1, "before".into()),
        (2, "published".into()),
        (3, "published".into()),
    ];
    for &id in &others {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (epoch, events) = read_history(cluster.node(id).port, CHANNEL).await;
            if events == expected {
                assert_eq!(epoch, first["history"][0]["epoch"].as_str().unwrap());
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "node {id} has {events:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_history_is_not_committed_publishes_nothing_and_holds_its_keys_meanwhile() {
    const PUBLISHED: &str = r#"chorus_events_published_total{app_id="1",source="api"}"#;
    let cluster = TestCluster::start("idempotency-no-quorum", 3).await;
    let (leader, _) = cluster
        .agreed_leader(&[1, 2, 3], 3, Duration::from_secs(20))
        .await;
    let port = cluster.node(leader).port;
    let mut client = cluster.node(leader).connect().await;
    client.subscribe("live-side").await;
    client.subscribe("history-side").await;
    let batch = json!({"batch": [
        event("live-side", "mixed", Some("mixed-live")),
        event("history-side", "mixed", Some("mixed-history")),
    ]});

    // No quorum: the batch's history event cannot be committed.
    for id in [1, 2, 3].into_iter().filter(|&id| id != leader) {
        cluster.freeze(id);
    }
    let first = tokio::spawn({
        let batch = batch.clone();
        async move { post(port, "/apps/1/batch_events", &batch, None).await }
    });
    // Staged (both events counted), the batch waits for its commit, holding its keys: a repeat
    // is told so rather than answered as a publish that may yet be refused.
    cluster
        .await_metric(leader, PUBLISHED, 2.0, Duration::from_secs(10))
        .await;
    let (status, answer) = post(port, "/apps/1/batch_events", &batch, None).await;
    assert_eq!(status, 409, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("mixed-live"));
    let (status, answer) = first.await.unwrap();
    assert_eq!(status, 503, "{answer}");

    // The retry once the quorum is back: published once, its live event too (the control that
    // the subscriber would have seen one before).
    for id in [1, 2, 3].into_iter().filter(|&id| id != leader) {
        cluster.thaw(id);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let retried = loop {
        let (status, answer) = post(port, "/apps/1/batch_events", &batch, None).await;
        if status == 200 {
            break answer;
        }
        assert!(std::time::Instant::now() < deadline, "{status} {answer}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(retried["history"][0]["offset"], 1, "{retried}");
    let mut got = Vec::new();
    while got.len() < 2 {
        let frame = client.expect("e").await;
        got.push(frame["channel"].as_str().unwrap().to_owned());
    }
    got.sort();
    assert_eq!(got, ["history-side", "live-side"], "each once");
    // A repeat now is answered the same and delivered nowhere: a marker published after it is
    // the next frame the subscriber sees.
    let repeat = post(port, "/apps/1/batch_events", &batch, None).await;
    assert_eq!(repeat, (200, retried));
    let marker = event("live-side", "marker", None);
    assert_eq!(post(port, "/apps/1/events", &marker, None).await.0, 200);
    let next = client.expect("e").await;
    assert_eq!(next["data"], "marker", "{next}");
}
