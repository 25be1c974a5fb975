//! The Raft RPC endpoints of a real node's cluster port take a body in the binary encoding or as
//! JSON (what a node of an earlier version sends) and answer both alike; any other Content-Type
//! is answered 415 and a binary body that does not decode 400, each with a JSON error.

mod support;

use chorus_cluster::http::{encode_rpc_body, RpcEncoding};
use chorus_cluster::{Cluster, Role, SECRET_HEADER};
use chorus_storage::Store;
use openraft::raft::VoteRequest;
use openraft::{CommittedLeaderId, LogId, Vote};
use prometheus::Registry;

use support::{eventually, serve_cluster_port, settings, unused_port, SECRET};

#[test]
fn raft_rpcs_take_binary_and_json_bodies_and_refuse_others() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let port = unused_port();
    actix_web::rt::System::new().block_on(async {
        let (node, _) =
            Cluster::start(settings(1, &[(1, port)]), &store, &Registry::new()).unwrap();
        serve_cluster_port(&node, port);
        eventually("node 1 leads a one-node cluster", || {
            node.status().state == Role::Leader
        })
        .await;
        // A stale candidate: refused the vote, whatever the encoding.
        let stale = VoteRequest::new(
            Vote::new(0, 2),
            Some(LogId::new(CommittedLeaderId::new(0, 2), 0)),
        );
        let client = reqwest::Client::new();
        let post = |content_type: &'static str, body: Vec<u8>| {
            client
                .post(format!("http://127.0.0.1:{port}/raft/vote"))
                .header(SECRET_HEADER, SECRET)
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(body)
                .send()
        };
        let mut answers = Vec::new();
        for encoding in [RpcEncoding::Binary, RpcEncoding::Json] {
            let body = encode_rpc_body(encoding, &stale).unwrap();
            let response = post(encoding.content_type(), body).await.unwrap();
            assert_eq!(response.status(), 200, "{encoding:?}");
            let answer: serde_json::Value = response.json().await.unwrap();
            assert_eq!(answer["Ok"]["vote_granted"], false, "{answer}");
            answers.push(answer);
        }
        assert_eq!(answers[0], answers[1], "both encodings are answered alike");

        let json = encode_rpc_body(RpcEncoding::Json, &stale).unwrap();
        let response = post("text/plain", json).await.unwrap();
        assert_eq!(response.status(), 415);
        let refusal: serde_json::Value = response.json().await.unwrap();
        assert!(refusal["error"].as_str().unwrap().contains("Content-Type"));

        let garbled = vec![0xff; 3];
        let response = post(RpcEncoding::Binary.content_type(), garbled)
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let refusal: serde_json::Value = response.json().await.unwrap();
        assert!(refusal["error"].is_string());
    });
}
