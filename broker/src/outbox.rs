//! A connection's outbound path: frames go straight into its transport (a WebSocket session or
//! an SSE response body), and only what the socket cannot take yet waits in a backlog bounded in
//! bytes.
//!
//! Channel actors push shared [`Frame`]s into a subscriber's [`Outbox`] from whatever thread
//! they run on. When the session has room (the usual case), the frame is handed to it at once:
//! no extra task, no extra queue, and the session coalesces whatever is waiting into one socket
//! write. When it has none, frames wait in the backlog and a drain task feeds them in order as
//! room appears. A push that would take the backlog past its bound fails: the caller cuts the
//! connection off as a slow reader (4100) instead of buffering without limit.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use actix_ws::{CloseCode, CloseReason, Message, Session};
use bytes::Bytes;
use bytestring::ByteString;
use futures_channel::mpsc;
use futures_util::task::noop_waker_ref;
use futures_util::Sink;
use parking_lot::Mutex;
use prometheus::Histogram;

use crate::metrics::AppMetrics;
use crate::protocol::code;
use crate::protocol::frame::Frame;
use crate::protocol::sse::{self, Cursor};

/// What a queued pong counts against the bound.
const PONG_COST: usize = 16;

/// Something waiting in the backlog.
#[derive(Debug)]
enum Outbound {
    /// A published event: its latency is observed when it is handed over.
    Event(Frame),
    Protocol(ByteString),
    Pong(Bytes),
    /// Keeps an idle SSE stream open; nothing on a WebSocket (Pusher pings do that there).
    Heartbeat,
    Close(u16, String),
}

impl Outbound {
    fn cost(&self) -> usize {
        match self {
            Outbound::Event(f) => f.len(),
            Outbound::Protocol(t) => t.len(),
            Outbound::Pong(_) | Outbound::Heartbeat => PONG_COST,
            Outbound::Close(..) => 0,
        }
    }
}

/// Where an outbox's frames are written.
pub enum Transport {
    WebSocket(Session),
    /// An SSE response body, fed through a bounded channel. Frames are rewritten as SSE events
    /// on the way in, and the stream's cursor follows the history events it passes.
    EventStream {
        body: mpsc::Sender<Bytes>,
        cursor: Cursor,
    },
}

impl Transport {
    /// Asks for room for one more message; an error means the client is gone.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
        match self {
            Transport::WebSocket(session) => Pin::new(session).poll_ready(cx).map_err(|_| ()),
            Transport::EventStream { body, .. } => body.poll_ready(cx).map_err(|_| ()),
        }
    }

    /// Writes one message; [`Transport::poll_ready`] said there is room.
    fn start_send(&mut self, item: Outbound) {
        match self {
            Transport::WebSocket(session) => {
                let message = match item {
                    Outbound::Event(f) => Message::Text(f.text),
                    Outbound::Protocol(t) => Message::Text(t),
                    Outbound::Pong(p) => Message::Pong(p),
                    Outbound::Heartbeat => return,
                    Outbound::Close(code, reason) => Message::Close(Some(CloseReason {
                        code: CloseCode::Other(code),
                        description: Some(reason),
                    })),
                };
                let _ = Pin::new(session).start_send(message);
            }
            Transport::EventStream { body, cursor } => {
                let bytes = match item {
                    Outbound::Event(f) => sse::event(f.sse(), cursor),
                    Outbound::Protocol(t) => sse::event(&sse::encode(&t), cursor),
                    Outbound::Pong(_) => return,
                    Outbound::Heartbeat => Bytes::from_static(sse::HEARTBEAT),
                    Outbound::Close(code, reason) => {
                        let _ = body.start_send(sse::closing(code, &reason));
                        body.close_channel();
                        return;
                    }
                };
                let _ = body.start_send(bytes);
            }
        }
    }
}

struct State {
    transport: Transport,
    backlog: VecDeque<Outbound>,
    backlog_bytes: usize,
    /// A drain task is feeding the backlog to the session; pushes must queue behind it.
    draining: bool,
    /// A close was queued or the socket is gone: nothing more is taken.
    closing: bool,
}

struct Inner {
    state: Mutex<State>,
    limit: usize,
    latency: Histogram,
    /// Woken when a drain task ends (the backlog is empty, or the connection closed).
    drained: tokio::sync::Notify,
}

/// The sending side of a connection, cloned into every channel it subscribes to.
#[derive(Clone)]
pub struct Outbox(Arc<Inner>);

/// The backlog is full: the reader is too slow.
#[derive(Debug, PartialEq, Eq)]
pub struct Overflow;

/// Where a pushed frame went.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Handed to the session now.
    Sent,
    /// Waiting in the backlog.
    Queued,
    /// Not taken: the connection is closing.
    Dropped,
}

/// Asks the transport for room without waiting.
fn ready_now(transport: &mut Transport) -> Poll<Result<(), ()>> {
    let mut cx = Context::from_waker(noop_waker_ref());
    transport.poll_ready(&mut cx)
}

impl Outbox {
    /// An outbox feeding `transport`, whose backlog holds at most `limit` bytes.
    /// `latency` receives the publish-to-hand-over time of events sent from the backlog.
    pub fn new(transport: Transport, limit: usize, latency: Histogram) -> Outbox {
        Outbox(Arc::new(Inner {
            state: Mutex::new(State {
                transport,
                backlog: VecDeque::new(),
                backlog_bytes: 0,
                draining: false,
                closing: false,
            }),
            limit,
            latency,
            drained: tokio::sync::Notify::new(),
        }))
    }

    /// Resolves once nothing waits in the backlog (or the connection is closing): the moment to
    /// push another part of a long replay.
    pub async fn drained(&self) {
        loop {
            let notified = self.0.drained.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            {
                let state = self.0.state.lock();
                if !state.draining || state.closing {
                    return;
                }
            }
            notified.await;
        }
    }

    /// The most bytes the backlog holds.
    pub fn limit(&self) -> usize {
        self.0.limit
    }

    /// Pushes a published event. Fails when the connection is too far behind.
    pub fn push_event(&self, frame: &Frame) -> Result<Pushed, Overflow> {
        self.push(Outbound::Event(frame.clone()), true)
    }

    /// Pushes a protocol frame, under the same bound.
    pub fn push_protocol(&self, frame: Frame) -> Result<Pushed, Overflow> {
        self.push(Outbound::Protocol(frame.text), true)
    }

    /// Sends a frame that answers this client (a confirmation, an error, a pong), counted as
    /// sent; a connection too far behind to take it is closed (4100).
    pub fn answer(&self, frame: Frame, metrics: &AppMetrics) {
        metrics.messages_sent.inc();
        metrics.bytes_sent.inc_by(frame.len() as u64);
        if self.push_protocol(frame).is_err() {
            self.abort(code::OVER_CAPACITY, "outbound buffer full");
        }
    }

    pub fn push_pong(&self, payload: Bytes) {
        let _ = self.push(Outbound::Pong(payload), true);
    }

    /// Pushes an SSE heartbeat comment (nothing on a WebSocket).
    pub fn push_heartbeat(&self) {
        let _ = self.push(Outbound::Heartbeat, true);
    }

    /// The client is gone or a close was queued: nothing more will be written.
    pub fn is_closed(&self) -> bool {
        self.0.state.lock().closing
    }

    /// Closes the connection after what is already queued.
    pub fn close(&self, code: u16, reason: &str) {
        self.finish(code, reason, false);
    }

    /// Closes the connection now: the backlog is dropped, then the close frame goes out. A slow
    /// reader still gets its close code if it ever reads again.
    pub fn abort(&self, code: u16, reason: &str) {
        self.finish(code, reason, true);
    }

    /// The client is gone: the backlog is dropped and nothing more is taken, and no close frame
    /// is written (there is no one to read it).
    pub fn discard(&self) {
        let mut state = self.0.state.lock();
        state.backlog.clear();
        state.backlog_bytes = 0;
        state.closing = true;
    }

    fn finish(&self, code: u16, reason: &str, discard: bool) {
        let mut state = self.0.state.lock();
        if state.closing {
            return;
        }
        if discard {
            state.backlog.clear();
            state.backlog_bytes = 0;
        }
        let _ = self.push_locked(&mut state, Outbound::Close(code, reason.to_owned()), false);
        state.closing = true;
    }

    fn push(&self, item: Outbound, bounded: bool) -> Result<Pushed, Overflow> {
        let mut state = self.0.state.lock();
        if state.closing {
            return Ok(Pushed::Dropped);
        }
        self.push_locked(&mut state, item, bounded)
    }

    fn push_locked(
        &self,
        state: &mut State,
        item: Outbound,
        bounded: bool,
    ) -> Result<Pushed, Overflow> {
        if state.backlog.is_empty() && !state.draining {
            match ready_now(&mut state.transport) {
                Poll::Ready(Ok(())) => {
                    state.transport.start_send(item);
                    return Ok(Pushed::Sent);
                }
                Poll::Ready(Err(_)) => {
                    // The socket is gone; the connection actor learns it from its stream.
                    state.closing = true;
                    return Ok(Pushed::Dropped);
                }
                Poll::Pending => {}
            }
        }
        let cost = item.cost();
        if bounded && state.backlog_bytes + cost > self.0.limit {
            return Err(Overflow);
        }
        state.backlog.push_back(item);
        state.backlog_bytes += cost;
        if !state.draining {
            state.draining = true;
            actix_rt::spawn(drain(self.clone()));
        }
        Ok(Pushed::Queued)
    }
}

/// Feeds the backlog to the session as it makes room, then ends; pushes go direct again.
async fn drain(outbox: Outbox) {
    feed(&outbox).await;
    outbox.0.drained.notify_waiters();
}

async fn feed(outbox: &Outbox) {
    let inner = &outbox.0;
    loop {
        let ready = poll_fn(|cx| inner.state.lock().transport.poll_ready(cx)).await;
        let mut state = inner.state.lock();
        if ready.is_err() {
            state.backlog.clear();
            state.backlog_bytes = 0;
            state.closing = true;
            state.draining = false;
            return;
        }
        let Some(item) = state.backlog.pop_front() else {
            state.draining = false;
            return;
        };
        state.backlog_bytes -= item.cost();
        if let Outbound::Event(frame) = &item {
            inner
                .latency
                .observe(frame.published_at.elapsed().as_secs_f64());
        }
        let is_close = matches!(item, Outbound::Close(..));
        state.transport.start_send(item);
        if is_close || state.backlog.is_empty() {
            state.backlog.clear();
            state.draining = false;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame;
    use actix_codec::Decoder;
    use actix_http::ws::{Codec, Frame as WsFrame};
    use actix_web::body::{BoxBody, MessageBody};
    use actix_web::{test::TestRequest, web, FromRequest};
    use bytes::BytesMut;

    /// actix-ws's own channel between a session and its socket holds this many messages.
    const SESSION_CAPACITY: usize = 32;

    fn histogram() -> Histogram {
        Histogram::with_opts(prometheus::HistogramOpts::new("t", "t")).unwrap()
    }

    /// The client's side of a real actix-ws session: the encoded response body, decoded.
    struct Peer {
        body: BoxBody,
        codec: Codec,
        buf: BytesMut,
    }

    impl Peer {
        async fn next(&mut self) -> Option<WsFrame> {
            loop {
                if let Some(frame) = self.codec.decode(&mut self.buf).unwrap() {
                    return Some(frame);
                }
                match poll_fn(|cx| Pin::new(&mut self.body).poll_next(cx)).await {
                    Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                    _ => return None,
                }
            }
        }
    }

    async fn session() -> (Session, Peer) {
        let (req, mut payload) = TestRequest::get()
            .insert_header(("upgrade", "websocket"))
            .insert_header(("connection", "upgrade"))
            .insert_header(("sec-websocket-version", "13"))
            .insert_header(("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="))
            .to_http_parts();
        let payload = web::Payload::from_request(&req, &mut payload)
            .await
            .unwrap();
        let (response, session, _stream) = actix_ws::handle(&req, payload).unwrap();
        let peer = Peer {
            body: response.into_body(),
            codec: Codec::new().client_mode(),
            buf: BytesMut::new(),
        };
        (session, peer)
    }

    #[actix_rt::test]
    async fn direct_then_backlog_then_overflow_in_order() {
        let (session, mut peer) = session().await;
        let frames: Vec<Frame> = (0..SESSION_CAPACITY + 4)
            .map(|i| frame::event("c", "e", &format!("{i:04}")))
            .collect();
        let len = frames[0].len();
        let outbox = Outbox::new(Transport::WebSocket(session), 3 * len, histogram());
        for f in &frames[..SESSION_CAPACITY] {
            assert_eq!(outbox.push_event(f), Ok(Pushed::Sent));
        }
        for f in &frames[SESSION_CAPACITY..SESSION_CAPACITY + 3] {
            assert_eq!(outbox.push_event(f), Ok(Pushed::Queued));
        }
        assert_eq!(
            outbox.push_event(&frames[SESSION_CAPACITY + 3]),
            Err(Overflow)
        );
        // Reading makes room; the drain task feeds the backlog in order.
        for f in &frames[..SESSION_CAPACITY + 3] {
            match peer.next().await {
                Some(WsFrame::Text(text)) => assert_eq!(&text[..], f.text.as_bytes()),
                other => panic!("{other:?}"),
            }
        }
        // Drained: pushes go direct again.
        actix_rt::task::yield_now().await;
        assert_eq!(outbox.push_event(&frames[0]), Ok(Pushed::Sent));
        outbox.close(4200, "bye");
        assert!(matches!(peer.next().await, Some(WsFrame::Text(_))));
        match peer.next().await {
            Some(WsFrame::Close(Some(r))) => assert_eq!(r.code, CloseCode::Other(4200)),
            other => panic!("{other:?}"),
        }
    }

    #[actix_rt::test]
    async fn abort_drops_the_backlog_and_closing_takes_nothing_more() {
        let (session, mut peer) = session().await;
        let f = frame::event("c", "e", "d");
        let outbox = Outbox::new(Transport::WebSocket(session), 1 << 20, histogram());
        for _ in 0..SESSION_CAPACITY + 10 {
            outbox.push_event(&f).unwrap();
        }
        outbox.abort(4100, "slow");
        assert_eq!(outbox.push_event(&f), Ok(Pushed::Dropped));
        assert!(outbox.0.state.lock().closing);
        let mut texts = 0;
        loop {
            match peer.next().await {
                Some(WsFrame::Text(_)) => texts += 1,
                Some(WsFrame::Close(Some(r))) => {
                    assert_eq!(r.code, CloseCode::Other(4100));
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            texts, SESSION_CAPACITY,
            "only what the session already held goes out"
        );
    }
}
