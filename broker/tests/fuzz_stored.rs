//! Structured fuzzing (proptest, stable Rust) of what a node decodes from its own disk, from the
//! cluster port and from its configuration file, through the crates' public APIs:
//!
//! - Raft log entries as stored in sled: what was appended (in the binary encoding) reads back
//!   equal, after the store is reopened too, and so do entries an earlier version wrote as JSON;
//!   bytes that are not an entry are refused as `Corrupt`, never a panic.
//! - Snapshots as stored: a state machine opened on a snapshot whose bytes were cut or changed
//!   either refuses it (a typed error) or holds a state that encodes back to what it read.
//! - The cluster port's request bodies (Raft RPCs, join, proposals, removals, forwarded
//!   frames; the Raft RPCs in JSON and in the binary encoding): whatever decodes encodes back to
//!   a value that decodes the same.
//! - Config files: any text is read or refused with a message; settings read back what the
//!   file said; an unknown key is refused by its name.
//!
//! The normal test command runs a few hundred cases each; `PROPTEST_CASES=1000000` runs long.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use chorus_broker::config::Config;
use chorus_cluster::http::{decode_rpc_body, encode_rpc_body, RpcEncoding};
use chorus_cluster::{
    history_batch::HistoryRun, Departure, Entry, ForwardBatch, InterestChange, LogId, NodeId,
    PresenceChange, Request, StateMachineStore, TypeConfig, WebhookMark, WebhookTarget,
};
use chorus_storage::{StorageError, Store, StoredEvent};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, Membership, RaftSnapshotBuilder};
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

fn name() -> impl Strategy<Value = String> {
    prop_oneof![".{0,24}", "[a-z0-9-]{1,12}"]
}

fn request() -> impl Strategy<Value = Request> {
    let change = (name(), name(), name(), proptest::option::of(".{0,30}")).prop_map(
        |(app, channel, user_id, user_info)| PresenceChange {
            app,
            channel,
            user_id,
            user_info,
        },
    );
    let event = (name(), ".{0,60}", any::<u64>()).prop_map(|(event, data, time_ms)| StoredEvent {
        event,
        data,
        time_ms,
    });
    prop_oneof![
        (any::<NodeId>(), name()).prop_map(|(id, addr)| Request::AddMember { id, addr }),
        (any::<NodeId>(), any::<bool>()).prop_map(|(id, removed)| Request::RemoveMember {
            id,
            why: if removed {
                Departure::Removed
            } else {
                Departure::DeclaredDead
            },
        }),
        (
            any::<NodeId>(),
            any::<bool>(),
            prop::collection::vec((name(), name(), any::<bool>()), 0..4)
        )
            .prop_map(|(node, reset, changes)| Request::UpdateInterest {
                node,
                reset,
                changes: changes
                    .into_iter()
                    .map(|(app, channel, present)| InterestChange {
                        app,
                        channel,
                        present
                    })
                    .collect(),
            }),
        (
            any::<NodeId>(),
            any::<bool>(),
            prop::collection::vec(change, 0..4)
        )
            .prop_map(|(node, reset, changes)| Request::UpdatePresence {
                node,
                reset,
                changes
            }),
        (
            name(),
            name(),
            name(),
            prop::collection::vec(event, 0..4),
            proptest::option::of("[0-9]{1,5}\\.[0-9]{1,5}")
        )
            .prop_map(|(app, channel, fresh_epoch, events, except)| {
                Request::HistoryAppend {
                    app,
                    channel,
                    fresh_epoch,
                    events,
                    except,
                }
            }),
        (any::<NodeId>(), any::<bool>())
            .prop_map(|(id, retired)| Request::SetRetired { id, retired }),
        (
            name(),
            any::<u64>(),
            any::<u64>(),
            prop::collection::vec(run(), 0..3)
        )
            .prop_map(
                |(app, time_ms, key_window_ms, runs)| Request::HistoryBatch {
                    app,
                    time_ms,
                    key_window_ms,
                    runs,
                }
            ),
        (name(), ".{0,40}", any::<u64>(), any::<u32>()).prop_map(|(app, url, index, seq)| {
            Request::WebhooksSent {
                target: WebhookTarget { app, url },
                through: WebhookMark { index, seq },
            }
        }),
    ]
}

/// A run of a history batch: events of one channel, each with an idempotency key or none at all.
fn run() -> impl Strategy<Value = HistoryRun> {
    let event = (name(), ".{0,60}", any::<u64>()).prop_map(|(event, data, time_ms)| StoredEvent {
        event,
        data,
        time_ms,
    });
    (
        name(),
        name(),
        prop::collection::vec((event, proptest::option::of("[a-z0-9]{1,8}")), 0..4),
        proptest::option::of("[0-9]{1,5}\\.[0-9]{1,5}"),
        any::<bool>(),
    )
        .prop_map(|(channel, fresh_epoch, keyed, except, with_keys)| {
            let (events, keys): (Vec<StoredEvent>, Vec<Option<String>>) = keyed.into_iter().unzip();
            HistoryRun {
                channel,
                fresh_epoch,
                events,
                except,
                keys: if with_keys { keys } else { Vec::new() },
            }
        })
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

/// Entries from index 1: a membership, then `requests`.
fn entries(requests: Vec<Request>) -> Vec<Entry> {
    let membership = Membership::new(vec![BTreeSet::from([1, 2])], None);
    let mut out = vec![Entry {
        log_id: log_id(1, 1),
        payload: EntryPayload::Membership(membership),
    }];
    for (n, request) in requests.into_iter().enumerate() {
        out.push(Entry {
            log_id: log_id(1, n as u64 + 2),
            payload: EntryPayload::Normal(request),
        });
    }
    out
}

/// Any JSON value, nested a little.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,16}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{0,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// `bytes` with `at` (a position in them) replaced by `with`, or cut there.
fn damage(mut bytes: Vec<u8>, at: prop::sample::Index, with: Option<u8>) -> Vec<u8> {
    if bytes.is_empty() {
        return bytes;
    }
    let i = at.index(bytes.len());
    match with {
        Some(b) => bytes[i] = b,
        None => bytes.truncate(i),
    }
    bytes
}

/// Whatever `bytes` decode to as a `T` encodes to JSON that decodes to the same JSON.
fn decodes_stably<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(value) = serde_json::from_slice::<T>(bytes) {
        let once = serde_json::to_value(&value).unwrap();
        let again: T = serde_json::from_value(once.clone())
            .map_err(|e| TestCaseError::fail(format!("{once}: does not decode again: {e}")))?;
        prop_assert_eq!(serde_json::to_value(&again).unwrap(), once);
    }
    Ok(())
}

/// Whatever `bytes` decode to as a `T` in the binary encoding encodes back to bytes that decode
/// to the same value.
fn decodes_stably_binary<T: Serialize + DeserializeOwned>(
    bytes: &[u8],
) -> Result<(), TestCaseError> {
    if let Ok(value) = decode_rpc_body::<T>(RpcEncoding::Binary, bytes) {
        let once = serde_json::to_value(&value).unwrap();
        let encoded = encode_rpc_body(RpcEncoding::Binary, &value).unwrap();
        let again: T = decode_rpc_body(RpcEncoding::Binary, &encoded)
            .map_err(|e| TestCaseError::fail(format!("{once}: does not decode again: {e}")))?;
        prop_assert_eq!(serde_json::to_value(&again).unwrap(), once);
    }
    Ok(())
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// The snapshot (metadata and bytes) of a state machine that applied a few entries.
fn real_snapshot() -> &'static (Value, Vec<u8>) {
    static SNAPSHOT: OnceLock<(Value, Vec<u8>)> = OnceLock::new();
    SNAPSHOT.get_or_init(|| {
        block_on(async {
            let mut leader = StateMachineStore::new(&Store::temporary().unwrap()).unwrap();
            let requests = vec![
                Request::AddMember {
                    id: 1,
                    addr: "10.0.0.1:6002".into(),
                },
                Request::UpdateInterest {
                    node: 1,
                    reset: false,
                    changes: vec![InterestChange {
                        app: "1".into(),
                        channel: "news".into(),
                        present: true,
                    }],
                },
                Request::UpdatePresence {
                    node: 1,
                    reset: false,
                    changes: vec![PresenceChange {
                        app: "1".into(),
                        channel: "presence-room".into(),
                        user_id: "ann".into(),
                        user_info: Some("{}".into()),
                    }],
                },
            ];
            leader.apply(entries(requests)).await.unwrap();
            let built = leader
                .get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
            let meta = serde_json::to_value(&built.meta).unwrap();
            (meta, built.snapshot.into_inner())
        })
    })
}

/// The test that opens a store on disk twice a case runs 32 cases unless `PROPTEST_CASES` says.
fn store_cases() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 32;
    }
    config
}

proptest! {
    #![proptest_config(store_cases())]

    /// Entries appended to the store read back equal, also once the store is reopened from its
    /// files, and so do the same entries written as JSON (by a version before the binary
    /// encoding); a record that is not an entry is refused as corrupt.
    #[test]
    fn log_entries_read_back_from_disk(
        requests in prop::collection::vec(request(), 0..6),
        garbage in json(),
        noise in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let dir = tempfile_dir();
        let written = entries(requests);
        {
            let store = Store::open(&dir).unwrap();
            let raft = store.raft();
            raft.append(written.iter().map(|e| (e.log_id.index, e))).unwrap();
            prop_assert_eq!(raft.entries::<Entry>(..).unwrap(), written.clone());
            store.flush_blocking().unwrap();
        }
        let store = Store::open(&dir).unwrap();
        let raft = store.raft();
        prop_assert_eq!(raft.entries::<Entry>(..).unwrap(), written.clone());
        raft.truncate_from(0).unwrap();
        let as_json = written
            .iter()
            .map(|e| (e.log_id.index, serde_json::to_vec(e).unwrap()));
        raft.append_encoded(as_json).unwrap();
        prop_assert_eq!(raft.entries::<Entry>(..).unwrap(), written.clone());
        // Records that are not entries, after them: JSON of an earlier version, and bytes in the
        // binary encoding's tag.
        let at = written.len() as u64 + 1;
        raft.append_encoded([(at, serde_json::to_vec(&garbage).unwrap())]).unwrap();
        match raft.entries::<Entry>(at..) {
            Ok(decoded) => {
                prop_assert_eq!(decoded.len(), 1);
                prop_assert_eq!(serde_json::to_value(&decoded[0]).unwrap(), garbage);
            }
            Err(e) => prop_assert!(matches!(e, StorageError::Corrupt { .. }), "{e}"),
        }
        let tagged = [&[chorus_storage::codec::BINARY][..], &noise].concat();
        raft.append_encoded([(at, tagged)]).unwrap();
        match raft.entries::<Entry>(at..) {
            Ok(decoded) => {
                raft.append([(at, &decoded[0])]).unwrap();
                prop_assert_eq!(raft.entries::<Entry>(at..).unwrap(), decoded);
            }
            Err(e) => prop_assert!(matches!(e, StorageError::Corrupt { .. }), "{e}"),
        }
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

proptest! {
    /// A state machine opened on a damaged snapshot refuses it or holds a state; with the
    /// snapshot undamaged it opens (positive control).
    #[test]
    fn snapshots_read_from_disk_are_refused_or_whole(
        at in any::<prop::sample::Index>(),
        with in proptest::option::of(any::<u8>()),
        damage_meta in any::<bool>(),
        garbage in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let (meta, data) = real_snapshot();
        let store = shared_store();
        store.raft().set_snapshot(meta, data).unwrap();
        prop_assert!(StateMachineStore::new(&store).is_ok(), "the real snapshot opens");
        if damage_meta {
            let text = damage(serde_json::to_vec(meta).unwrap(), at, with);
            if let Ok(meta) = serde_json::from_slice::<Value>(&text) {
                store.raft().set_snapshot(&meta, data).unwrap();
                let _ = StateMachineStore::new(&store);
            }
        } else {
            store.raft().set_snapshot(meta, &damage(data.clone(), at, with)).unwrap();
            let _ = StateMachineStore::new(&store);
        }
        store.raft().set_snapshot(meta, &garbage).unwrap();
        let opened = StateMachineStore::new(&store);
        if serde_json::from_slice::<Value>(&garbage).is_err() {
            prop_assert!(opened.is_err(), "bytes that are not JSON are no state");
        }
    }

    /// The cluster port's request bodies: arbitrary JSON, and real requests damaged, decode to
    /// values that encode back stably, or are refused.
    #[test]
    fn cluster_port_bodies_decode_stably(
        value in json(),
        requests in prop::collection::vec(request(), 1..4),
        at in any::<prop::sample::Index>(),
        with in proptest::option::of(any::<u8>()),
    ) {
        let append = serde_json::json!({
            "vote": {"leader_id": {"term": 1, "node_id": 1}, "committed": true},
            "prev_log_id": null,
            "leader_commit": null,
            "entries": entries(requests.clone()),
        });
        let bodies = [
            serde_json::to_vec(&value).unwrap(),
            damage(serde_json::to_vec(&append).unwrap(), at, with),
            damage(serde_json::to_vec(&requests[0]).unwrap(), at, with),
        ];
        let typed = serde_json::from_value::<AppendEntriesRequest<TypeConfig>>(append.clone());
        prop_assert!(typed.is_ok(), "an undamaged append decodes");
        // In the binary encoding: every request round-trips; damaged, it decodes stably or not.
        let binary = encode_rpc_body(RpcEncoding::Binary, &typed.unwrap()).unwrap();
        let read: AppendEntriesRequest<TypeConfig> =
            decode_rpc_body(RpcEncoding::Binary, &binary).unwrap();
        prop_assert_eq!(serde_json::to_value(&read).unwrap(), append);
        for body in [damage(binary.clone(), at, with), serde_json::to_vec(&value).unwrap()] {
            decodes_stably_binary::<AppendEntriesRequest<TypeConfig>>(&body)?;
            decodes_stably_binary::<VoteRequest<NodeId>>(&body)?;
            decodes_stably_binary::<InstallSnapshotRequest<TypeConfig>>(&body)?;
        }
        for body in &bodies {
            decodes_stably::<AppendEntriesRequest<TypeConfig>>(body)?;
            decodes_stably::<VoteRequest<NodeId>>(body)?;
            decodes_stably::<InstallSnapshotRequest<TypeConfig>>(body)?;
            decodes_stably::<Request>(body)?;
            decodes_stably::<chorus_cluster::join::JoinRequest>(body)?;
            decodes_stably::<chorus_cluster::RemoveRequest>(body)?;
            decodes_stably::<ForwardBatch>(body)?;
        }
    }

    /// Any text is a config or refused with a message; settings read back what the file said;
    /// an unknown key is refused by its name.
    #[test]
    fn config_files_read_back_or_are_refused(
        text in ".{0,200}",
        port in any::<u16>(),
        per_ip in any::<u32>(),
        proxies in prop::collection::vec((any::<[u8; 4]>(), 0u8..=32), 0..4),
        unknown in "[a-z]{1,8}_[a-z]{1,8}",
    ) {
        let _ = Config::from_toml(&text);
        let list: Vec<String> = proxies
            .iter()
            .map(|(a, p)| format!("\"{}.{}.{}.{}/{p}\"", a[0], a[1], a[2], a[3]))
            .collect();
        let file = format!(
            "port = {port}\nmax_connections_per_ip = {per_ip}\ntrusted_proxies = [{}]\n",
            list.join(", ")
        );
        let config = Config::from_toml(&file).map_err(TestCaseError::fail)?;
        prop_assert_eq!(config.port, port);
        prop_assert_eq!(config.max_connections_per_ip, per_ip);
        let read: Vec<String> = config.trusted_proxies.iter().map(|n| format!("\"{n}\"")).collect();
        prop_assert_eq!(read, list);
        let known = Config::from_toml("").unwrap();
        let json = serde_json::to_value(&known).unwrap();
        if json.get(&unknown).is_none() {
            let refused = Config::from_toml(&format!("{unknown} = 1")).unwrap_err();
            prop_assert!(refused.contains(&unknown), "{refused}");
        }
        prop_assert!(Config::from_toml("trusted_proxies = [\"10.0.0.0/33\"]").is_err());
    }
}

/// A fresh directory for a store.
fn tempfile_dir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("chorus-fuzz-stored-{}-{n}", std::process::id()))
}

/// One temporary store, reused by every case of a test.
fn shared_store() -> Store {
    static STORE: OnceLock<Store> = OnceLock::new();
    STORE.get_or_init(|| Store::temporary().unwrap()).clone()
}
