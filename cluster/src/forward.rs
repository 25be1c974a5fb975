//! Forwarding published frames to the other nodes with interest in their channel.
//!
//! Each destination node has a bounded queue and a task on the Raft runtime that sends what is
//! queued on one long-lived stream to the node's cluster port ([`crate::forward_stream`]): every
//! frame waiting when the connection can take more goes out in one write. One ordered stream per
//! destination keeps the order in which this node forwarded; delivery is at most once. A
//! publisher never waits: a frame for a node whose queue is full is dropped and counted, and so
//! are the frames a broken stream lost (sent, never acknowledged) and those waiting when the node
//! cannot be reached (it is down, or refused the stream). A broken stream is opened again when
//! the next frame comes, after a pause that doubles with each failure in a row (100 ms to 1 s).
//!
//! A node of an earlier version answers the stream's path with 404: frames then go to it as
//! before, in batches, each a `POST /cluster/deliver` (JSON), and the stream is tried again after
//! [`BATCHES_FOR`] or the first failure (the node may have been upgraded meanwhile).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::forward_stream::{Opened, Opener, Stream, TAKE_FRAMES};
use crate::interest_index::InterestIndex;
use crate::metrics::{ForwardSeries, PeerSeries};
use crate::outbound::ClusterClient;
use crate::raft_view::node_addr;
use crate::secret::{ClusterSecret, SECRET_HEADER};
use crate::types::{NodeId, Raft};

/// The path on the cluster port that takes batches of forwarded frames (nodes without streams).
pub const DELIVER_PATH: &str = "/cluster/deliver";

/// Frames waiting for one destination before more are dropped.
const QUEUE_FRAMES: usize = 16 * 1024;

/// A batch to a node without streams holds at most this many frames, or about this many bytes.
const BATCH_FRAMES: usize = 1024;
const BATCH_BYTES: usize = 1024 * 1024;

/// How long a node without streams has to take a batch.
const DELIVER_TIMEOUT: Duration = Duration::from_secs(2);

/// How long frames go in batches to a node that answered the stream's path with 404.
pub const BATCHES_FOR: Duration = Duration::from_secs(30);

/// The pause after a failure to reach a destination; doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// A published frame on its way to another node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardedFrame {
    pub app: String,
    pub channel: String,
    /// The frame as subscribers get it.
    pub frame: String,
    /// The socket id of the connection that is not to get it (a client event's sender).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub except: Option<String>,
}

/// The body of `POST /cluster/deliver`: frames from one node, in the order it forwarded them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardBatch {
    pub from: NodeId,
    pub frames: Vec<ForwardedFrame>,
}

/// A batch as the sender writes it, its frames shared with the other destinations' batches.
#[derive(Serialize)]
struct OutgoingBatch<'a> {
    from: NodeId,
    frames: Vec<&'a ForwardedFrame>,
}

/// This node's streams to the others; cheap to clone.
#[derive(Clone)]
pub struct Forwarder {
    inner: Arc<Inner>,
}

struct Inner {
    me: NodeId,
    interest: InterestIndex,
    streams: RwLock<HashMap<NodeId, mpsc::Sender<Arc<ForwardedFrame>>>>,
    raft: Raft,
    opener: Opener,
    series: ForwardSeries,
    runtime: tokio::runtime::Handle,
}

impl Forwarder {
    /// The forwarder of node `me`, sending with `client` (one of its own: its connections stay
    /// open to each destination); its streams' tasks run on `runtime`.
    pub(crate) fn new(
        me: NodeId,
        interest: InterestIndex,
        raft: Raft,
        client: ClusterClient,
        secret: ClusterSecret,
        series: ForwardSeries,
        runtime: tokio::runtime::Handle,
    ) -> Forwarder {
        Forwarder {
            inner: Arc::new(Inner {
                me,
                interest,
                streams: RwLock::default(),
                raft,
                opener: Opener { me, client, secret },
                series,
                runtime,
            }),
        }
    }

    /// Queues a frame published on `channel` of `app` for every other node with interest in it;
    /// `frame` makes it, only if there is one. Returns how many nodes it was queued for. Never
    /// waits.
    pub fn forward(
        &self,
        app: &str,
        channel: &str,
        frame: impl FnOnce() -> ForwardedFrame,
    ) -> usize {
        let Some(nodes) = self.inner.interest.nodes(app, channel) else {
            return 0;
        };
        let me = self.inner.me;
        let mut others = nodes.iter().copied().filter(|node| *node != me).peekable();
        if others.peek().is_none() {
            return 0;
        }
        let frame = Arc::new(frame());
        let mut queued = 0;
        for node in others {
            match self.stream(node).try_send(frame.clone()) {
                Ok(()) => queued += 1,
                Err(_) => self.inner.series.dropped(node, 1),
            }
        }
        queued
    }

    /// Counts frames another node forwarded to this one.
    pub fn received(&self, from: NodeId, frames: usize) {
        self.inner
            .series
            .received
            .with_label_values(&[&from.to_string()])
            .inc_by(frames as u64);
    }

    /// The queue towards `node`, started with its task the first time.
    fn stream(&self, node: NodeId) -> mpsc::Sender<Arc<ForwardedFrame>> {
        if let Some(sender) = self.inner.streams.read().get(&node) {
            return sender.clone();
        }
        let mut streams = self.inner.streams.write();
        streams
            .entry(node)
            .or_insert_with(|| {
                let (sender, queue) = mpsc::channel(QUEUE_FRAMES);
                let destination = Destination {
                    series: self.inner.series.peer(node),
                    inner: self.inner.clone(),
                    node,
                    queue,
                    pending: Vec::new(),
                    pause: FIRST_PAUSE,
                };
                self.inner.runtime.spawn(destination.run());
                sender
            })
            .clone()
    }
}

/// How this node reaches one destination, as its task goes.
enum Link {
    /// No stream: the next frame opens one.
    Closed,
    /// Frames go on this stream.
    Open(Box<Stream>),
    /// The node has no stream (an earlier version): frames go in batches until then.
    Batches { until: Instant },
    /// The last attempt failed: a pause, then the next frame tries again.
    Failed,
    /// The queue closed: the runtime is stopping.
    Finished,
}

/// One destination's task: its queue, the frames taken from it and not sent yet, in order, and
/// the pause before the next attempt.
struct Destination {
    inner: Arc<Inner>,
    node: NodeId,
    queue: mpsc::Receiver<Arc<ForwardedFrame>>,
    pending: Vec<Arc<ForwardedFrame>>,
    series: PeerSeries,
    pause: Duration,
}

impl Destination {
    /// Sends what is queued for the node until the runtime stops.
    async fn run(mut self) {
        let mut link = Link::Closed;
        loop {
            link = match link {
                Link::Closed => self.open().await,
                Link::Open(stream) => self.stream(stream).await,
                Link::Batches { until } => self.batches(until).await,
                Link::Failed => {
                    tokio::time::sleep(self.pause).await;
                    self.pause = (self.pause * 2).min(MAX_PAUSE);
                    Link::Closed
                }
                Link::Finished => return,
            };
        }
    }

    /// Waits for a frame, then opens a stream to the node.
    async fn open(&mut self) -> Link {
        if self.pending.is_empty()
            && self.queue.recv_many(&mut self.pending, TAKE_FRAMES).await == 0
        {
            return Link::Finished;
        }
        let Some(addr) = node_addr(&self.inner.raft, self.node) else {
            return self.failed(SendError::NotAMember, 0);
        };
        match self.inner.opener.open(&addr).await {
            Ok(Opened::Open(stream)) => Link::Open(stream),
            Ok(Opened::NotServed) => {
                tracing::debug!(node = self.node, "no forwarding stream: batches instead");
                Link::Batches {
                    until: Instant::now() + BATCHES_FOR,
                }
            }
            Err(e) => self.failed(e, 0),
        }
    }

    /// Sends on `stream` until it breaks.
    async fn stream(&mut self, stream: Box<Stream>) -> Link {
        let pumped = stream
            .pump(&mut self.pending, &mut self.queue, &self.series)
            .await;
        match pumped {
            Ok(()) => Link::Finished,
            Err((e, tally)) => {
                if tally.acknowledged > 0 {
                    self.pause = FIRST_PAUSE;
                }
                self.failed(e, tally.unacknowledged())
            }
        }
    }

    /// Sends batches to a node without streams until `until` or a failure.
    async fn batches(&mut self, until: Instant) -> Link {
        loop {
            if self.pending.is_empty() {
                tokio::select! {
                    taken = self.queue.recv_many(&mut self.pending, BATCH_FRAMES) => {
                        if taken == 0 {
                            return Link::Finished;
                        }
                    }
                    _ = tokio::time::sleep_until(until.into()) => return Link::Closed,
                }
            }
            let batch = self.next_batch();
            match send_batch(&self.inner, self.node, &batch).await {
                Ok(()) => {
                    self.series.frames.inc_by(batch.len() as u64);
                    self.series.batches.inc();
                    self.pause = FIRST_PAUSE;
                }
                Err(e) => return self.failed(e, batch.len() as u64),
            }
            if Instant::now() >= until {
                return Link::Closed;
            }
        }
    }

    /// The next batch: what is pending and queued, up to a batch's size.
    fn next_batch(&mut self) -> Vec<Arc<ForwardedFrame>> {
        while self.pending.len() < BATCH_FRAMES {
            match self.queue.try_recv() {
                Ok(frame) => self.pending.push(frame),
                Err(_) => break,
            }
        }
        let mut bytes = 0;
        let taken = self
            .pending
            .iter()
            .take(BATCH_FRAMES)
            .take_while(|frame| {
                let fits = bytes < BATCH_BYTES;
                bytes += frame.frame.len();
                fits
            })
            .count();
        self.pending.drain(..taken).collect()
    }

    /// Counts a failure to reach the node that lost `lost` frames; drops what waits for it too,
    /// as it would reach the node late if at all.
    fn failed(&mut self, error: impl std::fmt::Display, lost: u64) -> Link {
        let mut waiting = self.pending.len() as u64;
        self.pending.clear();
        while self.queue.try_recv().is_ok() {
            waiting += 1;
        }
        tracing::debug!(node = self.node, %error, lost, waiting, "forwarded frames lost");
        self.series.errors.inc();
        self.series.dropped.inc_by(lost + waiting);
        Link::Failed
    }
}

/// Why a batch did not reach its destination.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("node is not a member")]
    NotAMember,
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    #[error("answered {0}")]
    Refused(reqwest::StatusCode),
}

async fn send_batch(
    inner: &Inner,
    node: NodeId,
    frames: &[Arc<ForwardedFrame>],
) -> Result<(), SendError> {
    let addr = node_addr(&inner.raft, node).ok_or(SendError::NotAMember)?;
    let batch = OutgoingBatch {
        from: inner.me,
        frames: frames.iter().map(|frame| &**frame).collect(),
    };
    let response = inner
        .opener
        .client
        .post(&addr, DELIVER_PATH)
        .header(SECRET_HEADER, inner.opener.secret.as_str())
        .timeout(DELIVER_TIMEOUT)
        .json(&batch)
        .send()
        .await?;
    if !response.status().is_success() {
        return Err(SendError::Refused(response.status()));
    }
    // Read the body to the end, so the connection goes back to the pool.
    response.bytes().await?;
    Ok(())
}
