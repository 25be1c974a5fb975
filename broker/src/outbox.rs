//! A connection's bounded outbound queue and the task that drains it into the socket.
//!
//! Channel actors push shared [`Frame`]s straight into a subscriber's [`Outbox`]; the writer task
//! hands them to the actix-ws session, which coalesces whatever is queued into one socket write.
//! The queue is bounded in bytes: a push that would pass the bound fails, and the caller reports
//! the connection as a slow reader (closed with 4100) instead of buffering without limit.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use actix_ws::{CloseCode, CloseReason, Session};
use tokio::sync::mpsc;

use crate::metrics::AppMetrics;
use crate::protocol::frame::Frame;

/// What the writer is asked to send.
#[derive(Debug)]
pub enum Outbound {
    /// A published event: counted as a delivery.
    Event(Frame),
    /// A protocol frame (errors, pongs, subscription answers).
    Protocol(Frame),
    /// A WebSocket-level pong.
    Pong(bytes::Bytes),
    /// Close with a code and reason, then stop.
    Close(u16, String),
}

struct Shared {
    queued_bytes: AtomicUsize,
    /// Set once a close is queued: pushes after it are dropped.
    closing: AtomicBool,
    /// Set when the close must not wait for what is queued: the writer skips it.
    discard: AtomicBool,
}

/// The sending side, cloned into every channel the connection subscribes to.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::UnboundedSender<Outbound>,
    shared: Arc<Shared>,
    limit: usize,
}

/// The queue is full: the reader is too slow.
#[derive(Debug, PartialEq, Eq)]
pub struct Overflow;

impl Outbox {
    /// A new queue bounded at `limit` bytes, and its receiving side for [`write_loop`].
    pub fn new(limit: usize) -> (Outbox, OutboxReceiver) {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            queued_bytes: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            discard: AtomicBool::new(false),
        });
        (
            Outbox {
                tx,
                shared: shared.clone(),
                limit,
            },
            OutboxReceiver { rx, shared },
        )
    }

    /// Queues a published event. Fails when the connection is too far behind; the frame is
    /// dropped for this connection then. A closing connection silently takes nothing more.
    pub fn push_event(&self, frame: &Frame) -> Result<(), Overflow> {
        self.push(Outbound::Event(frame.clone()), frame.len())
    }

    /// Queues a protocol frame, under the same bound.
    pub fn push_protocol(&self, frame: Frame) -> Result<(), Overflow> {
        let len = frame.len();
        self.push(Outbound::Protocol(frame), len)
    }

    pub fn push_pong(&self, payload: bytes::Bytes) {
        let _ = self.push(Outbound::Pong(payload), 16);
    }

    fn push(&self, item: Outbound, len: usize) -> Result<(), Overflow> {
        if self.shared.closing.load(Ordering::Relaxed) {
            return Ok(());
        }
        let before = self.shared.queued_bytes.fetch_add(len, Ordering::Relaxed);
        if before + len > self.limit {
            self.shared.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            return Err(Overflow);
        }
        // The receiver is gone only once the writer stopped; then nobody reads anyway.
        let _ = self.tx.send(item);
        Ok(())
    }

    /// Closes the connection after what is already queued has been written.
    pub fn close(&self, code: u16, reason: &str) {
        if !self.shared.closing.swap(true, Ordering::Relaxed) {
            let _ = self.tx.send(Outbound::Close(code, reason.to_owned()));
        }
    }

    /// Closes the connection now: what is still queued is dropped, then the close frame is sent.
    /// Bypasses the bound, so a slow reader still gets its close code if it ever reads.
    pub fn abort(&self, code: u16, reason: &str) {
        self.shared.discard.store(true, Ordering::Relaxed);
        self.close(code, reason);
    }

    pub fn is_closing(&self) -> bool {
        self.shared.closing.load(Ordering::Relaxed)
    }
}

/// The receiving side, owned by the writer task.
pub struct OutboxReceiver {
    rx: mpsc::UnboundedReceiver<Outbound>,
    shared: Arc<Shared>,
}

/// How many queued items the writer takes per wake-up.
const WRITE_BATCH: usize = 64;

/// Drains the outbox into the WebSocket session until a close is sent or the socket is gone.
pub async fn write_loop(mut session: Session, mut outbox: OutboxReceiver, metrics: AppMetrics) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    let latency = metrics.publish_to_write.local();
    'run: while outbox.rx.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        let (mut events, mut frames, mut bytes) = (0u64, 0u64, 0u64);
        for item in batch.drain(..) {
            let discard = outbox.shared.discard.load(Ordering::Relaxed);
            match item {
                Outbound::Event(frame) | Outbound::Protocol(frame) if discard => {
                    outbox
                        .shared
                        .queued_bytes
                        .fetch_sub(frame.len(), Ordering::Relaxed);
                }
                Outbound::Event(frame) => {
                    let len = frame.len();
                    latency.observe(frame.published_at.elapsed().as_secs_f64());
                    if session.text(frame.text).await.is_err() {
                        break 'run;
                    }
                    outbox.shared.queued_bytes.fetch_sub(len, Ordering::Relaxed);
                    events += 1;
                    frames += 1;
                    bytes += len as u64;
                }
                Outbound::Protocol(frame) => {
                    let len = frame.len();
                    if session.text(frame.text).await.is_err() {
                        break 'run;
                    }
                    outbox.shared.queued_bytes.fetch_sub(len, Ordering::Relaxed);
                    frames += 1;
                    bytes += len as u64;
                }
                Outbound::Pong(payload) => {
                    outbox.shared.queued_bytes.fetch_sub(16, Ordering::Relaxed);
                    if session.pong(&payload).await.is_err() {
                        break 'run;
                    }
                }
                Outbound::Close(code, reason) => {
                    let reason = CloseReason {
                        code: CloseCode::Other(code),
                        description: Some(reason),
                    };
                    let _ = session.close(Some(reason)).await;
                    break 'run;
                }
            }
        }
        metrics.deliveries.inc_by(events);
        metrics.messages_sent.inc_by(frames);
        metrics.bytes_sent.inc_by(bytes);
        latency.flush();
    }
    latency.flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame;

    #[test]
    fn bounded_in_bytes() {
        let (outbox, _rx) = Outbox::new(100);
        let f = frame::event("c", "e", &"x".repeat(30)); // ~60 bytes
        assert!(f.len() > 50 && f.len() < 100, "{}", f.len());
        assert_eq!(outbox.push_event(&f), Ok(()));
        assert_eq!(outbox.push_event(&f), Err(Overflow));
        assert_eq!(outbox.shared.queued_bytes.load(Ordering::Relaxed), f.len());
    }

    #[test]
    fn closing_takes_nothing_more() {
        let (outbox, mut rx) = Outbox::new(1000);
        outbox.close(4100, "slow");
        outbox.close(4100, "twice");
        let f = frame::event("c", "e", "d");
        assert_eq!(outbox.push_event(&f), Ok(()));
        assert!(matches!(rx.rx.try_recv(), Ok(Outbound::Close(4100, _))));
        assert!(rx.rx.try_recv().is_err());
    }
}
