//! The forwarding stream between two nodes (`POST /cluster/forward` on the cluster port), with
//! real `chorus` processes.
//!
//! - A three-node cluster behind proxies (see `support/partition.rs`): events published on node
//!   1 reach a subscriber on node 2 through node 1's stream to node 2, which survives the link
//!   being cut (reset, then holding every byte) and healed, node 2's `kill -9` and restart, and
//!   node 1's. After each, the events published once the stream is back arrive, every one, and
//!   every event the subscriber got came in the order published and once. Every frame node 1
//!   forwarded to node 2 is either acknowledged by node 2 or counted dropped.
//! - The same over TLS: a two-node cluster whose cluster port speaks TLS only (certificates from
//!   an authority the test makes) forwards on its stream.
//! - A peer with the secret that declares a record far over the limit is refused at the length
//!   prefix: the connection is closed and the node's memory does not grow, while the normal
//!   frame before it in the same write was delivered. Without the secret, or without naming the
//!   sending node, the stream is refused.

mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use support::cluster::{TestCluster, CLUSTER_SECRET};
use support::partition::Cut;
use support::{Client, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const CHANNEL: &str = "stream-order";

/// Node 2 is not declared dead while cut off or restarting: its interest stays, so every
/// publish on node 1 is forwarded to it (and accounted for).
const ENV: &[(&str, &str)] = &[("CHORUS_DEAD_AFTER_SECS", "60")];

/// What the subscriber on node 2 got, and what node 1 published.
struct Order {
    published: u64,
    received: Vec<u64>,
}

impl Order {
    /// Publishes the next number through node 1.
    async fn publish(&mut self, cluster: &TestCluster) -> u64 {
        let n = self.published;
        assert!(cluster.node(1).publish(CHANNEL, &n.to_string()).await);
        self.published += 1;
        n
    }

    /// Takes an event the subscriber got: it must come after every one before it.
    fn got(&mut self, n: u64) {
        if let Some(last) = self.received.last() {
            assert!(n > *last, "{n} arrived after {last}: out of order or twice");
        }
        self.received.push(n);
    }

    /// Publishes one event every 200 ms until one arrives (the stream is back), for at most
    /// 30 s.
    async fn until_one_arrives(&mut self, cluster: &TestCluster, subscriber: &mut Client) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.publish(cluster).await;
            if let Some(n) = next_event(subscriber, Duration::from_millis(200)).await {
                self.got(n);
                return;
            }
            assert!(Instant::now() < deadline, "no event arrived within 30 s");
        }
    }

    /// Publishes `count` events; each must arrive (after any late ones from before).
    async fn all_arrive(&mut self, cluster: &TestCluster, subscriber: &mut Client, count: u64) {
        let first = self.published;
        for _ in 0..count {
            self.publish(cluster).await;
        }
        let last = self.published - 1;
        while self.received.last().is_none_or(|n| *n < last) {
            let n = next_event(subscriber, Duration::from_secs(5))
                .await
                .unwrap_or_else(|| panic!("events {first}..={last} did not all arrive"));
            self.got(n);
        }
        let arrived = self.received.iter().filter(|n| **n >= first).count() as u64;
        assert_eq!(
            arrived, count,
            "every event published once the stream is back"
        );
    }

    /// Publishes `count` events 100 ms apart (while the link is cut: most are lost).
    async fn during_cut(&mut self, cluster: &TestCluster, count: u64) {
        for _ in 0..count {
            self.publish(cluster).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The next event on [`CHANNEL`] the subscriber gets within `within`, as its number.
async fn next_event(subscriber: &mut Client, within: Duration) -> Option<u64> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let message = tokio::time::timeout_at(deadline, subscriber.ws.next())
            .await
            .ok()?;
        let Some(Ok(Message::Text(text))) = message else {
            assert!(
                matches!(message, Some(Ok(_))),
                "the subscriber's socket closed"
            );
            continue;
        };
        let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
        if frame["channel"] == CHANNEL && frame["event"] == "e" {
            return Some(frame["data"].as_str().unwrap().parse().unwrap());
        }
    }
}

/// A subscriber of [`CHANNEL`] on node 2.
async fn subscriber(cluster: &TestCluster) -> Client {
    let mut client = cluster.node(2).connect().await;
    client.subscribe(CHANNEL).await;
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_survives_cut_links_and_restarts_in_order_and_once() {
    let mut cluster = TestCluster::start_behind_proxies("stream", 3, ENV).await;
    cluster
        .agreed_leader(&[1, 2, 3], 3, Duration::from_secs(20))
        .await;
    let mut on_2 = subscriber(&cluster).await;
    cluster
        .await_interest(1, CHANNEL, &[2], Duration::from_secs(5))
        .await;
    let mut order = Order {
        published: 0,
        received: Vec::new(),
    };
    order.all_arrive(&cluster, &mut on_2, 100).await;

    // Reset, then held for longer than the stream waits for an acknowledgement (3 s).
    for cut in [Cut::Rejected, Cut::Dropped] {
        cluster.isolate(2, cut);
        order.during_cut(&cluster, 40).await;
        cluster.heal();
        order.until_one_arrives(&cluster, &mut on_2).await;
        order.all_arrive(&cluster, &mut on_2, 100).await;
    }
    let lost_during_cuts = order.published - order.received.len() as u64;
    assert!(
        lost_during_cuts > 0,
        "the cuts lost nothing: were they cut?"
    );
    // Every frame forwarded is accounted for: acknowledged by node 2, or counted dropped.
    let acknowledged = "chorus_forwarded_frames_total{peer=\"2\"}";
    let dropped = "chorus_forward_dropped_total{peer=\"2\"}";
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let counted = cluster.metric_or_zero(1, acknowledged).await
            + cluster.metric_or_zero(1, dropped).await;
        if counted == order.published as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 1 accounts for {counted} of the {} frames it forwarded",
            order.published
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(cluster.metric_or_zero(1, dropped).await >= lost_during_cuts as f64);

    // The receiving node killed and started again: its new subscriber gets what follows.
    cluster.kill_hard(2);
    order.during_cut(&cluster, 10).await;
    cluster.restart(2).await;
    let mut on_2 = subscriber(&cluster).await;
    order.received.clear();
    order.until_one_arrives(&cluster, &mut on_2).await;
    order.all_arrive(&cluster, &mut on_2, 100).await;

    // The sending node killed and started again: its new stream takes over.
    cluster.kill_hard(1);
    cluster.restart(1).await;
    order.until_one_arrives(&cluster, &mut on_2).await;
    order.all_arrive(&cluster, &mut on_2, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_runs_over_tls_when_the_cluster_port_speaks_it() {
    let dir = std::env::temp_dir().join(format!("chorus-stream-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut authority = rcgen::CertificateParams::new(Vec::new()).unwrap();
    authority.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let authority =
        rcgen::CertifiedIssuer::self_signed(authority, rcgen::KeyPair::generate().unwrap())
            .unwrap();
    let node_key = rcgen::KeyPair::generate().unwrap();
    let node_certificate = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&node_key, &authority)
        .unwrap();
    let files = [
        ("ca.pem", authority.pem()),
        ("node.crt", node_certificate.pem()),
        ("node.key", node_key.serialize_pem()),
    ];
    for (name, pem) in &files {
        std::fs::write(dir.join(name), pem).unwrap();
    }
    let path = |name: &str| dir.join(name).display().to_string();
    let (ca, cert, key) = (path("ca.pem"), path("node.crt"), path("node.key"));
    let env = [
        ("CHORUS_CLUSTER_TLS_CA_FILE", ca.as_str()),
        ("CHORUS_CLUSTER_TLS_CERT_FILE", cert.as_str()),
        ("CHORUS_CLUSTER_TLS_KEY_FILE", key.as_str()),
    ];
    let cluster = TestCluster::start_with_env("stream-tls", 2, &env).await;
    let mut on_2 = subscriber(&cluster).await;
    let mut order = Order {
        published: 0,
        received: Vec::new(),
    };
    // Until node 1 has applied node 2's interest, its publishes go nowhere.
    order.until_one_arrives(&cluster, &mut on_2).await;
    order.all_arrive(&cluster, &mut on_2, 100).await;
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A record as the stream's format has it: its length (`u32`, little-endian), then app, channel
/// and socket left out (none), each a `u16` length and the bytes, then the frame.
fn record(app: &str, channel: &str, frame: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for field in [app, channel, ""] {
        body.extend_from_slice(&(field.len() as u16).to_le_bytes());
        body.extend_from_slice(field.as_bytes());
    }
    body.extend_from_slice(frame.as_bytes());
    let mut record = (body.len() as u32).to_le_bytes().to_vec();
    record.extend_from_slice(&body);
    record
}

/// One chunk of a chunked HTTP/1.1 body.
fn chunk(bytes: &[u8]) -> Vec<u8> {
    let mut chunk = format!("{:x}\r\n", bytes.len()).into_bytes();
    chunk.extend_from_slice(bytes);
    chunk.extend_from_slice(b"\r\n");
    chunk
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_over_the_limit_is_refused_at_its_prefix() {
    let cluster_port = support::node::unused_port();
    let top = format!("cluster_port = {cluster_port}\ncluster_secret = \"{CLUSTER_SECRET}\"\n");
    let server = Server::start("forward-hostile", &top, "").await;
    let cluster_url = format!("http://127.0.0.1:{cluster_port}/cluster/forward");
    let http = reqwest::Client::new();
    let refused = http.post(&cluster_url).header("x-chorus-forward-from", "9");
    assert_eq!(refused.send().await.unwrap().status(), 401, "no secret");
    let unnamed = http
        .post(&cluster_url)
        .header(chorus_cluster::SECRET_HEADER, CLUSTER_SECRET);
    assert_eq!(unnamed.send().await.unwrap().status(), 400, "no sender");

    let mut subscriber = server.connect(None).await;
    subscriber.subscribe("hostile-control").await;
    let rss_before = server.rss_kib();
    let mut peer = tokio::net::TcpStream::connect(("127.0.0.1", cluster_port))
        .await
        .unwrap();
    let head = format!(
        "POST /cluster/forward HTTP/1.1\r\nhost: chorus\r\nx-chorus-cluster-secret: \
         {CLUSTER_SECRET}\r\nx-chorus-forward-from: 9\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    peer.write_all(head.as_bytes()).await.unwrap();
    let control = r#"{"event":"e","channel":"hostile-control","data":"control"}"#;
    let mut first = record("1", "hostile-control", control);
    first.extend_from_slice(&0xffff_fff0u32.to_le_bytes());
    peer.write_all(&chunk(&first)).await.unwrap();

    // The positive control: the frame before the long prefix was delivered.
    let frame = subscriber.expect("e").await;
    assert_eq!(frame["data"], "control");

    // The peer goes on writing what it declared; the node closed the connection, so the writes
    // fail long before a naive reader would have buffered it all.
    let junk = chunk(&vec![b'x'; 64 * 1024]);
    let mut written = 0usize;
    let write_failed = loop {
        if peer.write_all(&junk).await.is_err() {
            break true;
        }
        written += junk.len();
        if written > 256 * 1024 * 1024 {
            break false;
        }
    };
    assert!(
        write_failed,
        "the node took {written} bytes of a refused record"
    );
    assert!(
        written < 32 * 1024 * 1024,
        "{written} bytes went through first"
    );
    let mut rest = Vec::new();
    let _ = peer.read_to_end(&mut rest).await;
    let rss_after = server.rss_kib();
    assert!(
        rss_after < rss_before + 8 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    assert!(server.healthy().await);
}
