//! A connection's outbound path: frames are written into a short queue that the connection's
//! writer takes from (a WebSocket's [`crate::http::socket_writer`], which writes to the socket
//! itself; an SSE response's body, an [`OutboxBody`] streamed by actix-http), and only what the
//! socket cannot take yet waits in a backlog bounded in bytes.
//!
//! Channel actors push shared [`Frame`]s into a subscriber's [`Outbox`] from whatever thread
//! they run on. A published event's WebSocket frame was encoded once ([`Frame::websocket`]), so
//! every subscriber queues the same bytes: no per-subscriber encoding or copy. When the queue has
//! room (the usual case) the frame joins it at once and the writer is woken; the writer takes the
//! whole queue each time ([`OutboxBody::poll_take`]) and writes what it takes in one write.
//! When the queue is full (the socket is not keeping up), frames wait in the backlog, and the
//! queue is refilled from it as it is taken. A push that would take the backlog past its bound
//! fails: the caller cuts the connection off as a slow reader (4100) instead of buffering
//! without limit.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_util::Stream;
use parking_lot::Mutex;
use prometheus::Histogram;

use crate::metrics::AppMetrics;
use crate::protocol::code;
use crate::protocol::frame::Frame;
use crate::protocol::sse::{self, Cursor};
use crate::protocol::websocket;

/// How many messages the queue the body takes from holds before the backlog takes over (what
/// actix-ws's own channel between a session and its socket held).
pub const QUEUE_CAPACITY: usize = 32;

/// What a queued pong counts against the bound.
const PONG_COST: usize = 16;

/// Something waiting in the backlog.
#[derive(Debug)]
enum Outbound {
    /// A published event: its latency is observed when it is handed over.
    Event(Frame),
    Protocol(Frame),
    Pong(Bytes),
    /// Keeps an idle SSE stream open; nothing on a WebSocket (Pusher pings do that there).
    Heartbeat,
    Close(u16, String),
}

impl Outbound {
    fn item(&self) -> Item<'_> {
        match self {
            Outbound::Event(f) => Item::Event(f),
            Outbound::Protocol(f) => Item::Protocol(f),
            Outbound::Pong(p) => Item::Pong(p),
            Outbound::Heartbeat => Item::Heartbeat,
            Outbound::Close(code, reason) => Item::Close(*code, reason),
        }
    }
}

/// Something pushed, borrowed: it becomes an [`Outbound`] (a copy of its handles) only when it
/// has to wait in the backlog, so a push that goes straight into the queue touches nothing of
/// the frame but its encoded bytes.
#[derive(Clone, Copy)]
enum Item<'a> {
    Event(&'a Frame),
    Protocol(&'a Frame),
    Pong(&'a Bytes),
    Heartbeat,
    Close(u16, &'a str),
}

impl Item<'_> {
    fn cost(self) -> usize {
        match self {
            Item::Event(f) | Item::Protocol(f) => f.len(),
            Item::Pong(_) | Item::Heartbeat => PONG_COST,
            Item::Close(..) => 0,
        }
    }

    fn to_outbound(self) -> Outbound {
        match self {
            Item::Event(f) => Outbound::Event(f.clone()),
            Item::Protocol(f) => Outbound::Protocol(f.clone()),
            Item::Pong(p) => Outbound::Pong(p.clone()),
            Item::Heartbeat => Outbound::Heartbeat,
            Item::Close(code, reason) => Outbound::Close(code, reason.to_owned()),
        }
    }
}

/// How an outbox's frames are written.
pub enum Transport {
    /// RFC 6455 server frames: a published event's are shared by every socket.
    WebSocket,
    /// SSE events, the stream's cursor following the history events it passes.
    EventStream { cursor: Cursor },
}

impl Transport {
    /// The bytes of `item` on this transport; `None` when it writes nothing here.
    fn encode(&mut self, item: Item<'_>) -> Option<Bytes> {
        match self {
            Transport::WebSocket => Some(match item {
                Item::Event(f) | Item::Protocol(f) => f.websocket().clone(),
                Item::Pong(p) => websocket::pong_frame(p),
                Item::Heartbeat => return None,
                Item::Close(code, reason) => websocket::close_frame(code, reason),
            }),
            Transport::EventStream { cursor } => Some(match item {
                Item::Event(f) | Item::Protocol(f) => sse::event(f.sse(), cursor),
                Item::Pong(_) => return None,
                Item::Heartbeat => Bytes::from_static(sse::HEARTBEAT),
                Item::Close(code, reason) => sse::closing(code, reason),
            }),
        }
    }
}

struct State {
    transport: Transport,
    /// Encoded messages the body takes next, at most [`QUEUE_CAPACITY`].
    queue: VecDeque<Bytes>,
    /// The close message is the last in `queue`: the body ends after it.
    queue_ends: bool,
    backlog: VecDeque<Outbound>,
    backlog_bytes: usize,
    /// The body waits for the queue to fill.
    body_waker: Option<Waker>,
    /// A close was queued or the socket is gone: nothing more is taken.
    closing: bool,
}

impl State {
    /// Queues `item`; gives the body's waker when it waits.
    fn enqueue(&mut self, item: Item<'_>) -> Option<Waker> {
        let bytes = self.transport.encode(item)?;
        self.queue.push_back(bytes);
        if matches!(item, Item::Close(..)) {
            self.queue_ends = true;
        }
        self.body_waker.take()
    }

    fn clear_backlog(&mut self) {
        self.backlog.clear();
        self.backlog_bytes = 0;
    }
}

struct Inner {
    state: Mutex<State>,
    limit: usize,
    /// Publish-to-hand-over time of events sent from the backlog; none on a connection refused
    /// at its handshake.
    latency: Option<Histogram>,
    /// Woken when the backlog empties (or the connection closes).
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
    /// Handed to the connection's body now.
    Sent,
    /// Waiting in the backlog.
    Queued,
    /// Not taken: the connection is closing.
    Dropped,
}

impl Outbox {
    /// An outbox writing through `transport`, whose backlog holds at most `limit` bytes, and
    /// the response body that streams what it writes. `latency` receives the publish-to-hand-over
    /// time of events sent from the backlog.
    pub fn new(transport: Transport, limit: usize, latency: Histogram) -> (Outbox, OutboxBody) {
        Outbox::with_latency(transport, limit, Some(latency))
    }

    /// An outbox for a connection refused right after its handshake: it carries a refusal and
    /// a close, never an event.
    pub fn refusal(transport: Transport) -> (Outbox, OutboxBody) {
        Outbox::with_latency(transport, 0, None)
    }

    fn with_latency(
        transport: Transport,
        limit: usize,
        latency: Option<Histogram>,
    ) -> (Outbox, OutboxBody) {
        let outbox = Outbox(Arc::new(Inner {
            state: Mutex::new(State {
                transport,
                queue: VecDeque::new(),
                queue_ends: false,
                backlog: VecDeque::new(),
                backlog_bytes: 0,
                body_waker: None,
                closing: false,
            }),
            limit,
            latency,
            drained: tokio::sync::Notify::new(),
        }));
        let body = OutboxBody {
            outbox: outbox.clone(),
            taken: VecDeque::new(),
            ends: false,
        };
        (outbox, body)
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
                if state.backlog.is_empty() || state.closing {
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
        self.push(Item::Event(frame), true)
    }

    /// Pushes a protocol frame, under the same bound.
    pub fn push_protocol(&self, frame: Frame) -> Result<Pushed, Overflow> {
        self.push(Item::Protocol(&frame), true)
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
        let _ = self.push(Item::Pong(&payload), true);
    }

    /// Pushes an SSE heartbeat comment (nothing on a WebSocket).
    pub fn push_heartbeat(&self) {
        let _ = self.push(Item::Heartbeat, true);
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
        state.clear_backlog();
        state.closing = true;
        drop(state);
        self.0.drained.notify_waiters();
    }

    fn finish(&self, code: u16, reason: &str, discard: bool) {
        let mut state = self.0.state.lock();
        if state.closing {
            return;
        }
        if discard {
            state.clear_backlog();
        }
        let woken = self.push_locked(&mut state, Item::Close(code, reason), false);
        state.closing = true;
        drop(state);
        self.0.drained.notify_waiters();
        if let Ok((_, Some(waker))) = woken {
            waker.wake();
        }
    }

    fn push(&self, item: Item<'_>, bounded: bool) -> Result<Pushed, Overflow> {
        let mut state = self.0.state.lock();
        if state.closing {
            return Ok(Pushed::Dropped);
        }
        let (pushed, waker) = self.push_locked(&mut state, item, bounded)?;
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(pushed)
    }

    fn push_locked(
        &self,
        state: &mut State,
        item: Item<'_>,
        bounded: bool,
    ) -> Result<(Pushed, Option<Waker>), Overflow> {
        if state.backlog.is_empty() && state.queue.len() < QUEUE_CAPACITY {
            return Ok((Pushed::Sent, state.enqueue(item)));
        }
        let cost = item.cost();
        if bounded && state.backlog_bytes + cost > self.0.limit {
            return Err(Overflow);
        }
        state.backlog.push_back(item.to_outbound());
        state.backlog_bytes += cost;
        Ok((Pushed::Queued, None))
    }

    /// Moves what waits in the backlog into the queue while it has room; true when that emptied
    /// the backlog.
    fn refill(&self, state: &mut State) -> bool {
        if state.backlog.is_empty() {
            return false;
        }
        while state.queue.len() < QUEUE_CAPACITY {
            let Some(item) = state.backlog.pop_front() else {
                break;
            };
            state.backlog_bytes -= item.item().cost();
            if let (Outbound::Event(frame), Some(latency)) = (&item, &self.0.latency) {
                latency.observe(frame.published_at.elapsed().as_secs_f64());
            }
            state.enqueue(item.item());
        }
        state.backlog.is_empty()
    }
}

/// The taking side of an outbox: what it writes, in order, ending after a close; taken by a
/// writer of the socket ([`OutboxBody::poll_take`]) or streamed as a response body. Dropped
/// (the client went away), it closes the outbox.
pub struct OutboxBody {
    outbox: Outbox,
    /// Messages taken from the queue and not yet handed to actix-http.
    taken: VecDeque<Bytes>,
    /// `taken` ends with the close message.
    ends: bool,
}

impl OutboxBody {
    /// The socket is gone: nothing more is taken (see [`Outbox::discard`]).
    pub fn discard(&self) {
        self.outbox.discard();
    }

    /// Moves everything queued onto the end of `into` (empty, and unallocated when its owner
    /// wants to hold nothing while idle: the queue takes its place). `Ready(Some(ends))` when
    /// something was taken, `ends` when it ends with the close message; `Ready(None)` when
    /// nothing more comes; `Pending` (woken on the next push) when nothing is queued.
    pub fn poll_take(
        &mut self,
        cx: &mut Context<'_>,
        into: &mut VecDeque<Bytes>,
    ) -> Poll<Option<bool>> {
        let inner = &self.outbox.0;
        let mut state = inner.state.lock();
        if state.queue.is_empty() {
            if state.closing && state.backlog.is_empty() && !state.queue_ends {
                // Closed without a close message (the client went away): nothing more comes.
                return Poll::Ready(None);
            }
            if !state
                .body_waker
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                state.body_waker = Some(cx.waker().clone());
            }
            return Poll::Pending;
        }
        std::mem::swap(into, &mut state.queue);
        let ends = std::mem::take(&mut state.queue_ends);
        let emptied = self.outbox.refill(&mut state);
        drop(state);
        if emptied {
            inner.drained.notify_waiters();
        }
        Poll::Ready(Some(ends))
    }
}

impl Stream for OutboxBody {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(bytes) = this.taken.pop_front() {
            return Poll::Ready(Some(Ok(bytes)));
        }
        if this.ends {
            return Poll::Ready(None);
        }
        let mut taken = std::mem::take(&mut this.taken);
        let polled = this.poll_take(cx, &mut taken);
        this.taken = taken;
        match polled {
            Poll::Ready(Some(ends)) => {
                this.ends = ends;
                Poll::Ready(this.taken.pop_front().map(Ok))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for OutboxBody {
    fn drop(&mut self) {
        self.outbox.discard();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame;
    use actix_codec::Decoder;
    use actix_http::ws::{CloseCode, Codec, Frame as WsFrame};
    use bytes::BytesMut;
    use std::future::poll_fn;

    fn histogram() -> Histogram {
        Histogram::with_opts(prometheus::HistogramOpts::new("t", "t")).unwrap()
    }

    /// The client's side of an outbox's WebSocket body, decoded by actix-http's own codec.
    struct Peer {
        body: OutboxBody,
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
                    None => return None,
                }
            }
        }
    }

    fn websocket(limit: usize) -> (Outbox, Peer) {
        let (outbox, body) = Outbox::new(Transport::WebSocket, limit, histogram());
        let peer = Peer {
            body,
            codec: Codec::new().client_mode(),
            buf: BytesMut::new(),
        };
        (outbox, peer)
    }

    #[actix_rt::test]
    async fn direct_then_backlog_then_overflow_in_order() {
        let frames: Vec<Frame> = (0..QUEUE_CAPACITY + 4)
            .map(|i| frame::event("c", "e", &format!("{i:04}")))
            .collect();
        let len = frames[0].len();
        let (outbox, mut peer) = websocket(3 * len);
        for f in &frames[..QUEUE_CAPACITY] {
            assert_eq!(outbox.push_event(f), Ok(Pushed::Sent));
        }
        for f in &frames[QUEUE_CAPACITY..QUEUE_CAPACITY + 3] {
            assert_eq!(outbox.push_event(f), Ok(Pushed::Queued));
        }
        assert_eq!(
            outbox.push_event(&frames[QUEUE_CAPACITY + 3]),
            Err(Overflow)
        );
        // Reading makes room; the body takes the backlog after the queue, in order.
        for f in &frames[..QUEUE_CAPACITY + 3] {
            match peer.next().await {
                Some(WsFrame::Text(text)) => assert_eq!(&text[..], f.text.as_bytes()),
                other => panic!("{other:?}"),
            }
        }
        // Drained: pushes go direct again.
        outbox.drained().await;
        assert_eq!(outbox.push_event(&frames[0]), Ok(Pushed::Sent));
        outbox.close(4200, "bye");
        assert!(matches!(peer.next().await, Some(WsFrame::Text(_))));
        match peer.next().await {
            Some(WsFrame::Close(Some(r))) => assert_eq!(r.code, CloseCode::Other(4200)),
            other => panic!("{other:?}"),
        }
        assert!(peer.next().await.is_none(), "the body ends after the close");
    }

    #[actix_rt::test]
    async fn abort_drops_the_backlog_and_closing_takes_nothing_more() {
        let f = frame::event("c", "e", "d");
        let (outbox, mut peer) = websocket(1 << 20);
        for _ in 0..QUEUE_CAPACITY + 10 {
            outbox.push_event(&f).unwrap();
        }
        outbox.abort(4100, "slow");
        assert_eq!(outbox.push_event(&f), Ok(Pushed::Dropped));
        assert!(outbox.is_closed());
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
            texts, QUEUE_CAPACITY,
            "only what the queue already held goes out"
        );
    }

    #[actix_rt::test]
    async fn every_outbox_queues_the_same_bytes_of_an_event() {
        let f = frame::event("c", "e", "shared");
        let (a, mut peer_a) = websocket(1 << 20);
        let (b, mut peer_b) = websocket(1 << 20);
        a.push_event(&f).unwrap();
        b.push_event(&f).unwrap();
        let taken = |peer: &mut Peer| {
            let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
            match Pin::new(&mut peer.body).poll_next(&mut cx) {
                Poll::Ready(Some(Ok(bytes))) => bytes,
                other => panic!("{other:?}"),
            }
        };
        let (x, y) = (taken(&mut peer_a), taken(&mut peer_b));
        assert_eq!(x.as_ptr(), y.as_ptr(), "one encoding, shared");
        assert_eq!(x, websocket::text_frame(&f.text));
    }

    #[actix_rt::test]
    async fn a_dropped_body_closes_the_outbox() {
        let (outbox, peer) = websocket(1 << 20);
        assert!(!outbox.is_closed());
        drop(peer);
        assert!(outbox.is_closed());
        let f = frame::event("c", "e", "d");
        assert_eq!(outbox.push_event(&f), Ok(Pushed::Dropped));
    }
}
