//! Per-client-address limits against the real binary, with clients bound to different
//! 127.0.0.x addresses: open connections and handshakes per second, WebSocket and SSE, and
//! `X-Forwarded-For` believed only from a trusted proxy (which is itself never limited as one
//! client). A refused WebSocket gets a `pusher:error` 4100 and closes with 4100 (over capacity:
//! Pusher clients reconnect after a backoff, where a 4004 would stop them for good); a refused
//! SSE stream gets 429 with a JSON message.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use support::node::{NodeProcess, Probe};
use support::{Ws, KEY};

const PROXY: &str = "127.0.0.9";

/// A node allowing 3 open connections and 10 handshakes a second per address, behind a trusted
/// proxy at 127.0.0.9.
async fn start() -> NodeProcess {
    let dir = format!("chorus-per-ip-{}", std::process::id());
    let config = support::app_config("", "", "");
    let env: Vec<(String, String)> = [
        ("CHORUS_MAX_CONNECTIONS_PER_IP", "3"),
        ("CHORUS_MAX_HANDSHAKES_PER_IP_PER_SEC", "10"),
        ("CHORUS_TRUSTED_PROXIES", PROXY),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for _ in 0..5 {
        let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let mut node = NodeProcess::new(&dir, localhost, &config, env.clone());
        node.spawn();
        if node.wait_for(Probe::Ready).await {
            return node;
        }
    }
    panic!("chorus exited at start five times");
}

/// How a WebSocket handshake ended.
enum Outcome {
    Open(Box<Ws>),
    /// The Pusher error code, the close code and the error's message.
    Refused(u16, Option<u16>, String),
}

impl Outcome {
    fn open(self) -> Ws {
        match self {
            Outcome::Open(ws) => *ws,
            Outcome::Refused(code, close, m) => panic!("refused: {code} ({m}), close {close:?}"),
        }
    }

    fn refusal(&self) -> Option<(u16, Option<u16>)> {
        match self {
            Outcome::Open(_) => None,
            Outcome::Refused(code, close, _) => Some((*code, *close)),
        }
    }
}

/// A WebSocket from `from`, through a proxy when `forwarded_for` is given.
async fn ws(node: &NodeProcess, from: &str, forwarded_for: Option<&str>) -> Outcome {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    let tcp = socket.connect(node.public_addr()).await.unwrap();
    let url = format!("ws://{}/app/{KEY}?protocol=7", node.public_addr());
    let mut request = url.into_client_request().unwrap();
    if let Some(xff) = forwarded_for {
        request
            .headers_mut()
            .insert("x-forwarded-for", xff.parse().unwrap());
    }
    let (mut ws, _) = tokio_tungstenite::client_async(request, tcp).await.unwrap();
    let first = next_text(&mut ws).await.expect("a first frame");
    if first["event"] == "pusher:connection_established" {
        return Outcome::Open(Box::new(ws));
    }
    assert_eq!(first["event"], "pusher:error", "{first}");
    let code = first["data"]["code"].as_u64().unwrap() as u16;
    let message = first["data"]["message"].as_str().unwrap().to_owned();
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            _ => break None,
        }
    };
    Outcome::Refused(code, close, message)
}

async fn next_text(ws: &mut Ws) -> Option<serde_json::Value> {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()?
        {
            Ok(Message::Text(t)) => return Some(serde_json::from_str(&t).unwrap()),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

/// The status of an SSE request from `from`.
async fn sse_status(node: &NodeProcess, from: &str) -> (u16, String) {
    let client = reqwest::Client::builder()
        .local_address(from.parse::<IpAddr>().unwrap())
        .build()
        .unwrap();
    let response = client
        .get(node.url(&format!("/app/{KEY}/sse?channels=c")))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    if status == 200 {
        return (status, String::new());
    }
    (status, response.text().await.unwrap())
}

#[tokio::test]
async fn open_connections_and_handshakes_are_limited_per_client_address() {
    let node = start().await;

    // Three open from one address; the fourth WebSocket and an SSE stream are refused.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(ws(&node, "127.0.0.2", None).await.open());
    }
    let fourth = ws(&node, "127.0.0.2", None).await;
    assert_eq!(fourth.refusal(), Some((4100, Some(4100))));
    let (status, body) = sse_status(&node, "127.0.0.2").await;
    assert_eq!(status, 429, "{body}");
    let message: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        message["error"]
            .as_str()
            .unwrap()
            .contains("open connections"),
        "{message}"
    );
    // Another address is not limited by the first one's connections.
    let _other = ws(&node, "127.0.0.3", None).await.open();
    assert_eq!(sse_status(&node, "127.0.0.3").await.0, 200);
    // A closed connection gives its place back.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match ws(&node, "127.0.0.2", None).await {
            Outcome::Open(ws) => break held.push(*ws),
            Outcome::Refused(..) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Outcome::Refused(_, _, m) => panic!("still refused ({m}) after a close"),
        }
    }
    let over = "chorus_connections_refused_total{reason=\"ip_connections\"}";
    assert!(node.metric(over).await >= 2.0);

    // Handshakes per second: a burst of 15 from one address, each closed at once (some may
    // still count as open when the next comes: those are refused for that).
    let started = Instant::now();
    let mut accepted = 0;
    let mut too_fast = 0;
    for _ in 0..15 {
        match ws(&node, "127.0.0.5", None).await {
            Outcome::Open(ws) => {
                accepted += 1;
                drop(ws);
            }
            Outcome::Refused(code, close, message) => {
                assert_eq!((code, close), (4100, Some(4100)), "{message}");
                too_fast += usize::from(message.contains("per second"));
            }
        }
    }
    let windows = started.elapsed().as_secs() + 1;
    assert!(
        too_fast > 0,
        "15 handshakes in {:?}: none refused as too fast",
        started.elapsed()
    );
    assert!(
        accepted <= 10 * windows,
        "{accepted} accepted in {windows} s"
    );
    assert!(
        node.metric("chorus_connections_refused_total{reason=\"ip_handshakes\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn forwarded_for_counts_only_through_a_trusted_proxy() {
    let node = start().await;
    // Five clients through the trusted proxy: more than one address's limit, all admitted.
    let mut held = Vec::new();
    for i in 0..5 {
        let client = format!("203.0.113.{i}");
        held.push(ws(&node, PROXY, Some(&client)).await.open());
    }
    // One client behind the proxy is limited as itself; what it wrote before the proxy's entry
    // is not believed.
    for i in 0..3 {
        let xff = format!("10.9.9.{i}, 198.51.100.7");
        held.push(ws(&node, PROXY, Some(&xff)).await.open());
    }
    let fourth = ws(&node, PROXY, Some("10.9.9.9, 198.51.100.7")).await;
    assert_eq!(fourth.refusal(), Some((4100, Some(4100))));
    // From an address that is not a trusted proxy, the header is ignored: distinct forwarded
    // addresses are still one client.
    for i in 0..3 {
        let xff = format!("192.0.2.{i}");
        held.push(ws(&node, "127.0.0.4", Some(&xff)).await.open());
    }
    let fourth = ws(&node, "127.0.0.4", Some("192.0.2.99")).await;
    assert_eq!(fourth.refusal(), Some((4100, Some(4100))));
}
