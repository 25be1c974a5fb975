//! Server-Sent Events with the real binary: the stream's format and cursor, exact recovery with
//! `Last-Event-ID`, tokens for private and presence channels, refusals of bad input, and an SSE
//! client being a connection like any other (counted, limited, cut off when too slow, forgotten
//! when gone).

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use tokio::io::AsyncWriteExt;

use support::{Server, SseClient, KEY};

const HISTORY: &str = "[[apps.history]]\nchannels = \"chat-*\"\nmax_events = 10000\n";

/// Publishes `count` events `m{first}`.. to `channel` in batches of 10.
async fn publish_many(server: &Server, channel: &str, first: u64, count: u64) {
    let mut n = first;
    while n < first + count {
        let batch: Vec<_> = (n..(n + 10).min(first + count))
            .map(|i| json!({"name": "msg", "channel": channel, "data": format!("m{i}")}))
            .collect();
        n += batch.len() as u64;
        let (status, body) = server
            .post(
                "/apps/1/batch_events",
                json!({ "batch": batch }).to_string(),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
}

/// Reads `count` `msg` events and checks they are offsets `first`.. in order.
async fn expect_offsets(client: &mut SseClient, first: u64, count: u64) {
    for offset in first..first + count {
        let e = client.expect("msg").await;
        assert_eq!(e.data["offset"], offset, "{e:?}");
        assert_eq!(e.data["data"], format!("m{}", offset - 1));
        assert!(e.id.is_some(), "history events move the cursor");
    }
}

#[tokio::test]
async fn a_stream_carries_events_and_a_cursor_and_recovers_exactly_after_a_reconnect() {
    let server = Server::start_with("sse-recover", "", "", HISTORY).await;
    let mut client = server.sse("channels=news,chat-room", None).await.unwrap();
    let established = client.expect("pusher:connection_established").await;
    assert!(established.pusher_data()["socket_id"].is_string());
    let news = client
        .expect("pusher_internal:subscription_succeeded")
        .await;
    assert_eq!(news.data["channel"], "news");
    let chat = client
        .expect("pusher_internal:subscription_succeeded")
        .await;
    assert_eq!(chat.data["channel"], "chat-room");
    assert!(
        chat.id.is_some(),
        "a history channel's start is in the cursor"
    );

    assert!(server.publish("news", "hello").await);
    let e = client.expect("e").await;
    assert_eq!(e.data, json!({"channel": "news", "data": "hello"}));
    assert!(e.id.is_none(), "plain events do not move the cursor");

    publish_many(&server, "chat-room", 0, 100).await;
    expect_offsets(&mut client, 1, 100).await;
    let cursor = client.last_id.clone().unwrap();
    drop(client);

    // 500 events while away; the reconnect (as a browser does it, with the header) gets
    // exactly those, then live ones.
    publish_many(&server, "chat-room", 100, 500).await;
    let mut client = server
        .sse("channels=news,chat-room", Some(&cursor))
        .await
        .unwrap();
    let mut confirmed = 0;
    while confirmed < 2 {
        let e = client
            .expect("pusher_internal:subscription_succeeded")
            .await;
        confirmed += 1;
        if e.data["channel"] == "chat-room" {
            let data = e.pusher_data();
            assert_eq!(data["recovered"], true, "{data}");
            assert_eq!(data["offset"], 600);
        }
    }
    expect_offsets(&mut client, 101, 500).await;
    publish_many(&server, "chat-room", 600, 1).await;
    expect_offsets(&mut client, 601, 1).await;

    // The same cursor as a query parameter works too.
    let query = format!("channels=chat-room&last_event_id={cursor}");
    let mut again = server.sse(&query, None).await.unwrap();
    let e = again.expect("pusher_internal:subscription_succeeded").await;
    assert_eq!(e.pusher_data()["recovered"], true);
    expect_offsets(&mut again, 101, 501).await;
}

#[tokio::test]
async fn a_stream_that_started_before_any_history_recovers_from_the_first_event() {
    let server = Server::start_with("sse-empty", "", "", HISTORY).await;
    let mut client = server.sse("channels=chat-new", None).await.unwrap();
    let e = client
        .expect("pusher_internal:subscription_succeeded")
        .await;
    assert_eq!(e.pusher_data()["epoch"], serde_json::Value::Null);
    let cursor = client.last_id.clone().unwrap();
    drop(client);
    publish_many(&server, "chat-new", 0, 20).await;
    let mut client = server
        .sse("channels=chat-new", Some(&cursor))
        .await
        .unwrap();
    let e = client
        .expect("pusher_internal:subscription_succeeded")
        .await;
    assert_eq!(e.pusher_data()["recovered"], true);
    expect_offsets(&mut client, 1, 20).await;
}

fn token(channels: &str, expires: u64, channel_data: Option<&str>) -> String {
    let to_sign = match channel_data {
        Some(d) => format!("sse:{channels}:{expires}:{d}"),
        None => format!("sse:{channels}:{expires}"),
    };
    support::auth_token(&to_sign)
}

fn in_an_hour() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn private_and_presence_channels_need_a_token_signed_by_the_app() {
    let server = Server::start("sse-token", "", "").await;
    let exp = in_an_hour();

    let channels = "private-a,news";
    let query = format!(
        "channels={channels}&expires={exp}&auth={}",
        token(channels, exp, None)
    );
    let mut client = server.sse(&query, None).await.unwrap();
    client
        .expect("pusher_internal:subscription_succeeded")
        .await;
    client
        .expect("pusher_internal:subscription_succeeded")
        .await;
    assert!(server.publish("private-a", "secret").await);
    assert_eq!(client.expect("e").await.data["data"], "secret");

    let member = r#"{"user_id":"ann","user_info":{"name":"Ann"}}"#;
    let presence = format!(
        "channels=presence-room&expires={exp}&channel_data={}&auth={}",
        encode(member),
        token("presence-room", exp, Some(member))
    );
    let mut ann = server.sse(&presence, None).await.unwrap();
    let joined = ann.expect("pusher_internal:subscription_succeeded").await;
    assert_eq!(
        joined.pusher_data()["presence"]["hash"]["ann"]["name"],
        "Ann"
    );
    let users: serde_json::Value =
        reqwest::get(server.signed_url("GET", "/apps/1/channels/presence-room/users", &[], b""))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(users, json!({"users": [{"id": "ann"}]}));

    let refusals = [
        ("channels=private-a".to_owned(), 401, "need auth"),
        (
            format!(
                "channels=private-a&expires={exp}&auth={}",
                token("private-b", exp, None)
            ),
            401,
            "invalid signature",
        ),
        (
            format!(
                "channels=private-a&expires=1000&auth={}",
                token("private-a", 1000, None)
            ),
            401,
            "expired",
        ),
        (
            format!("channels=private-a&expires=soon&auth={KEY}:00"),
            401,
            "Unix time",
        ),
        (
            format!(
                "channels=presence-room&expires={exp}&auth={}",
                token("presence-room", exp, None)
            ),
            400,
            "channel_data",
        ),
        (
            format!(
                "channels=presence-room&expires={exp}&channel_data=%7B%7D&auth={}",
                token("presence-room", exp, Some("{}"))
            ),
            400,
            "user_id",
        ),
    ];
    for (query, status, message) in refusals {
        let (got, body) = server.sse(&query, None).await.err().unwrap();
        assert_eq!(got, status, "{query}: {body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            body["error"].as_str().unwrap().contains(message),
            "{query}: {body}"
        );
    }
}

#[tokio::test]
async fn bad_requests_get_a_status_and_a_json_error_and_the_node_keeps_serving() {
    let server = Server::start_with("sse-bad", "", "max_connections = 3", HISTORY).await;
    let other_app_cursor = {
        // A cursor this node would write for app 2.
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(r#"{"a":"2","c":{"chat-room":["E",5]}}"#)
    };
    let many: Vec<String> = (0..10_000).map(|i| format!("c{i}")).collect();
    let cases: Vec<(String, Option<String>, u16, &str)> = vec![
        ("".into(), None, 400, "give the channels"),
        ("channels=".into(), None, 400, "give the channels"),
        ("channels=a,,b".into(), None, 400, "invalid channel name"),
        (
            "channels=bad%20name".into(),
            None,
            400,
            "invalid channel name",
        ),
        (
            "channels=%23server-to-user-ann".into(),
            None,
            400,
            "user channels",
        ),
        (
            format!("channels={}", many[..1001].join(",")),
            None,
            400,
            "at most 1000 channels",
        ),
        (
            "channels=chat-room".into(),
            Some("not-a-cursor".into()),
            400,
            "not one this server wrote",
        ),
        (
            "channels=chat-room".into(),
            Some(other_app_cursor.clone()),
            400,
            "another app",
        ),
        (
            format!("channels=chat-room&last_event_id={other_app_cursor}"),
            None,
            400,
            "another app",
        ),
    ];
    for (query, cursor, status, message) in cases {
        let (got, body) = server.sse(&query, cursor.as_deref()).await.err().unwrap();
        assert_eq!(got, status, "{query}: {body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(body["error"].as_str().unwrap().contains(message), "{body}");
    }
    let unknown = reqwest::get(server.url("/app/nope/sse?channels=a"))
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    // 10k channels in one URL: refused by the HTTP layer or by the limit, never a crash.
    let huge = reqwest::get(server.sse_url(&format!("channels={}", many.join(","))))
        .await
        .unwrap();
    assert!(huge.status().is_client_error(), "{}", huge.status());

    // A future or a huge offset in the right epoch is answered with recovered: false.
    publish_many(&server, "chat-room", 0, 3).await;
    let mut client = server.sse("channels=chat-room", None).await.unwrap();
    let start = client
        .expect("pusher_internal:subscription_succeeded")
        .await;
    let epoch = start.pusher_data()["epoch"].as_str().unwrap().to_owned();
    drop(client);
    for offset in [4, 999, u64::MAX] {
        use base64::Engine as _;
        let cursor = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(json!({"a": "1", "c": {"chat-room": [epoch, offset]}}).to_string());
        let mut client = server
            .sse("channels=chat-room", Some(&cursor))
            .await
            .unwrap();
        let e = client
            .expect("pusher_internal:subscription_succeeded")
            .await;
        assert_eq!(e.pusher_data()["recovered"], false, "offset {offset}");
    }

    // The quota counts SSE streams like WebSockets.
    wait_for_metric(&server, "chorus_connections{", 0.0).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(server.sse("channels=news", None).await.unwrap());
    }
    let (status, body) = server.sse("channels=news", None).await.err().unwrap();
    assert_eq!(status, 429, "{body}");
    assert!(server.healthy().await);
}

/// Waits (bounded) until a metric reaches `value`.
async fn wait_for_metric(server: &Server, line_start: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.metric(line_start).await != value {
        assert!(
            Instant::now() < deadline,
            "{line_start} never reached {value}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A raw HTTP client that asks for a stream and then does not read it.
async fn raw_stream(server: &Server, query: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = socket
        .connect(format!("127.0.0.1:{}", server.port).parse().unwrap())
        .await
        .unwrap();
    let request = format!("GET /app/{KEY}/sse?{query} HTTP/1.1\r\nHost: x\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    tcp
}

#[tokio::test]
async fn an_sse_client_is_metered_kept_alive_cut_off_when_too_slow_and_forgotten_when_gone() {
    let server = Server::start("sse-conn", "sse_heartbeat_secs = 1", "").await;

    // Heartbeats keep an idle stream busy.
    let mut idle = raw_stream(&server, "channels=quiet").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut seen = vec![0u8; 64 * 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), async {
        use tokio::io::AsyncReadExt;
        idle.read(&mut seen).await.unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&seen[..n]);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains(": heartbeat\n\n"), "{text}");
    assert_eq!(server.metric("chorus_sse_connections{").await, 1.0);
    drop(idle);
    wait_for_metric(&server, "chorus_sse_connections{", 0.0).await;
    wait_for_metric(&server, "chorus_subscriptions{", 0.0).await;

    // A reader that never reads is cut off once its outbound bound (1 MiB) is full; a reading
    // stream on the same channel gets every event.
    let _stuck = raw_stream(&server, "channels=busy").await;
    let mut reader = server.sse("channels=busy", None).await.unwrap();
    reader
        .expect("pusher_internal:subscription_succeeded")
        .await;
    wait_for_metric(&server, "chorus_subscriptions{", 2.0).await;
    let counting = tokio::spawn(async move {
        let mut count = 0u64;
        loop {
            let e = reader.expect("e").await;
            count += 1;
            if e.data["data"] == "after" {
                return count;
            }
        }
    });
    let payload = "x".repeat(8 * 1024);
    let mut published = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.metric("chorus_slow_reader_disconnects_total{").await == 0.0 {
        assert!(
            Instant::now() < deadline,
            "the stuck reader was never cut off"
        );
        for _ in 0..20 {
            if server.publish("busy", &payload).await {
                published += 1;
            }
        }
    }
    assert!(published > 64, "cut off after {published} events of 8 KiB");
    wait_for_metric(&server, "chorus_sse_connections{", 1.0).await;
    assert!(server.publish("busy", "after").await);
    let delivered = tokio::time::timeout(Duration::from_secs(10), counting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        delivered,
        published + 1,
        "the reading stream got every event"
    );
}
