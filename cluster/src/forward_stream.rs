//! One long-lived forwarding stream to another node: a `POST` to [`STREAM_PATH`] on its cluster
//! port whose body never ends while the stream lives (chunked, in the records of
//! [`crate::forward_wire`]), and whose answer, begun as soon as the secret is checked, carries
//! the receiver's acknowledgements.
//!
//! Every frame waiting when the connection can take more goes out in one chunk (one write). The
//! acknowledgements tell which frames the receiver took: when the stream breaks, the frames sent
//! and not acknowledged are counted lost. A stream is broken when the connection fails, when the
//! receiver ends its answer, or when something was sent and nothing acknowledged for
//! [`ACK_TIMEOUT`] (a link that passes no byte); an idle stream sends a heartbeat every
//! [`HEARTBEAT_EVERY`], so that both ends notice a dead link.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use crate::forward::ForwardedFrame;
use crate::forward_wire::{encode_frame, encode_heartbeat, AckReader, FROM_HEADER};
use crate::metrics::PeerSeries;
use crate::outbound::ClusterClient;
use crate::secret::{ClusterSecret, SECRET_HEADER};
use crate::types::NodeId;

/// The path on the cluster port that takes a forwarding stream.
pub const STREAM_PATH: &str = "/cluster/forward";

/// How long the receiver has to answer the opening of a stream.
const OPEN_TIMEOUT: Duration = Duration::from_secs(2);

/// How long something sent may go without any acknowledgement before the stream is broken.
const ACK_TIMEOUT: Duration = Duration::from_secs(3);

/// An idle stream sends a heartbeat this often.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// How often the stream checks its acknowledgements and idleness.
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// Chunks handed to the connection and not written yet; beyond, frames wait in the queue.
const CHUNKS_IN_FLIGHT: usize = 2;

/// A chunk holds at most about this many bytes of frames.
const CHUNK_BYTES: usize = 1024 * 1024;

/// Frames taken from the queue in one go.
pub(crate) const TAKE_FRAMES: usize = 4096;

/// What a node needs to open streams to the others.
pub(crate) struct Opener {
    pub(crate) me: NodeId,
    pub(crate) client: ClusterClient,
    pub(crate) secret: ClusterSecret,
}

/// How an attempt to open a stream ended.
pub(crate) enum Opened {
    Open(Box<Stream>),
    /// The node does not serve streams (a node of an earlier version): 404.
    NotServed,
}

/// Why a stream could not be opened, or broke.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamError {
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    #[error("answered {0}")]
    Refused(reqwest::StatusCode),
    #[error("no answer within {0:?}")]
    NoAnswer(Duration),
    #[error("the receiver ended the stream")]
    Ended,
    #[error("nothing acknowledged for {0:?}")]
    Unacknowledged(Duration),
}

impl Opener {
    /// Opens a stream to the node at `addr`.
    pub(crate) async fn open(&self, addr: &str) -> Result<Opened, StreamError> {
        let (chunks, body) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let request = self
            .client
            .post(addr, STREAM_PATH)
            .header(SECRET_HEADER, self.secret.as_str())
            .header(FROM_HEADER, self.me.to_string())
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(reqwest::Body::wrap(ChunkBody(body)))
            .send();
        let response = tokio::time::timeout(OPEN_TIMEOUT, request)
            .await
            .map_err(|_| StreamError::NoAnswer(OPEN_TIMEOUT))??;
        match response.status() {
            status if status.is_success() => Ok(Opened::Open(Box::new(Stream {
                chunks,
                answer: response,
                acks: AckReader::default(),
                tally: Tally::default(),
                last_sent: Instant::now(),
            }))),
            reqwest::StatusCode::NOT_FOUND => Ok(Opened::NotServed),
            status => Err(StreamError::Refused(status)),
        }
    }
}

/// The request body: the chunks the stream hands over, until it drops its sender.
struct ChunkBody(mpsc::Receiver<Bytes>);

impl http_body::Body for ChunkBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|bytes| Ok(http_body::Frame::data(bytes))))
    }
}

/// Frames sent on a stream and acknowledged by the receiver.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) sent: u64,
    pub(crate) acknowledged: u64,
    /// Since when something sent waits for an acknowledgement.
    waiting_since: Option<Instant>,
}

impl Tally {
    /// The frames sent that the receiver did not acknowledge.
    pub(crate) fn unacknowledged(&self) -> u64 {
        self.sent.saturating_sub(self.acknowledged)
    }

    fn sent_something(&mut self, frames: usize, now: Instant) {
        self.sent += frames as u64;
        self.waiting_since.get_or_insert(now);
    }

    /// Takes an acknowledgement; returns how many frames it newly acknowledges.
    fn acknowledge(&mut self, frames: u64, now: Instant) -> u64 {
        let acknowledged = self.acknowledged.max(frames.min(self.sent));
        let newly = acknowledged - self.acknowledged;
        self.acknowledged = acknowledged;
        self.waiting_since = (self.acknowledged < self.sent).then_some(now);
        newly
    }

    fn waited_too_long(&self, now: Instant) -> bool {
        self.waiting_since
            .is_some_and(|since| now.duration_since(since) > ACK_TIMEOUT)
    }
}

/// An open stream.
pub(crate) struct Stream {
    chunks: mpsc::Sender<Bytes>,
    answer: reqwest::Response,
    acks: AckReader,
    pub(crate) tally: Tally,
    last_sent: Instant,
}

impl Stream {
    /// Sends the frames of `pending`, then of `queue` as they come, until the stream breaks
    /// (`Err`, with the tally) or the queue closes (`Ok`). Frames taken from the queue and not
    /// handed to the connection yet stay in `pending`.
    pub(crate) async fn pump(
        mut self,
        pending: &mut Vec<std::sync::Arc<ForwardedFrame>>,
        queue: &mut mpsc::Receiver<std::sync::Arc<ForwardedFrame>>,
        series: &PeerSeries,
    ) -> Result<(), (StreamError, Tally)> {
        let mut check = tokio::time::interval(CHECK_EVERY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let chunks = self.chunks.clone();
        loop {
            tokio::select! {
                answer = self.answer.chunk() => {
                    let broken = match answer {
                        Ok(Some(bytes)) => {
                            if let Some(ack) = self.acks.push(&bytes) {
                                series.frames.inc_by(self.tally.acknowledge(ack, Instant::now()));
                            }
                            continue;
                        }
                        Ok(None) => StreamError::Ended,
                        Err(e) => StreamError::Http(e),
                    };
                    return Err((broken, self.tally));
                }
                _ = check.tick() => {
                    let now = Instant::now();
                    if self.tally.waited_too_long(now) {
                        return Err((StreamError::Unacknowledged(ACK_TIMEOUT), self.tally));
                    }
                    if pending.is_empty() && now.duration_since(self.last_sent) >= HEARTBEAT_EVERY {
                        let mut heartbeat = BytesMut::new();
                        encode_heartbeat(&mut heartbeat);
                        if self.chunks.try_send(heartbeat.freeze()).is_ok() {
                            self.tally.sent_something(0, now);
                            self.last_sent = now;
                        }
                    }
                }
                taken = queue.recv_many(pending, TAKE_FRAMES), if pending.is_empty() => {
                    if taken == 0 {
                        return Ok(());
                    }
                }
                permit = chunks.reserve(), if !pending.is_empty() => {
                    let Ok(permit) = permit else {
                        return Err((StreamError::Ended, self.tally));
                    };
                    // What came while waiting for the connection goes in the same chunk.
                    while pending.len() < TAKE_FRAMES {
                        match queue.try_recv() {
                            Ok(frame) => pending.push(frame),
                            Err(_) => break,
                        }
                    }
                    let (chunk, frames) = encode_chunk(pending, series);
                    permit.send(chunk);
                    series.batches.inc();
                    let now = Instant::now();
                    self.tally.sent_something(frames, now);
                    self.last_sent = now;
                }
            }
        }
    }
}

/// Encodes the frames of `pending` into one chunk, up to about [`CHUNK_BYTES`] (what does not
/// fit stays in `pending`, in order); returns it and how many frames it holds.
fn encode_chunk(
    pending: &mut Vec<std::sync::Arc<ForwardedFrame>>,
    series: &PeerSeries,
) -> (Bytes, usize) {
    let mut chunk = BytesMut::new();
    let mut used = 0;
    let mut frames = 0;
    for frame in pending.iter() {
        if used > 0 && chunk.len() >= CHUNK_BYTES {
            break;
        }
        used += 1;
        if encode_frame(frame, &mut chunk) {
            frames += 1;
        } else {
            series.dropped.inc();
        }
    }
    pending.drain(..used);
    (chunk.freeze(), frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tally_waits_only_while_something_is_unacknowledged() {
        let start = Instant::now();
        let mut tally = Tally::default();
        assert!(!tally.waited_too_long(start + ACK_TIMEOUT * 2));
        tally.sent_something(10, start);
        assert!(!tally.waited_too_long(start + ACK_TIMEOUT));
        assert!(tally.waited_too_long(start + ACK_TIMEOUT * 2));
        assert_eq!(tally.acknowledge(4, start + ACK_TIMEOUT), 4);
        assert_eq!(tally.unacknowledged(), 6);
        assert!(!tally.waited_too_long(start + ACK_TIMEOUT * 2));
        assert_eq!(tally.acknowledge(10, start + ACK_TIMEOUT * 2), 6);
        assert!(!tally.waited_too_long(start + ACK_TIMEOUT * 9));
        assert_eq!(tally.unacknowledged(), 0);
    }
}
