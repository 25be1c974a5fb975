//! The feed of committed changes: what each applied entry changed, typed, with its log index,
//! handed over under the order lock after the entry's history is stored; a snapshot's net
//! changes with its last index; and on two real nodes (in one process, each with its sled store
//! and cluster port), the same changes at the same indexes on both, once per change.

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use chorus_cluster::{
    Change, ChannelKey, Cluster, CommitFeed, Committed, Entry, HistoryCommit, InterestChange,
    LogId, NodeId, PresenceChange, PresenceEvent, Request, StateMachineStore, TypeConfig,
};
use chorus_storage::{Store, StoredEvent};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, Membership, RaftSnapshotBuilder};
use prometheus::Registry;

use support::{eventually, serve_cluster_port, settings, unused_port};

fn entry(index: u64, payload: EntryPayload<TypeConfig>) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload,
    }
}

fn said(data: &str) -> StoredEvent {
    StoredEvent {
        event: "said".into(),
        data: data.into(),
        time_ms: 5,
    }
}

fn interest(node: NodeId, channel: &str, present: bool) -> Request {
    Request::UpdateInterest {
        node,
        reset: false,
        changes: vec![InterestChange {
            app: "1".into(),
            channel: channel.into(),
            present,
        }],
    }
}

fn ann_joins(node: NodeId) -> Request {
    Request::UpdatePresence {
        node,
        reset: false,
        changes: vec![PresenceChange {
            app: "1".into(),
            channel: "presence-room".into(),
            user_id: "ann".into(),
            user_info: Some("{}".into()),
        }],
    }
}

/// A membership, members 1 and 2, node 2's interest and presence, and history (indexes 1-6).
fn entries() -> Vec<Entry> {
    let requests = [
        Request::AddMember {
            id: 1,
            addr: "10.0.0.1:6002".into(),
        },
        Request::AddMember {
            id: 2,
            addr: "10.0.0.2:6002".into(),
        },
        interest(2, "news", true),
        ann_joins(2),
        Request::HistoryAppend {
            app: "1".into(),
            channel: "history-chat".into(),
            fresh_epoch: "e1".into(),
            events: vec![said("hi"), said("there")],
            except: Some("7.8".into()),
        },
    ];
    let membership = Membership::new(vec![BTreeSet::from([1, 2])], None);
    let mut out = vec![entry(1, EntryPayload::Membership(membership))];
    for (n, request) in requests.into_iter().enumerate() {
        out.push(entry(n as u64 + 2, EntryPayload::Normal(request)));
    }
    out
}

fn at(index: u64, change: Change) -> Committed {
    Committed { index, change }
}

fn ann_joined() -> Change {
    Change::Presence(PresenceEvent {
        app: "1".into(),
        channel: "presence-room".into(),
        user_id: "ann".into(),
        joined: Some("{}".into()),
    })
}

fn admitted(id: NodeId) -> Change {
    Change::NodeAdmitted {
        id,
        addr: format!("10.0.0.{id}:6002"),
    }
}

#[tokio::test]
async fn each_entrys_changes_are_handed_over_under_the_order_lock_once_stored() {
    let store = Store::temporary().unwrap();
    let (mut state_machine, mut feed) = StateMachineStore::with_feed(&store).unwrap();
    let order = feed.order_lock();
    let applying =
        tokio::spawn(async move { state_machine.apply(entries()).await.map(|r| r.len()) });

    let batch = feed.next().await.unwrap();
    let stored = store.history().channel("1", "history-chat").unwrap();
    assert_eq!(
        stored.map(|c| (c.epoch, c.next_offset)),
        Some(("e1".to_owned(), 3)),
        "the history is stored before the node is told"
    );
    assert!(
        order.try_lock().is_none(),
        "the state machine holds the order lock while the node holds the batch"
    );
    assert_eq!(
        batch.changes,
        vec![
            at(2, admitted(1)),
            at(3, admitted(2)),
            at(4, Change::ChannelOccupied(ChannelKey::new("1", "news"))),
            at(5, ann_joined()),
            at(
                6,
                Change::History(HistoryCommit {
                    app: "1".into(),
                    channel: "history-chat".into(),
                    epoch: "e1".into(),
                    first_offset: 1,
                    events: vec![said("hi"), said("there")],
                    except: Some("7.8".into()),
                })
            ),
        ]
    );
    drop(batch);
    assert_eq!(
        applying.await.unwrap().unwrap(),
        6,
        "apply returns once the batch is taken"
    );
    assert!(order.try_lock().is_some(), "and lets the order lock go");
}

#[tokio::test]
async fn a_node_installing_a_snapshot_is_told_the_net_changes_at_its_last_index() {
    let (mut leader, _) = StateMachineStore::with_feed(&Store::temporary().unwrap()).unwrap();
    leader.apply(entries()).await.unwrap();
    let built = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();

    let (mut follower, mut feed) =
        StateMachineStore::with_feed(&Store::temporary().unwrap()).unwrap();
    let installing = tokio::spawn(async move {
        let mut received = follower.begin_receiving_snapshot().await.unwrap();
        received
            .get_mut()
            .extend_from_slice(built.snapshot.get_ref());
        follower.install_snapshot(&built.meta, received).await
    });
    let batch = feed.next().await.unwrap();
    assert_eq!(
        batch.changes,
        vec![
            at(6, ann_joined()),
            at(6, Change::ChannelOccupied(ChannelKey::new("1", "news"))),
            at(6, admitted(1)),
            at(6, admitted(2)),
        ],
        "skipped history is fetched again, never delivered"
    );
    drop(batch);
    installing.await.unwrap().unwrap();
}

/// Takes every batch of `feed` on a thread of its own, as a node does; what it took so far.
fn consume(mut feed: CommitFeed) -> Arc<Mutex<Vec<Committed>>> {
    let taken = Arc::new(Mutex::new(Vec::new()));
    let into = taken.clone();
    std::thread::spawn(move || {
        while let Some(batch) = feed.blocking_next() {
            into.lock().unwrap().extend(batch.changes.iter().cloned());
        }
    });
    taken
}

/// The changes about `channel` of app 1, in order.
fn about(taken: &Mutex<Vec<Committed>>, channel: &str) -> Vec<Committed> {
    let taken = taken.lock().unwrap();
    let concerns = |c: &&Committed| match &c.change {
        Change::ChannelOccupied(key) | Change::ChannelVacated(key) => key.channel == channel,
        Change::Presence(event) => event.channel == channel,
        _ => false,
    };
    taken.iter().filter(concerns).cloned().collect()
}

#[test]
fn two_nodes_are_told_the_same_changes_at_the_same_indexes_once_each() {
    let (dir_1, dir_2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let stores = [
        Store::open(dir_1.path()).unwrap(),
        Store::open(dir_2.path()).unwrap(),
    ];
    let ports = [(1, unused_port()), (2, unused_port())];
    actix_web::rt::System::new().block_on(async {
        let mut nodes = Vec::new();
        let mut taken = Vec::new();
        for (id, store) in [1, 2].into_iter().zip(&stores) {
            let (cluster, feed) =
                Cluster::start(settings(id, &ports), store, &Registry::new()).unwrap();
            serve_cluster_port(&cluster, ports[id as usize - 1].1);
            taken.push(consume(feed));
            nodes.push(cluster);
        }
        let (one, two) = (&nodes[0], &nodes[1]);
        eventually("both nodes recorded, with a leader", || {
            let status = one.status();
            status.leader_id.is_some() && status.members.iter().filter(|m| m.recorded).count() == 2
        })
        .await;
        let interested = || {
            one.state()
                .read(|state| state.interested_nodes("1", "news"))
        };
        let ann = || {
            one.state().read(|state| {
                let users = state.presence_members("1", "presence-room");
                let ann = users.and_then(|users| users.get("ann"));
                ann.map(|ann| ann.connections.keys().copied().collect::<Vec<NodeId>>())
            })
        };

        // Node 2 is the channel's first node with subscribers, node 1 its last; ann's first
        // connection is on node 1, her last on node 2.
        two.declare_interest("1", "news", true);
        eventually("node 2 interested", || interested() == [2]).await;
        one.declare_interest("1", "news", true);
        eventually("both nodes interested", || interested() == [1, 2]).await;
        one.declare_presence("1", "presence-room", "ann", Some("{}".into()));
        eventually("ann on node 1", || ann() == Some(vec![1])).await;
        two.declare_presence("1", "presence-room", "ann", Some("{}".into()));
        eventually("ann on both nodes", || ann() == Some(vec![1, 2])).await;
        two.declare_interest("1", "news", false);
        eventually("node 1 interested", || interested() == [1]).await;
        one.declare_presence("1", "presence-room", "ann", None);
        eventually("ann on node 2", || ann() == Some(vec![2])).await;
        one.declare_interest("1", "news", false);
        eventually("news vacated on both nodes", || {
            taken.iter().all(|t| about(t, "news").len() == 2)
        })
        .await;

        let news = about(&taken[0], "news");
        assert_eq!(
            news.iter().map(|c| &c.change).collect::<Vec<_>>(),
            [
                &Change::ChannelOccupied(ChannelKey::new("1", "news")),
                &Change::ChannelVacated(ChannelKey::new("1", "news"))
            ],
            "once each, however many nodes had subscribers"
        );
        assert!(news[0].index < news[1].index);
        let room = about(&taken[0], "presence-room");
        assert_eq!(
            room.iter().map(|c| &c.change).collect::<Vec<_>>(),
            [&ann_joined()],
            "another node's connection is no new member, nor the first one's leaving a departure"
        );

        let applied = one.status().applied_index.unwrap();
        eventually("node 2 applied as far as node 1", || {
            two.status().applied_index >= Some(applied)
        })
        .await;
        let upto = |node: usize| -> Vec<Committed> {
            let taken = taken[node].lock().unwrap();
            taken
                .iter()
                .filter(|c| c.index <= applied)
                .cloned()
                .collect()
        };
        let (on_one, on_two) = (upto(0), upto(1));
        assert_eq!(on_two, on_one, "the same changes on both nodes");
        assert!(
            on_one.windows(2).all(|w| w[0].index <= w[1].index),
            "in log order: {on_one:?}"
        );
        let admitted: BTreeSet<NodeId> = on_one
            .iter()
            .filter_map(|c| match c.change {
                Change::NodeAdmitted { id, .. } => Some(id),
                _ => None,
            })
            .collect();
        assert_eq!(admitted, BTreeSet::from([1, 2]), "{on_one:?}");
        for node in &nodes {
            node.shutdown();
        }
    });
}

#[test]
fn a_restarted_node_takes_first_what_raft_re_applied_as_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let peers = [(1, unused_port())];
    actix_web::rt::System::new().block_on(async {
        let store = Store::open(dir.path()).unwrap();
        let (cluster, feed) =
            Cluster::start(settings(1, &peers), &store, &Registry::new()).unwrap();
        let taken = consume(feed);
        cluster.declare_interest("1", "news", true);
        eventually("news occupied", || about(&taken, "news").len() == 1).await;
        let occupied = about(&taken, "news");
        cluster.shutdown();
        drop((cluster, store));

        // Raft re-applies the entries committed since the last snapshot (there is none) before
        // `start` returns, while no one reads the feed yet: start does not wait for a reader.
        let store = Store::open(dir.path()).unwrap();
        let (cluster, mut feed) =
            Cluster::start(settings(1, &peers), &store, &Registry::new()).unwrap();
        let replayed = feed.take_replayed();
        assert!(
            replayed.contains(&occupied[0]),
            "the same change at the same index: {replayed:?}"
        );
        assert!(
            replayed.windows(2).all(|w| w[0].index <= w[1].index),
            "in log order: {replayed:?}"
        );
        assert!(feed.take_replayed().is_empty(), "taken once");
        drop(feed);
        cluster.shutdown();
    });
}
