//! WebSocket framing against the real binary, on raw sockets: a frame (or a fragmented message)
//! declaring more than the limit is refused at its header with 1009 and nothing buffered, while
//! attackers stream after such headers the node's memory stays flat and a normal subscriber
//! keeps receiving; every RFC 6455 violation closes with its own code and is counted by its
//! reason; the limit follows the app's `max_message_bytes`; socket ids are unpredictable; an
//! event arrives as the same bytes on every socket, laid out as RFC 6455 says at each length
//! encoding.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{Server, KEY};

/// A client frame, masked, written here independently of the server's code.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n < 65536 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// A frame's header alone, declaring `len` bytes of payload.
fn header_only(fin: bool, opcode: u8, len: u64) -> Vec<u8> {
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode, 0x80 | 127];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&[1, 2, 3, 4]);
    out
}

/// What the server sent, as a raw client reads it.
#[derive(Debug, PartialEq)]
enum ServerFrame {
    Text(String),
    Close(Option<u16>),
    Other(u8),
}

/// A raw WebSocket connection: the handshake by hand, then frames.
struct Raw {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn open(port: u16) -> Raw {
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let request = format!(
            "GET /app/{KEY}?protocol=7 HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Raw {
            tcp,
            buf: Vec::new(),
        };
        let head_end = loop {
            if let Some(end) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            assert!(raw.fill().await, "the handshake was answered");
        };
        let head = String::from_utf8_lossy(&raw.buf[..head_end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        raw.buf.drain(..head_end);
        match raw.next().await {
            Some(ServerFrame::Text(t)) => assert!(t.contains("connection_established"), "{t}"),
            other => panic!("{other:?}"),
        }
        raw
    }

    /// Reads more bytes (5 s at most); `false` at the end of the stream or a reset.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout(Duration::from_secs(5), self.tcp.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(_) => panic!("nothing from the server within 5 s"),
        }
    }

    /// The server's next frame, its header and payload as they came; `None` when the
    /// connection ended.
    async fn next_raw(&mut self) -> Option<Vec<u8>> {
        loop {
            if self.buf.len() >= 2 {
                let short = usize::from(self.buf[1] & 0x7F);
                let (len, at) = match short {
                    126 if self.buf.len() >= 4 => (
                        usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
                        4,
                    ),
                    127 if self.buf.len() >= 10 => (
                        u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (n, 2),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    return Some(self.buf.drain(..at + len).collect());
                }
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// The server's next frame; `None` when the connection ended.
    async fn next(&mut self) -> Option<ServerFrame> {
        let raw = self.next_raw().await?;
        let at = match raw[1] & 0x7F {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        let payload = raw[at..].to_vec();
        Some(match raw[0] & 0x0F {
            1 => ServerFrame::Text(String::from_utf8(payload).unwrap()),
            8 => ServerFrame::Close(
                (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]])),
            ),
            other => ServerFrame::Other(other),
        })
    }

    /// Reads until the server's close frame; its code (`None` if the stream ended without one).
    async fn close_code(&mut self) -> Option<u16> {
        loop {
            match self.next().await? {
                ServerFrame::Close(code) => return code,
                _ => continue,
            }
        }
    }

    /// After its close frame the server ends the connection (5 s at most).
    async fn ends(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !self.fill().await {
                return true;
            }
        }
        false
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.unwrap();
    }
}

/// Streams up to `max` zero bytes after a refused header; how many the socket took before the
/// node closed it.
async fn stream_zeros(tcp: &mut TcpStream, max: usize) -> usize {
    let chunk = vec![0u8; 64 * 1024];
    let mut sent = 0;
    while sent < max {
        match tokio::time::timeout(Duration::from_secs(5), tcp.write_all(&chunk)).await {
            Ok(Ok(())) => sent += chunk.len(),
            Ok(Err(_)) => break,
            Err(_) => break,
        }
    }
    sent
}

#[tokio::test]
async fn a_huge_frame_header_is_refused_at_once_and_pins_no_memory() {
    let server = Server::start("ws-huge-header", "", "").await;
    let mut subscriber = server.connect(None).await;
    subscriber.subscribe("news").await;
    assert!(server.publish("news", "before").await);
    assert_eq!(subscriber.expect("e").await["data"], "before");
    let baseline = server.rss_kib();

    // 20 attackers each declare 2^40 bytes and stream 16 MiB after the header: the node
    // would hold 320 MiB if it buffered them.
    let attackers = (0..20).map(|_| {
        let port = server.port;
        tokio::spawn(async move {
            let mut raw = Raw::open(port).await;
            raw.send(&header_only(true, 1, 1 << 40)).await;
            let sent = stream_zeros(&mut raw.tcp, 16 << 20).await;
            let code = raw.close_code().await;
            (code, raw.ends().await, sent)
        })
    });
    let attackers: Vec<_> = attackers.collect();
    let mut peak = 0;
    for a in attackers {
        let (code, ended, _sent) = a.await.unwrap();
        assert_eq!(code, Some(1009), "refused at the header as too big");
        assert!(ended, "the connection ends after the close frame");
        peak = peak.max(server.rss_kib());
    }
    assert!(
        peak < baseline + 40 * 1024,
        "RSS went from {baseline} KiB to {peak} KiB under the attack"
    );
    assert!(server.publish("news", "after").await);
    assert_eq!(subscriber.expect("e").await["data"], "after");
    let refused = server
        .metric("chorus_disconnects_total{app_id=\"1\",code=\"1009\",reason=\"frame_too_large\"}")
        .await;
    assert_eq!(refused, 20.0);
}

#[tokio::test]
async fn rfc_violations_close_with_their_codes_and_are_counted_by_reason() {
    let server = Server::start("ws-close-codes", "", "").await;
    let mut rsv = frame(true, 1, b"{}");
    rsv[0] |= 0x40;
    let mut unmasked = frame(true, 1, b"");
    unmasked[1] &= 0x7F;
    let fragment = frame(false, 1, &[b'x'; 8000]);
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "invalid UTF-8",
            frame(true, 1, b"{\"event\":\"\xff\xfe\"}"),
            1007,
            "invalid_utf8",
        ),
        ("RSV1 without an extension", rsv, 1002, "protocol_error"),
        ("an unmasked frame", unmasked, 1002, "protocol_error"),
        (
            "an unknown opcode",
            frame(true, 3, b""),
            1002,
            "protocol_error",
        ),
        (
            "a fragmented ping",
            frame(false, 9, b""),
            1002,
            "protocol_error",
        ),
        (
            "a stray continuation",
            frame(true, 0, b"x"),
            1002,
            "protocol_error",
        ),
        (
            "a fragmented message over the limit, at its continuation's header",
            [fragment, header_only(true, 0, 8000)].concat(),
            1009,
            "frame_too_large",
        ),
        (
            "a close code never sent",
            frame(true, 8, &1005u16.to_be_bytes()),
            1002,
            "protocol_error",
        ),
    ];
    for (what, bytes, code, _) in &cases {
        let mut raw = Raw::open(server.port).await;
        raw.send(bytes).await;
        assert_eq!(raw.close_code().await, Some(*code), "{what}");
        assert!(raw.ends().await, "{what}: the connection ends");
    }
    for (reason, code) in [
        ("invalid_utf8", 1007),
        ("protocol_error", 1002),
        ("frame_too_large", 1009),
    ] {
        let expected = cases.iter().filter(|c| c.3 == reason).count() as f64;
        let series =
            format!("chorus_disconnects_total{{app_id=\"1\",code=\"{code}\",reason=\"{reason}\"}}");
        assert_eq!(server.metric(&series).await, expected, "{series}");
    }
    // A well-formed fragmented message and a ping with a payload are answered.
    let mut raw = Raw::open(server.port).await;
    let ping = br#"{"event":"pusher:ping","data":{}}"#;
    raw.send(&frame(false, 1, &ping[..10])).await;
    raw.send(&frame(true, 9, b"hi")).await;
    raw.send(&frame(true, 0, &ping[10..])).await;
    assert_eq!(raw.next().await, Some(ServerFrame::Other(0xA)));
    match raw.next().await {
        Some(ServerFrame::Text(t)) => assert!(t.contains("pusher:pong"), "{t}"),
        other => panic!("{other:?}"),
    }
    raw.send(&frame(true, 8, &1000u16.to_be_bytes())).await;
    assert_eq!(raw.close_code().await, Some(1000));
    let gone = "chorus_disconnects_total{app_id=\"1\",code=\"1006\",reason=\"client_gone\"}";
    assert_eq!(
        server.metric(gone).await,
        0.0,
        "no violation counted as a client gone"
    );
}

#[tokio::test]
async fn the_frame_limit_follows_max_message_bytes() {
    let server = Server::start(
        "ws-limit-follows",
        "max_request_bytes = 1048576",
        "max_message_bytes = 300000\nmax_batch_events = 4",
    )
    .await;
    // Over the old hard 256 KiB: read whole, and refused for what it says, not for its size.
    let data = "x".repeat(290_000);
    let event = format!(r#"{{"event":"client-x","channel":"private-a","data":"{data}"}}"#);
    let mut raw = Raw::open(server.port).await;
    raw.send(&frame(true, 1, event.as_bytes())).await;
    match raw.next().await {
        Some(ServerFrame::Text(t)) => assert!(t.contains("not subscribed"), "{t}"),
        other => panic!("{other:?}"),
    }
    // Far over the limit: refused at its header.
    raw.send(&header_only(true, 1, 2_000_000)).await;
    assert_eq!(raw.close_code().await, Some(1009));
}

#[tokio::test]
async fn socket_ids_share_nothing_and_never_repeat() {
    let server = Server::start("ws-socket-ids", "", "").await;
    let mut ids = Vec::new();
    for _ in 0..40 {
        ids.push(server.connect(None).await.socket_id);
    }
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len());
    let halves = |i: usize| -> Vec<u32> {
        ids.iter()
            .map(|id| id.split('.').nth(i).unwrap().parse().unwrap())
            .collect()
    };
    for (i, half) in [halves(0), halves(1)].iter().enumerate() {
        let distinct: HashSet<&u32> = half.iter().collect();
        assert!(distinct.len() >= 38, "half {i} repeats: {ids:?}");
        let counting = half
            .windows(2)
            .filter(|w| w[1] == w[0].wrapping_add(1))
            .count();
        assert!(counting <= 1, "half {i} counts up: {ids:?}");
    }
}

/// A server's text frame as RFC 6455 §5.2 lays it out: FIN and the text opcode, the length in 7
/// bits, or 126 and 16 bits, or 127 and 64 bits, no mask, the payload.
fn expected_text_frame(text: &str) -> Vec<u8> {
    let mut out = vec![0x81];
    match text.len() {
        n if n <= 125 => out.push(n as u8),
        n if n <= 65535 => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(text.as_bytes());
    out
}

#[tokio::test]
async fn an_event_arrives_as_the_same_bytes_on_every_socket_at_each_length_encoding() {
    let server = Server::start(
        "ws-same-bytes",
        "",
        "max_message_bytes = 70000\nmax_batch_events = 4",
    )
    .await;
    let mut sockets = Vec::new();
    for _ in 0..3 {
        let mut raw = Raw::open(server.port).await;
        raw.send(&frame(
            true,
            1,
            br#"{"event":"pusher:subscribe","data":{"channel":"sizes"}}"#,
        ))
        .await;
        match raw.next().await {
            Some(ServerFrame::Text(t)) => assert!(t.contains("subscription_succeeded"), "{t}"),
            other => panic!("{other:?}"),
        }
        sockets.push(raw);
    }
    // What the frame's text is around the data: the event as pusher-js reads it.
    let around = r#"{"event":"e","channel":"sizes","data":""}"#.len();
    for text_len in [125, 126, 127, 65535, 65536, 65537] {
        let data = "x".repeat(text_len - around);
        assert!(server.publish("sizes", &data).await);
        let mut first: Option<Vec<u8>> = None;
        for raw in &mut sockets {
            let bytes = raw.next_raw().await.expect("the event arrives");
            let text = format!(r#"{{"event":"e","channel":"sizes","data":"{data}"}}"#);
            assert_eq!(text.len(), text_len);
            assert!(
                bytes == expected_text_frame(&text),
                "{text_len}: not the RFC layout"
            );
            if let Some(first) = &first {
                assert!(*first == bytes, "{text_len}: sockets differ");
            }
            first = Some(bytes);
        }
    }
}
