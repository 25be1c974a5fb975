//! A WebSocket client's frames, read from the upgraded request's payload and decoded as they
//! come (see [`crate::protocol::websocket`]). Bytes are read only while no whole frame is
//! waiting, and a frame that would take its message over the limit is refused at its header:
//! the buffer never holds more than one frame's header and the limit, plus one read.

use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::dev::Payload;
use actix_web::error::PayloadError;
use bytes::BytesMut;
use futures_util::Stream;

use crate::protocol::websocket::{Decoder, FrameError, Incoming};

/// Why a client's frames end without a close frame.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The client broke the protocol: it is told why, with the close code of the refusal.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The client went away without a close frame.
    #[error("connection lost: {0}")]
    Gone(PayloadError),
}

/// The frames of one WebSocket connection.
pub struct ClientFrames {
    payload: Payload,
    buf: BytesMut,
    decoder: Decoder,
    ended: bool,
}

impl ClientFrames {
    /// Reads `payload`; a message may carry at most `limit` bytes.
    pub fn new(payload: Payload, limit: usize) -> ClientFrames {
        ClientFrames {
            payload,
            buf: BytesMut::new(),
            decoder: Decoder::new(limit),
            ended: false,
        }
    }
}

impl Stream for ClientFrames {
    type Item = Result<Incoming, ReadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        while !this.ended {
            match this.decoder.decode(&mut this.buf) {
                Ok(Some(incoming)) => return Poll::Ready(Some(Ok(incoming))),
                Err(e) => {
                    this.ended = true;
                    this.buf = BytesMut::new();
                    return Poll::Ready(Some(Err(e.into())));
                }
                Ok(None) => {}
            }
            match Pin::new(&mut this.payload).poll_next(cx) {
                Poll::Ready(Some(Ok(bytes))) => this.buf.extend_from_slice(&bytes),
                Poll::Ready(Some(Err(e))) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(ReadError::Gone(e))));
                }
                Poll::Ready(None) => this.ended = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(None)
    }
}
