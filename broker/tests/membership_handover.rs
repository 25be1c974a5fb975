//! A leader that gets SIGTERM hands its leadership to another voter before it stops, and
//! `chorus cluster remove` takes nodes out of a cluster with a static peer list, with real
//! `chorus` processes:
//! - five voters: the leader gets SIGTERM; another node leads, one term later, before the old
//!   leader's process exits (0); the longest time no node led, sampled every few milliseconds
//!   from every node's status, is printed with the publishes refused meanwhile;
//! - the stopped node is removed (a silent voter), then the new leader itself (it hands over
//!   first); the removed node, still running and still in the others' peer lists, is not taken
//!   back; three voters are left;
//! - three voters: the leader gets SIGTERM and hands over the same way;
//! - with one voter of three silent, removing another is refused (the two left could not
//!   commit), and so is removing a node that is not in the cluster.

mod membership_nodes;
mod support;

use std::collections::BTreeSet;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chorus_cluster::Role;
use membership_nodes::{status_at, Nodes, Publisher};
use support::cluster::CLUSTER_SECRET;

/// Runs `chorus cluster remove ID` against node `via`.
fn cluster_remove(nodes: &Nodes, via: u64, id: u64) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chorus"))
        .args(["cluster", "remove", &id.to_string()])
        .args(["--addr", &nodes.nodes[&via].cluster_addr()])
        .args(["--secret", CLUSTER_SECRET])
        .env("CHORUS_LOG", "error")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Which nodes said they led, sampled from every running node's status.
#[derive(Default)]
struct Leadership {
    samples: Vec<(Instant, BTreeSet<u64>)>,
}

impl Leadership {
    /// The first time a node other than `old` was seen leading.
    fn first_led_by_another(&self, old: u64) -> Option<(Instant, u64)> {
        self.samples.iter().find_map(|(at, leaders)| {
            let other = leaders.iter().find(|id| **id != old)?;
            Some((*at, *other))
        })
    }

    /// The longest stretch between two samples that saw a leader with only samples that saw
    /// none in between.
    fn longest_without_leader(&self) -> Duration {
        let led: Vec<Instant> = self
            .samples
            .iter()
            .filter(|(_, leaders)| !leaders.is_empty())
            .map(|(at, _)| *at)
            .collect();
        led.windows(2)
            .map(|pair| pair[1] - pair[0])
            .max()
            .unwrap_or_default()
    }
}

/// Samples which of the nodes at `addrs` say they lead, every few milliseconds, until `stop`.
async fn sample_leadership(addrs: Vec<String>, stop: Arc<AtomicBool>) -> Leadership {
    let client = reqwest::Client::new();
    let mut leadership = Leadership::default();
    while !stop.load(Ordering::Relaxed) {
        let asked = addrs.iter().map(|addr| status_at(&client, addr));
        let answers = futures_util::future::join_all(asked).await;
        let leaders = answers
            .into_iter()
            .flatten()
            .filter(|status| status.state == Role::Leader)
            .map(|status| status.node_id)
            .collect();
        leadership.samples.push((Instant::now(), leaders));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    leadership
}

/// Sends SIGTERM to the leader `old` of the running nodes, while publishes go to the others,
/// and checks that another node leads, one term later, before `old` exits 0; prints what was
/// measured, and returns the new leader.
async fn stop_the_leader(nodes: &mut Nodes, old: u64, label: &str) -> u64 {
    let term = nodes.status(old).await.expect("the leader answers").term;
    let among = nodes.running();
    let targets = among
        .iter()
        .filter(|id| **id != old)
        .map(|id| nodes.nodes[id].public_addr())
        .collect();
    let publisher = Publisher::start("history-handover", targets);
    let addrs = among
        .iter()
        .map(|id| nodes.nodes[id].cluster_addr())
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample_leadership(addrs, stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await; // samples and publishes before
    let signalled = Instant::now();
    nodes.node(old).terminate();
    let exit = nodes.node(old).await_exit(Duration::from_secs(20)).await;
    let exited = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await; // and after
    stop.store(true, Ordering::Relaxed);
    let leadership = sampler.await.unwrap();
    let published = publisher.stop().await;
    assert!(exit.success(), "{label}: node {old} exited with {exit}");
    let (taken_at, new) = leadership
        .first_led_by_another(old)
        .unwrap_or_else(|| panic!("{label}: no other node led"));
    assert!(
        taken_at < exited,
        "{label}: node {new} led only after node {old} exited"
    );
    let status = nodes.status(new).await.expect("the new leader answers");
    assert_eq!(status.term, term + 1, "{label}: one election, at once");
    eprintln!(
        "{label}: node {new} led {:?} after SIGTERM to node {old}, which exited {:?} after it; \
         longest time with no node leading: {:?}; longest wait between acknowledged batches: \
         {:?}; answers (acknowledged, 503, other): {:?}",
        taken_at - signalled,
        exited - signalled,
        leadership.longest_without_leader(),
        published.longest_gap,
        published.answers
    );
    new
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_leader_hands_over_and_an_operator_removes_nodes_safely() {
    let five = [1, 2, 3, 4, 5];
    let mut nodes = Nodes::with_peer_list("membership-handover", &five);
    nodes.start(&five).await;
    let within = Duration::from_secs(30);
    let first = nodes.await_voters(&five, &five, None, within).await.node_id;
    let second = stop_the_leader(&mut nodes, first, "five voters").await;

    // The stopped node (silent), then the leader itself (it hands over first).
    for id in [first, second] {
        let via = nodes.running()[0];
        let removed = cluster_remove(&nodes, via, id);
        let out = text(&removed.stdout);
        assert!(removed.status.success(), "{out}{}", text(&removed.stderr));
        assert!(
            out.starts_with(&format!("node {id} removed; voters now: ")),
            "{out}"
        );
    }
    let three: Vec<u64> = five
        .iter()
        .copied()
        .filter(|id| ![first, second].contains(id))
        .collect();
    let status = nodes.await_voters(&three, &three, None, within).await;
    assert_eq!(
        status.retired,
        {
            let mut retired = vec![first, second];
            retired.sort();
            retired
        },
        "removed by an operator"
    );
    // The removed node still runs and answers, and the others' peer lists still name it: it
    // is not taken back.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        assert!(nodes.status(second).await.is_some(), "node {second} runs");
        let leader = nodes
            .status(status.node_id)
            .await
            .expect("the leader answers");
        assert!(
            leader.members.iter().all(|member| member.id != second),
            "node {second} was taken back: {leader:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    nodes.node(second).terminate();
    nodes.node(second).await_exit(Duration::from_secs(20)).await;

    let leader = nodes
        .await_voters(&three, &three, None, within)
        .await
        .node_id;
    let last = stop_the_leader(&mut nodes, leader, "three voters").await;

    // One of three silent: removing another would leave one of two.
    let other = nodes.running().into_iter().find(|id| *id != last).unwrap();
    let refused = cluster_remove(&nodes, last, other);
    let error = text(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        error.contains("refused (409)") && error.contains("fewer than the 2 needed"),
        "{error}"
    );
    let unknown = cluster_remove(&nodes, other, 99);
    let error = text(&unknown.stderr);
    assert!(!unknown.status.success());
    assert!(
        error.contains("node 99 is not in the membership"),
        "{error}"
    );
    let status = nodes.status(last).await.unwrap();
    assert_eq!(status.voters().count(), 3, "nothing was removed");
}
