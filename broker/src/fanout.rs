//! A channel's subscribers on this node and fanning a frame out to them, shared by the channel
//! and presence actors: the frame was encoded once, and every subscriber's outbox receives the
//! same shared bytes. Also the bound on the fan-out work a channel may have waiting.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use indexmap::IndexMap;
use prometheus::local::LocalHistogram;

use crate::actors::messages::{Publish, Subscriber};
use crate::metrics::AppMetrics;
use crate::outbox::Pushed;
use crate::protocol::confirmation::Confirmation;
use crate::protocol::frame::{self, Frame, SocketId};

/// How much fan-out work may wait in one channel's mailbox, in deliveries: a publish weighs its
/// channel's subscriber count plus [`PUBLISH_WEIGHT`]. A publish beyond it is refused (the HTTP
/// API answers 429) rather than queued without bound: about half a second of fan-out work.
pub const MAX_IN_FLIGHT: usize = 1 << 20;

/// The weight of a publish beyond its deliveries, so a channel with few subscribers still holds
/// a bounded number of waiting events (at most 4096).
pub const PUBLISH_WEIGHT: usize = 256;

/// How many connections' outbound bounds of frames one channel may have waiting for its actor.
pub const WAITING_BYTES_PER_OUTBOUND: usize = 16;

/// Counts the fan-out work sent to a channel's actor and not yet done: in deliveries, and in
/// bytes of frames. Both bound what the node itself has to do (and hold) for the channel, never
/// what its subscribers have yet to read: a subscriber too slow for what is published is cut
/// off by its own outbound bound (4100), and the publisher is not refused for it. The byte bound
/// is [`WAITING_BYTES_PER_OUTBOUND`] outbound bounds: a few dozen large events may wait while
/// the actor is busy, where half of one connection's bound let a single 30 KB event refuse the
/// next whenever the channel's subscribers were many (issue 11, hole 6).
#[derive(Clone)]
pub struct InFlight(Arc<InFlightCounts>);

pub struct InFlightCounts {
    work: AtomicUsize,
    bytes: AtomicUsize,
    max_bytes: usize,
}

impl InFlight {
    pub fn new(max_outbound_bytes: usize) -> InFlight {
        InFlight(Arc::new(InFlightCounts {
            work: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            max_bytes: max_outbound_bytes.saturating_mul(WAITING_BYTES_PER_OUTBOUND),
        }))
    }

    /// Takes `work` and `bytes`; `false` when the channel already has too much waiting. An idle
    /// channel always takes one.
    pub fn try_acquire(&self, work: usize, bytes: usize) -> bool {
        let c = &self.0;
        let work_before = c.work.fetch_add(work, Ordering::Relaxed);
        let bytes_before = c.bytes.fetch_add(bytes, Ordering::Relaxed);
        let over = work_before + work > MAX_IN_FLIGHT || bytes_before + bytes > c.max_bytes;
        if work_before > 0 && over {
            self.release(work, bytes);
            return false;
        }
        true
    }

    /// Gives back what [`InFlight::try_acquire`] took.
    pub fn release(&self, work: usize, bytes: usize) {
        self.0.work.fetch_sub(work, Ordering::Relaxed);
        self.0.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Takes `work` and `bytes` for one frame, held until it is handed over or dropped; `None`
    /// when the channel already has too much waiting (see [`InFlight::try_acquire`]).
    pub fn take(&self, work: usize, bytes: usize) -> Option<Taken> {
        self.try_acquire(work, bytes).then(|| Taken {
            in_flight: self.clone(),
            work,
            bytes,
        })
    }

    /// Takes `work` and `bytes` whatever waits already: for a frame its channel admitted before
    /// the channel's actor was replaced.
    pub fn take_anyway(&self, work: usize, bytes: usize) -> Taken {
        self.0.work.fetch_add(work, Ordering::Relaxed);
        self.0.bytes.fetch_add(bytes, Ordering::Relaxed);
        Taken {
            in_flight: self.clone(),
            work,
            bytes,
        }
    }
}

/// One frame's share of its channel's in-flight bound: given back when dropped, unless handed
/// over with the frame to the channel's actor, which gives it back once it has fanned the
/// frame out ([`Subscribers::publish`]).
pub struct Taken {
    in_flight: InFlight,
    work: usize,
    bytes: usize,
}

impl Taken {
    /// Whether this share is of `in_flight`'s bound.
    pub fn is_of(&self, in_flight: &InFlight) -> bool {
        Arc::ptr_eq(&self.in_flight.0, &in_flight.0)
    }

    /// Hands the share over with its frame: the work the actor gives back.
    pub fn hand_over(mut self) -> usize {
        self.bytes = 0;
        std::mem::take(&mut self.work)
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        if self.work > 0 || self.bytes > 0 {
            self.in_flight.release(self.work, self.bytes);
        }
    }
}

/// The subscribers of one channel, in a form fast to iterate, and the metrics of fanning out.
pub struct Subscribers {
    map: IndexMap<SocketId, Subscriber>,
    metrics: AppMetrics,
    latency: LocalHistogram,
    in_flight: InFlight,
}

impl Subscribers {
    pub fn new(metrics: AppMetrics, in_flight: InFlight) -> Subscribers {
        Subscribers {
            map: IndexMap::new(),
            latency: metrics.publish_to_write.local(),
            metrics,
            in_flight,
        }
    }

    /// Fans a published frame out and gives back its in-flight weight.
    pub fn publish(&self, msg: Publish) {
        self.fan_out(&msg.frame, msg.except.as_slice());
        self.in_flight.release(msg.weight, msg.frame.len());
    }

    pub fn insert(&mut self, s: Subscriber) {
        self.map.insert(s.socket_id, s);
    }

    pub fn remove(&mut self, id: SocketId) -> Option<Subscriber> {
        self.map.swap_remove(&id)
    }

    pub fn get(&self, id: SocketId) -> Option<&Subscriber> {
        self.map.get(&id)
    }

    /// Hands `frame` to every subscriber but those in `except` (none or a few). A subscriber
    /// whose backlog is full is cut off as a slow reader.
    pub fn fan_out(&self, frame: &Frame, except: &[SocketId]) {
        let mut delivered = 0u64;
        for (id, s) in &self.map {
            if except.contains(id) {
                continue;
            }
            match s.outbox.push_event(frame) {
                Ok(Pushed::Sent) => {
                    delivered += 1;
                    self.latency
                        .observe(frame.published_at.elapsed().as_secs_f64());
                }
                Ok(Pushed::Queued) => delivered += 1,
                Ok(Pushed::Dropped) => {}
                Err(_overflow) => s.cut_off(),
            }
        }
        self.metrics.deliveries.inc_by(delivered);
        self.metrics.messages_sent.inc_by(delivered);
        self.metrics
            .bytes_sent
            .inc_by(delivered * frame.len() as u64);
        self.latency.flush();
    }

    /// Sends a protocol frame to one subscriber.
    pub fn send_protocol(&self, s: &Subscriber, frame: Frame) {
        self.metrics.messages_sent.inc();
        self.metrics.bytes_sent.inc_by(frame.len() as u64);
        let _ = s.outbox.push_protocol(frame);
    }

    /// Confirms a subscription (unless it already was: `confirmation` is `None`), sends the
    /// history events it missed, and on a cache channel replays the cached event or says there
    /// is none.
    pub fn confirm(
        &self,
        channel: &str,
        s: &Subscriber,
        confirmation: Option<&Confirmation>,
        replay: &[Frame],
        cached: Option<Option<Frame>>,
    ) {
        if let Some(confirmation) = confirmation {
            self.send_protocol(s, confirmation.frame(channel));
        }
        for missed in replay {
            if s.outbox.push_event(missed).is_err() {
                return s.cut_off();
            }
        }
        match cached {
            Some(Some(last)) => self.send_protocol(s, last),
            Some(None) => self.send_protocol(s, frame::cache_miss(channel)),
            None => {}
        }
    }
}
