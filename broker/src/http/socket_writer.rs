//! Writes a WebSocket connection's outbox straight to its socket: what is queued is taken whole
//! and written with one vectored write of the queued [`Bytes`] themselves (a published event's
//! encoded frame is the same allocation on every socket; nothing is copied into a buffer of the
//! connection's). Once everything taken is written the writer holds nothing until the next push.
//! After the close message it shuts the socket's sending side down (a TLS close_notify first);
//! when the socket fails, the outbox is discarded and the writer ends.

use std::collections::VecDeque;
use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use prometheus::IntGauge;
use tokio::io::AsyncWrite;

use crate::outbox::OutboxBody;

/// The most slices one write gathers.
const MAX_SLICES: usize = 64;

/// Where the writer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Writing what it took, then taking more.
    Writing,
    /// The close went out, or nothing more comes: shutting the sending side down.
    ShuttingDown,
    Done,
}

/// The future that writes one connection's outbox to `W` until the connection ends.
pub struct SocketWriter<W> {
    outbox: OutboxBody,
    socket: W,
    /// Taken from the outbox and not yet written (the first one partly written, maybe).
    pending: VecDeque<Bytes>,
    /// `pending` ends with the close message.
    ends: bool,
    stage: Stage,
    /// Bytes held in connection buffers, node-wide: `pending`'s are counted in it.
    held: IntGauge,
    counted: usize,
}

impl<W: AsyncWrite + Unpin> SocketWriter<W> {
    /// Writes `first` (the handshake's answer), then what `outbox` gives, to `socket`.
    pub fn new(outbox: OutboxBody, socket: W, first: Bytes, held: IntGauge) -> SocketWriter<W> {
        let mut writer = SocketWriter {
            outbox,
            socket,
            pending: VecDeque::new(),
            ends: false,
            stage: Stage::Writing,
            held,
            counted: 0,
        };
        writer.count(first.len());
        writer.pending.push_back(first);
        writer
    }

    fn count(&mut self, added: usize) {
        self.counted += added;
        self.held.add(added as i64);
    }

    fn written(&mut self, mut n: usize) {
        self.counted -= n;
        self.held.sub(n as i64);
        while n > 0 {
            let front = self
                .pending
                .front_mut()
                .expect("written bytes were pending");
            if front.len() > n {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.pending.pop_front();
        }
    }

    /// Writes what is pending; `Ready(Ok)` once all of it went to the socket.
    fn poll_write_pending(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.pending.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let count = slices.len().min(self.pending.len());
            for (slice, bytes) in slices.iter_mut().zip(&self.pending) {
                *slice = IoSlice::new(bytes);
            }
            let n = ready!(Pin::new(&mut self.socket).poll_write_vectored(cx, &slices[..count]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.written(n);
        }
        // A TLS stream may still hold records it could not send.
        Pin::new(&mut self.socket).poll_flush(cx)
    }

    /// Takes what the outbox queued once everything before it is written.
    fn poll_take(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        // Held nothing meanwhile: the queue's memory is given back with the last write.
        self.pending = VecDeque::new();
        match ready!(self.outbox.poll_take(cx, &mut self.pending)) {
            Some(ends) => {
                self.ends = ends;
                let taken = self.pending.iter().map(Bytes::len).sum();
                self.count(taken);
            }
            None => self.stage = Stage::ShuttingDown,
        }
        Poll::Ready(())
    }

    fn fail(&mut self) {
        self.stage = Stage::Done;
        self.outbox.discard();
        self.pending = VecDeque::new();
        self.held.sub(self.counted as i64);
        self.counted = 0;
    }
}

impl<W: AsyncWrite + Unpin> Future for SocketWriter<W> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        loop {
            match this.stage {
                Stage::Writing => {
                    match ready!(this.poll_write_pending(cx)) {
                        Ok(()) if this.ends => this.stage = Stage::ShuttingDown,
                        Ok(()) => ready!(this.poll_take(cx)),
                        Err(e) => {
                            tracing::debug!(error = %e, "a client's socket failed");
                            this.fail();
                        }
                    };
                }
                Stage::ShuttingDown => {
                    // The close went out, or there is no one to read it: done either way.
                    let _ = ready!(Pin::new(&mut this.socket).poll_shutdown(cx));
                    this.stage = Stage::Done;
                    this.outbox.discard();
                }
                Stage::Done => return Poll::Ready(()),
            }
        }
    }
}

impl<W> Drop for SocketWriter<W> {
    fn drop(&mut self) {
        self.held.sub(self.counted as i64);
        self.outbox.discard();
    }
}
