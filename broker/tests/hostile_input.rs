//! Hostile input against the real binary: thousands of malformed WebSocket frames, floods of
//! subscriptions, bad channel names and signatures, malformed HTTP API requests. Each gets its
//! error, the connection or node stays up, and repeating the storm does not grow memory.

mod support;

use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::{Bytes, Message};

use support::{Client, Server};

/// Malformed text frames; every one is answered with a `pusher:error` and nothing else.
fn malformed_text_frames() -> Vec<String> {
    let mut nested = String::new();
    for _ in 0..2000 {
        nested.push('[');
    }
    vec![
        String::new(),
        "not json".into(),
        "{".into(),
        "[]".into(),
        "null".into(),
        "42".into(),
        "{}".into(),
        json!({"event": 1}).to_string(),
        json!({"event": null}).to_string(),
        json!({"event": ["pusher:ping"]}).to_string(),
        json!({"event": "pusher:subscribe"}).to_string(),
        json!({"event": "pusher:subscribe", "data": 5}).to_string(),
        json!({"event": "pusher:subscribe", "data": {"channel": 5}}).to_string(),
        json!({"event": "pusher:subscribe", "data": {"channel": {"a": 1}}}).to_string(),
        json!({"event": "pusher:subscribe", "data": "not json either"}).to_string(),
        json!({"event": "pusher:unsubscribe", "data": {}}).to_string(),
        json!({"event": "pusher:signin", "data": {"auth": 1}}).to_string(),
        json!({"event": "pusher:nonsense", "data": {}}).to_string(),
        json!({"event": "pusher_internal:member_added", "data": {}}).to_string(),
        json!({"event": "hello", "channel": "x"}).to_string(),
        json!({"event": "client-x", "data": {}}).to_string(),
        json!({"event": "client-x", "channel": "private-never-joined", "data": {}}).to_string(),
        json!({"event": "client-x", "channel": "public", "data": {}}).to_string(),
        json!({"event": "pusher:signin", "data": {"auth": "k:00", "user_data": "{}"}}).to_string(),
        format!("{{\"event\":\"pusher:ping\",\"data\":{nested}"),
        format!(
            "{{\"event\":\"client-x\",\"data\":\"{}\"}}",
            "x".repeat(12 * 1024)
        ),
        "\u{0}\u{1}\u{2}".into(),
    ]
}

/// Sends every malformed frame `rounds` times, then counts the answers: one `pusher:error` each.
async fn frame_storm(client: &mut Client, rounds: usize) {
    let frames = malformed_text_frames();
    let mut sent = 0;
    for _ in 0..rounds {
        for f in &frames {
            client.send_text(f.clone()).await;
            sent += 1;
        }
        client
            .ws
            .send(Message::Binary(Bytes::from_static(
                b"\xff\xfe binary, not UTF-8",
            )))
            .await
            .unwrap();
        sent += 1;
    }
    for _ in 0..sent {
        let answer = client.next().await.expect("the socket stays open");
        assert_eq!(answer["event"], "pusher:error", "{answer}");
        let data = support::data(&answer);
        assert!(
            data["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{data}"
        );
    }
    client.ping().await;
}

#[tokio::test]
async fn thousands_of_malformed_frames_each_get_an_error_and_the_socket_stays_usable() {
    let server = Server::start("malformed-frames", "", "").await;
    let mut client = server.connect(None).await;
    client.subscribe("public").await;
    frame_storm(&mut client, 120).await;
    // Still subscribed and delivering.
    assert!(server.publish("public", "after the storm").await);
    let event = client.expect("e").await;
    assert_eq!(event["data"], "after the storm");
}

#[tokio::test]
async fn a_frame_over_the_limit_closes_only_that_connection_with_1009() {
    let server = Server::start("huge-frame", "", "").await;
    let mut bystander = server.connect(None).await;
    let mut client = server.connect(None).await;
    client.send_text("x".repeat(1024 * 1024)).await;
    assert_eq!(
        client.close_code().await,
        Some(1009),
        "a 1 MiB frame closes the socket as too big"
    );
    bystander.ping().await;
    let mut fresh = server.connect(None).await;
    fresh.ping().await;
    assert!(server.healthy().await);
}

/// Subscribes to `count` channels at once and counts successes and refusals by type.
async fn subscription_flood(client: &mut Client, prefix: &str, count: usize) -> (usize, usize) {
    for i in 0..count {
        let frame =
            json!({"event": "pusher:subscribe", "data": {"channel": format!("{prefix}-{i}")}});
        client.send_json(frame).await;
    }
    let (mut ok, mut limited) = (0, 0);
    for _ in 0..count {
        let answer = client.next().await.expect("the socket stays open");
        match answer["event"].as_str().unwrap() {
            "pusher_internal:subscription_succeeded" => ok += 1,
            "pusher:subscription_error" => {
                let data = support::data(&answer);
                assert_eq!(data["type"], "LimitReached", "{data}");
                assert_eq!(data["status"], 429);
                limited += 1;
            }
            other => panic!("unexpected {other}: {answer}"),
        }
    }
    (ok, limited)
}

#[tokio::test]
async fn ten_thousand_subscriptions_on_one_socket_stop_at_the_limit() {
    let server = Server::start("sub-flood", "", "").await;
    let mut client = server.connect(None).await;
    let (ok, limited) = subscription_flood(&mut client, "flood", 10_000).await;
    assert_eq!(
        (ok, limited),
        (1000, 9000),
        "the default limit is 1000 per connection"
    );
    client.ping().await;
    let subscriptions = server.metric("chorus_subscriptions{app_id=\"1\"}").await;
    assert_eq!(subscriptions, 1000.0);
    drop(client);
    // The node lets go of all of them once the socket is gone.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while server.metric("chorus_channels{app_id=\"1\"}").await > 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "channels were not released"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn bad_names_forged_auth_and_bad_presence_data_are_refused_by_type() {
    let server = Server::start("bad-subscriptions", "", "").await;
    let mut client = server.connect(None).await;
    let cases: Vec<(serde_json::Value, &str, u16)> = vec![
        (json!({"channel": ""}), "InvalidChannel", 400),
        (json!({"channel": "a".repeat(165)}), "InvalidChannel", 400),
        (json!({"channel": "bad name"}), "InvalidChannel", 400),
        (json!({"channel": "bad/name"}), "InvalidChannel", 400),
        (json!({"channel": "private-a"}), "AuthError", 401),
        (
            json!({"channel": "private-a", "auth": "test-key:00"}),
            "AuthError",
            401,
        ),
        (
            json!({"channel": "private-a", "auth": "other-key:abcd"}),
            "AuthError",
            401,
        ),
        (
            json!({"channel": "private-a", "auth": "no-colon"}),
            "AuthError",
            401,
        ),
        (
            json!({"channel": "private-encrypted-a", "auth": ""}),
            "AuthError",
            401,
        ),
        (
            json!({"channel": "presence-a", "auth": "x", "channel_data": "{}"}),
            "AuthError",
            401,
        ),
        (json!({"channel": "#server-to-user-1"}), "AuthError", 401),
    ];
    for (data, kind, status) in &cases {
        let channel = data["channel"].as_str().unwrap().to_owned();
        client
            .send_json(json!({"event": "pusher:subscribe", "data": data}))
            .await;
        let answer = client.expect_channel_answer(&channel).await;
        assert_eq!(answer["event"], "pusher:subscription_error", "{data}");
        let err: serde_json::Value = support::data(&answer);
        assert_eq!(err["type"], *kind, "{data}: {err}");
        assert_eq!(err["status"], *status, "{data}");
    }
    // Correctly signed presence subscriptions with unusable channel_data.
    let bad_data = [
        "not json".to_owned(),
        "{}".to_owned(),
        json!({"user_id": null}).to_string(),
        json!({"user_id": ""}).to_string(),
        json!({"user_id": "u", "user_info": {"big": "x".repeat(2000)}}).to_string(),
    ];
    for channel_data in &bad_data {
        let mut c = server.connect(None).await;
        let auth = support::auth_token(&format!("{}:presence-room:{channel_data}", c.socket_id));
        c.send_json(json!({"event": "pusher:subscribe", "data": {
            "channel": "presence-room", "auth": auth, "channel_data": channel_data}}))
            .await;
        let answer = c.expect_channel_answer("presence-room").await;
        let err: serde_json::Value = support::data(&answer);
        assert_eq!(err["type"], "InvalidChannelData", "{channel_data}: {err}");
    }
    client.ping().await;
}

/// Malformed HTTP API requests and the status each must get.
async fn rest_storm(server: &Server, rounds: usize) {
    let event = |extra: serde_json::Value| {
        let mut e = json!({"name": "e", "channel": "c", "data": "d"});
        e.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        e.to_string()
    };
    let too_many_channels: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
    let eleven: Vec<serde_json::Value> = (0..11)
        .map(|_| json!({"name": "e", "channel": "c", "data": "d"}))
        .collect();
    let signed_cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("/apps/1/events", b"not json".to_vec(), 400),
        ("/apps/1/events", b"[]".to_vec(), 400),
        ("/apps/1/events", b"{}".to_vec(), 400),
        (
            "/apps/1/events",
            json!({"name": 1, "channel": "c", "data": "d"})
                .to_string()
                .into(),
            400,
        ),
        (
            "/apps/1/events",
            json!({"channel": "c", "data": "d"}).to_string().into(),
            400,
        ),
        (
            "/apps/1/events",
            json!({"name": "e", "data": "d"}).to_string().into(),
            400,
        ),
        ("/apps/1/events", event(json!({"channel": 5})).into(), 400),
        (
            "/apps/1/events",
            event(json!({"channel": "bad name"})).into(),
            400,
        ),
        (
            "/apps/1/events",
            json!({"name": "e", "channels": too_many_channels, "data": "d"})
                .to_string()
                .into(),
            400,
        ),
        (
            "/apps/1/events",
            json!({"name": "e", "channels": [], "data": "d"})
                .to_string()
                .into(),
            400,
        ),
        (
            "/apps/1/events",
            event(json!({"socket_id": "nope"})).into(),
            400,
        ),
        (
            "/apps/1/events",
            event(json!({"name": "pusher:fake"})).into(),
            400,
        ),
        (
            "/apps/1/events",
            event(json!({"name": "x".repeat(201)})).into(),
            400,
        ),
        (
            "/apps/1/events",
            event(json!({"data": "x".repeat(12 * 1024)})).into(),
            413,
        ),
        (
            "/apps/1/batch_events",
            json!({"batch": eleven}).to_string().into(),
            400,
        ),
        (
            "/apps/1/batch_events",
            json!({"batch": 5}).to_string().into(),
            400,
        ),
        (
            "/apps/1/batch_events",
            json!({"batch": [{"name": "e", "channels": ["a"], "data": "d"}]})
                .to_string()
                .into(),
            400,
        ),
        ("/apps/1/events", vec![b'x'; 5 * 1024 * 1024], 413),
        ("/apps/1/nothing-here", b"{}".to_vec(), 404),
    ];
    let client = reqwest::Client::new();
    for _ in 0..rounds {
        for (path, body, status) in &signed_cases {
            let res = client
                .post(server.signed_url("POST", path, &[], body))
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(
                res.status().as_u16(),
                *status,
                "{path} {}",
                String::from_utf8_lossy(&body[..body.len().min(80)])
            );
            let answer: serde_json::Value = res.json().await.expect("errors are JSON");
            assert!(
                answer["error"].as_str().is_some_and(|m| !m.is_empty()),
                "{answer}"
            );
        }
        let good = event(json!({}));
        let unsigned = [
            server.url("/apps/1/events"),
            server.url("/apps/1/events?auth_key=test-key&auth_timestamp=1&auth_version=1.0&auth_signature=00"),
            server.signed_url("POST", "/apps/1/events", &[], b"a different body"),
            server.signed_url("GET", "/apps/1/events", &[], good.as_bytes()),
            server.signed_url("POST", "/apps/1/events", &[("extra", "1")], good.as_bytes()).replace("extra=1", "extra=2"),
        ];
        for url in &unsigned {
            let res = client.post(url).body(good.clone()).send().await.unwrap();
            assert_eq!(res.status().as_u16(), 401, "{url}");
            let answer: serde_json::Value = res.json().await.expect("errors are JSON");
            assert!(answer["error"].is_string());
        }
        let wrong_app = client
            .post(server.signed_url("POST", "/apps/2/events", &[], good.as_bytes()))
            .body(good.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(wrong_app.status().as_u16(), 404);
        let bad_query = client
            .get(server.url("/apps/1/channels?info=%ZZ&&&="))
            .send()
            .await
            .unwrap();
        assert!(
            matches!(bad_query.status().as_u16(), 400 | 401),
            "{}",
            bad_query.status()
        );
    }
}

#[tokio::test]
async fn malformed_api_requests_each_get_their_status_and_a_json_error() {
    let server = Server::start("malformed-rest", "", "").await;
    rest_storm(&server, 3).await;
    assert!(server.healthy().await);
}

#[tokio::test]
async fn repeated_storms_do_not_grow_memory() {
    let server = Server::start("storm-memory", "", "").await;
    let storm = |round: usize| {
        let server = &server;
        async move {
            let mut client = server.connect(None).await;
            frame_storm(&mut client, 40).await;
            let (ok, _) = subscription_flood(&mut client, &format!("mem{round}"), 3000).await;
            assert_eq!(ok, 1000);
            rest_storm(server, 2).await;
        }
    };
    storm(0).await;
    storm(1).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let after_two = server.rss_kib();
    for round in 2..6 {
        storm(round).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let after_six = server.rss_kib();
    eprintln!("RSS after two storms {after_two} KiB, after six {after_six} KiB");
    assert!(
        after_six < after_two + 8 * 1024,
        "RSS grew from {after_two} KiB to {after_six} KiB over four more storms"
    );
    assert!(server.healthy().await);
}
