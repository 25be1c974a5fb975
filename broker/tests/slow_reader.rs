//! A subscriber that stops reading is cut off with 4100 once its outbound backlog is full, while a
//! subscriber that reads gets every event. Runs the real binary; the slow reader is a real socket
//! with a tiny receive buffer that is simply never read.

mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use support::Server;

const SLOW_READERS: &str = "chorus_slow_reader_disconnects_total{app_id=\"1\"}";

#[tokio::test]
async fn a_reader_that_stops_reading_is_cut_off_and_the_others_get_everything() {
    let server = Server::start("slow-reader", "max_outbound_bytes = 65536", "").await;
    let mut slow = server.connect(Some(4096)).await;
    slow.subscribe("firehose").await;
    let mut healthy = server.connect(None).await;
    healthy.subscribe("firehose").await;

    // The reader reads until the marker event that ends the run.
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            let Some(v) = healthy.next().await else {
                return seen;
            };
            if v["event"] == "e" {
                let data = v["data"].as_str().unwrap();
                if data == "end" {
                    return seen;
                }
                seen.push(data[..8].parse::<usize>().unwrap());
            }
        }
    });

    // Publish until the slow reader is cut off, and a little more; bounded in count and time.
    const MAX_EVENTS: usize = 20_000;
    let padding = "x".repeat(4000);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut published = 0;
    let mut cut_at = None;
    while published < MAX_EVENTS && cut_at.is_none_or(|at| published < at + 100) {
        let data = format!("{published:08}{padding}");
        while !server.publish("firehose", &data).await {
            assert!(Instant::now() < deadline, "publishes kept being refused");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        published += 1;
        if cut_at.is_none() && published % 100 == 0 {
            let cut = server.metric(SLOW_READERS).await;
            if cut > 0.0 {
                cut_at = Some(published);
            }
        }
    }
    eprintln!("slow reader cut off after {cut_at:?} events of 4 KB; {published} published");
    assert!(server.publish("firehose", "end").await);

    let seen = reader.await.unwrap();
    assert!(cut_at.is_some(), "the slow reader was never cut off");
    assert_eq!(
        seen,
        (0..published).collect::<Vec<_>>(),
        "the reading subscriber gets every event, in order"
    );
    let cut = server.metric(SLOW_READERS).await;
    assert_eq!(cut, 1.0, "exactly the slow reader was cut off");

    // When the slow reader finally reads, what was already in flight arrives, then the close.
    let close = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(msg) = slow.ws.next().await {
            match msg {
                Ok(Message::Close(frame)) => return frame.map(|f| f.code),
                Ok(_) => {}
                Err(e) => panic!("slow reader's socket failed: {e}"),
            }
        }
        None
    })
    .await
    .expect("the close frame arrives");
    assert_eq!(close, Some(CloseCode::Library(4100)));
}
