//! What the integration tests share: real `chorus` processes on free loopback ports, alone
//! ([`Server`]) or as a cluster ([`cluster::TestCluster`]), both started as a [`node::NodeProcess`];
//! signed HTTP API requests and auth tokens, signed with an HMAC of the test's own (never the
//! server's signing code); raw WebSocket and SSE clients; reading a node's metrics and memory.

#![allow(dead_code)] // each test file uses its own part

pub mod cluster;
pub mod node;
pub mod partition;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, KeyInit, Mac};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;

use node::{NodeProcess, Probe};

pub const KEY: &str = "test-key";
pub const SECRET: &str = "test-secret-123";

/// HMAC-SHA256 of `message` with `secret`, in hex: how an app's backend signs, computed here
/// independently of the server's own code.
pub fn hmac_hex(secret: &str, message: &str) -> String {
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// An auth token of app 1 for `message`: `key:signature`, as its backend would return it.
pub fn auth_token(message: &str) -> String {
    format!("{KEY}:{}", hmac_hex(SECRET, message))
}

/// App 1 with `KEY` and `SECRET`, `limits` the body of its `[apps.limits]`, `app_tables` more
/// tables of it (e.g. `[[apps.history]]`), after the top-level TOML `top`.
pub fn app_config(top: &str, limits: &str, app_tables: &str) -> String {
    format!(
        "{top}\n[[apps]]\nid = \"1\"\nkey = \"{KEY}\"\nsecret = \"{SECRET}\"\n[apps.limits]\n{limits}\n{app_tables}\n"
    )
}

/// A running node without peers (a cluster of one); killed when dropped.
pub struct Server {
    process: NodeProcess,
    pub port: u16,
    pub metrics_port: u16,
}

impl Server {
    /// Starts `chorus` with app 1 (`KEY`, `SECRET`): `top` is top-level TOML, `limits` the body
    /// of `[apps.limits]`; waits until it is ready.
    pub async fn start(name: &str, top: &str, limits: &str) -> Server {
        Server::start_with(name, top, limits, "").await
    }

    /// As [`Server::start`], with more tables of app 1 (`app_tables`).
    pub async fn start_with(name: &str, top: &str, limits: &str, app_tables: &str) -> Server {
        let dir = format!("chorus-{name}-{}", std::process::id());
        let config = app_config(top, limits, app_tables);
        // A free port can be taken by another test's client socket before chorus binds it; then
        // chorus exits and is started again on fresh ports.
        for _ in 0..5 {
            let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
            let mut process = NodeProcess::new(&dir, localhost, &config, Vec::new());
            process.spawn();
            if process.wait_for(Probe::Ready).await {
                return Server {
                    port: process.port,
                    metrics_port: process.metrics_port,
                    process,
                };
            }
        }
        panic!("chorus exited at start five times");
    }

    /// `kill -9`: the process gets no chance to flush or close anything.
    pub fn kill_hard(&mut self) {
        self.process.kill_hard();
    }

    /// Starts the node again on the same ports, data directory and configuration.
    pub async fn restart(&mut self) {
        self.process.spawn();
        assert!(
            self.process.wait_for(Probe::Ready).await,
            "chorus exited on restart"
        );
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The node is up and answers.
    pub async fn healthy(&self) -> bool {
        reqwest::get(self.url("/healthz"))
            .await
            .is_ok_and(|r| r.status() == 200)
    }

    /// Resident memory of the node, KiB.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.process.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc")
    }

    /// The value of the first metrics line starting with `line_start` (0 when absent).
    pub async fn metric(&self, line_start: &str) -> f64 {
        self.process.metric(line_start).await
    }

    /// A URL for `path` signed as the Pusher HTTP API requires, with extra query `params`.
    pub fn signed_url(
        &self,
        method: &str,
        path: &str,
        params: &[(&str, &str)],
        body: &[u8],
    ) -> String {
        signed_url(self.port, method, path, params, body)
    }

    /// A signed POST of `body` to `path`: the status and the body.
    pub async fn post(&self, path: &str, body: impl Into<Vec<u8>>) -> (u16, String) {
        post(self.port, path, body).await
    }

    /// Publishes one event; `false` when the channel refused it for now (429).
    pub async fn publish(&self, channel: &str, data: &str) -> bool {
        publish(self.port, channel, data).await
    }

    /// A raw WebSocket client, after `connection_established`.
    pub async fn connect(&self, recv_buffer: Option<u32>) -> Client {
        connect(self.port, recv_buffer).await
    }
}

/// Where a node's public port is: a bare port is on `127.0.0.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeAddr(pub SocketAddr);

impl From<u16> for NodeAddr {
    fn from(port: u16) -> NodeAddr {
        NodeAddr(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
    }
}

impl From<SocketAddr> for NodeAddr {
    fn from(addr: SocketAddr) -> NodeAddr {
        NodeAddr(addr)
    }
}

/// A URL of the node at `node` for `path`, signed as the Pusher HTTP API requires, with extra
/// query `params`.
pub fn signed_url(
    node: impl Into<NodeAddr>,
    method: &str,
    path: &str,
    params: &[(&str, &str)],
    body: &[u8],
) -> String {
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let md5 = hex::encode(<md5::Md5 as md5::Digest>::digest(body));
    let mut all: Vec<(&str, &str)> = vec![
        ("auth_key", KEY),
        ("auth_timestamp", &ts),
        ("auth_version", "1.0"),
        ("body_md5", &md5),
    ];
    all.extend_from_slice(params);
    all.sort();
    let query = all
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let sig = hmac_hex(SECRET, &format!("{method}\n{path}\n{query}"));
    let NodeAddr(addr) = node.into();
    format!("http://{addr}{path}?{query}&auth_signature={sig}")
}

/// A signed POST of `body` to `path` of the node at `node`: the status and the body.
pub async fn post(
    node: impl Into<NodeAddr>,
    path: &str,
    body: impl Into<Vec<u8>>,
) -> (u16, String) {
    let body = body.into();
    let res = reqwest::Client::new()
        .post(signed_url(node, "POST", path, &[], &body))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

/// Publishes one event (name `e`) to the node at `node`; `false` when the channel refused it for
/// now (429).
pub async fn publish(node: impl Into<NodeAddr>, channel: &str, data: &str) -> bool {
    let body = serde_json::json!({"name": "e", "channel": channel, "data": data}).to_string();
    match post(node, "/apps/1/events", body).await {
        (200, _) => true,
        (429, _) => false,
        (status, body) => panic!("publish answered {status}: {body}"),
    }
}

/// Publishes a batch of events (name `e`) through the HTTP API of the node at `node`; the
/// status, or `None` when the node could not be reached (it is down).
pub async fn publish_batch(
    node: impl Into<NodeAddr>,
    channel: &str,
    data: &[String],
) -> Option<u16> {
    let batch: Vec<serde_json::Value> = data
        .iter()
        .map(|d| serde_json::json!({"name": "e", "channel": channel, "data": d}))
        .collect();
    let body = serde_json::json!({ "batch": batch })
        .to_string()
        .into_bytes();
    let url = signed_url(node, "POST", "/apps/1/batch_events", &[], &body);
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .ok()?;
    Some(response.status().as_u16())
}

/// The whole history of `channel` of app 1 of the node at `node`, over REST, page by page: its
/// epoch and every (offset, data).
pub async fn read_history(
    node: impl Into<NodeAddr>,
    channel: &str,
) -> (String, Vec<(u64, String)>) {
    let node = node.into();
    let path = format!("/apps/1/channels/{channel}/history");
    let mut after = 0;
    let mut events = Vec::new();
    loop {
        let after_s = after.to_string();
        let params = [("after", after_s.as_str()), ("limit", "500")];
        let url = signed_url(node, "GET", &path, &params, b"");
        let page: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
        let epoch = page["epoch"].as_str().expect("an epoch").to_owned();
        let batch = page["events"].as_array().unwrap();
        if batch.is_empty() {
            return (epoch, events);
        }
        for e in batch {
            let offset = e["offset"].as_u64().unwrap();
            assert!(e["time_ms"].as_u64().unwrap() > 0);
            events.push((offset, e["data"].as_str().unwrap().to_owned()));
            after = offset;
        }
    }
}

/// A raw WebSocket client of the node at `node`, after `connection_established`.
pub async fn connect(node: impl Into<NodeAddr>, recv_buffer: Option<u32>) -> Client {
    let NodeAddr(addr) = node.into();
    let socket = TcpSocket::new_v4().unwrap();
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size).unwrap();
    }
    let tcp = socket.connect(addr).await.unwrap();
    let url = format!("ws://{addr}/app/{KEY}?protocol=7");
    let (ws, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    let mut client = Client {
        ws,
        socket_id: String::new(),
    };
    let established = client.expect("pusher:connection_established").await;
    let data = data(&established);
    client.socket_id = data["socket_id"].as_str().unwrap().to_owned();
    client
}

/// A server frame's `data`: a JSON-encoded string for most events, an object for errors.
pub fn data(frame: &serde_json::Value) -> serde_json::Value {
    match &frame["data"] {
        serde_json::Value::String(s) => serde_json::from_str(s).unwrap_or(frame["data"].clone()),
        other => other.clone(),
    }
}

pub type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A raw Pusher protocol client.
pub struct Client {
    pub ws: Ws,
    pub socket_id: String,
}

impl Client {
    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws.send(Message::text(text.into())).await.unwrap();
    }

    pub async fn send_json(&mut self, value: serde_json::Value) {
        self.send_text(value.to_string()).await;
    }

    /// The next text frame as JSON (within 5 s); `None` when the socket closed.
    pub async fn next(&mut self) -> Option<serde_json::Value> {
        self.next_within(Duration::from_secs(5)).await
    }

    /// The next text frame as JSON, which must come `within`; `None` when the socket closed.
    pub async fn next_within(&mut self, within: Duration) -> Option<serde_json::Value> {
        loop {
            let msg = tokio::time::timeout(within, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no frame within {within:?}"));
            match msg {
                Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => {}
            }
        }
    }

    /// Reads frames until one with event `event`, and returns it.
    pub async fn expect(&mut self, event: &str) -> serde_json::Value {
        loop {
            let frame = self
                .next()
                .await
                .unwrap_or_else(|| panic!("socket closed waiting for {event}"));
            if frame["event"] == event {
                return frame;
            }
        }
    }

    pub async fn subscribe(&mut self, channel: &str) {
        self.send_json(
            serde_json::json!({"event": "pusher:subscribe", "data": {"channel": channel}}),
        )
        .await;
        let answer = self.expect_channel_answer(channel).await;
        assert_eq!(answer["event"], "pusher_internal:subscription_succeeded");
    }

    /// Subscribes with `since` (the Chorus extension for recovery); returns the confirmation's
    /// data.
    pub async fn subscribe_since(
        &mut self,
        channel: &str,
        since: serde_json::Value,
    ) -> serde_json::Value {
        self.send_json(serde_json::json!({"event": "pusher:subscribe",
            "data": {"channel": channel, "since": since}}))
            .await;
        let answer = self.expect_channel_answer(channel).await;
        assert_eq!(
            answer["event"], "pusher_internal:subscription_succeeded",
            "{answer}"
        );
        data(&answer)
    }

    /// Subscribes to a private channel, signing the subscription with the app's secret as the
    /// app's auth endpoint would.
    pub async fn subscribe_private(&mut self, channel: &str) {
        let auth = auth_token(&format!("{}:{channel}", self.socket_id));
        self.send_json(serde_json::json!({"event": "pusher:subscribe",
            "data": {"channel": channel, "auth": auth}}))
            .await;
        let answer = self.expect_channel_answer(channel).await;
        assert_eq!(answer["event"], "pusher_internal:subscription_succeeded");
    }

    /// Joins a presence channel as `user_id`, signing `channel_data` as the app's auth endpoint
    /// would; returns the `presence` object of the confirmation (ids, hash, count).
    pub async fn subscribe_presence(
        &mut self,
        channel: &str,
        user_id: &str,
        user_info: serde_json::Value,
    ) -> serde_json::Value {
        let channel_data =
            serde_json::json!({"user_id": user_id, "user_info": user_info}).to_string();
        let auth = auth_token(&format!("{}:{channel}:{channel_data}", self.socket_id));
        self.send_json(serde_json::json!({"event": "pusher:subscribe",
            "data": {"channel": channel, "auth": auth, "channel_data": channel_data}}))
            .await;
        let answer = self.expect_channel_answer(channel).await;
        assert_eq!(
            answer["event"], "pusher_internal:subscription_succeeded",
            "{answer}"
        );
        data(&answer)["presence"].clone()
    }

    /// Signs in as `user_id`, signed as the app's sign-in endpoint would, then subscribes to the
    /// user's `#server-to-user-{id}` channel, as pusher-js does after a sign-in.
    pub async fn sign_in(&mut self, user_id: &str) {
        let user_data = serde_json::json!({"id": user_id}).to_string();
        let auth = auth_token(&format!("{}::user::{user_data}", self.socket_id));
        self.send_json(serde_json::json!({"event": "pusher:signin",
            "data": {"auth": auth, "user_data": user_data}}))
            .await;
        self.expect("pusher:signin_success").await;
        self.subscribe(&format!("#server-to-user-{user_id}")).await;
    }

    /// Reads frames until the server closes the socket, and returns the close code it gave
    /// (bounded wait); `None` when the socket ended without a close frame.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(5), self.ws.next())
                .await
                .expect("a frame within 5 s");
            match msg {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                None | Some(Err(_)) => return None,
                Some(Ok(_)) => {}
            }
        }
    }

    /// The subscription answer for `channel` (succeeded or error).
    pub async fn expect_channel_answer(&mut self, channel: &str) -> serde_json::Value {
        self.expect_channel_answer_within(channel, Duration::from_secs(5))
            .await
    }

    /// The subscription answer for `channel`, with no frame more than `within` apart.
    pub async fn expect_channel_answer_within(
        &mut self,
        channel: &str,
        within: Duration,
    ) -> serde_json::Value {
        loop {
            let frame = self.next_within(within).await.expect("socket open");
            let event = frame["event"].as_str().unwrap_or_default();
            if frame["channel"] == channel
                && (event == "pusher_internal:subscription_succeeded"
                    || event == "pusher:subscription_error")
            {
                return frame;
            }
        }
    }

    /// Sends a ping and waits for the pong: the connection still works.
    pub async fn ping(&mut self) {
        self.send_json(serde_json::json!({"event": "pusher:ping", "data": {}}))
            .await;
        self.expect("pusher:pong").await;
    }
}

/// One event of an SSE stream.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: serde_json::Value,
}

impl SseEvent {
    /// The Pusher `data` inside the SSE data object, decoded when it is a JSON string.
    pub fn pusher_data(&self) -> serde_json::Value {
        data(&self.data)
    }
}

/// A Server-Sent Events client that parses the stream as a browser would (comments and `retry`
/// skipped) and remembers the last `id`, like `EventSource.lastEventId`.
pub struct SseClient {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: Vec<u8>,
    pub last_id: Option<String>,
}

impl Server {
    /// The SSE URL of app 1 with `query`.
    pub fn sse_url(&self, query: &str) -> String {
        self.url(&format!("/app/{KEY}/sse?{query}"))
    }

    /// Opens an SSE stream; `Err((status, body))` when refused.
    pub async fn sse(
        &self,
        query: &str,
        last_event_id: Option<&str>,
    ) -> Result<SseClient, (u16, String)> {
        let mut request = reqwest::Client::new().get(self.sse_url(query));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.unwrap();
        if response.status() != 200 {
            return Err((
                response.status().as_u16(),
                response.text().await.unwrap_or_default(),
            ));
        }
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Ok(SseClient {
            body: Box::pin(response.bytes_stream()),
            buf: Vec::new(),
            last_id: None,
        })
    }
}

impl SseClient {
    /// The next event (bounded wait); `None` when the stream ended.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let block = String::from_utf8(block).expect("SSE is UTF-8");
                let (mut id, mut event, mut data) = (None, None, String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                if id.is_some() {
                    self.last_id = id.clone();
                }
                if let Some(event) = event {
                    let data = serde_json::from_str(&data).expect("SSE data is JSON");
                    return Some(SseEvent { id, event, data });
                }
            }
            let chunk = tokio::time::timeout(Duration::from_secs(5), self.body.next())
                .await
                .expect("an SSE chunk within 5 s");
            match chunk {
                Some(Ok(bytes)) => self.buf.extend_from_slice(&bytes),
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Reads events until one named `event`, and returns it.
    pub async fn expect(&mut self, event: &str) -> SseEvent {
        loop {
            let e = self
                .next()
                .await
                .unwrap_or_else(|| panic!("stream ended waiting for {event}"));
            if e.event == event {
                return e;
            }
        }
    }
}
