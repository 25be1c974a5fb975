//! A WebSocket client's frames, read from the reading half of its socket and decoded as they
//! come (see [`crate::protocol::websocket`]). The socket is read only while no whole frame is
//! waiting, into a buffer on the stack; only the bytes of a frame not yet whole are kept, so an
//! idle connection holds no read buffer. A frame that would take its message over the limit is
//! refused at its header: what is kept never exceeds one frame's header and the limit, plus one
//! read.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use futures_util::Stream;
use prometheus::IntGauge;
use tokio::io::{AsyncRead, ReadBuf};

use crate::protocol::websocket::{Decoder, FrameError, Incoming};

/// The most one read takes from the socket.
const READ_CHUNK: usize = 4096;

/// Why a client's frames end without a close frame.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The client broke the protocol: it is told why, with the close code of the refusal.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The client went away without a close frame (its side ended, or the socket failed).
    #[error("connection lost: {0}")]
    Gone(std::io::Error),
}

/// The frames of one WebSocket connection, read from `R`.
pub struct ClientFrames<R> {
    socket: R,
    /// The bytes of a frame not yet whole; unallocated when there are none.
    buf: BytesMut,
    decoder: Decoder,
    ended: bool,
    /// Bytes held in connection buffers, node-wide: this one's capacity is counted in it.
    held: IntGauge,
    counted: usize,
}

impl<R> ClientFrames<R> {
    /// Reads `socket`, starting with `already_read` (bytes that came after the handshake); a
    /// message may carry at most `limit` bytes. `held` counts the buffer it keeps.
    pub fn new(socket: R, already_read: &[u8], limit: usize, held: IntGauge) -> ClientFrames<R> {
        let mut frames = ClientFrames {
            socket,
            buf: BytesMut::new(),
            decoder: Decoder::new(limit),
            ended: false,
            held,
            counted: 0,
        };
        if !already_read.is_empty() {
            frames.buf.extend_from_slice(already_read);
            frames.recount();
        }
        frames
    }

    /// Gives the buffer's memory back once it holds nothing, and keeps the gauge in step.
    fn recount(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
        }
        let now = self.buf.capacity();
        if now != self.counted {
            self.held.add(now as i64 - self.counted as i64);
            self.counted = now;
        }
    }

    fn end(&mut self) {
        self.ended = true;
        self.buf = BytesMut::new();
        self.recount();
    }
}

impl<R> Drop for ClientFrames<R> {
    fn drop(&mut self) {
        self.held.sub(self.counted as i64);
    }
}

impl<R: AsyncRead + Unpin> Stream for ClientFrames<R> {
    type Item = Result<Incoming, ReadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        while !this.ended {
            match this.decoder.decode(&mut this.buf) {
                Ok(Some(incoming)) => {
                    this.recount();
                    return Poll::Ready(Some(Ok(incoming)));
                }
                Err(e) => {
                    this.end();
                    return Poll::Ready(Some(Err(e.into())));
                }
                Ok(None) => {}
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.socket).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) if read.filled().is_empty() => {
                    // The client's side ended without a close frame: gone, as a reset is.
                    this.end();
                    let eof = std::io::ErrorKind::UnexpectedEof.into();
                    return Poll::Ready(Some(Err(ReadError::Gone(eof))));
                }
                Poll::Ready(Ok(())) => {
                    this.buf.extend_from_slice(read.filled());
                    this.recount();
                }
                Poll::Ready(Err(e)) => {
                    this.end();
                    return Poll::Ready(Some(Err(ReadError::Gone(e))));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(None)
    }
}
