//! The channel actor: one per (app, channel) with subscribers on this node. It holds the local
//! subscriber set and fans each published frame out to it: the frame was encoded once, and
//! every subscriber's outbox receives the same shared bytes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix::{Actor, Addr, Context, Handler, Message};
use indexmap::IndexMap;

use prometheus::local::LocalHistogram;

use crate::actors::connection::{Connection, Disconnect};
use crate::actors::presence::Member;
use crate::metrics::AppMetrics;
use crate::outbox::{Outbox, Pushed};
use crate::protocol::frame::{self, Frame, SocketId};

/// A connection as a channel sees it.
#[derive(Clone)]
pub struct Subscriber {
    pub socket_id: SocketId,
    pub outbox: Outbox,
    pub connection: Addr<Connection>,
}

/// How much fan-out work may wait in one channel's mailbox, in deliveries: a publish weighs its
/// channel's subscriber count plus [`PUBLISH_WEIGHT`]. A publish beyond it is refused (the HTTP
/// API answers 429) rather than queued without bound: about half a second of fan-out work.
pub const MAX_IN_FLIGHT: usize = 1 << 20;

/// The weight of a publish beyond its deliveries, so a channel with few subscribers still holds
/// a bounded number of waiting events (at most 4096).
pub const PUBLISH_WEIGHT: usize = 256;

/// Counts the fan-out work sent to a channel's actor and not yet done: in deliveries, and in
/// bytes of frames. The byte bound is half a connection's outbound bound, so a burst on one
/// channel can never, on its own, overrun a subscriber that reads at full speed.
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
            max_bytes: max_outbound_bytes / 2,
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

    fn release(&self, work: usize, bytes: usize) {
        self.0.work.fetch_sub(work, Ordering::Relaxed);
        self.0.bytes.fetch_sub(bytes, Ordering::Relaxed);
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
                Err(_overflow) => {
                    s.outbox.abort(
                        crate::protocol::code::OVER_CAPACITY,
                        "outbound buffer full: reader too slow",
                    );
                    s.connection.do_send(Disconnect::slow_reader());
                }
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

    /// Confirms a subscription and, on a cache channel, replays the cached event or says there
    /// is none.
    /// On a history channel the confirmation also carries the channel's epoch and offset (and
    /// whether the subscriber's `since` was recovered), followed by the events it missed. A
    /// subscriber that caught up in parts was confirmed before its first part.
    pub fn confirm(
        &self,
        channel: &str,
        s: &Subscriber,
        data: &serde_json::Value,
        cached: Option<Option<Frame>>,
        recovery: Option<Recovery>,
    ) {
        let recovery = recovery.unwrap_or_else(|| Recovery {
            fields: Some(serde_json::Map::new()),
            ..Recovery::default()
        });
        if let Some(fields) = recovery.fields {
            let mut data = data.clone();
            if let Some(object) = data.as_object_mut() {
                object.extend(fields);
            }
            self.send_protocol(s, frame::subscription_succeeded(channel, &data));
        }
        for missed in &recovery.replay {
            if s.outbox.push_event(missed).is_err() {
                s.outbox.abort(
                    crate::protocol::code::OVER_CAPACITY,
                    "outbound buffer full: reader too slow",
                );
                s.connection.do_send(Disconnect::slow_reader());
                return;
            }
        }
        match cached {
            Some(Some(last)) => self.send_protocol(s, last),
            Some(None) => self.send_protocol(s, frame::cache_miss(channel)),
            None => {}
        }
    }
}

/// What a history channel's new subscriber gets with its confirmation: fields for the
/// `subscription_succeeded` data (`epoch`, `offset`, `recovered`; `None` when it was already
/// confirmed) and the events it missed.
#[derive(Debug, Default)]
pub struct Recovery {
    pub fields: Option<serde_json::Map<String, serde_json::Value>>,
    pub replay: Vec<Frame>,
    /// The replay is only the first part: the events after this offset are still to be sent.
    pub more_after: Option<u64>,
}

/// Adds a subscriber. For cache channels `cached` is `Some(last event or None)`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe {
    pub subscriber: Subscriber,
    pub cached: Option<Option<Frame>>,
    pub member: Option<Member>,
    /// A presence channel's members as committed when the subscriber joined, with their info.
    pub members: Option<Vec<(String, serde_json::Value)>>,
    pub recovery: Option<Recovery>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe(pub SocketId);

/// Delivers a frame to every subscriber but `except`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Publish {
    pub frame: Frame,
    pub except: Option<SocketId>,
    /// The work it took from the channel's [`InFlight`] (its bytes are the frame's length).
    pub weight: usize,
}

pub struct ChannelActor {
    name: String,
    subscribers: Subscribers,
}

impl ChannelActor {
    pub fn new(name: &str, metrics: AppMetrics, in_flight: InFlight) -> ChannelActor {
        ChannelActor {
            name: name.to_owned(),
            subscribers: Subscribers::new(metrics, in_flight),
        }
    }
}

impl Actor for ChannelActor {
    type Context = Context<Self>;
}

impl Handler<Subscribe> for ChannelActor {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) {
        self.subscribers.confirm(
            &self.name,
            &msg.subscriber,
            &serde_json::json!({}),
            msg.cached,
            msg.recovery,
        );
        self.subscribers.insert(msg.subscriber);
    }
}

impl Handler<Unsubscribe> for ChannelActor {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _: &mut Context<Self>) {
        self.subscribers.remove(msg.0);
    }
}

impl Handler<Publish> for ChannelActor {
    type Result = ();

    fn handle(&mut self, msg: Publish, _: &mut Context<Self>) {
        self.subscribers.publish(msg);
    }
}
