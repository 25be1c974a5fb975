//! What a node keeps across a restart, and what a snapshot carries to another node: the log,
//! vote and committed id reopen from sled, the replicated state comes back from the snapshot, and
//! a follower that installs the leader's snapshot holds the same state.

use chorus_cluster::{
    Departure, Entry, InterestChange, LogId, LogStore, NodeId, PresenceChange, PresenceUserRef,
    Request, Response, StateMachineStore, TypeConfig,
};
use chorus_storage::{Store, StoredEvent};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{
    CommittedLeaderId, EntryPayload, Membership, RaftLogReader, RaftSnapshotBuilder, Snapshot, Vote,
};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(index: u64, payload: EntryPayload<TypeConfig>) -> Entry {
    Entry {
        log_id: log_id(1, index),
        payload,
    }
}

/// A cluster's first entries: a membership of nodes 1 and 2, then requests.
fn entries() -> Vec<Entry> {
    let voters = BTreeSet::from([1, 2]);
    let requests = [
        Request::AddMember {
            id: 1,
            addr: "10.0.0.1:6002".into(),
        },
        Request::AddMember {
            id: 2,
            addr: "10.0.0.2:6002".into(),
        },
        Request::UpdateInterest {
            node: 2,
            reset: false,
            changes: vec![InterestChange {
                app: "1".into(),
                channel: "news".into(),
                present: true,
            }],
        },
        Request::UpdatePresence {
            node: 2,
            reset: false,
            changes: vec![PresenceChange {
                app: "1".into(),
                channel: "presence-room".into(),
                user_id: "ann".into(),
                user_info: Some("{}".into()),
            }],
        },
        Request::HistoryAppend {
            app: "1".into(),
            channel: "history-chat".into(),
            fresh_epoch: "e1".into(),
            events: vec![StoredEvent {
                event: "said".into(),
                data: "hi".into(),
                time_ms: 5,
            }],
            except: None,
        },
    ];
    let mut out = vec![entry(
        1,
        EntryPayload::Membership(Membership::new(vec![voters], None)),
    )];
    for (n, request) in requests.into_iter().enumerate() {
        out.push(entry(n as u64 + 2, EntryPayload::Normal(request)));
    }
    out
}

type Summary = (BTreeMap<NodeId, String>, Vec<NodeId>, Vec<String>, u64);

/// The parts of the state the requests above touch.
fn summary(state_machine: &StateMachineStore) -> Summary {
    state_machine.reader().read(|state| {
        (
            state.members().clone(),
            state.interested_nodes("1", "news"),
            state
                .presence_members("1", "presence-room")
                .map(|users| users.keys().cloned().collect())
                .unwrap_or_default(),
            state
                .history_position("1", "history-chat")
                .map_or(0, |p| p.next_offset),
        )
    })
}

#[tokio::test]
async fn a_reopened_node_has_its_log_vote_and_state() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let store = Store::open(dir.path()).unwrap();
        let mut log = LogStore::new(&store).unwrap();
        let mut state_machine = StateMachineStore::new(&store).unwrap();
        log.blocking_append(entries()).await.unwrap();
        log.save_vote(&Vote::new_committed(1, 1)).await.unwrap();
        log.save_committed(Some(log_id(1, 6))).await.unwrap();
        let responses = state_machine.apply(entries()).await.unwrap();
        assert_eq!(responses.len(), 6);
        assert_eq!(
            responses[5],
            Response::HistoryAppended {
                epoch: "e1".into(),
                first_offset: 1
            }
        );
        state_machine
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        log.purge(log_id(1, 3)).await.unwrap();
        // Applied after the snapshot: only the log has it.
        state_machine
            .apply([entry(
                7,
                EntryPayload::Normal(Request::RemoveMember {
                    id: 2,
                    why: Departure::DeclaredDead,
                }),
            )])
            .await
            .unwrap();
        summary(&state_machine)
    };

    let store = Store::open(dir.path()).unwrap();
    let mut log = LogStore::new(&store).unwrap();
    let mut state_machine = StateMachineStore::new(&store).unwrap();
    let log_state = log.get_log_state().await.unwrap();
    assert_eq!(log_state.last_purged_log_id, Some(log_id(1, 3)));
    assert_eq!(log_state.last_log_id, Some(log_id(1, 6)));
    let kept = log.try_get_log_entries(0..100).await.unwrap();
    assert_eq!(kept, entries()[3..].to_vec(), "entries after the purge");
    assert_eq!(
        log.read_vote().await.unwrap(),
        Some(Vote::new_committed(1, 1))
    );
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 6)));

    let (last_applied, membership) = state_machine.applied_state().await.unwrap();
    assert_eq!(last_applied, Some(log_id(1, 6)), "where the snapshot ends");
    assert_eq!(membership.log_id(), &Some(log_id(1, 1)));
    assert_eq!(
        summary(&state_machine),
        (
            BTreeMap::from([
                (1, "10.0.0.1:6002".to_owned()),
                (2, "10.0.0.2:6002".to_owned())
            ]),
            vec![2],
            vec!["ann".to_owned()],
            2
        ),
        "the snapshot's state, before the removal it does not hold"
    );
    assert_ne!(summary(&state_machine), before);
}

/// A state machine that applied [`entries`], and the snapshot it built of them.
async fn leader_with_snapshot() -> (StateMachineStore, Snapshot<TypeConfig>) {
    let mut leader = StateMachineStore::new(&Store::temporary().unwrap()).unwrap();
    leader.apply(entries()).await.unwrap();
    let built = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    (leader, built)
}

#[tokio::test]
async fn a_follower_installing_the_leaders_snapshot_holds_the_same_state() {
    let (mut leader, built) = leader_with_snapshot().await;
    let mut follower = StateMachineStore::new(&Store::temporary().unwrap()).unwrap();
    let mut received = follower.begin_receiving_snapshot().await.unwrap();
    received
        .get_mut()
        .extend_from_slice(built.snapshot.get_ref());
    follower
        .install_snapshot(&built.meta, received)
        .await
        .unwrap();

    assert_eq!(summary(&follower), summary(&leader));
    assert_eq!(follower.reader().last_applied(), Some(log_id(1, 6)));
    let current = follower.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, built.meta);

    // Both go on from the same state to the same answers.
    let next = [entry(
        7,
        EntryPayload::Normal(Request::RemoveMember {
            id: 2,
            why: Departure::DeclaredDead,
        }),
    )];
    let expected = vec![Response::MemberRemoved {
        users_left: vec![PresenceUserRef {
            app: "1".into(),
            channel: "presence-room".into(),
            user_id: "ann".into(),
        }],
    }];
    assert_eq!(leader.apply(next.clone()).await.unwrap(), expected);
    assert_eq!(follower.apply(next).await.unwrap(), expected);
}

#[tokio::test]
async fn a_corrupt_snapshot_is_refused_and_the_state_is_kept() {
    let (_leader, built) = leader_with_snapshot().await;
    let mut follower = StateMachineStore::new(&Store::temporary().unwrap()).unwrap();
    follower.apply(entries()[..3].to_vec()).await.unwrap();
    let before = summary(&follower);
    let truncated = built.snapshot.get_ref()[..10].to_vec();
    let refused = follower
        .install_snapshot(&built.meta, Box::new(Cursor::new(truncated)))
        .await;
    assert!(refused.is_err());
    assert_eq!(summary(&follower), before);
    assert!(follower.get_current_snapshot().await.unwrap().is_none());
}

#[tokio::test]
async fn a_dropped_log_store_releases_the_database_at_once() {
    let dir = tempfile::tempdir().unwrap();
    for index in 1..=20 {
        // Reopening fails on sled's file lock while the flusher thread still holds the database.
        let store = Store::open(dir.path()).unwrap();
        let mut log = LogStore::new(&store).unwrap();
        log.blocking_append([entry(index, EntryPayload::Blank)])
            .await
            .unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let mut log = LogStore::new(&store).unwrap();
    let kept = log.try_get_log_entries(..).await.unwrap();
    assert_eq!(
        kept.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
        (1..=20).collect::<Vec<_>>()
    );
}
