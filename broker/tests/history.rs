//! History channels with the real binary: events carry offsets and the epoch on the wire, an
//! acknowledged publish survives `kill -9`, and the REST history endpoint reads it all back in
//! order with the same offsets and epoch.

mod support;

use serde_json::json;

use support::{read_history, Server};

const HISTORY: &str = "[[apps.history]]\nchannels = \"chat-*\"\nmax_events = 5000\n";

#[tokio::test]
async fn acknowledged_history_survives_kill_9_in_order_with_the_same_offsets_and_epoch() {
    let mut server = Server::start_with("history-kill9", "", "", HISTORY).await;
    let mut subscriber = server.connect(None).await;
    subscriber.subscribe("chat-room").await;

    // 1000 events, acknowledged in batches of 10.
    for batch in 0..100 {
        let events: Vec<_> = (0..10)
            .map(|i| json!({"name": "msg", "channel": "chat-room", "data": format!("m{}", batch * 10 + i)}))
            .collect();
        let (status, body) = server
            .post("/apps/1/batch_events", json!({"batch": events}).to_string())
            .await;
        assert_eq!(status, 200, "{body}");
    }

    // Live events carry their offset and the epoch.
    let first = subscriber.expect("msg").await;
    assert_eq!(first["offset"], 1);
    assert_eq!(first["data"], "m0");
    let epoch = first["epoch"].as_str().unwrap().to_owned();
    for n in 2..=1000u64 {
        let e = subscriber.expect("msg").await;
        assert_eq!(e["offset"], n);
        assert_eq!(e["epoch"], epoch.as_str());
    }

    server.kill_hard();
    server.restart().await;

    let (epoch_after, events) = read_history(server.port, "chat-room").await;
    assert_eq!(epoch_after, epoch, "the epoch survives a restart");
    let expected: Vec<(u64, String)> = (1..=1000).map(|n| (n, format!("m{}", n - 1))).collect();
    assert_eq!(events, expected, "every acknowledged event, once, in order");

    // And over a recovering subscription, from the start of the epoch.
    let mut recovering = server.connect(None).await;
    let confirmation = recovering
        .subscribe_since("chat-room", json!({"epoch": epoch, "offset": 0}))
        .await;
    assert_eq!(confirmation["recovered"], true, "{confirmation}");
    for (offset, data) in &expected {
        let e = recovering.expect("msg").await;
        assert_eq!(
            (e["offset"].as_u64().unwrap(), e["data"].as_str().unwrap()),
            (*offset, data.as_str())
        );
    }

    // Offsets go on after the restart.
    assert!(server.publish("chat-room", "after restart").await);
    let (_, events) = read_history(server.port, "chat-room").await;
    assert_eq!(events.last().unwrap(), &(1001, "after restart".to_owned()));
}

#[tokio::test]
async fn history_endpoint_errors_and_channels_without_history() {
    let server = Server::start_with("history-errors", "", "", HISTORY).await;
    let get = |path: &str, params: &[(&str, &str)]| {
        let url = server.signed_url("GET", path, params, b"");
        async move {
            let res = reqwest::get(url).await.unwrap();
            (
                res.status().as_u16(),
                res.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    // A history channel never written: no epoch yet, no events.
    let (status, body) = get("/apps/1/channels/chat-new/history", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"epoch": null, "events": []}));
    // Huge `after`: nothing, not an error.
    assert!(server.publish("chat-x", "one").await);
    let (status, body) = get(
        "/apps/1/channels/chat-x/history",
        &[("after", "18446744073709551615")],
    )
    .await;
    assert_eq!(status, 200);
    assert!(body["events"].as_array().unwrap().is_empty());
    assert!(body["epoch"].is_string());
    let (status, body) = get("/apps/1/channels/chat-x/history", &[("after", "-1")]).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = get("/apps/1/channels/chat-x/history", &[("limit", "lots")]).await;
    assert_eq!(status, 400);
    let (status, body) = get("/apps/1/channels/news/history", &[]).await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("no history"));

    // Events on other channels carry no offset.
    let mut client = server.connect(None).await;
    client.subscribe("news").await;
    assert!(server.publish("news", "plain").await);
    let e = client.expect("e").await;
    assert!(e.get("offset").is_none() && e.get("epoch").is_none(), "{e}");
}

#[tokio::test]
async fn a_resubscribing_client_gets_every_missed_offset_once_while_publishes_go_on() {
    let server = Server::start_with("history-recovery", "", "", HISTORY).await;
    let mut client = server.connect(None).await;
    let confirmation = client.subscribe_since("chat-live", json!(null)).await;
    assert_eq!(confirmation["offset"], 0);
    for i in 0..10 {
        assert!(server.publish("chat-live", &format!("before {i}")).await);
    }
    let mut last = json!(null);
    for _ in 0..10 {
        last = client.expect("e").await;
    }
    let (epoch, seen) = (
        last["epoch"].as_str().unwrap().to_owned(),
        last["offset"].as_u64().unwrap(),
    );
    assert_eq!(seen, 10);
    drop(client);

    // 500 while away.
    for i in 0..500 {
        assert!(server.publish("chat-live", &format!("away {i}")).await);
    }
    // 200 more while the client resubscribes.
    let publisher = {
        let events: Vec<String> = (0..200).map(|i| format!("during {i}")).collect();
        let server = &server;
        async move {
            for data in events {
                while !server.publish("chat-live", &data).await {}
            }
        }
    };
    let resubscribe = async {
        let mut client = server.connect(None).await;
        let confirmation = client
            .subscribe_since("chat-live", json!({"epoch": epoch, "offset": seen}))
            .await;
        assert_eq!(confirmation["recovered"], true, "{confirmation}");
        assert_eq!(confirmation["epoch"], epoch.as_str());
        client
    };
    let ((), mut client) = tokio::join!(publisher, resubscribe);
    let mut offsets = Vec::new();
    while offsets.last() != Some(&710) {
        let e = client.expect("e").await;
        assert_eq!(e["epoch"], epoch.as_str());
        offsets.push(e["offset"].as_u64().unwrap());
    }
    assert_eq!(
        offsets,
        (11..=710).collect::<Vec<_>>(),
        "every offset once, in order"
    );
}

#[tokio::test]
async fn recovery_that_cannot_be_exact_says_so() {
    let server = Server::start_with("history-no-recovery", "", "", HISTORY).await;
    for i in 0..5 {
        assert!(server.publish("chat-r", &format!("{i}")).await);
    }
    let mut client = server.connect(None).await;
    let current = client.subscribe_since("chat-r", json!(null)).await;
    let epoch = current["epoch"].as_str().unwrap().to_owned();
    assert_eq!(current["offset"], 5);
    let cases = [
        json!({"epoch": "another-epoch", "offset": 2}),
        json!({"epoch": epoch, "offset": 99}),
        json!({"epoch": epoch, "offset": u64::MAX}),
    ];
    for (i, since) in cases.iter().enumerate() {
        let mut c = server.connect(None).await;
        let confirmation = c.subscribe_since("chat-r", since.clone()).await;
        assert_eq!(confirmation["recovered"], false, "case {i}: {confirmation}");
        assert_eq!(
            confirmation["offset"],
            5 + i as u64,
            "each case publishes one more"
        );
        // Nothing is replayed: the next frame is a live event.
        assert!(server.publish("chat-r", "live").await);
        let e = c.expect("e").await;
        assert_eq!(e["data"], "live", "case {i}");
    }
    // A malformed `since` is a malformed frame.
    client
        .send_json(json!({"event": "pusher:subscribe", "data": {"channel": "chat-q", "since": {"epoch": 1, "offset": "x"}}}))
        .await;
    let error = client.expect("pusher:error").await;
    let message = support::data(&error)["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("pusher:subscribe"), "{message}");
    // Recovering from the current offset: recovered, nothing replayed.
    let mut c = server.connect(None).await;
    let last = 5 + cases.len() as u64;
    let confirmation = c
        .subscribe_since("chat-r", json!({"epoch": epoch, "offset": last}))
        .await;
    assert_eq!(confirmation["recovered"], true);
    assert!(server.publish("chat-r", "next").await);
    let e = c.expect("e").await;
    assert_eq!(e["offset"], last + 1);
}

#[tokio::test]
async fn a_catch_up_larger_than_the_outbound_bound_is_sent_in_parts_while_publishes_go_on() {
    // Half of a 32 KiB outbound bound is far less than 4000 missed events of ~130 bytes.
    let server =
        Server::start_with("history-parts", "max_outbound_bytes = 32768", "", HISTORY).await;
    let mut client = server.connect(None).await;
    let start = client.subscribe_since("chat-big", json!(null)).await;
    assert_eq!(start["offset"], 0);
    drop(client);
    for batch in 0..400 {
        let events: Vec<_> = (0..10)
            .map(|i| json!({"name": "e", "channel": "chat-big", "data": format!("away {:04} {}", batch * 10 + i, "x".repeat(40))}))
            .collect();
        let (status, body) = server
            .post("/apps/1/batch_events", json!({"batch": events}).to_string())
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let epoch = read_history(server.port, "chat-big").await.0;

    // One client starts a catch-up and leaves in the middle of it: nothing is left behind.
    let mut leaver = server.connect(None).await;
    let since = json!({"epoch": epoch, "offset": 0});
    leaver.subscribe_since("chat-big", since.clone()).await;
    leaver
        .send_json(json!({"event": "pusher:unsubscribe", "data": {"channel": "chat-big"}}))
        .await;
    leaver.ping().await;

    let publisher = async {
        for i in 0..300 {
            while !server.publish("chat-big", &format!("during {i}")).await {}
        }
    };
    let resubscribe = async {
        let mut client = server.connect(None).await;
        let confirmation = client.subscribe_since("chat-big", since.clone()).await;
        assert_eq!(confirmation["recovered"], true, "{confirmation}");
        client
    };
    let ((), mut client) = tokio::join!(publisher, resubscribe);
    let mut offsets = Vec::new();
    while offsets.last() != Some(&4300) {
        let e = client.expect("e").await;
        offsets.push(e["offset"].as_u64().unwrap());
    }
    assert_eq!(
        offsets,
        (1..=4300).collect::<Vec<_>>(),
        "every offset once, in order"
    );
    assert_eq!(
        server.metric("chorus_slow_reader_disconnects_total{").await,
        0.0
    );

    // Only the client that caught up holds a subscription.
    let url = server.signed_url(
        "GET",
        "/apps/1/channels/chat-big",
        &[("info", "subscription_count")],
        b"",
    );
    let info: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    assert_eq!(info["subscription_count"], 1, "{info}");
    drop(client);
    drop(leaver);
}

#[tokio::test]
async fn a_cache_channels_last_event_survives_kill_9() {
    let mut server = Server::start("cache-kill9", "", "").await;
    assert!(server.publish("cache-price", "1.00").await);
    assert!(server.publish("cache-price", "1.25").await);
    server.kill_hard();
    server.restart().await;

    let mut client = server.connect(None).await;
    client.subscribe("cache-price").await;
    let cached = client.next().await.unwrap();
    assert_eq!(cached["event"], "e", "{cached}");
    assert_eq!(cached["data"], "1.25");

    // A cache channel never published to still answers cache_miss.
    client
        .send_json(json!({"event": "pusher:subscribe", "data": {"channel": "cache-empty"}}))
        .await;
    client.expect_channel_answer("cache-empty").await;
    assert_eq!(client.next().await.unwrap()["event"], "pusher:cache_miss");
}
