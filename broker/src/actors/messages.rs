//! The messages the actors accept, in one place, and how they see each other: a channel knows a
//! connection only as a [`Subscriber`] (its outbox and the [`Recipient`]s of the messages a
//! connection accepts, [`ConnectionRecipients`]), the app and the registry know actors only by
//! the messages they send them. No actor file imports another.

use std::sync::Arc;

use actix::{Message, Recipient};
use serde_json::Value;

use crate::outbox::Outbox;
use crate::protocol::code;
use crate::protocol::confirmation::Confirmation;
use crate::protocol::frame::{Frame, SocketId};
use crate::protocol::presence::Member;

/// Closes a connection with a code. Sent by the REST API (terminate), channels (slow reader)
/// and the node (shutdown).
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub struct Disconnect {
    pub code: u16,
    pub message: &'static str,
    /// Metric label.
    pub reason: &'static str,
    /// Send a `pusher:error` before the close frame.
    pub announce: bool,
}

impl Disconnect {
    pub fn slow_reader() -> Disconnect {
        Disconnect {
            code: code::OVER_CAPACITY,
            message: "outbound buffer full: reader too slow",
            reason: "slow_reader",
            announce: false,
        }
    }

    pub fn terminated() -> Disconnect {
        Disconnect {
            code: code::UNAUTHORIZED,
            message: "connection terminated by the app",
            reason: "terminated",
            announce: true,
        }
    }

    /// An SSE client closed its stream (its response body was dropped).
    pub fn client_gone() -> Disconnect {
        Disconnect {
            code: 1000,
            message: "client gone",
            reason: "client_closed",
            announce: false,
        }
    }

    pub fn shutdown() -> Disconnect {
        Disconnect {
            code: code::RECONNECT,
            message: "server shutting down, reconnect",
            reason: "shutdown",
            announce: true,
        }
    }
}

/// A presence channel refused a subscription (it was full): the connection forgets it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SubscriptionRejected {
    pub channel: String,
}

/// The messages a connection accepts from the rest of the node. One per connection, shared by
/// its app and its channels.
pub struct ConnectionRecipients {
    pub disconnect: Recipient<Disconnect>,
    pub rejected: Recipient<SubscriptionRejected>,
}

/// A connection as a channel sees it.
#[derive(Clone)]
pub struct Subscriber {
    pub socket_id: SocketId,
    pub outbox: Outbox,
    pub connection: Arc<ConnectionRecipients>,
}

impl Subscriber {
    /// Cuts the subscriber off as a slow reader (4100): its backlog is dropped and it is told to
    /// close.
    pub fn cut_off(&self) {
        self.outbox
            .abort(code::OVER_CAPACITY, "outbound buffer full: reader too slow");
        self.connection
            .disconnect
            .do_send(Disconnect::slow_reader());
    }
}

/// Adds a subscriber to a channel, confirms it (unless it already was) and sends what it
/// missed, in that order, before any live event.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe {
    pub subscriber: Subscriber,
    /// How it is confirmed; `None` when it already was, before a catch-up in parts.
    pub confirmation: Option<Confirmation>,
    /// History events it missed.
    pub replay: Vec<Frame>,
    /// On a cache channel, its last event or none (`pusher:cache_miss`); filled in by the
    /// registry, which holds the cache.
    pub cached: Option<Option<Frame>>,
    /// The member it joins a presence channel as.
    pub member: Option<Member>,
    /// A presence channel's members as committed when it joined, with their info.
    pub members: Option<Vec<(String, Value)>>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe(pub SocketId);

/// Delivers a frame to every subscriber of a channel but `except`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Publish {
    pub frame: Frame,
    pub except: Option<SocketId>,
    /// The work it took from the channel's in-flight bound (its bytes are the frame's length).
    pub weight: usize,
}

/// The cluster committed that a user joined (`joined` is its info) or left a presence channel.
#[derive(Message)]
#[rtype(result = "()")]
pub struct MemberChanged {
    pub user_id: String,
    pub joined: Option<Value>,
}

/// The ids of a presence channel's members, in the order they joined, and then the users here
/// the cluster has not committed yet.
#[derive(Message)]
#[rtype(result = "Vec<String>")]
pub struct GetMembers;
