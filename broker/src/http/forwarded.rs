//! `POST /cluster/forward` on the cluster port: another node's forwarding stream (see
//! `chorus_cluster::forward`), whose frames this node delivers to its own subscribers, in order,
//! as they arrive.
//!
//! The secret is checked before anything is read (401 otherwise), and the sending node names
//! itself in `x-chorus-forward-from`. The answer begins at once (200, so the sender knows the
//! stream is taken) and carries an acknowledgement, the number of frames taken so far, at most
//! every [`ACK_EVERY`] when something arrived since the last one, and a last one when the stream
//! ends. A record longer than the node could ever deliver is refused as soon as its length
//! prefix arrives, and so is a malformed one: the connection is then closed. A stream that sends
//! nothing, not even a heartbeat, for [`SILENT_FOR`] is ended, and so is every stream once the
//! node shuts down.
//!
//! A node's newer stream supersedes its older one ([`Senders`]): once it is open, the older
//! delivers nothing more (what a cut link held and lets through late is dropped, as its sender
//! counted it lost), so frames from one node are delivered in the order it sent them, whatever
//! its reconnections.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use chorus_cluster::forward_wire::{encode_ack, Record, RecordReader, WireError, FROM_HEADER};
use chorus_cluster::http::Authorized;
use chorus_cluster::{ForwardedFrame, NodeId};
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde_json::json;

use crate::node::Node;

/// The longest between two acknowledgements while frames arrive.
const ACK_EVERY: Duration = Duration::from_millis(100);

/// A stream silent this long is ended (its sender sends a heartbeat every second when idle).
const SILENT_FOR: Duration = Duration::from_secs(10);

/// Room in a record for the app id, channel and socket id beside the frame.
const RECORD_FIELDS: usize = 64 * 1024;

/// The largest record taken: twice the largest request or outbound queue of this node (a frame
/// no publish could make, or no connection could take, is not one to deliver), and its fields.
fn record_limit(node: &Node) -> usize {
    let config = &node.config;
    2 * config.max_request_bytes.max(config.max_outbound_bytes) + RECORD_FIELDS
}

/// Senders kept track of at most (each an id and a lock): more are refused.
const MAX_SENDERS: usize = 1024;

/// The latest stream of each sending node, for the cluster port's workers to share.
#[derive(Default)]
pub struct Senders {
    latest: Mutex<HashMap<NodeId, Arc<Mutex<u64>>>>,
    opened: AtomicU64,
}

/// A stream's right to deliver: its number, and its sender's latest.
struct Turn {
    mine: u64,
    latest: Arc<Mutex<u64>>,
}

impl Senders {
    /// Makes a new stream from `from` its latest; `None` when too many senders are known.
    fn open(&self, from: NodeId) -> Option<Turn> {
        let latest = {
            let mut senders = self.latest.lock();
            if senders.len() >= MAX_SENDERS && !senders.contains_key(&from) {
                return None;
            }
            senders.entry(from).or_default().clone()
        };
        let mine = self.opened.fetch_add(1, Ordering::Relaxed) + 1;
        *latest.lock() = mine;
        Some(Turn { mine, latest })
    }
}

/// Takes a forwarding stream from another node.
pub async fn stream(
    _: Authorized,
    request: HttpRequest,
    node: web::Data<Node>,
    senders: web::Data<Senders>,
    payload: web::Payload,
) -> HttpResponse {
    let from = request
        .headers()
        .get(FROM_HEADER)
        .and_then(|value| value.to_str().ok()?.parse::<NodeId>().ok());
    let Some(from) = from else {
        return HttpResponse::BadRequest()
            .json(json!({"error": format!("missing or invalid {FROM_HEADER}")}));
    };
    let Some(turn) = senders.open(from) else {
        return HttpResponse::ServiceUnavailable().json(json!({"error": "too many sending nodes"}));
    };
    let receiving = Receiving {
        reader: RecordReader::new(record_limit(&node)),
        node,
        from,
        turn,
        payload,
        taken: 0,
        unacknowledged: false,
        heard_at: Instant::now(),
        ended: false,
    };
    HttpResponse::Ok()
        .content_type("application/octet-stream")
        .streaming(futures_util::stream::unfold(receiving, Receiving::next_ack))
}

/// One stream being received.
struct Receiving {
    node: web::Data<Node>,
    from: NodeId,
    turn: Turn,
    payload: web::Payload,
    reader: RecordReader,
    /// Frames taken from this stream so far.
    taken: u64,
    /// Something arrived since the last acknowledgement.
    unacknowledged: bool,
    heard_at: Instant,
    /// The stream ended: its last acknowledgement is out.
    ended: bool,
}

/// What became of a stream's bytes.
enum Taken {
    Delivered,
    Superseded,
}

impl Receiving {
    /// Delivers what arrives until an acknowledgement is due; `None` once the stream ended.
    async fn next_ack(mut self) -> Option<(Result<Bytes, actix_web::Error>, Receiving)> {
        if self.ended {
            return None;
        }
        let mut ticks = tokio::time::interval(ACK_EVERY);
        ticks.reset();
        loop {
            tokio::select! {
                chunk = self.payload.next() => match chunk {
                        Some(Ok(bytes)) => match self.take(&bytes) {
                        Ok(Taken::Delivered) => {}
                        Ok(Taken::Superseded) => {
                            tracing::debug!(from = self.from, "forwarding stream superseded");
                            return None;
                        }
                        Err(e) => return self.refuse(e),
                    },
                    // The sender is gone (its connection closed midway): nothing to answer.
                    Some(Err(e)) => {
                        tracing::debug!(from = self.from, error = %e, "forwarding stream cut");
                        return None;
                    }
                    None => {
                        self.ended = true;
                        return Some((Ok(encode_ack(self.taken)), self));
                    }
                },
                _ = ticks.tick() => {
                    if self.unacknowledged {
                        self.unacknowledged = false;
                        return Some((Ok(encode_ack(self.taken)), self));
                    }
                    if self.heard_at.elapsed() > SILENT_FOR || !self.node.is_serving() {
                        self.ended = true;
                        return Some((Ok(encode_ack(self.taken)), self));
                    }
                }
            }
        }
    }

    /// Delivers the whole records `bytes` completes, in order, unless a newer stream of the same
    /// node has opened.
    fn take(&mut self, bytes: &[u8]) -> Result<Taken, WireError> {
        self.heard_at = Instant::now();
        self.unacknowledged = true;
        self.reader.push(bytes);
        let mut frames: Vec<ForwardedFrame> = Vec::new();
        let outcome = loop {
            match self.reader.next_record() {
                Ok(Some(Record::Frame(frame))) => frames.push(frame),
                Ok(Some(Record::Heartbeat)) => {}
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        if !frames.is_empty() {
            // Under the sender's lock, so that a newer stream's frames never go first.
            let latest = self.turn.latest.lock();
            if *latest != self.turn.mine {
                return Ok(Taken::Superseded);
            }
            self.taken += frames.len() as u64;
            self.node
                .cluster
                .forwarder()
                .received(self.from, frames.len());
            crate::router::deliver_forwarded(&self.node.apps, self.from, frames);
        }
        outcome.map(|()| Taken::Delivered)
    }

    /// Ends the stream for `refusal`: the connection is closed.
    fn refuse(
        mut self,
        refusal: WireError,
    ) -> Option<(Result<Bytes, actix_web::Error>, Receiving)> {
        tracing::warn!(from = self.from, error = %refusal, "forwarding stream refused");
        self.ended = true;
        let error = actix_web::error::ErrorBadRequest(refusal.to_string());
        Some((Err(error), self))
    }
}
