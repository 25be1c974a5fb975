//! Presence channels on a cluster of real `chorus` processes: members joined on different nodes
//! see one list, and each user joins and leaves once, cluster-wide.
//!
//! - Users on three nodes each end with the same members; a user's second connection, on
//!   another node, is not a new member, and the first one leaving is not a departure once the
//!   second is committed; the last connection leaving is one `member_removed` everywhere. (A
//!   user moving between nodes faster than a commit may be seen to leave and join again.)
//! - A node killed with `kill -9` and started again declares what it has (nothing): its users
//!   leave everyone's list once, and no stale member of its earlier run stays.
//! - A node killed and not restarted is declared dead: the users that were only there leave
//!   everyone's list once; a user also connected elsewhere stays.
//! - The HTTP API's users of the channel, asked of any node, are the cluster's members.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use support::cluster::TestCluster;
use support::Client;
use tokio_tungstenite::tungstenite::Message;

const ROOM: &str = "presence-room";

/// A user's connection and the members it was told of, from its confirmation on.
struct Roster {
    user: String,
    client: Client,
    members: BTreeSet<String>,
}

impl Roster {
    /// Joins the room on the node at `port` as `user`.
    async fn join(port: u16, user: &str) -> Roster {
        let mut client = support::connect(port, None).await;
        let presence = client
            .subscribe_presence(ROOM, user, json!({"name": user}))
            .await;
        let members: BTreeSet<String> = presence["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|id| id.as_str().unwrap().to_owned())
            .collect();
        assert!(members.contains(user), "{user} is not in its own list");
        assert_eq!(presence["count"], members.len());
        assert_eq!(presence["hash"][user]["name"], user);
        Roster {
            user: user.to_owned(),
            client,
            members,
        }
    }

    /// Applies one presence event to the list; a user added twice or removed when absent
    /// fails the test.
    fn apply(&mut self, frame: &Value) {
        let data = support::data(frame);
        let user = data["user_id"].as_str().unwrap().to_owned();
        match frame["event"].as_str().unwrap() {
            "pusher_internal:member_added" => {
                assert_eq!(data["user_info"]["name"], user);
                assert_ne!(user, self.user, "{} was told of itself", self.user);
                assert!(
                    self.members.insert(user.clone()),
                    "{} told twice that {user} joined",
                    self.user
                );
            }
            "pusher_internal:member_removed" => assert!(
                self.members.remove(&user),
                "{} told that {user} left, who was not there",
                self.user
            ),
            _ => {}
        }
    }

    /// The next presence event within `wait`, applied; `None` if none came.
    async fn next_event(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.client.ws.next()).await;
            match next {
                Err(_) => return None,
                Ok(Some(Ok(Message::Text(text)))) => {
                    let frame: Value = serde_json::from_str(&text).unwrap();
                    if frame["channel"] == ROOM {
                        self.apply(&frame);
                        return Some(frame);
                    }
                }
                Ok(Some(Ok(_))) => {}
                Ok(_) => panic!("{}'s socket closed", self.user),
            }
        }
    }

    /// Reads presence events until the list is `expected` (within 10 s).
    async fn await_members(&mut self, expected: &[&str]) {
        let expected: BTreeSet<String> = expected.iter().map(|u| u.to_string()).collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.members != expected {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.next_event(left).await.is_none() {
                panic!(
                    "{} has {:?}, not {expected:?}, after 10 s",
                    self.user, self.members
                );
            }
        }
    }

    /// No presence event for `quiet`.
    async fn assert_quiet(&mut self, quiet: Duration) {
        if let Some(frame) = self.next_event(quiet).await {
            panic!("{} was told {frame}", self.user);
        }
    }
}

/// No presence event reaches `rosters` for `quiet`; then a positive control: a user joining on
/// the node at `port` reaches each of them, leaving them with `members` and it, and its leaving
/// with `members` again (a stray event before or between would leave another list).
async fn quiet_then_control(
    rosters: &mut [&mut Roster],
    quiet: Duration,
    port: u16,
    members: &[&str],
) {
    for roster in rosters.iter_mut() {
        roster.assert_quiet(quiet).await;
    }
    let mut control = Roster::join(port, "control").await;
    let with_control: Vec<&str> = members.iter().copied().chain(["control"]).collect();
    for roster in rosters.iter_mut() {
        roster.await_members(&with_control).await;
    }
    control.client.ws.close(None).await.unwrap();
    drop(control);
    for roster in rosters.iter_mut() {
        roster.await_members(members).await;
    }
}

/// The users of the room, as node `port`'s HTTP API lists them.
async fn api_users(port: u16) -> BTreeSet<String> {
    let path = format!("/apps/1/channels/{ROOM}/users");
    let url = support::signed_url(port, "GET", &path, &[], b"");
    let body: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_on_different_nodes_see_one_list_and_join_and_leave_once() {
    let cluster = TestCluster::start("presence", 3).await;
    cluster
        .agreed_leader(&[1, 2, 3], 3, Duration::from_secs(20))
        .await;
    let port = |id: u64| cluster.node(id).port;
    let everyone = ["ann", "bob", "carol"];
    let mut ann = Roster::join(port(1), "ann").await;
    let mut bob = Roster::join(port(2), "bob").await;
    let mut carol = Roster::join(port(3), "carol").await;
    for roster in [&mut ann, &mut bob, &mut carol] {
        roster.await_members(&everyone).await;
    }
    for id in [1, 2, 3] {
        assert_eq!(
            api_users(port(id)).await,
            everyone.iter().map(|u| u.to_string()).collect(),
            "node {id}'s API"
        );
    }

    // Ann's second connection, on node 3, is not a new member; when her first one goes, she
    // has not left.
    let mut ann_again = Roster::join(port(3), "ann").await;
    ann_again.await_members(&everyone).await;
    // Node 3 declares its users in order: once zed, who came after, is in everyone's list, so
    // is ann's connection there.
    let mut zed = Roster::join(port(3), "zed").await;
    let with_zed = ["ann", "bob", "carol", "zed"];
    for roster in [&mut ann, &mut bob, &mut carol, &mut ann_again, &mut zed] {
        roster.await_members(&with_zed).await;
    }
    zed.client.ws.close(None).await.unwrap();
    for roster in [&mut ann, &mut bob, &mut carol, &mut ann_again] {
        roster.await_members(&everyone).await;
    }
    ann.client.ws.close(None).await.unwrap();
    let rosters = &mut [&mut bob, &mut carol, &mut ann_again];
    quiet_then_control(rosters, Duration::from_millis(1500), port(1), &everyone).await;
    // Her last connection going is one departure, everywhere.
    ann_again.client.ws.close(None).await.unwrap();
    bob.await_members(&["bob", "carol"]).await;
    carol.await_members(&["bob", "carol"]).await;
    let rosters = &mut [&mut bob, &mut carol];
    quiet_then_control(
        rosters,
        Duration::from_millis(500),
        port(3),
        &["bob", "carol"],
    )
    .await;
}

/// Three nodes with `env`, once they agree on a leader.
async fn started(name: &str, env: &[(&str, &str)]) -> TestCluster {
    let cluster = TestCluster::start_with_env(name, 3, env).await;
    cluster
        .agreed_leader(&[1, 2, 3], 3, Duration::from_secs(20))
        .await;
    cluster
}

/// The public port of node `id`.
fn port(cluster: &TestCluster, id: u64) -> u16 {
    cluster.node(id).port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_and_restarted_leaves_no_stale_member() {
    let mut cluster = started("presence-restart", &[]).await;
    let mut ann = Roster::join(port(&cluster, 1), "ann").await;
    let mut bob = Roster::join(port(&cluster, 2), "bob").await;
    let carol = Roster::join(port(&cluster, 3), "carol").await;
    ann.await_members(&["ann", "bob", "carol"]).await;
    bob.await_members(&["ann", "bob", "carol"]).await;

    cluster.kill_hard(3);
    drop(carol);
    cluster.restart(3).await;
    // Node 3 starts with no connection: carol leaves everyone's list, once.
    ann.await_members(&["ann", "bob"]).await;
    bob.await_members(&["ann", "bob"]).await;
    let mut dan = Roster::join(port(&cluster, 3), "dan").await;
    dan.await_members(&["ann", "bob", "dan"]).await;
    ann.await_members(&["ann", "bob", "dan"]).await;
    bob.await_members(&["ann", "bob", "dan"]).await;
    assert_eq!(
        api_users(port(&cluster, 3)).await,
        ["ann", "bob", "dan"]
            .iter()
            .map(|u| u.to_string())
            .collect()
    );
    let rosters = &mut [&mut ann, &mut bob, &mut dan];
    let (quiet, members) = (Duration::from_millis(500), ["ann", "bob", "dan"]);
    quiet_then_control(rosters, quiet, port(&cluster, 3), &members).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_members_leave_everywhere_once() {
    let mut cluster = started("presence-dead", &[("CHORUS_DEAD_AFTER_SECS", "2")]).await;
    let mut ann = Roster::join(port(&cluster, 1), "ann").await;
    let mut bob = Roster::join(port(&cluster, 2), "bob").await;
    // Carol has two tabs, both on node 3; dan has one there and one on node 1.
    let carol = Roster::join(port(&cluster, 3), "carol").await;
    let carol_again = Roster::join(port(&cluster, 3), "carol").await;
    let dan_there = Roster::join(port(&cluster, 3), "dan").await;
    let mut dan_here = Roster::join(port(&cluster, 1), "dan").await;
    let everyone = ["ann", "bob", "carol", "dan"];
    for roster in [&mut ann, &mut bob, &mut dan_here] {
        roster.await_members(&everyone).await;
    }

    // Node 3 dies and stays dead: once declared dead, carol (only there) leaves everywhere,
    // once; dan, still on node 1, stays.
    cluster.kill_hard(3);
    drop((carol, carol_again, dan_there));
    for roster in [&mut ann, &mut bob, &mut dan_here] {
        roster.await_members(&["ann", "bob", "dan"]).await;
    }
    let rosters = &mut [&mut ann, &mut bob, &mut dan_here];
    let (quiet, members) = (Duration::from_millis(500), ["ann", "bob", "dan"]);
    quiet_then_control(rosters, quiet, port(&cluster, 1), &members).await;
    for id in [1, 2] {
        assert_eq!(
            api_users(port(&cluster, id)).await,
            ["ann", "bob", "dan"]
                .iter()
                .map(|u| u.to_string())
                .collect(),
            "node {id}'s API"
        );
    }
}
