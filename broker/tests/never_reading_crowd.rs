//! Subscribers that never read cannot make a channel refuse publishes (issue 11, hole 6): a crowd
//! of SSE streams and WebSockets that subscribe and then never read sits on a public channel
//! while a publisher publishes at a normal pace. No publish is refused (429), a subscriber that
//! reads gets every event in order, and the crowd is cut off as slow readers (4100 on a
//! WebSocket, the stream ended on SSE) and counted, with the node's memory bounded meanwhile.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use support::{Server, KEY};

const SLOW_READERS: &str = "chorus_slow_reader_disconnects_total{app_id=\"1\"}";

/// A socket with a small receive buffer, which the test never reads once it is subscribed.
async fn small_socket(addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(addr).await.unwrap()
}

/// An SSE stream of `channel` that is opened and never read.
async fn silent_sse(addr: SocketAddr, channel: &str) -> TcpStream {
    let mut tcp = small_socket(addr).await;
    let request = format!(
        "GET /app/{KEY}/sse?channels={channel} HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Accept: text/event-stream\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    tcp
}

/// A WebSocket subscribed to `channel` that is never read again.
async fn silent_ws(addr: SocketAddr, channel: &str) -> TcpStream {
    let tcp = small_socket(addr).await;
    let url = format!("ws://{addr}/app/{KEY}?protocol=7");
    let (mut ws, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    let subscribe = serde_json::json!({"event": "pusher:subscribe", "data": {"channel": channel}});
    futures_util::SinkExt::send(&mut ws, subscribe.to_string().into())
        .await
        .unwrap();
    ws.into_inner()
}

/// What a never-read socket holds once it is read at last: everything until the node ends the
/// connection, or (an SSE response, whose connection may stay open for another request) ends
/// the response; `None` if neither comes (5 s without a byte).
async fn read_to_end(tcp: &mut TcpStream, sse: bool) -> Option<Vec<u8>> {
    let mut all = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(all),
            Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
        if sse && all.ends_with(b"\r\n0\r\n\r\n") {
            return Some(all);
        }
    }
}

#[tokio::test]
async fn a_crowd_that_never_reads_is_cut_off_and_no_publish_is_refused() {
    let server = Server::start(
        "never-reading",
        "max_outbound_bytes = 65536",
        "max_message_bytes = 32768",
    )
    .await;
    let addr: SocketAddr = ([127, 0, 0, 1], server.port).into();
    const EVENTS: usize = 160;
    let mut reader = server.connect(None).await;
    reader.subscribe("crowded").await;
    let baseline = server.rss_kib();

    let mut crowd = Vec::new();
    for i in 0..100 {
        crowd.push(if i % 2 == 0 {
            silent_sse(addr, "crowded").await
        } else {
            silent_ws(addr, "crowded").await
        });
    }
    let subscribed = format!("chorus_subscriptions{{app_id=\"1\"}} {}", crowd.len() + 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !reader_metrics(&server).await.contains(&subscribed) {
        assert!(
            Instant::now() < deadline,
            "the crowd never finished subscribing"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The reader reads as events come, until the last.
    let reading = tokio::spawn(async move {
        let mut seen = Vec::new();
        while seen.len() < EVENTS {
            let event = reader.expect("e").await;
            seen.push(
                event["data"].as_str().unwrap()[..6]
                    .parse::<usize>()
                    .unwrap(),
            );
        }
        seen
    });
    // A publisher at a normal pace: 50 events a second of 30 KB each, more than the kernel
    // buffers of a socket that is never read hold.
    let padding = "x".repeat(30_000);
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    let mut refused = 0;
    let mut peak = 0;
    for n in 0..EVENTS {
        pace.tick().await;
        if !server.publish("crowded", &format!("{n:06}{padding}")).await {
            refused += 1;
        }
        peak = peak.max(server.rss_kib());
    }
    assert_eq!(
        refused, 0,
        "publishes refused because of readers that never read"
    );
    let seen = reading.await.unwrap();
    assert_eq!(
        seen,
        (0..EVENTS).collect::<Vec<_>>(),
        "the reader gets every event, in order"
    );
    let cut = server.metric(SLOW_READERS).await;
    assert!(
        cut >= crowd.len() as f64 * 0.9,
        "{cut} of {} never-reading subscribers cut off",
        crowd.len()
    );
    // Read at last, a cut-off SSE stream ends with the 4100 error, a WebSocket with its close.
    for (i, tcp) in crowd.iter_mut().take(10).enumerate() {
        let sse = i % 2 == 0;
        let held = read_to_end(tcp, sse).await;
        let held = held.unwrap_or_else(|| panic!("crowd member {i} was never ended"));
        let tail = &held[held.len().saturating_sub(200)..];
        if sse {
            let tail = String::from_utf8_lossy(tail);
            assert!(
                tail.contains("\"code\":4100"),
                "SSE stream {i} ended with {tail}"
            );
        } else {
            // The last frame is the close: 0x88, its length, then the code.
            let at = tail
                .iter()
                .rposition(|&b| b == 0x88)
                .filter(|at| at + 3 < tail.len());
            let code = at.map(|at| u16::from_be_bytes([tail[at + 2], tail[at + 3]]));
            assert_eq!(code, Some(4100), "WebSocket {i} ended without its close");
        }
    }
    assert!(
        peak < baseline + 200 * 1024,
        "RSS went from {baseline} KiB to {peak} KiB"
    );
}

async fn reader_metrics(server: &Server) -> String {
    let url = format!("http://127.0.0.1:{}/metrics", server.metrics_port);
    reqwest::get(url).await.unwrap().text().await.unwrap()
}
