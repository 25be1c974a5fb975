//! Failure detection with real `chorus` processes (three nodes, `CHORUS_DEAD_AFTER_SECS=2`):
//! - a follower killed with `kill -9` is declared dead once, by the leader, within the time plus a
//!   margin: it leaves every node's replicated members and its channel interest goes with it;
//!   restarted, it is taken back and its interest returns once its clients subscribe again;
//! - a follower frozen with SIGSTOP (its sockets stay open, it answers nothing) is declared dead;
//!   thawed, it sees it was taken back and declares its interest again by itself, so its
//!   subscribers, connected all along, get forwarded publishes again;
//! - a leader killed is declared dead by the new leader, counting from its election.

mod support;

use std::time::{Duration, Instant};

use support::cluster::TestCluster;
use support::Client;

const DEAD_AFTER: Duration = Duration::from_secs(2);

/// How long after `DEAD_AFTER` a death may take to be seen everywhere: an election at most
/// (2 s), the leader's check (250 ms), a commit and its application on every node.
const MARGIN: Duration = Duration::from_secs(4);

const DECLARED_DEAD: &str = "chorus_cluster_nodes_declared_dead_total";

/// Waits (at most `within`) until `check` holds, polling; panics with `what` otherwise.
async fn wait_until<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// True when every node of `among` has applied the removal of `dead`: it is not among the
/// members, nor among the nodes with subscribers of `channel`, which are exactly `interested`.
async fn removed_everywhere(
    cluster: &TestCluster,
    among: &[u64],
    dead: u64,
    channel: &str,
    interested: &[u64],
) -> bool {
    for &id in among {
        let Some(members) = cluster.recorded_members(id).await else {
            return false;
        };
        if members.contains(&dead) || cluster.interest(id, channel).await != interested {
            return false;
        }
    }
    true
}

/// Waits (at most `DEAD_AFTER + MARGIN`) until every node of `among` applied the removal of
/// `dead` (see [`removed_everywhere`]).
async fn await_removal(
    cluster: &TestCluster,
    among: &[u64],
    dead: u64,
    channel: &str,
    interested: &[u64],
) {
    wait_until(
        DEAD_AFTER + MARGIN,
        &format!("node {dead} leaves the members and the interest of {among:?}"),
        || removed_everywhere(cluster, among, dead, channel, interested),
    )
    .await;
}

/// How many deaths the nodes of `among` declared, together.
async fn deaths_declared(cluster: &TestCluster, among: &[u64]) -> f64 {
    let mut total = 0.0;
    for &id in among {
        total += cluster.metric(id, DECLARED_DEAD).await;
    }
    total
}

/// Reads frames until the next event `e` on `channel` and returns its data.
async fn next_event(client: &mut Client, channel: &str) -> String {
    loop {
        let frame = client
            .next()
            .await
            .expect("the subscriber's socket is open");
        if frame["event"] == "e" && frame["channel"] == channel {
            return frame["data"].as_str().unwrap().to_owned();
        }
    }
}

/// The leader every node of `among` names, if they agree on one of them.
async fn named_leader(cluster: &TestCluster, among: &[u64]) -> Option<u64> {
    let mut named = Vec::new();
    for &id in among {
        named.push(cluster.status(id).await?.leader_id?);
    }
    let leader = named[0];
    (among.contains(&leader) && named.iter().all(|id| *id == leader)).then_some(leader)
}

/// Starts the cluster and waits for its leader; returns it.
async fn start(name: &str) -> (TestCluster, u64) {
    let cluster = TestCluster::start_with_env(
        name,
        3,
        &[("CHORUS_DEAD_AFTER_SECS", &DEAD_AFTER.as_secs().to_string())],
    )
    .await;
    let (leader, _) = cluster
        .agreed_leader(&[1, 2, 3], 3, Duration::from_secs(20))
        .await;
    (cluster, leader)
}

/// Connects a subscriber of `channel` to each node of `nodes` (in order), and waits until every
/// node applied their interest.
async fn subscribers(cluster: &TestCluster, nodes: &[u64], channel: &str) -> Vec<Client> {
    let mut clients = Vec::new();
    for &id in nodes {
        let mut client = cluster.node(id).connect().await;
        client.subscribe(channel).await;
        clients.push(client);
    }
    let mut interested = nodes.to_vec();
    interested.sort();
    for id in 1..=3 {
        cluster
            .await_interest(id, channel, &interested, Duration::from_secs(5))
            .await;
    }
    clients
}

fn others(of: &[u64], but: u64) -> Vec<u64> {
    of.iter().copied().filter(|id| *id != but).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_follower_is_declared_dead_once_and_taken_back_when_it_returns() {
    let (mut cluster, leader) = start("dead-follower").await;
    let followers = others(&[1, 2, 3], leader);
    let (victim, witness) = (followers[0], followers[1]);
    let mut clients = subscribers(&cluster, &[witness, victim], "news").await;
    let mut on_witness = clients.swap_remove(0);

    cluster.kill_hard(victim);
    let killed = Instant::now();
    let survivors = others(&[1, 2, 3], victim);
    await_removal(&cluster, &survivors, victim, "news", &[witness]).await;
    let took = killed.elapsed();
    eprintln!("kill -9 of follower {victim} to its removal applied on both survivors: {took:?}");
    assert!(
        took >= DEAD_AFTER - Duration::from_millis(500),
        "declared dead after {took:?}, before {DEAD_AFTER:?} of silence"
    );
    assert_eq!(cluster.metric(leader, DECLARED_DEAD).await, 1.0);
    for id in &survivors {
        assert_eq!(cluster.metric(*id, "chorus_cluster_members").await, 2.0);
    }
    assert!(cluster.node(leader).publish("news", "while-dead").await);
    assert_eq!(next_event(&mut on_witness, "news").await, "while-dead");
    tokio::time::sleep(DEAD_AFTER).await;
    assert_eq!(
        deaths_declared(&cluster, &survivors).await,
        1.0,
        "one death, declared once"
    );

    cluster.restart(victim).await;
    let restarted = Instant::now();
    cluster
        .agreed_leader(&[1, 2, 3], 3, Duration::from_secs(15))
        .await;
    eprintln!(
        "restart of node {victim} to every node recording it a member again: {:?}",
        restarted.elapsed()
    );
    cluster
        .await_interest(leader, "news", &[witness], Duration::from_secs(1))
        .await;
    let mut back = cluster.node(victim).connect().await;
    back.subscribe("news").await;
    cluster
        .await_interest(leader, "news", &followers, Duration::from_secs(5))
        .await;
    assert!(cluster.node(leader).publish("news", "after").await);
    assert_eq!(next_event(&mut back, "news").await, "after");
    assert_eq!(next_event(&mut on_witness, "news").await, "after");
    assert_eq!(deaths_declared(&cluster, &[1, 2, 3]).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_node_is_declared_dead_and_declares_its_interest_again_when_thawed() {
    let (cluster, leader) = start("frozen").await;
    let frozen = others(&[1, 2, 3], leader)[0];
    let awake = others(&[1, 2, 3], frozen);
    let mut subscriber = subscribers(&cluster, &[frozen], "news").await.remove(0);
    assert!(cluster.node(leader).publish("news", "before").await);
    assert_eq!(next_event(&mut subscriber, "news").await, "before");

    cluster.freeze(frozen);
    let stopped = Instant::now();
    await_removal(&cluster, &awake, frozen, "news", &[]).await;
    eprintln!(
        "SIGSTOP of node {frozen} to its removal applied on the others: {:?}",
        stopped.elapsed()
    );
    assert_eq!(deaths_declared(&cluster, &awake).await, 1.0);

    cluster.thaw(frozen);
    let thawed = Instant::now();
    // Its subscriber never left: the node declares the channel again by itself.
    wait_until(
        Duration::from_secs(10),
        "the thawed node is a member again with its interest",
        || async {
            for &id in &[1, 2, 3] {
                let member = cluster
                    .recorded_members(id)
                    .await
                    .is_some_and(|members| members.contains(&frozen));
                if !member || cluster.interest(id, "news").await != [frozen] {
                    return false;
                }
            }
            true
        },
    )
    .await;
    eprintln!(
        "SIGCONT of node {frozen} to its interest declared again everywhere: {:?}",
        thawed.elapsed()
    );
    assert_eq!(
        cluster
            .metric(frozen, "chorus_cluster_readmissions_total")
            .await,
        1.0
    );
    let publisher = awake[0];
    assert!(cluster.node(publisher).publish("news", "after").await);
    assert_eq!(next_event(&mut subscriber, "news").await, "after");
    assert_eq!(deaths_declared(&cluster, &[1, 2, 3]).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_declared_dead_by_the_new_leader() {
    let (mut cluster, old_leader) = start("dead-leader").await;
    let survivors = others(&[1, 2, 3], old_leader);
    let _clients = subscribers(&cluster, &[old_leader, survivors[0]], "news").await;

    cluster.kill_hard(old_leader);
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(10);
    let new_leader = loop {
        if let Some(leader) = named_leader(&cluster, &survivors).await {
            break leader;
        }
        assert!(Instant::now() < deadline, "the survivors elect no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let elected = Instant::now();
    eprintln!(
        "kill -9 of leader {old_leader} to node {new_leader} leading: {:?}",
        killed.elapsed()
    );
    await_removal(&cluster, &survivors, old_leader, "news", &[survivors[0]]).await;
    let took = elected.elapsed();
    eprintln!(
        "node {new_leader} leading to the removal of node {old_leader} applied on both \
         survivors: {took:?} (from the kill: {:?})",
        killed.elapsed()
    );
    assert!(
        took >= DEAD_AFTER - Duration::from_millis(250),
        "declared dead {took:?} after the election: the new leader gives {DEAD_AFTER:?} from it"
    );
    assert_eq!(cluster.metric(new_leader, DECLARED_DEAD).await, 1.0);
    assert_eq!(deaths_declared(&cluster, &survivors).await, 1.0);

    cluster.restart(old_leader).await;
    cluster
        .agreed_leader(&[1, 2, 3], 3, Duration::from_secs(15))
        .await;
    assert_eq!(deaths_declared(&cluster, &[1, 2, 3]).await, 1.0);
}
