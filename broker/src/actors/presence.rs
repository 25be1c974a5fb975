//! The presence actor: one per (app, presence channel) on a node. It is the channel's actor,
//! holding the subscribers as the channel actor does ([`Subscribers`]), plus the channel's
//! members as the cluster agreed on them, and how many connections each user has here.
//!
//! A user's first connection here declares the user to the cluster, its last one here withdraws
//! it (`Cluster::declare_presence`). When the cluster commits that a user joined or left the
//! channel (its first connection on any node, its last anywhere), every node's actor hears of
//! it ([`MemberChanged`]) and tells its subscribers `member_added` or `member_removed`, except
//! the user's own connections: a user's second tab, here or on another node, is not a new
//! member.
//!
//! A new subscriber is confirmed at once, with the members as committed when it subscribed and
//! the users here the cluster has not committed yet (itself included), so a node lists a user
//! that subscribed here before as a single node would. A subscriber is not told again of a user
//! it was listed when that user commits, and is told it left if it goes before committing.

use std::collections::{HashMap, HashSet};

use actix::{Actor, Context, Handler, MessageResult};
use indexmap::IndexMap;
use serde_json::{json, Value};

use chorus_cluster::Cluster;

use crate::actors::messages::{
    GetMembers, MemberChanged, Publish, Subscribe, Subscriber, SubscriptionRejected, Unsubscribe,
};
use crate::fanout::{InFlight, Subscribers};
use crate::metrics::AppMetrics;
use crate::protocol::frame::{self, Frame, SocketId};
use crate::protocol::presence::MemberList;

pub struct PresenceActor {
    app_id: String,
    name: String,
    max_members: usize,
    subscribers: Subscribers,
    /// Socket -> user, for unsubscribes.
    sockets: HashMap<SocketId, String>,
    /// The members the cluster agreed on, in the order they joined, with their info.
    members: IndexMap<String, Value>,
    /// The users with connections subscribed here: how many, and the info of the first.
    here: HashMap<String, (usize, Value)>,
    /// For each user here that the cluster has not committed yet, the subscribers whose
    /// confirmation listed it anyway: they are not told again when it commits.
    told: HashMap<String, HashSet<SocketId>>,
    /// Where this node declares its users.
    cluster: Cluster,
}

impl PresenceActor {
    pub fn new(
        app_id: &str,
        name: &str,
        max_members: usize,
        metrics: AppMetrics,
        in_flight: InFlight,
        cluster: Cluster,
    ) -> PresenceActor {
        PresenceActor {
            app_id: app_id.to_owned(),
            name: name.to_owned(),
            max_members,
            subscribers: Subscribers::new(metrics, in_flight),
            sockets: HashMap::new(),
            members: IndexMap::new(),
            here: HashMap::new(),
            told: HashMap::new(),
            cluster,
        }
    }

    /// The users here the cluster has not committed yet.
    fn pending(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.here
            .iter()
            .filter(|(user, _)| !self.members.contains_key(*user))
            .map(|(user, (_, info))| (user, info))
    }

    /// The members as a subscriber is told them: the committed ones, then those here the
    /// cluster has not committed yet.
    fn listed(&self) -> Vec<(&String, &Value)> {
        self.members.iter().chain(self.pending()).collect()
    }

    fn declare(&self, user_id: &str, user_info: Option<&Value>) {
        let info = user_info.map(Value::to_string);
        (self.cluster).declare_presence(&self.app_id, &self.name, user_id, info);
    }

    /// The sockets subscribed here of one user.
    fn sockets_of(&self, user_id: &str) -> Vec<SocketId> {
        self.sockets
            .iter()
            .filter(|(_, user)| *user == user_id)
            .map(|(socket, _)| *socket)
            .collect()
    }

    /// The sockets subscribed here but `except`.
    fn sockets_except(&self, except: &[SocketId]) -> Vec<SocketId> {
        self.sockets
            .keys()
            .filter(|socket| !except.contains(socket))
            .copied()
            .collect()
    }

    fn member_added(&self, user_id: &str, info: &Value) -> Frame {
        let added = json!({"user_id": user_id, "user_info": info});
        frame::internal("pusher_internal:member_added", Some(&self.name), &added)
    }

    fn member_removed(&self, user_id: &str) -> Frame {
        let removed = json!({"user_id": user_id});
        frame::internal("pusher_internal:member_removed", Some(&self.name), &removed)
    }

    fn reject(&self, s: &Subscriber, message: &str) {
        self.subscribers.send_protocol(
            s,
            frame::subscription_error(&self.name, "LimitReached", message, 403),
        );
        s.connection.rejected.do_send(SubscriptionRejected {
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
        if let Some(members) = msg.members {
            // As committed when the subscriber joined: every change before it is in, every
            // change after it comes as a MemberChanged after this message.
            self.members = members.into_iter().collect();
        }
        let is_new =
            !self.members.contains_key(&member.user_id) && !self.here.contains_key(&member.user_id);
        if is_new && self.listed().len() >= self.max_members {
            self.reject(
                &s,
                &format!("presence channel is full ({} members)", self.max_members),
            );
            return;
        }
        let here = self
            .here
            .entry(member.user_id.clone())
            .or_insert((0, member.user_info));
        here.0 += 1;
        if here.0 == 1 {
            let info = here.1.clone();
            self.declare(&member.user_id, Some(&info));
        }
        let pending: Vec<String> = self.pending().map(|(user, _)| user.clone()).collect();
        for user in pending.into_iter().filter(|u| *u != member.user_id) {
            self.told.entry(user).or_default().insert(s.socket_id);
        }
        let confirmation = msg.confirmation.map(|mut confirmation| {
            confirmation.presence = Some(MemberList::new(self.listed()));
            confirmation
        });
        self.sockets.insert(s.socket_id, member.user_id);
        self.subscribers.confirm(
            &self.name,
            &s,
            confirmation.as_ref(),
            &msg.replay,
            msg.cached,
        );
        self.subscribers.insert(s);
    }
}

impl Handler<Unsubscribe> for PresenceActor {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _: &mut Context<Self>) {
        self.subscribers.remove(msg.0);
        for told in self.told.values_mut() {
            told.remove(&msg.0);
        }
        let Some(user_id) = self.sockets.remove(&msg.0) else {
            return;
        };
        let Some(here) = self.here.get_mut(&user_id) else {
            return;
        };
        here.0 -= 1;
        if here.0 > 0 {
            return;
        }
        self.here.remove(&user_id);
        self.declare(&user_id, None);
        // Listed to some subscribers before the cluster committed it: they hear it left now.
        if let Some(told) = self.told.remove(&user_id) {
            if !self.members.contains_key(&user_id) {
                let frame = self.member_removed(&user_id);
                for socket in told {
                    if let Some(s) = self.subscribers.get(socket) {
                        self.subscribers.send_protocol(s, frame.clone());
                    }
                }
            }
        }
    }
}

impl Handler<MemberChanged> for PresenceActor {
    type Result = ();

    fn handle(&mut self, msg: MemberChanged, _: &mut Context<Self>) {
        let mut silent = self.sockets_of(&msg.user_id);
        let frame = match msg.joined {
            Some(info) => {
                if self.members.contains_key(&msg.user_id) {
                    return;
                }
                silent.extend(self.told.remove(&msg.user_id).unwrap_or_default());
                let frame = self.member_added(&msg.user_id, &info);
                self.members.insert(msg.user_id, info);
                frame
            }
            None => {
                if self.members.shift_remove(&msg.user_id).is_none() {
                    return;
                }
                if self.here.contains_key(&msg.user_id) {
                    // It left elsewhere but is joining here again: subscribers here go on
                    // seeing it, and are not told when it commits again.
                    let others = self.sockets_except(&silent);
                    self.told.entry(msg.user_id).or_default().extend(others);
                    return;
                }
                self.member_removed(&msg.user_id)
            }
        };
        self.subscribers.fan_out(&frame, &silent);
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
        MessageResult(
            self.listed()
                .into_iter()
                .map(|(id, _)| id.clone())
                .collect(),
        )
    }
}
