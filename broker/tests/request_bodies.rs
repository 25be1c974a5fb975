//! HTTP API request bodies against the real binary, on raw sockets: the query's signature
//! (which carries `body_md5`) is checked before the body is read, a declared length over the
//! limit is refused at the header, a body that stops coming is answered 408 and closed within
//! its deadline, and a thousand slow bodies hold no memory while publishing goes on.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::node::{NodeProcess, Probe};

/// A node with the body deadline at 2 s, so the tests wait little.
async fn start(name: &str) -> NodeProcess {
    let dir = format!("chorus-{name}-{}", std::process::id());
    let config = support::app_config("", "", "");
    let env = vec![("CHORUS_BODY_TIMEOUT_SECS".to_owned(), "2".to_owned())];
    for _ in 0..5 {
        let mut node =
            NodeProcess::new(&dir, IpAddr::V4(Ipv4Addr::LOCALHOST), &config, env.clone());
        node.spawn();
        if node.wait_for(Probe::Ready).await {
            return node;
        }
    }
    panic!("chorus exited at start five times");
}

fn rss_kib(node: &NodeProcess) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The path and query of a signed publish of a body of `body` bytes (signed for those bytes).
fn signed_target(body: &[u8]) -> String {
    let url = support::signed_url(1, "POST", "/apps/1/events", &[], body);
    url[url.find("/apps/").unwrap()..].to_owned()
}

/// Sends a request head declaring `declared` body bytes, then `sent` bytes of body.
async fn send_head(target: &str, port: u16, declared: usize, sent: &[u8]) -> TcpStream {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let head = format!(
        "POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {declared}\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let _ = tcp.write_all(sent).await;
    tcp
}

/// The status the node answered and whether it then closed the connection (within `within`).
async fn answer(tcp: &mut TcpStream, within: Duration) -> (Option<u16>, bool) {
    answer_by(tcp, tokio::time::Instant::now() + within).await
}

/// The status the node answered and whether it then closed the connection (by `deadline`).
async fn answer_by(tcp: &mut TcpStream, deadline: tokio::time::Instant) -> (Option<u16>, bool) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break (status_of(&buf), true),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => break (status_of(&buf), false),
        }
    }
}

fn status_of(response: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(response);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

#[tokio::test]
async fn bodies_are_refused_before_they_are_read_and_timed_out_when_they_stall() {
    let node = start("bodies").await;
    let port = node.port;
    let body = vec![b' '; 250_000];

    // Signed for a 250000-byte body, 200000 sent, then nothing: 408 and closed in the deadline
    // (2 s of silence).
    let started = Instant::now();
    let mut stalled = send_head(&signed_target(&body), port, body.len(), &body[..200_000]).await;
    let (status, closed) = answer(&mut stalled, Duration::from_secs(8)).await;
    assert_eq!((status, closed), (Some(408), true));
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );

    // Over the limit (256 KiB by default) by its Content-Length: 413 with no byte sent.
    let mut huge = send_head(&signed_target(b""), port, 10 << 20, b"").await;
    assert_eq!(
        answer(&mut huge, Duration::from_secs(2)).await,
        (Some(413), true)
    );

    // Not signed by the app: 401 with no byte of the body sent, at once.
    let forged = "/apps/1/events?auth_key=test-key&auth_timestamp=1&auth_version=1.0\
                  &body_md5=00&auth_signature=00";
    let mut unsigned = send_head(forged, port, 250_000, b"").await;
    assert_eq!(
        answer(&mut unsigned, Duration::from_secs(2)).await,
        (Some(401), true)
    );

    // A body that does not match the MD5 the query signed: 401 once read.
    let mut other = send_head(&signed_target(b"{}"), port, 2, b"[]").await;
    assert_eq!(
        answer(&mut other, Duration::from_secs(2)).await.0,
        Some(401)
    );

    // Positive control: a signed publish with its whole body goes through.
    assert!(support::publish(port, "c", "still publishing").await);
}

/// A thousand clients with only the public key each declare 250000 bytes, send 200000 and
/// stall; how many were answered and closed.
async fn slow_body_storm(port: u16) -> usize {
    let body = vec![b' '; 200_000];
    let forged = "/apps/1/events?auth_key=test-key&auth_timestamp=1&auth_version=1.0\
                  &body_md5=00&auth_signature=00";
    let mut attackers = Vec::new();
    for _ in 0..1000 {
        let body = body.clone();
        attackers.push(tokio::spawn(async move {
            send_head(forged, port, 250_000, &body).await
        }));
    }
    // Each gets 5 s from when it is looked at, all together a minute at most: a node that
    // never answers fails the test in a minute (on main it took over an hour).
    let all = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut closed = 0;
    for a in attackers {
        let mut tcp = a.await.unwrap();
        let deadline = all.min(tokio::time::Instant::now() + Duration::from_secs(5));
        let (status, was_closed) = answer_by(&mut tcp, deadline).await;
        if !was_closed {
            eprintln!("not closed: answered {status:?}, {:?}", tcp.local_addr());
        }
        closed += usize::from(was_closed);
    }
    closed
}

#[tokio::test]
async fn a_thousand_slow_bodies_hold_no_memory() {
    let node = start("slow-bodies").await;
    let port = node.port;
    let mut subscriber = support::connect(port, None).await;
    subscriber.subscribe("c").await;
    let baseline = rss_kib(&node);
    // Each is answered 401 without its body being read by the node, and closed. What actix
    // read ahead of them (up to its 128 KiB read buffer and 32 KiB of payload each) is freed
    // when they close: the storms after the first reuse it, the node's RSS does not grow with
    // each.
    let mut after = Vec::new();
    for storm in 0..3 {
        assert_eq!(
            slow_body_storm(port).await,
            1000,
            "storm {storm}: every stalled request answered and closed"
        );
        after.push(rss_kib(&node));
        let data = format!("after storm {storm}");
        assert!(support::publish(port, "c", &data).await);
        assert_eq!(subscriber.expect("e").await["data"], data.as_str());
    }
    eprintln!("RSS {baseline} KiB, after each storm of 1000 slow bodies {after:?} KiB");
    assert!(
        after[2] < after[0].max(after[1]) + 16 * 1024,
        "a third storm grew RSS to {} KiB after {after:?}: memory is held",
        after[2]
    );
    assert!(support::publish(port, "c", "after").await);
    assert_eq!(subscriber.expect("e").await["data"], "after");
}
