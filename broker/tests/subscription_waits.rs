//! Subscriptions that wait for the cluster, against real `chorus` processes: node 1 of a
//! three-node cluster restarted while the other two are down cannot catch up with its cluster,
//! so its presence subscriptions wait (bounded) until a second node comes back.
//!
//! - While it cannot, the node is alive (`/healthz` 200) but not ready (`/readyz` 503); once a
//!   quorum is back it is ready again.
//! - A second `pusher:subscribe` of a channel during the wait joins nothing twice: one
//!   confirmation, one subscription, and unsubscribing once leaves the channel.
//! - An unsubscribe during the wait is not lost: the subscription never joins.
//! - Waiting subscriptions count against `max_subscriptions_per_connection`: one over the limit
//!   is refused at once, while the others still wait.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};
use support::cluster::{ClusterNode, TestCluster};
use support::Client;

const ROOM: &str = "presence-room";

/// Sends a presence subscribe of `channel` as `user`, signed as the app's backend would, and
/// does not wait for the answer.
async fn send_presence_subscribe(client: &mut Client, channel: &str, user: &str) {
    let channel_data = json!({"user_id": user}).to_string();
    let auth = support::auth_token(&format!("{}:{channel}:{channel_data}", client.socket_id));
    client
        .send_json(json!({"event": "pusher:subscribe",
            "data": {"channel": channel, "auth": auth, "channel_data": channel_data}}))
        .await;
}

/// The next frame, which must be the answer to a ping sent now: nothing else came before it.
async fn nothing_before_pong(client: &mut Client, who: &str) {
    client
        .send_json(json!({"event": "pusher:ping", "data": {}}))
        .await;
    let next = client.next().await.expect("the socket is open");
    assert_eq!(
        next["event"], "pusher:pong",
        "{who} got {next} before its pong"
    );
}

/// Reads `who`'s confirmation of the room, then its presence events, until it knows of
/// `expected`; a second confirmation, a member it was told of twice or one that is not
/// expected fails. Returns the members it knows of.
async fn await_members(
    client: &mut Client,
    who: &str,
    expected: &BTreeSet<String>,
) -> BTreeSet<String> {
    let confirmed = client.expect_channel_answer(ROOM).await;
    assert_eq!(
        confirmed["event"], "pusher_internal:subscription_succeeded",
        "{who}: {confirmed}"
    );
    let ids = support::data(&confirmed)["presence"]["ids"].clone();
    let mut members: BTreeSet<String> = serde_json::from_value(ids).unwrap();
    while members != *expected {
        assert!(members.is_subset(expected), "{who} was told of {members:?}");
        let frame = client.next().await.expect("the socket is open");
        assert_eq!(frame["channel"], ROOM, "{who} got {frame}");
        assert_eq!(
            frame["event"], "pusher_internal:member_added",
            "{who} got {frame}"
        );
        let user = support::data(&frame)["user_id"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(members.insert(user), "{who} was told twice: {frame}");
    }
    members
}

/// The room's subscriptions on `node` and its users, as its HTTP API reports them.
async fn room(node: &ClusterNode) -> (u64, BTreeSet<String>) {
    let path = format!("/apps/1/channels/{ROOM}");
    let params = [("info", "subscription_count,user_count")];
    let url = support::signed_url(node.public_addr(), "GET", &path, &params, b"");
    let channel: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    let path = format!("/apps/1/channels/{ROOM}/users");
    let url = support::signed_url(node.public_addr(), "GET", &path, &[], b"");
    let users: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    let users = users["users"].as_array().unwrap().iter();
    let users = users
        .map(|u| u["id"].as_str().unwrap().to_owned())
        .collect();
    (channel["subscription_count"].as_u64().unwrap_or(0), users)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_waiting_for_the_cluster_are_recorded() {
    let limits = "max_subscriptions_per_connection = 3";
    let mut cluster = TestCluster::start_with_limits("waits", 3, limits).await;
    cluster
        .agreed_leader(&[1, 2, 3], 3, Duration::from_secs(20))
        .await;
    for id in [1, 2, 3] {
        let (status, body) = cluster.node(id).get("/readyz").await;
        assert_eq!(status, 200, "node {id}: {body}");
    }
    for id in [2, 3, 1] {
        cluster.kill_hard(id);
    }
    // Alone, node 1 serves but cannot commit the reset of its presence: it has not caught up.
    cluster.restart_alone(1).await;
    let node = cluster.node(1);
    let (_, body) = node.get("/readyz").await;
    assert_eq!(
        body["reason"], "no leader of its cluster heard from",
        "{body}"
    );
    assert_eq!(node.get("/healthz").await.0, 200);

    let mut twice = node.connect().await;
    send_presence_subscribe(&mut twice, ROOM, "twice").await;
    send_presence_subscribe(&mut twice, ROOM, "twice").await;
    let mut gone = node.connect().await;
    send_presence_subscribe(&mut gone, ROOM, "gone").await;
    gone.send_json(json!({"event": "pusher:unsubscribe", "data": {"channel": ROOM}}))
        .await;
    let mut stays = node.connect().await;
    send_presence_subscribe(&mut stays, ROOM, "stays").await;
    let mut busy = node.connect().await;
    for n in 1..=3 {
        send_presence_subscribe(&mut busy, &format!("presence-busy-{n}"), "busy").await;
    }
    // The fourth is refused at once: the three waiting ones count.
    send_presence_subscribe(&mut busy, "presence-busy-4", "busy").await;
    let refused = busy.expect_channel_answer("presence-busy-4").await;
    assert_eq!(refused["event"], "pusher:subscription_error", "{refused}");
    let error = support::data(&refused);
    assert_eq!(error["type"], "LimitReached", "{error}");
    assert_eq!(error["status"], 429, "{error}");
    for (client, who) in [
        (&mut twice, "twice"),
        (&mut gone, "gone"),
        (&mut stays, "stays"),
    ] {
        nothing_before_pong(client, who).await;
    }

    // A quorum again: node 1 catches up, and the waiting subscriptions join.
    cluster.restart(2).await;
    cluster.await_ready(1).await;
    let node = cluster.node(1);
    let everyone = BTreeSet::from(["stays".to_owned(), "twice".to_owned()]);
    for (client, who) in [(&mut stays, "stays"), (&mut twice, "twice")] {
        assert_eq!(await_members(client, who, &everyone).await, everyone);
    }
    // They join as each wait ends, in any order.
    let mut joined = BTreeSet::new();
    while joined.len() < 3 {
        let frame = busy.next().await.expect("the socket is open");
        assert_ne!(frame["event"], "pusher:subscription_error", "{frame}");
        if frame["event"] == "pusher_internal:subscription_succeeded" {
            assert!(joined.insert(frame["channel"].as_str().unwrap().to_owned()));
        }
    }
    let busy_channels = (1..=3).map(|n| format!("presence-busy-{n}")).collect();
    assert_eq!(joined, busy_channels);
    // `twice` was confirmed once and joined once; `gone` never joined.
    nothing_before_pong(&mut twice, "twice").await;
    nothing_before_pong(&mut gone, "gone").await;
    assert_eq!(room(node).await, (2, everyone));
    twice
        .send_json(json!({"event": "pusher:unsubscribe", "data": {"channel": ROOM}}))
        .await;
    nothing_before_pong(&mut twice, "twice").await;
    assert_eq!(room(node).await, (1, BTreeSet::from(["stays".to_owned()])));
}
