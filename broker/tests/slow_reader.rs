//! A subscriber that stops reading is cut off with 4100 once its outbound backlog is full, while a
//! subscriber that reads gets every event. Runs the real binary; the slow reader is a real socket
//! with a tiny receive buffer that is simply never read.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chorus_broker::protocol::signature;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "slow-key";
const SECRET: &str = "slow-secret-123";
const SLOW_READERS: &str = "chorus_slow_reader_disconnects_total{app_id=\"1\"}";

struct Server {
    child: Child,
    port: u16,
    metrics_port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start(config: &str) -> Server {
    let dir = std::env::temp_dir().join(format!("chorus-slow-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config_path = dir.join("chorus.toml");
    std::fs::write(&config_path, config).unwrap();
    let (port, metrics_port) = (free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_chorus"))
        .arg("--config")
        .arg(&config_path)
        .env("CHORUS_HOST", "127.0.0.1")
        .env("CHORUS_PORT", port.to_string())
        .env("CHORUS_METRICS_PORT", metrics_port.to_string())
        .env("CHORUS_DATA_DIR", dir.join("data"))
        .env("CHORUS_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start chorus");
    let server = Server {
        child,
        port,
        metrics_port,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await;
        if ready.is_ok_and(|r| r.status() == 200) {
            return server;
        }
        assert!(Instant::now() < deadline, "chorus did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Publishes one event with a signed request; `Ok(false)` when the channel refused it (429).
async fn publish(port: u16, channel: &str, data: &str) -> bool {
    let body = serde_json::json!({"name": "e", "channel": channel, "data": data}).to_string();
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let query = format!(
        "auth_key={KEY}&auth_timestamp={ts}&auth_version=1.0&body_md5={}",
        signature::body_md5(body.as_bytes())
    );
    let sig = signature::sign(SECRET, &format!("POST\n/apps/1/events\n{query}"));
    let res = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{port}/apps/1/events?{query}&auth_signature={sig}"
        ))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    match res.status().as_u16() {
        200 => true,
        429 => false,
        other => panic!("publish answered {other}: {}", res.text().await.unwrap()),
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Connects (with the given receive buffer) and subscribes to `channel`.
async fn subscriber(port: u16, channel: &str, recv_buffer: Option<u32>) -> Ws {
    let socket = TcpSocket::new_v4().unwrap();
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size).unwrap();
    }
    let tcp = socket
        .connect(format!("127.0.0.1:{port}").parse().unwrap())
        .await
        .unwrap();
    let url = format!("ws://127.0.0.1:{port}/app/{KEY}?protocol=7");
    let (mut ws, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    let subscribe = serde_json::json!({"event": "pusher:subscribe", "data": {"channel": channel}});
    ws.send(Message::text(subscribe.to_string())).await.unwrap();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("subscription answered")
            .unwrap()
            .unwrap();
        if msg.to_text().unwrap().contains("subscription_succeeded") {
            return ws;
        }
    }
}

async fn metric(metrics_port: u16, line_start: &str) -> f64 {
    let text = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

#[tokio::test]
async fn a_reader_that_stops_reading_is_cut_off_and_the_others_get_everything() {
    let server = start(&format!(
        "max_outbound_bytes = 65536\n[[apps]]\nid = \"1\"\nkey = \"{KEY}\"\nsecret = \"{SECRET}\"\n"
    ))
    .await;
    let mut slow = subscriber(server.port, "firehose", Some(4096)).await;
    let healthy = subscriber(server.port, "firehose", None).await;

    // The reader reads until the marker event that ends the run.
    let reader = tokio::spawn(async move {
        let mut healthy = healthy;
        let mut seen = Vec::new();
        loop {
            let Ok(Some(Ok(msg))) =
                tokio::time::timeout(Duration::from_secs(20), healthy.next()).await
            else {
                return seen;
            };
            let v: serde_json::Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
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
        while !publish(server.port, "firehose", &data).await {
            assert!(Instant::now() < deadline, "publishes kept being refused");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        published += 1;
        if cut_at.is_none() && published % 100 == 0 {
            let cut = metric(server.metrics_port, SLOW_READERS).await;
            if cut > 0.0 {
                cut_at = Some(published);
            }
        }
    }
    eprintln!("slow reader cut off after {cut_at:?} events of 4 KB; {published} published");
    assert!(publish(server.port, "firehose", "end").await);

    let seen = reader.await.unwrap();
    assert!(cut_at.is_some(), "the slow reader was never cut off");
    assert_eq!(
        seen,
        (0..published).collect::<Vec<_>>(),
        "the reading subscriber gets every event, in order"
    );
    let cut = metric(server.metrics_port, SLOW_READERS).await;
    assert_eq!(cut, 1.0, "exactly the slow reader was cut off");

    // When the slow reader finally reads, what was already in flight arrives, then the close.
    let close = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(msg) = slow.next().await {
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
