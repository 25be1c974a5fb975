//! Two nodes in one process, each with its own sled store and cluster port served by actix: a
//! node that joins after the leader compacted its log into a snapshot asks the leader to take
//! it, receives the snapshot over HTTP (install_snapshot), is promoted to voter, and holds the
//! leader's replicated state.

mod support;

use std::collections::BTreeMap;
use std::future::Future;

use chorus_cluster::{Cluster, InterestChange, Request, Role};
use chorus_storage::Store;
use prometheus::Registry;

use support::{eventually, serve_cluster_port, settings, unused_port};

/// Runs a Raft call on the cluster's runtime.
async fn on_raft<T: Send + 'static, F: Future<Output = T> + Send + 'static>(
    cluster: &Cluster,
    call: impl FnOnce(chorus_cluster::Raft) -> F,
) -> T {
    cluster
        .on_raft_runtime(call(cluster.raft().clone()))
        .await
        .unwrap()
}

#[test]
fn a_node_joining_after_compaction_catches_up_from_a_snapshot() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (store_a, store_b) = (
        Store::open(dir_a.path()).unwrap(),
        Store::open(dir_b.path()).unwrap(),
    );
    let (port_a, port_b) = (unused_port(), unused_port());
    actix_web::rt::System::new().block_on(async {
        let (a, _) =
            Cluster::start(settings(1, &[(1, port_a)]), &store_a, &Registry::new()).unwrap();
        serve_cluster_port(&a, port_a);
        eventually("node 1 leads a one-node cluster it recorded", || {
            let status = a.status();
            status.state == Role::Leader && status.members.iter().all(|m| m.recorded)
        })
        .await;

        for n in 0..30 {
            let interest = Request::UpdateInterest {
                node: 1,
                reset: false,
                changes: vec![InterestChange {
                    app: "1".into(),
                    channel: format!("channel-{n}"),
                    present: true,
                }],
            };
            on_raft(&a, |raft| async move { raft.client_write(interest).await })
                .await
                .unwrap();
        }
        let last = a.status().last_log_index.unwrap();
        on_raft(&a, |raft| async move { raft.trigger().snapshot().await })
            .await
            .unwrap();
        eventually("node 1 took a snapshot of its whole log", || {
            a.raft().metrics().borrow().snapshot.map(|s| s.index) == Some(last)
        })
        .await;
        on_raft(&a, move |raft| async move {
            raft.trigger().purge_log(last).await
        })
        .await
        .unwrap();
        eventually("node 1 purged its log", || {
            a.raft().metrics().borrow().purged.map(|p| p.index) == Some(last)
        })
        .await;

        let (b, _) = Cluster::start(
            settings(2, &[(1, port_a), (2, port_b)]),
            &store_b,
            &Registry::new(),
        )
        .unwrap();
        serve_cluster_port(&b, port_b);
        eventually("node 2 joined as a voter, recorded, and caught up", || {
            let status = b.status();
            status.leader_id == Some(1)
                && status.voters().count() == 2
                && status.members.iter().all(|m| m.recorded)
                && status.applied_index >= Some(last)
        })
        .await;
        assert_eq!(
            b.raft().metrics().borrow().snapshot.map(|s| s.index),
            Some(last),
            "node 2 started from node 1's snapshot, not from the purged log"
        );
        let interested = b
            .state()
            .read(|state| state.interested_nodes("1", "channel-29"));
        assert_eq!(interested, vec![1]);
        let members = b.state().read(|state| state.members().clone());
        assert_eq!(
            members,
            BTreeMap::from([
                (1, format!("127.0.0.1:{port_a}")),
                (2, format!("127.0.0.1:{port_b}"))
            ])
        );
        a.shutdown();
        b.shutdown();
    });
}
