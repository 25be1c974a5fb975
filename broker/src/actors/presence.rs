//! The presence actor: one per (app, presence channel). It is the channel's actor, holding the
//! subscribers like [`ChannelActor`](super::channel::ChannelActor), plus the member set: each
//! user's info and how many connections it has. `member_added` and `member_removed` go out only
//! when a user's connection count crosses zero, so a user's second tab is not a new member.

use std::collections::HashMap;

use actix::{Actor, Context, Handler, Message, MessageResult};
use indexmap::IndexMap;
use serde_json::{json, Value};

use crate::actors::channel::{InFlight, Publish, Subscribe, Subscriber, Subscribers, Unsubscribe};
use crate::actors::connection::SubscriptionRejected;
use crate::metrics::AppMetrics;
use crate::protocol::frame::{self, SocketId};

/// A presence identity, from the `channel_data` the app's backend signed.
#[derive(Debug, Clone)]
pub struct Member {
    pub user_id: String,
    pub user_info: Value,
}

struct MemberState {
    info: Value,
    connections: usize,
}

/// The ids of the members, in the order they joined.
#[derive(Message)]
#[rtype(result = "Vec<String>")]
pub struct GetMembers;

pub struct PresenceActor {
    name: String,
    max_members: usize,
    subscribers: Subscribers,
    /// Socket -> user, for unsubscribes.
    sockets: HashMap<SocketId, String>,
    members: IndexMap<String, MemberState>,
}

impl PresenceActor {
    pub fn new(
        name: &str,
        max_members: usize,
        metrics: AppMetrics,
        in_flight: InFlight,
    ) -> PresenceActor {
        PresenceActor {
            name: name.to_owned(),
            max_members,
            subscribers: Subscribers::new(metrics, in_flight),
            sockets: HashMap::new(),
            members: IndexMap::new(),
        }
    }

    fn presence_data(&self) -> Value {
        let ids: Vec<&String> = self.members.keys().collect();
        let hash: serde_json::Map<String, Value> = self
            .members
            .iter()
            .map(|(id, m)| (id.clone(), m.info.clone()))
            .collect();
        json!({"presence": {"ids": ids, "hash": hash, "count": self.members.len()}})
    }

    fn reject(&self, s: &Subscriber, message: &str) {
        self.subscribers.send_protocol(
            s,
            frame::subscription_error(&self.name, "LimitReached", message, 403),
        );
        s.connection.do_send(SubscriptionRejected {
            channel: self.name.clone(),
        });
    }
}

impl Actor for PresenceActor {
    type Context = Context<Self>;
}

impl Handler<Subscribe> for PresenceActor {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) {
        let s = msg.subscriber;
        let Some(member) = msg.member else {
            // The connection checks channel_data before subscribing; this is a programming error.
            tracing::error!(channel = %self.name, "presence subscribe without a member");
            return;
        };
        let is_new = !self.members.contains_key(&member.user_id);
        if is_new && self.members.len() >= self.max_members {
            self.reject(
                &s,
                &format!("presence channel is full ({} members)", self.max_members),
            );
            return;
        }
        if is_new {
            let added = frame::internal(
                "pusher_internal:member_added",
                Some(&self.name),
                &json!({"user_id": member.user_id, "user_info": member.user_info}),
            );
            self.subscribers.fan_out(&added, None);
        }
        let state = self
            .members
            .entry(member.user_id.clone())
            .or_insert(MemberState {
                info: member.user_info,
                connections: 0,
            });
        state.connections += 1;
        self.sockets.insert(s.socket_id, member.user_id);
        self.subscribers.confirm(
            &self.name,
            &s,
            &self.presence_data(),
            msg.cached,
            msg.recovery,
        );
        self.subscribers.insert(s);
    }
}

impl Handler<Unsubscribe> for PresenceActor {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _: &mut Context<Self>) {
        self.subscribers.remove(msg.0);
        let Some(user_id) = self.sockets.remove(&msg.0) else {
            return;
        };
        let Some(state) = self.members.get_mut(&user_id) else {
            return;
        };
        state.connections -= 1;
        if state.connections == 0 {
            self.members.shift_remove(&user_id);
            let removed = frame::internal(
                "pusher_internal:member_removed",
                Some(&self.name),
                &json!({"user_id": user_id}),
            );
            self.subscribers.fan_out(&removed, None);
        }
    }
}

impl Handler<Publish> for PresenceActor {
    type Result = ();

    fn handle(&mut self, msg: Publish, _: &mut Context<Self>) {
        self.subscribers.publish(msg);
    }
}

impl Handler<GetMembers> for PresenceActor {
    type Result = MessageResult<GetMembers>;

    fn handle(&mut self, _: GetMembers, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.members.keys().cloned().collect())
    }
}
