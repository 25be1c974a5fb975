//! A network partition of a three-node cluster of real `chorus` processes: one node's links to
//! the others are cut (a TCP proxy per node in the test process, see `support/partition.rs`)
//! while its clients stay connected, then restored.
//!
//! - The leader cut off: a history publish to it is refused with 503 (it cannot commit); the
//!   two others elect a new leader and go on acknowledging history publishes, which reach their
//!   subscribers in order; a publish to a channel without history on the cut-off node still
//!   reaches that node's own subscribers. Once healed, the old leader follows the new one,
//!   catches up to the same history (epoch, offsets, data), and its subscriber, connected
//!   throughout, gets the events committed in the meantime, in order, once each.
//! - A follower cut off: the same from the other side; the leader and the other follower go on
//!   without an election.
//!
//! Each is run with the links rejected (connections closed at once) and with them dropped
//! (connections pass nothing, so every request waits for its timeout; once healed, what was held
//! goes through, and a refused publish held on its way to the leader may then be committed).

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chorus_cluster::{ClusterStatus, Role};
use support::cluster::TestCluster;
use support::partition::Cut;
use support::{publish_batch, read_history, Client};

const CHANNEL: &str = "history-partition";
const PLAIN: &str = "plain-partition";

/// The data of the history publish made to the cut-off node.
const REFUSED: &str = "refused";

/// A cut-off member is declared dead after 2 s (and taken back once it answers again).
const ENV: &[(&str, &str)] = &[("CHORUS_DEAD_AFTER_SECS", "2")];

/// How long a refused history publish may take to be answered.
const REFUSED_WITHIN: Duration = Duration::from_secs(10);

/// A client subscribed to [`CHANNEL`] on one node, and the events it got: (offset, data).
struct Subscriber {
    client: Client,
    events: Vec<(u64, String)>,
}

impl Subscriber {
    async fn on(cluster: &TestCluster, id: u64) -> Subscriber {
        let mut client = cluster.node(id).connect().await;
        client.subscribe(CHANNEL).await;
        Subscriber {
            client,
            events: Vec::new(),
        }
    }

    /// Reads events until it has got offset `offset`; returns every event it got.
    async fn read_until(&mut self, offset: u64) -> &[(u64, String)] {
        while self.events.last().is_none_or(|(last, _)| *last < offset) {
            let frame = self.client.expect("e").await;
            assert_eq!(frame["channel"], CHANNEL, "{frame}");
            self.events.push((
                frame["offset"].as_u64().unwrap(),
                frame["data"].as_str().unwrap().to_owned(),
            ));
        }
        &self.events
    }
}

/// `(offset, data)` of each of `data`, at offsets from `first` on.
fn at_offsets(first: u64, data: &[&str]) -> Vec<(u64, String)> {
    (first..).zip(data.iter().map(|d| d.to_string())).collect()
}

/// Publishes each of `data` to `channel` through node `id`, one request each; every one must be
/// acknowledged.
async fn publish_each(cluster: &TestCluster, id: u64, channel: &str, data: &[&str]) {
    for d in data {
        let status = publish_batch(cluster.node(id).public_addr(), channel, &[d.to_string()]).await;
        assert_eq!(status, Some(200), "publish of {d} through node {id}");
    }
}

/// Publishes `data` to [`CHANNEL`] through node `id`, which is cut off: it must answer 503
/// within [`REFUSED_WITHIN`]; returns how long it took.
async fn publish_refused(cluster: &TestCluster, id: u64, data: &str) -> Duration {
    let started = Instant::now();
    let status = publish_batch(cluster.node(id).public_addr(), CHANNEL, &[data.to_owned()]).await;
    let took = started.elapsed();
    assert_eq!(status, Some(503), "a history publish to cut-off node {id}");
    assert!(took < REFUSED_WITHIN, "refused only after {took:?}");
    took
}

/// A publish to a channel without history on node `id` (cut off) reaches its own subscriber.
async fn plain_reaches_local_subscriber(cluster: &TestCluster, id: u64, subscriber: &mut Client) {
    assert!(cluster.node(id).publish(PLAIN, "local").await);
    let frame = subscriber.expect("e").await;
    assert_eq!(frame["channel"], PLAIN);
    assert_eq!(support::data(&frame), "local");
}

/// Waits (at most `within`) until every node has the same history of [`CHANNEL`], holding
/// `last`; returns it.
async fn await_same_history(
    cluster: &TestCluster,
    last: &str,
    within: Duration,
) -> (String, Vec<(u64, String)>) {
    let deadline = Instant::now() + within;
    loop {
        let mut histories = BTreeMap::new();
        for node in cluster.nodes.values() {
            histories.insert(node.id, read_history(node.public_addr(), CHANNEL).await);
        }
        let first = histories.values().next().unwrap().clone();
        let holds_last = first.1.iter().any(|(_, data)| data == last);
        if holds_last && histories.values().all(|history| *history == first) {
            return first;
        }
        assert!(
            Instant::now() < deadline,
            "the nodes' histories differ after {within:?}: {histories:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The history every node converged to is `before`, then `during`, with the refused event
/// (`refused`) nowhere or once after `before` (Raft cannot tell a client whether an entry it
/// did not acknowledge is committed later: a proposal held by a dropping link reaches the
/// leader once healed), at dense offsets.
fn assert_converged(history: &[(u64, String)], before: &[&str], during: &[&str], refused: &str) {
    let offsets: Vec<u64> = history.iter().map(|(offset, _)| *offset).collect();
    assert_eq!(offsets, (1..=history.len() as u64).collect::<Vec<_>>());
    let kept: Vec<&str> = history
        .iter()
        .map(|(_, data)| data.as_str())
        .filter(|data| *data != refused)
        .collect();
    let expected: Vec<&str> = before.iter().chain(during).copied().collect();
    assert_eq!(kept, expected, "{history:?}");
    assert!(history.len() - kept.len() <= 1, "{refused} stored twice");
}

/// The events published while a node is cut off, in order.
const DURING: [&str; 4] = ["during-1", "during-2", "during-3", "during-4"];

/// Subscribers of [`CHANNEL`] on every node, and one of [`PLAIN`] on node `cut_off`, once an
/// event `before` published through `leader` has reached every node's subscriber.
async fn subscribe_everywhere(
    cluster: &TestCluster,
    leader: u64,
    cut_off: u64,
) -> (BTreeMap<u64, Subscriber>, Client) {
    let mut subscribers = BTreeMap::new();
    for &id in cluster.nodes.keys() {
        subscribers.insert(id, Subscriber::on(cluster, id).await);
    }
    let mut plain = cluster.node(cut_off).connect().await;
    plain.subscribe(PLAIN).await;
    publish_each(cluster, leader, CHANNEL, &["before"]).await;
    for subscriber in subscribers.values_mut() {
        assert_eq!(subscriber.read_until(1).await, at_offsets(1, &["before"]));
    }
    (subscribers, plain)
}

/// Publishes [`DURING`] through the two nodes of the majority (`leader` then `follower`), which
/// acknowledge them; their subscribers get them in order after `before`.
async fn majority_goes_on(
    cluster: &TestCluster,
    leader: u64,
    follower: u64,
    subscribers: &mut BTreeMap<u64, Subscriber>,
) {
    publish_each(cluster, leader, CHANNEL, &DURING[..2]).await;
    publish_each(cluster, follower, CHANNEL, &DURING[2..]).await;
    let expected: Vec<(u64, String)> = at_offsets(1, &["before"])
        .into_iter()
        .chain(at_offsets(2, &DURING))
        .collect();
    for id in [leader, follower] {
        let seen = subscribers.get_mut(&id).unwrap().read_until(5).await;
        assert_eq!(seen, expected, "node {id}'s subscriber");
    }
}

/// Heals the partition and waits until all three nodes agree on a leader and hold the same
/// history of [`CHANNEL`], which every subscriber got, in order, once each; returns the leader,
/// every node's status once they agreed, the history, and how long converging took.
async fn heal_and_converge(
    cluster: &TestCluster,
    subscribers: &mut BTreeMap<u64, Subscriber>,
) -> (
    u64,
    BTreeMap<u64, ClusterStatus>,
    (String, Vec<(u64, String)>),
    Duration,
) {
    cluster.heal();
    let healed = Instant::now();
    let (leader, statuses) = cluster
        .agreed_leader(&[1, 2, 3], 3, Duration::from_secs(20))
        .await;
    let last_data = DURING[DURING.len() - 1];
    let history = await_same_history(cluster, last_data, Duration::from_secs(15)).await;
    let converged_after = healed.elapsed();
    assert_converged(&history.1, &["before"], &DURING, REFUSED);
    let last = history.1.last().unwrap().0;
    for (id, subscriber) in subscribers {
        let seen = subscriber.read_until(last).await;
        assert_eq!(seen, history.1, "node {id}'s subscriber");
    }
    (leader, statuses, history, converged_after)
}

/// Whether the event refused during the partition is in `history`.
fn was_committed_later(history: &[(u64, String)]) -> bool {
    history.iter().any(|(_, data)| data == REFUSED)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_by_resets_refuses_history_the_majority_goes_on_and_healing_converges() {
    leader_cut_off("partition-leader-rejected", Cut::Rejected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_by_lost_packets_refuses_history_the_majority_goes_on_and_heals() {
    leader_cut_off("partition-leader-dropped", Cut::Dropped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_off_by_resets_refuses_history_the_leader_goes_on_and_healing_converges() {
    follower_cut_off("partition-follower-rejected", Cut::Rejected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_off_by_lost_packets_refuses_history_the_leader_goes_on_and_heals() {
    follower_cut_off("partition-follower-dropped", Cut::Dropped).await;
}

/// The leader cut off (`cut`), then healed.
async fn leader_cut_off(name: &str, cut: Cut) {
    let cluster = TestCluster::start_behind_proxies(name, 3, ENV).await;
    let (leader, _) = cluster
        .agreed_leader(&[1, 2, 3], 3, Duration::from_secs(20))
        .await;
    let majority: Vec<u64> = [1, 2, 3].into_iter().filter(|&id| id != leader).collect();
    let (mut subscribers, mut plain) = subscribe_everywhere(&cluster, leader, leader).await;

    cluster.isolate(leader, cut);
    let cut_at = Instant::now();
    let elected = async {
        let (new_leader, _) = cluster
            .leader_among(&majority, Duration::from_secs(15))
            .await;
        (new_leader, cut_at.elapsed())
    };
    let (refused_after, (new_leader, elected_after)) =
        tokio::join!(publish_refused(&cluster, leader, REFUSED), elected);
    assert_ne!(new_leader, leader);
    plain_reaches_local_subscriber(&cluster, leader, &mut plain).await;
    let follower = majority
        .iter()
        .copied()
        .find(|&id| id != new_leader)
        .unwrap();
    majority_goes_on(&cluster, new_leader, follower, &mut subscribers).await;

    let (final_leader, statuses, (epoch, history), converged_after) =
        heal_and_converge(&cluster, &mut subscribers).await;
    assert_ne!(
        final_leader, leader,
        "the old leader is behind: it cannot win"
    );
    assert_ne!(statuses[&leader].state, Role::Leader);
    let old_leaders_history = read_history(cluster.node(leader).public_addr(), CHANNEL).await;
    assert_eq!(old_leaders_history.0, epoch);
    println!(
        "leader {leader} cut off ({cut:?}): refused in {refused_after:?}; node {new_leader} led after \
         {elected_after:?}; healed, all agreed on node {final_leader} and converged in \
         {converged_after:?}; the refused event was committed later: {}",
        was_committed_later(&history)
    );
}

/// A follower cut off (`cut`), then healed.
async fn follower_cut_off(name: &str, cut: Cut) {
    let cluster = TestCluster::start_behind_proxies(name, 3, ENV).await;
    let (leader, before_cut) = cluster
        .agreed_leader(&[1, 2, 3], 3, Duration::from_secs(20))
        .await;
    let term = before_cut[&leader].term;
    let cut_off = [1, 2, 3].into_iter().find(|&id| id != leader).unwrap();
    let other = [1, 2, 3]
        .into_iter()
        .find(|&id| id != leader && id != cut_off)
        .unwrap();
    let (mut subscribers, mut plain) = subscribe_everywhere(&cluster, leader, cut_off).await;

    cluster.isolate(cut_off, cut);
    let refused_after = publish_refused(&cluster, cut_off, REFUSED).await;
    plain_reaches_local_subscriber(&cluster, cut_off, &mut plain).await;
    majority_goes_on(&cluster, leader, other, &mut subscribers).await;
    // No election on the majority's side: the same leader in the same term.
    let (still, statuses) = cluster
        .leader_among(&[leader, other], Duration::from_secs(5))
        .await;
    assert_eq!(still, leader);
    assert_eq!(
        statuses[&leader].term, term,
        "the majority held an election"
    );

    let (final_leader, _, (_, history), converged_after) =
        heal_and_converge(&cluster, &mut subscribers).await;
    println!(
        "follower {cut_off} cut off ({cut:?}): refused in {refused_after:?}; leader {leader} went on in \
         term {term}; healed, all agreed on node {final_leader} and converged in \
         {converged_after:?}; the refused event was committed later: {}",
        was_committed_later(&history)
    );
}
