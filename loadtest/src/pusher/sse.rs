//! A Server-Sent Events client for Chorus's listen-only endpoint `GET /app/{key}/sse?channels=..`:
//! opens the stream (from a chosen loopback source address, like the WebSocket connections),
//! decodes the chunked body and splits it into events, each handed over as its raw bytes
//! (`event: ..` and `data: ..` lines) so the hot path finds the payload stamp without parsing.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use memchr::memmem;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::Target;
use crate::error::{Error, Result};
use crate::pusher::ws::tcp_connect;

/// The most bytes of response head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// The most bytes of one event (and of the decoded body waiting to be split) accepted.
const MAX_EVENT: usize = 1 << 20;
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// Where the chunked-transfer decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a `size[;extension]\r\n` line.
    Size,
    /// This many bytes of chunk data still to come.
    Data(usize),
    /// Expecting the `\r\n` after a chunk's data.
    DataEnd,
    /// The last (empty) chunk was read: the server ended the stream.
    Done,
}

/// An open SSE stream.
pub struct SseStream {
    socket: TcpStream,
    /// Bytes read from the socket, not yet decoded.
    raw: BytesMut,
    /// `None`: the body is not chunked (it runs to the end of the connection).
    chunk: Option<Chunk>,
    /// Decoded body, not yet split into events.
    body: BytesMut,
}

/// Opens stream number `index` (which picks the node and the source address) on `channel` and
/// waits for its `pusher_internal:subscription_succeeded`.
pub async fn subscribe(
    target: &Target,
    index: usize,
    channel: &str,
    timeout: Duration,
) -> Result<SseStream> {
    if channel.starts_with("private-") || channel.starts_with("presence-") {
        return Err(Error::Args(
            "the SSE transport takes public channels only".into(),
        ));
    }
    let node = target.ws_node(index);
    tokio::time::timeout(timeout, async {
        let mut socket = tcp_connect(node.addr, target.source_ip(index)).await?;
        let request = format!(
            "GET /app/{}/sse?channels={channel} HTTP/1.1\r\nHost: {}\r\n\
             Accept: text/event-stream\r\n\r\n",
            target.creds.key, node.authority
        );
        socket.write_all(request.as_bytes()).await?;
        let mut stream = SseStream {
            socket,
            raw: BytesMut::with_capacity(READ_CHUNK),
            chunk: None,
            body: BytesMut::new(),
        };
        stream
            .read_head(&format!("{}/app/{}/sse", node.base, target.creds.key))
            .await?;
        loop {
            let event = stream.next_event().await?;
            match event_name(&event) {
                Some(b"pusher_internal:subscription_succeeded") => return Ok(stream),
                Some(b"pusher:error") | Some(b"pusher:subscription_error") => {
                    return Err(Error::Protocol(format!(
                        "SSE subscription refused: {}",
                        String::from_utf8_lossy(&event)
                    )))
                }
                _ => continue,
            }
        }
    })
    .await
    .map_err(|_| Error::Timeout("opening an SSE stream"))?
}

/// The `event:` name of a raw event, if it has one.
pub fn event_name(event: &[u8]) -> Option<&[u8]> {
    event
        .split(|&b| b == b'\n')
        .find_map(|line| line.strip_prefix(b"event:"))
        .map(|name| name.strip_prefix(b" ").unwrap_or(name))
}

impl SseStream {
    /// Reads the response head: a 200 with `text/event-stream`, chunked or to the end.
    async fn read_head(&mut self, url: &str) -> Result<()> {
        let end = loop {
            if let Some(i) = memmem::find(&self.raw, b"\r\n\r\n") {
                break i;
            }
            if self.raw.len() > MAX_HEAD {
                return Err(Error::Protocol("SSE response head over 16 KiB".into()));
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.raw[..end]).to_ascii_lowercase();
        self.raw.advance(end + 4);
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(0);
        if status != 200 {
            let body = String::from_utf8_lossy(&self.raw).into_owned();
            return Err(Error::HttpStatus {
                status,
                url: url.to_owned(),
                body,
            });
        }
        if !head.contains("text/event-stream") {
            return Err(Error::Protocol(
                "SSE response is not text/event-stream".into(),
            ));
        }
        self.chunk = head
            .contains("transfer-encoding: chunked")
            .then_some(Chunk::Size);
        Ok(())
    }

    /// Reads more bytes from the socket; the end of the stream is an error.
    async fn fill(&mut self) -> Result<()> {
        self.raw.reserve(READ_CHUNK);
        if self.socket.read_buf(&mut self.raw).await? == 0 {
            return Err(Error::Closed { code: None });
        }
        Ok(())
    }

    /// The next event's raw bytes (without the blank line that ends it). Comments such as
    /// `: heartbeat` and the `retry:` field come as events too; callers skip what they do not know.
    pub async fn next_event(&mut self) -> Result<Bytes> {
        loop {
            if let Some(i) = memmem::find(&self.body, b"\n\n") {
                let event = self.body.split_to(i).freeze();
                self.body.advance(2);
                return Ok(event);
            }
            if self.body.len() > MAX_EVENT {
                return Err(Error::Protocol("SSE event over 1 MiB".into()));
            }
            if !self.decode() {
                if self.chunk == Some(Chunk::Done) {
                    return Err(Error::Closed { code: None });
                }
                self.fill().await?;
            }
        }
    }

    /// Moves decoded body bytes from `raw` to `body`; false when nothing could be decoded.
    fn decode(&mut self) -> bool {
        let before = (self.raw.len(), self.body.len());
        loop {
            match self.chunk {
                None => {
                    let all = self.raw.split();
                    self.body.unsplit(all);
                    break;
                }
                Some(Chunk::Size) => {
                    let Some(eol) = memmem::find(&self.raw, b"\r\n") else {
                        break;
                    };
                    let line = String::from_utf8_lossy(&self.raw[..eol]).into_owned();
                    let hex = line.split(';').next().unwrap_or("").trim();
                    let size = usize::from_str_radix(hex, 16).unwrap_or(usize::MAX);
                    self.raw.advance(eol + 2);
                    self.chunk = Some(match size {
                        0 => Chunk::Done,
                        usize::MAX => Chunk::Done,
                        n => Chunk::Data(n),
                    });
                }
                Some(Chunk::Data(n)) => {
                    if self.raw.is_empty() {
                        break;
                    }
                    let take = n.min(self.raw.len());
                    let data = self.raw.split_to(take);
                    self.body.extend_from_slice(&data);
                    self.chunk = Some(if take == n {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(n - take)
                    });
                }
                Some(Chunk::DataEnd) => {
                    if self.raw.len() < 2 {
                        break;
                    }
                    self.raw.advance(2);
                    self.chunk = Some(Chunk::Size);
                }
                Some(Chunk::Done) => break,
            }
        }
        (self.raw.len(), self.body.len()) != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_of(chunked: bool, raw: &[u8]) -> SseStream {
        let std = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(std.local_addr().unwrap()).unwrap();
        client.set_nonblocking(true).unwrap();
        SseStream {
            socket: TcpStream::from_std(client).unwrap(),
            raw: BytesMut::from(raw),
            chunk: chunked.then_some(Chunk::Size),
            body: BytesMut::new(),
        }
    }

    #[tokio::test]
    async fn splits_chunked_events_across_chunk_boundaries() {
        // One event cut in the middle by a chunk boundary, a heartbeat, then the last chunk.
        let body =
            b"event: lt\ndata: {\"channel\":\"c\",\"data\":\"#LT1:0:1:2:xx\"}\n\n: heartbeat\n\n";
        let (a, b) = body.split_at(20);
        let mut raw = Vec::new();
        for part in [a, b] {
            raw.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            raw.extend_from_slice(part);
            raw.extend_from_slice(b"\r\n");
        }
        raw.extend_from_slice(b"0\r\n\r\n");
        let mut s = stream_of(true, &raw);
        let first = s.next_event().await.unwrap();
        assert_eq!(event_name(&first), Some(&b"lt"[..]));
        assert!(crate::payload::find(&first).is_some());
        let second = s.next_event().await.unwrap();
        assert_eq!(&second[..], b": heartbeat");
        assert!(matches!(s.next_event().await, Err(Error::Closed { .. })));
    }

    #[tokio::test]
    async fn reads_an_unchunked_body() {
        let mut s = stream_of(false, b"retry: 1000\n\nevent: pusher:error\ndata: {}\n\n");
        assert_eq!(&s.next_event().await.unwrap()[..], b"retry: 1000");
        let e = s.next_event().await.unwrap();
        assert_eq!(event_name(&e), Some(&b"pusher:error"[..]));
    }
}
