//! Forwarding published frames to the other nodes with interest in their channel.
//!
//! Each destination node has one stream: a bounded queue and a task on the Raft runtime that
//! takes every frame waiting (up to a batch's size) and sends them in one `POST /cluster/deliver`
//! to the node's cluster port, with the secret, over a keep-alive connection, then the next batch.
//! One ordered stream per destination keeps the order in which this node forwarded; delivery is
//! at most once. A publisher never waits: a frame for a node whose queue is full is dropped and
//! counted, and so is a batch the node did not take (it is down, or refused it).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::interest_index::InterestIndex;
use crate::metrics::ForwardSeries;
use crate::outbound::ClusterClient;
use crate::raft_view::node_addr;
use crate::secret::{ClusterSecret, SECRET_HEADER};
use crate::types::{NodeId, Raft};

/// The path on the cluster port that takes forwarded frames.
pub const DELIVER_PATH: &str = "/cluster/deliver";

/// Frames waiting for one destination before more are dropped.
const QUEUE_FRAMES: usize = 16 * 1024;

/// A batch holds at most this many frames, or about this many bytes of them.
const BATCH_FRAMES: usize = 1024;
const BATCH_BYTES: usize = 1024 * 1024;

/// How long a destination has to take a batch.
const DELIVER_TIMEOUT: Duration = Duration::from_secs(2);

/// The pause after a batch a destination did not take; doubles up to [`MAX_PAUSE`].
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
    client: ClusterClient,
    secret: ClusterSecret,
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
                client,
                secret,
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
                let (sender, receiver) = mpsc::channel(QUEUE_FRAMES);
                let inner = self.inner.clone();
                self.inner.runtime.spawn(run_stream(inner, node, receiver));
                sender
            })
            .clone()
    }
}

/// Sends what is queued for `node`, batch after batch, until the runtime stops.
async fn run_stream(
    inner: Arc<Inner>,
    node: NodeId,
    mut queue: mpsc::Receiver<Arc<ForwardedFrame>>,
) {
    let peer = node.to_string();
    let frames_sent = inner.series.frames.with_label_values(&[&peer]);
    let batches_sent = inner.series.batches.with_label_values(&[&peer]);
    let mut pause = FIRST_PAUSE;
    let mut batch = Vec::with_capacity(BATCH_FRAMES);
    while let Some(first) = queue.recv().await {
        let mut bytes = first.frame.len();
        batch.push(first);
        while batch.len() < BATCH_FRAMES && bytes < BATCH_BYTES {
            match queue.try_recv() {
                Ok(frame) => {
                    bytes += frame.frame.len();
                    batch.push(frame);
                }
                Err(_) => break,
            }
        }
        match send_batch(&inner, node, &batch).await {
            Ok(()) => {
                frames_sent.inc_by(batch.len() as u64);
                batches_sent.inc();
                pause = FIRST_PAUSE;
            }
            Err(e) => {
                tracing::debug!(node, error = %e, frames = batch.len(), "forwarded frames lost");
                inner.series.errors.with_label_values(&[&peer]).inc();
                inner.series.dropped(node, batch.len());
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
            }
        }
        batch.clear();
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
        .client
        .post(&addr, DELIVER_PATH)
        .header(SECRET_HEADER, inner.secret.as_str())
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
