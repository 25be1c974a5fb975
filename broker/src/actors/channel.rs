//! The channel actor: one per (app, channel) with subscribers on this node. It holds the local
//! subscribers and fans each published frame out to them (see [`Subscribers`]).

use actix::{Actor, Context, Handler};

use crate::actors::messages::{Publish, Subscribe, Unsubscribe};
use crate::fanout::{InFlight, Subscribers};
use crate::metrics::AppMetrics;

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
            msg.confirmation.as_ref(),
            &msg.replay,
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
        self.subscribers.publish(msg);
    }
}
