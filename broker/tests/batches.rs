//! Publishing a batch against the real binary: all or nothing. Every event of a batch is
//! admitted by its channel (the bound on the fan-out work a channel may have waiting) before
//! any is delivered; a batch one of whose events cannot be admitted is refused whole (429 with
//! a JSON message) and none of its events reaches anyone.

mod support;

use serde_json::{json, Value};

use support::{Client, Server};

/// The smallest outbound bound: a channel may have 16 of them (256 KiB) of frames waiting for
/// its actor. Events of 8000 bytes: 40 of them on one channel are more than it may have waiting,
/// 3 are not.
const TOP: &str = "max_outbound_bytes = 16384\nmax_request_bytes = 524288";
const LIMITS: &str = "max_message_bytes = 8192\nmax_batch_events = 100";

fn event(channel: &str, data: &str) -> Value {
    json!({"name": "e", "channel": channel, "data": data})
}

/// The data of the next event `e` a subscriber receives.
async fn next_data(client: &mut Client) -> String {
    let frame = client.expect("e").await;
    frame["data"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_batch_is_delivered_whole_or_not_at_all() {
    let server = Server::start("batches-all-or-nothing", TOP, LIMITS).await;
    let mut first = server.connect(None).await;
    first.subscribe("first").await;
    let mut busy = server.connect(None).await;
    busy.subscribe("busy").await;
    let big = "x".repeat(8000);

    // Its last events are more than the busy channel admits: refused whole.
    let mut refused = vec![event("first", "refused")];
    refused.extend((0..40).map(|i| event("busy", &format!("refused-{i}-{big}"))));
    let (status, body) = server
        .post(
            "/apps/1/batch_events",
            json!({"batch": refused}).to_string(),
        )
        .await;
    assert_eq!(status, 429, "{body}");
    let error: Value = serde_json::from_str(&body).expect("a JSON answer");
    let message = error["error"].as_str().expect("an error message");
    assert!(message.contains("busy"), "{message}");
    assert!(message.contains("nothing"), "{message}");

    // A batch the channels admit arrives whole. Each subscriber's next event is of this batch:
    // nothing of the refused one came before it.
    let mut admitted = vec![event("first", "admitted")];
    admitted.extend((0..3).map(|i| event("busy", &format!("admitted-{i}"))));
    let (status, body) = server
        .post(
            "/apps/1/batch_events",
            json!({"batch": admitted}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(next_data(&mut first).await, "admitted");
    for i in 0..3 {
        assert_eq!(next_data(&mut busy).await, format!("admitted-{i}"));
    }
}
