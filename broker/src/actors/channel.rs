//! The channel actor: one per (app, channel) with subscribers on this node. It holds the local
//! subscriber set and fans each published frame out to it: the frame was encoded once, and
//! every subscriber's outbox receives the same shared bytes.

use actix::{Actor, Addr, Context, Handler, Message};
use indexmap::IndexMap;

use crate::actors::connection::{Connection, Disconnect};
use crate::actors::presence::Member;
use crate::outbox::Outbox;
use crate::protocol::frame::{self, Frame, SocketId};

/// A connection as a channel sees it.
#[derive(Clone)]
pub struct Subscriber {
    pub socket_id: SocketId,
    pub outbox: Outbox,
    pub connection: Addr<Connection>,
}

/// The subscribers of one channel, in a form fast to iterate.
#[derive(Default)]
pub struct Subscribers(IndexMap<SocketId, Subscriber>);

impl Subscribers {
    pub fn insert(&mut self, s: Subscriber) {
        self.0.insert(s.socket_id, s);
    }

    pub fn remove(&mut self, id: SocketId) -> Option<Subscriber> {
        self.0.swap_remove(&id)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Queues `frame` to every subscriber but `except`. A subscriber whose outbox is full is cut
    /// off as a slow reader.
    pub fn fan_out(&self, frame: &Frame, except: Option<SocketId>) {
        for (id, s) in &self.0 {
            if Some(*id) == except {
                continue;
            }
            if s.outbox.push_event(frame).is_err() {
                s.outbox.abort(
                    crate::protocol::code::OVER_CAPACITY,
                    "outbound buffer full: reader too slow",
                );
                s.connection.do_send(Disconnect::slow_reader());
            }
        }
    }
}

/// Adds a subscriber. For cache channels `cached` is `Some(last event or None)`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe {
    pub subscriber: Subscriber,
    pub cached: Option<Option<Frame>>,
    pub member: Option<Member>,
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
}

pub struct ChannelActor {
    name: String,
    subscribers: Subscribers,
}

impl ChannelActor {
    pub fn new(name: &str) -> ChannelActor {
        ChannelActor {
            name: name.to_owned(),
            subscribers: Subscribers::default(),
        }
    }
}

impl Actor for ChannelActor {
    type Context = Context<Self>;
}

/// Confirms a subscription and, on a cache channel, replays the cached event or says there is
/// none. Shared with the presence actor's non-presence-specific part.
pub fn confirm(
    channel: &str,
    s: &Subscriber,
    data: &serde_json::Value,
    cached: Option<Option<Frame>>,
) {
    let _ = s
        .outbox
        .push_protocol(frame::subscription_succeeded(channel, data));
    match cached {
        Some(Some(last)) => {
            let _ = s.outbox.push_event(&last);
        }
        Some(None) => {
            let _ = s.outbox.push_protocol(frame::cache_miss(channel));
        }
        None => {}
    }
}

impl Handler<Subscribe> for ChannelActor {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) {
        confirm(
            &self.name,
            &msg.subscriber,
            &serde_json::json!({}),
            msg.cached,
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
        self.subscribers.fan_out(&msg.frame, msg.except);
    }
}
