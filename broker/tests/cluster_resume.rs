//! A client resuming a history channel on a node a few entries behind its cluster, with real
//! `chorus` processes: a follower is held behind (its links cut by the test's per-node proxies)
//! while the leader commits more; a client that saw offset N through the leader resumes on the
//! follower.
//!
//! - Held behind for longer than the node waits: the client is told `recovered: false` (the
//!   follower's position), after the wait and not before.
//! - Healed within the wait: nothing is answered while the follower is behind; once it has
//!   stored offset N, the client is told `recovered: true` and gets exactly N+1.., once each,
//!   replayed or live.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::cluster::TestCluster;
use support::partition::Cut;
use support::{publish_batch, Client, NodeAddr};

const CHANNEL: &str = "history-resume";

/// How long a node waits to store what a resuming client saw (`chorus_broker::subscriptions`).
const RESUME_WAIT: Duration = chorus_broker::subscriptions::RESUME_WAIT;

/// The offsets `node` has stored of [`CHANNEL`] (none while it has no history of it), and its
/// epoch.
async fn stored(node: impl Into<NodeAddr>) -> (Option<String>, Vec<u64>) {
    let path = format!("/apps/1/channels/{CHANNEL}/history");
    let url = support::signed_url(node, "GET", &path, &[], b"");
    let page: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    let epoch = page["epoch"].as_str().map(str::to_owned);
    let offsets = page["events"].as_array().unwrap().iter();
    (
        epoch,
        offsets.map(|e| e["offset"].as_u64().unwrap()).collect(),
    )
}

/// Publishes `data` to [`CHANNEL`] through `node`, which must acknowledge it.
async fn publish(node: impl Into<NodeAddr>, data: &[&str]) {
    let data: Vec<String> = data.iter().map(|d| d.to_string()).collect();
    assert_eq!(publish_batch(node, CHANNEL, &data).await, Some(200));
}

/// The next history events of `client`, as (offset, data), until `last`.
async fn events_until(client: &mut Client, last: u64) -> Vec<(u64, String)> {
    let mut events = Vec::new();
    while events.last().is_none_or(|(offset, _)| *offset < last) {
        let frame = client.expect("e").await;
        assert_eq!(frame["channel"], CHANNEL, "{frame}");
        let offset = frame["offset"].as_u64().unwrap();
        events.push((offset, frame["data"].as_str().unwrap().to_owned()));
    }
    events
}

/// Sends a resume of [`CHANNEL`] from `since`, then a ping: the pong is the next frame, so
/// the resume was not answered at once.
async fn resume_unanswered(client: &mut Client, since: Value) {
    client
        .send_json(json!({"event": "pusher:subscribe",
            "data": {"channel": CHANNEL, "since": since}}))
        .await;
    client
        .send_json(json!({"event": "pusher:ping", "data": {}}))
        .await;
    let next = client.next().await.expect("the socket is open");
    assert_eq!(next["event"], "pusher:pong", "answered at once: {next}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_on_a_follower_a_few_entries_behind_waits_for_it_then_replays_exactly() {
    let cluster = TestCluster::start_behind_proxies("resume", 3, &[]).await;
    let (leader, _) = cluster
        .agreed_leader(&[1, 2, 3], 3, Duration::from_secs(20))
        .await;
    let follower_id = [1, 2, 3].into_iter().find(|&id| id != leader).unwrap();
    let (leader, follower) = (
        cluster.node(leader).public_addr(),
        cluster.node(follower_id).public_addr(),
    );
    let mut seen = support::connect(leader, None).await;
    seen.subscribe(CHANNEL).await;
    publish(leader, &["1", "2", "3"]).await;
    let epoch = seen.expect("e").await["epoch"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    while stored(follower).await.1 != [1, 2, 3] {
        assert!(
            Instant::now() < deadline,
            "the follower did not store 1..=3"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    cluster.isolate(follower_id, Cut::Dropped);
    publish(leader, &["4", "5", "6"]).await;
    let seen_events = events_until(&mut seen, 6).await;
    assert_eq!(seen_events.last().unwrap().0, 6, "{seen_events:?}");
    let since = json!({"epoch": epoch, "offset": 6});

    // Held behind throughout: after the wait, the old answer, at the follower's position.
    let mut control = support::connect(follower, None).await;
    resume_unanswered(&mut control, since.clone()).await;
    let answer = control
        .expect_channel_answer_within(CHANNEL, RESUME_WAIT + Duration::from_secs(5))
        .await;
    let data = support::data(&answer);
    assert_eq!(
        (&data["recovered"], &data["epoch"], &data["offset"]),
        (&json!(false), &json!(epoch), &json!(3)),
        "{answer}"
    );

    // Healed within the wait: recovered, exactly 7.. once each.
    let mut resumed = support::connect(follower, None).await;
    resume_unanswered(&mut resumed, since).await;
    publish(leader, &["7"]).await;
    cluster.heal();
    let answer = resumed
        .expect_channel_answer_within(CHANNEL, RESUME_WAIT + Duration::from_secs(5))
        .await;
    let data = support::data(&answer);
    assert_eq!(data["recovered"], true, "{answer}");
    assert_eq!(data["epoch"], epoch, "{answer}");
    publish(leader, &["8"]).await;
    let events = events_until(&mut resumed, 8).await;
    assert_eq!(events, [(7, "7".to_owned()), (8, "8".to_owned())]);
    let (follower_epoch, offsets) = stored(follower).await;
    assert_eq!(follower_epoch.as_deref(), Some(epoch.as_str()));
    assert_eq!(offsets, (1..=8).collect::<Vec<u64>>());
}
