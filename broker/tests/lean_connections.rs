//! An upgraded WebSocket holds no buffer of its own once idle (issue 14): real connections that
//! subscribed, received events and pinged go idle, and the node's
//! `chorus_connection_buffer_bytes` (what connections hold of a frame not yet whole, and of
//! frames taken for a socket and not yet written) falls to 0. The positive controls: a client
//! that sent half a frame makes it rise until the rest comes, and so does a subscriber that stops
//! reading while events are published, until it is gone. Every upgrade request now reaches the
//! node's upgrade service: one for another endpoint is answered as that endpoint answers.

mod support;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::Server;

const HELD: &str = "chorus_connection_buffer_bytes ";

/// Polls the gauge until `wanted` says yes (10 s at most); the last value seen.
async fn await_held(server: &Server, wanted: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let held = server.metric(HELD).await;
        if wanted(held) || Instant::now() > deadline {
            return held;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client text frame, masked, written here independently of the server's code.
fn masked_text(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x5a, 0x13, 0xc4, 0x07];
    let mut out = vec![0x81, 0x80 | payload.len() as u8];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Reads `tcp` until `needle` has come (5 s at most).
async fn read_until(tcp: &mut TcpStream, needle: &[u8]) -> bool {
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    while !seen.windows(needle.len()).any(|w| w == needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tcp.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&chunk[..n]),
            _ => return false,
        }
    }
    true
}

/// What the node answers a WebSocket upgrade request of `method` for `path`, up to the end of
/// the connection.
async fn upgrade_answer(server: &Server, method: &str, path: &str) -> String {
    let mut tcp = TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "{path}: the connection is closed after the answer"
    );
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn an_idle_connection_holds_no_buffer_and_a_busy_one_does() {
    let server = Server::start("lean-connections", "max_outbound_bytes = 262144", "").await;

    // Upgrade requests for other endpoints get those endpoints' answers.
    for (method, path, status, body) in [
        ("GET", "/healthz", "200 OK", r#"{"status":"ok"}"#),
        (
            "GET",
            "/nothing",
            "404 Not Found",
            r#"{"error":"not found"}"#,
        ),
        (
            "POST",
            "/app/test-key",
            "404 Not Found",
            r#"{"error":"not found"}"#,
        ),
    ] {
        let answer = upgrade_answer(&server, method, path).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}\r\n")),
            "{answer}"
        );
        assert!(answer.contains("connection: close\r\n"), "{answer}");
        assert!(answer.ends_with(body), "{answer}");
    }

    // Traffic both ways on real connections, then silence.
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut client = server.connect(None).await;
        client.subscribe("lobby").await;
        clients.push(client);
    }
    for i in 0..5 {
        assert!(
            server
                .publish("lobby", &format!("event {i} {}", "x".repeat(500)))
                .await
        );
    }
    for client in &mut clients {
        for _ in 0..5 {
            client.expect("e").await;
        }
        client
            .send_json(serde_json::json!({"event": "pusher:ping", "data": {}}))
            .await;
        client.expect("pusher:pong").await;
    }
    assert_eq!(
        await_held(&server, |h| h == 0.0).await,
        0.0,
        "idle: nothing held"
    );

    // Half a frame is held until the rest of it comes, then answered.
    let mut partial = server.connect(None).await.ws.into_inner();
    let ping = masked_text(br#"{"event":"pusher:ping","data":{}}"#);
    partial.write_all(&ping[..12]).await.unwrap();
    assert!(
        await_held(&server, |h| h > 0.0).await > 0.0,
        "half a frame is held"
    );
    partial.write_all(&ping[12..]).await.unwrap();
    assert!(read_until(&mut partial, b"pusher:pong").await);
    assert_eq!(
        await_held(&server, |h| h == 0.0).await,
        0.0,
        "the frame went"
    );

    // A subscriber that stops reading holds what its socket cannot take.
    let mut stalled = server.connect(Some(4096)).await.ws.into_inner();
    let subscribe = br#"{"event":"pusher:subscribe","data":{"channel":"firehose"}}"#;
    stalled.write_all(&masked_text(subscribe)).await.unwrap();
    assert!(read_until(&mut stalled, b"subscription_succeeded").await);
    let padding = "y".repeat(4000);
    let mut held = 0.0;
    for i in 0..2000 {
        assert!(server.publish("firehose", &format!("{i} {padding}")).await);
        if i % 10 == 9 {
            held = server.metric(HELD).await;
            if held > 0.0 {
                break;
            }
        }
    }
    assert!(
        held > 0.0,
        "a backlogged reader's unwritten frames are held"
    );
    drop(stalled);
    assert_eq!(
        await_held(&server, |h| h == 0.0).await,
        0.0,
        "gone: nothing held"
    );

    // The idle connections are still there and receive.
    assert!(server.publish("lobby", "after").await);
    for client in &mut clients {
        client.expect("e").await;
    }
}
