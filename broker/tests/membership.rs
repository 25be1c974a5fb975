//! The Raft voters follow a members file, with real `chorus` processes played as a StatefulSet's
//! pods (ids 0-4, a data directory each that outlives the process, a members file mount each,
//! refreshed by an atomic link swap), while history publishes go on through the nodes that are
//! up:
//! - `helm upgrade --set replicas=5`: the two new pods start first, their mounts with the new
//!   revision listing five nodes; the old pods' mounts refresh later (the kubelet's sync, here
//!   3 s), a member proposes the revision, and the leader takes the new nodes as learners and
//!   promotes them;
//! - back to `replicas=3`: the mounts refresh, and the leader removes the two voters the file no
//!   longer lists, one at a time, highest id first (handing its leadership over first if it is
//!   one of them); their pods drain for 3 s, shut out, then get SIGTERM, highest first, and exit;
//! - one more node killed leaves two voters of three: a quorum that still commits;
//! - up to five again: the two nodes come back with their old data and rejoin as learners, then
//!   voters, without deposing the leader: while removed and running they called no election that
//!   would have raised their term above the leader's.
//!
//! No acknowledged publish is lost: every node's history holds every acknowledged event once,
//! in the order they were acknowledged.

mod membership_nodes;
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use membership_nodes::{Nodes, Publisher};

const ALL: [u64; 5] = [0, 1, 2, 3, 4];
const FIRST: [u64; 3] = [0, 1, 2];
const CHANNEL: &str = "history-scale";

/// How long after the new pods the old pods' mounts show the new revision; also how long a
/// removed pod drains before it stops (longer than an election timeout).
const MOUNT_REFRESH: Duration = Duration::from_secs(3);

fn addresses(nodes: &Nodes, ids: &[u64]) -> Vec<SocketAddr> {
    ids.iter().map(|id| nodes.nodes[id].public_addr()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_voters_follow_the_members_file_up_and_down_and_removed_nodes_rejoin_with_their_data() {
    let mut nodes = Nodes::new("membership-scale", &ALL);
    nodes.write_members(1, &FIRST, &ALL);
    nodes.start(&FIRST).await;
    nodes
        .await_voters(&FIRST, &FIRST, Some(1), Duration::from_secs(30))
        .await;
    let publisher = Publisher::start(CHANNEL, addresses(&nodes, &FIRST));

    // helm upgrade --set replicas=5: the new pods first, the old pods' mounts later.
    publisher.step("3 -> 5");
    let up_took = scale_up(&mut nodes, 2).await;
    publisher.targets(addresses(&nodes, &ALL));

    // Back to replicas=3: the mounts refresh, the leader removes the two; their pods drain,
    // then stop, highest ordinal first.
    publisher.step("5 -> 3");
    publisher.targets(addresses(&nodes, &FIRST));
    let down = Instant::now();
    nodes.write_members(3, &FIRST, &ALL);
    let within = Duration::from_secs(60);
    let three = nodes.await_voters(&FIRST, &FIRST, Some(3), within).await;
    let down_took = down.elapsed();
    assert!(three.members.iter().all(|member| member.recorded));
    tokio::time::sleep(MOUNT_REFRESH).await;
    for id in [4, 3] {
        nodes.node(id).terminate();
        let exit = nodes.node(id).await_exit(Duration::from_secs(20)).await;
        assert!(exit.success(), "node {id} exited with {exit}");
    }

    // One more node lost: two voters of three still commit.
    publisher.step("one more lost");
    let lost = three.node_id;
    nodes.node(lost).kill_hard();
    let survivors: Vec<u64> = FIRST.iter().copied().filter(|id| *id != lost).collect();
    publisher.targets(addresses(&nodes, &survivors));
    let batch = vec!["after the loss".to_owned()];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let target = nodes.nodes[&survivors[0]].public_addr();
        if support::publish_batch(target, CHANNEL, &batch).await == Some(200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "two of three voters do not commit"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    nodes.start(&[lost]).await;
    let restored = nodes.await_voters(&FIRST, &FIRST, Some(3), within).await;

    // Up to five again: the removed nodes come back with their data.
    publisher.step("3 -> 5 again");
    let again_took = scale_up(&mut nodes, 4).await;
    publisher.targets(addresses(&nodes, &ALL));
    let rejoined = nodes.await_voters(&ALL, &ALL, Some(4), within).await;
    assert_eq!(
        (rejoined.leader_id, rejoined.term),
        (restored.leader_id, restored.term),
        "the returning nodes deposed no leader"
    );

    let published = publisher.stop().await;
    eprintln!(
        "3 -> 5: {up_took:?}; 5 -> 3: {down_took:?}; 3 -> 5 again: {again_took:?}; longest \
         wait between acknowledged batches: {:?}; answers by step (acknowledged, 503, other): \
         {:?}",
        published.longest_gap, published.answers
    );
    for step in ["3 -> 5", "5 -> 3", "3 -> 5 again"] {
        assert!(
            published
                .answers
                .get(step)
                .is_some_and(|counts| counts.0 > 0),
            "publishes went on during {step}: {:?}",
            published.answers
        );
    }
    let mut acknowledged = published.acknowledged;
    acknowledged.push(batch[0].clone());
    for id in ALL {
        // A voter that just came back may still be applying what it missed.
        let addr = nodes.nodes[&id].public_addr();
        let deadline = Instant::now() + Duration::from_secs(30);
        let events = loop {
            let (_, events) = support::read_history(addr, CHANNEL).await;
            if events.len() >= acknowledged.len() || Instant::now() > deadline {
                break events;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_holds_once_in_order(id, &events, &acknowledged);
    }
}

/// Scales from the first three nodes to all five as a StatefulSet does, the new pods' mounts
/// at `revision` from their start, the old pods' [`MOUNT_REFRESH`] later; returns the time from
/// that refresh until all five are voters.
async fn scale_up(nodes: &mut Nodes, revision: u64) -> Duration {
    nodes.write_members(revision, &ALL, &[3, 4]);
    nodes.start(&[3, 4]).await;
    tokio::time::sleep(MOUNT_REFRESH).await;
    let refreshed = Instant::now();
    nodes.write_members(revision, &ALL, &FIRST);
    let within = Duration::from_secs(60);
    nodes.await_voters(&ALL, &ALL, Some(revision), within).await;
    refreshed.elapsed()
}

/// Node `id`'s history holds each event once, and every acknowledged one in the order they
/// were acknowledged (the last one, published alone, anywhere after its batch's step).
fn assert_holds_once_in_order(id: u64, events: &[(u64, String)], acknowledged: &[String]) {
    let offsets: Vec<u64> = events.iter().map(|(offset, _)| *offset).collect();
    let dense: Vec<u64> = (1..=events.len() as u64).collect();
    assert_eq!(offsets, dense, "node {id}: offsets are dense from 1");
    let mut seen = std::collections::BTreeSet::new();
    for (_, data) in events {
        assert!(seen.insert(data.as_str()), "node {id}: {data} stored twice");
    }
    let missing: Vec<&String> = acknowledged
        .iter()
        .filter(|data| !seen.contains(data.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "node {id} lost acknowledged events: {missing:?}"
    );
    let position = |data: &String| events.iter().position(|(_, stored)| stored == data);
    let batches = &acknowledged[..acknowledged.len() - 1];
    let order: Vec<usize> = batches.iter().filter_map(position).collect();
    assert!(
        order.windows(2).all(|pair| pair[0] < pair[1]),
        "node {id}: acknowledged events out of order"
    );
}
