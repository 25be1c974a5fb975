//! History channels on a cluster of real `chorus` processes: a publish is a Raft log entry,
//! acknowledged once a majority has it and then stored and delivered by every node.
//!
//! - While REST publishes go on, a follower is killed with `kill -9` (and started again), then
//!   the leader: every acknowledged publish is afterwards in every node's history, in the same
//!   order with the same offsets; subscribers on the surviving nodes see every offset once, in
//!   order; a subscriber of a killed node reconnects to another node and recovers exactly.
//! - Without a quorum a history publish is refused with 503 and not acknowledged, while a
//!   publish to a channel without history still reaches the subscribers it can reach; once the
//!   quorum is back, history publishes are acknowledged again and every node agrees.
//! - A node down long enough to catch up from a snapshot instead of the log fetches the history
//!   it skipped from the others, and serves all of it.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use support::cluster::TestCluster;
use support::{publish_batch, read_history, Client};
use tokio_tungstenite::tungstenite::Message;

const CHANNEL: &str = "history-feed";

/// Waits (at most `within`) until node `port`'s history of the channel is `expected`.
async fn await_history(port: u16, expected: &(String, Vec<(u64, String)>), within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let here = read_history(port, CHANNEL).await;
        if here == *expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the node on port {port} has {} events of {}",
            here.1.len(),
            expected.1.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What a subscriber saw of the channel: each event's offset and data, and the epoch.
#[derive(Default)]
struct Seen {
    epoch: String,
    events: Vec<(u64, String)>,
}

impl Seen {
    fn last_offset(&self) -> u64 {
        self.events.last().map_or(0, |e| e.0)
    }
}

/// Reads `channel`'s events from `client` until it has seen offset `until` (once that is
/// known) or its socket closes (its node died); returns the client if still open.
async fn follow(
    mut client: Client,
    seen: &mut Seen,
    until: &tokio::sync::watch::Receiver<u64>,
) -> Option<Client> {
    let mut until = until.clone();
    loop {
        let target = *until.borrow_and_update();
        if target > 0 && seen.last_offset() >= target {
            return Some(client);
        }
        let wait = if target > 0 { 10 } else { 120 };
        let next = tokio::time::timeout(Duration::from_secs(wait), client.ws.next());
        let frame = tokio::select! {
            _ = until.changed() => continue,
            next = next => match next {
                Ok(Some(Ok(Message::Text(text)))) => serde_json::from_str::<Value>(&text).unwrap(),
                Ok(Some(Ok(_))) => continue,
                Ok(_) => return None, // closed: the node died
                Err(_) => panic!("no event for {wait} s; saw up to {}", seen.last_offset()),
            },
        };
        if frame["event"] != "e" {
            continue;
        }
        assert_eq!(frame["channel"], CHANNEL);
        seen.epoch = frame["epoch"].as_str().unwrap().to_owned();
        seen.events.push((
            frame["offset"].as_u64().unwrap(),
            frame["data"].as_str().unwrap().to_owned(),
        ));
    }
}

/// Offsets 1..=n, each once, in order.
fn assert_dense(events: &[(u64, String)], n: u64, who: &str) {
    let offsets: Vec<u64> = events.iter().map(|e| e.0).collect();
    let expected: Vec<u64> = (1..=n).collect();
    assert!(
        offsets == expected,
        "{who}: offsets are not 1..={n} once each in order (got {} events, first gap near {:?})",
        offsets.len(),
        offsets
            .iter()
            .zip(1..)
            .find(|(got, want)| **got != *want)
            .map(|(got, want)| (want, *got))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_history_survives_kill_9_of_a_follower_and_of_the_leader() {
    let mut cluster = TestCluster::start("history-kill", 3).await;
    let (leader, _) = cluster
        .agreed_leader(&[1, 2, 3], 3, Duration::from_secs(20))
        .await;
    let follower = [1, 2, 3].into_iter().find(|&id| id != leader).unwrap();
    let ports: Vec<(u64, u16)> = cluster.nodes.values().map(|n| (n.id, n.port)).collect();

    // A subscriber on every node, reading as events arrive.
    let (until_tx, until) = tokio::sync::watch::channel(0u64);
    let mut readers = Vec::new();
    for &(id, port) in &ports {
        let mut client = support::connect(port, None).await;
        client.subscribe(CHANNEL).await;
        let until = until.clone();
        readers.push((
            id,
            tokio::spawn(async move {
                let mut seen = Seen::default();
                let open = follow(client, &mut seen, &until).await;
                (seen, open.is_some())
            }),
        ));
    }

    // Two publishers, each sending batches of 5 through the nodes in turn; a batch is
    // acknowledged when the node answers 200.
    let stop = Arc::new(AtomicBool::new(false));
    let mut publishers = Vec::new();
    for p in 0..2 {
        let stop = stop.clone();
        let ports = ports.clone();
        publishers.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut refused = 0;
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let data: Vec<String> = (0..5).map(|i| format!("p{p}-{}", n * 5 + i)).collect();
                let (_, port) = ports[(n + p) % ports.len()];
                n += 1;
                match publish_batch(port, CHANNEL, &data).await {
                    Some(200) => acknowledged.extend(data),
                    Some(503) | None => refused += 1,
                    Some(status) => panic!("publish answered {status}"),
                }
            }
            (acknowledged, refused)
        }));
    }

    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.kill_hard(follower);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.restart(follower).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed_at = Instant::now();
    cluster.kill_hard(leader);
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|&id| id != leader).collect();
    let (new_leader, _) = cluster
        .agreed_leader(&survivors, 3, Duration::from_secs(20))
        .await;
    println!(
        "node {new_leader} leads {:?} after the leader was killed",
        killed_at.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = Vec::new();
    for publisher in publishers {
        let (acked, refused) = publisher.await.unwrap();
        println!(
            "publisher: {} events acknowledged, {refused} batches not",
            acked.len()
        );
        acknowledged.extend(acked);
    }
    assert!(
        acknowledged.len() > 100,
        "too few publishes went through: {}",
        acknowledged.len()
    );

    // Every acknowledged event is in the surviving nodes' histories, the same on each, each
    // event once, at dense offsets.
    let (epoch, history) = read_history(cluster.node(new_leader).port, CHANNEL).await;
    let n = history.len() as u64;
    assert_dense(&history, n, "the new leader's history");
    let stored: BTreeSet<&str> = history.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(stored.len(), history.len(), "an event is stored twice");
    for data in &acknowledged {
        assert!(
            stored.contains(data.as_str()),
            "acknowledged {data} is lost"
        );
    }
    let expected = (epoch.clone(), history.clone());
    for &id in &survivors {
        await_history(cluster.node(id).port, &expected, Duration::from_secs(10)).await;
    }

    // The killed leader, started again, catches up to the same history.
    cluster.restart(leader).await;
    await_history(
        cluster.node(leader).port,
        &expected,
        Duration::from_secs(15),
    )
    .await;

    // Subscribers: those on nodes that lived saw everything live; those on killed nodes
    // reconnect to another node with what they saw and recover exactly.
    until_tx.send(n).unwrap();
    let new_leader_port = cluster.node(new_leader).port;
    for (id, reader) in readers {
        let (mut seen, open) = reader.await.unwrap();
        if !open {
            assert!(id == leader || id == follower, "node {id}'s socket closed");
            let mut client = support::connect(new_leader_port, None).await;
            let since = json!({"epoch": seen.epoch, "offset": seen.last_offset()});
            let confirmation = client.subscribe_since(CHANNEL, since).await;
            assert_eq!(confirmation["recovered"], true, "{confirmation}");
            assert_eq!(confirmation["offset"], n);
            follow(client, &mut seen, &until).await.unwrap();
        }
        assert_eq!(seen.epoch, epoch);
        assert_dense(&seen.events, n, &format!("the subscriber of node {id}"));
        assert_eq!(
            seen.events, history,
            "node {id}'s subscriber saw other data"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_quorum_history_is_refused_while_other_channels_still_deliver() {
    let mut cluster = TestCluster::start("history-quorum", 3).await;
    cluster
        .agreed_leader(&[1, 2, 3], 3, Duration::from_secs(20))
        .await;
    let port = cluster.node(1).port;
    let mut client = support::connect(port, None).await;
    client.subscribe(CHANNEL).await;
    client.subscribe("plain").await;
    assert_eq!(
        publish_batch(port, CHANNEL, &["one".into()]).await,
        Some(200)
    );
    assert_eq!(client.expect("e").await["offset"], 1);

    cluster.kill_hard(2);
    cluster.kill_hard(3);
    let started = Instant::now();
    assert_eq!(
        publish_batch(port, CHANNEL, &["lost".into()]).await,
        Some(503)
    );
    let refused_after = started.elapsed();
    assert!(
        refused_after < Duration::from_secs(15),
        "refused only after {refused_after:?}"
    );
    // A channel without history goes on reaching the subscribers this node has.
    assert_eq!(
        publish_batch(port, "plain", &["still".into()]).await,
        Some(200)
    );
    let frame = client.expect("e").await;
    assert_eq!(frame["channel"], "plain");
    assert_eq!(support::data(&frame), "still");

    cluster.restart(2).await;
    cluster.restart(3).await;
    cluster
        .agreed_leader(&[1, 2, 3], 3, Duration::from_secs(20))
        .await;
    assert_eq!(
        publish_batch(port, CHANNEL, &["two".into()]).await,
        Some(200)
    );
    // The refused event was not acknowledged: it may have been lost, or committed once the
    // others came back (Raft cannot tell a client which); either way every node agrees.
    let mut live = Vec::new();
    while live.last().is_none_or(|(_, data)| data != "two") {
        let frame = client.expect("e").await;
        assert_eq!(frame["channel"], CHANNEL);
        let data = frame["data"].as_str().unwrap().to_owned();
        live.push((frame["offset"].as_u64().unwrap(), data));
    }
    let (_, history) = read_history(port, CHANNEL).await;
    assert_eq!(history[0], (1, "one".to_owned()));
    assert_eq!(history[1..], live[..]);
    assert!(
        live.iter().map(|e| e.1.as_str()).eq(["two"])
            || live.iter().map(|e| e.1.as_str()).eq(["lost", "two"]),
        "{live:?}"
    );
    assert_dense(&history, history.len() as u64, "node 1's history");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_catches_up_from_a_snapshot_fetches_the_history_it_skipped() {
    // A snapshot every 20 entries, and 20 kept after it: a node that misses more catches up
    // from a snapshot.
    let env = [("CHORUS_RAFT_SNAPSHOT_EVERY", "20")];
    let mut cluster = TestCluster::start_with_env("history-snapshot", 3, &env).await;
    let (leader, _) = cluster
        .agreed_leader(&[1, 2, 3], 3, Duration::from_secs(20))
        .await;
    let follower = [1, 2, 3].into_iter().find(|&id| id != leader).unwrap();
    let port = cluster.node(leader).port;
    for n in 0..30 {
        let data = [format!("before-{n}")];
        assert_eq!(publish_batch(port, CHANNEL, &data).await, Some(200));
    }
    cluster.kill_hard(follower);
    for n in 0..200 {
        let data = [format!("while-down-{n}")];
        assert_eq!(publish_batch(port, CHANNEL, &data).await, Some(200));
    }
    let expected = read_history(port, CHANNEL).await;
    assert_eq!(expected.1.len(), 230);
    cluster.restart(follower).await;
    await_history(
        cluster.node(follower).port,
        &expected,
        Duration::from_secs(20),
    )
    .await;

    // A client recovers everything from the first offset on the node that was down.
    let mut client = support::connect(cluster.node(follower).port, None).await;
    let confirmation = client
        .subscribe_since(CHANNEL, json!({"epoch": expected.0, "offset": 0}))
        .await;
    assert_eq!(confirmation["recovered"], true, "{confirmation}");
    let first = client.expect("e").await;
    assert_eq!(first["offset"], 1);
    assert_eq!(first["data"], "before-0");
}
