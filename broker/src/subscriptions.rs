//! A connection's subscriptions, each in one explicit state from the moment a subscribe is
//! admitted to the moment the connection leaves the channel:
//!
//! - `AwaitingCluster`: admitted, waiting (bounded) for this node and its cluster
//!   before it joins: a presence subscription on a node that has not caught up with its cluster
//!   (whose members may be of an earlier run), or a client resuming a history channel from an
//!   offset this node has not stored yet (it is a few entries behind).
//! - `CatchingUp`: confirmed; what it missed goes out in parts, each once the
//!   connection has drained the one before; it joins live with the last.
//! - `Live`: a subscriber of the channel.
//!
//! Every admitted subscription is in the map, whatever its state: a second `pusher:subscribe`
//! of the same channel joins nothing twice, an unsubscribe while it waits ends the wait's
//! effect, and waiting ones count against `max_subscriptions_per_connection`. The connection
//! actor runs the [`Step`]s this answers: it waits, or drains its outbox, and hands the result
//! back ([`Subscriptions::woken`], [`Subscriptions::next_part`]) with the subscription's id, so
//! a wait that ends after the client left (and perhaps subscribed again) changes nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chorus_cluster::Cluster;
use chorus_storage::StorageError;
use tokio::sync::oneshot;

use crate::actors::messages::Subscriber;
use crate::apps::App;
use crate::order::{CatchUp, Joined, Joining, Order};
use crate::protocol::channel::{self, Access, ChannelKind, USER_CHANNEL_PREFIX};
use crate::protocol::frame::{self, Frame, SubscribeData};
use crate::protocol::presence::{parse_member, Member};
use crate::protocol::signature;
use crate::protocol::since::Since;

/// How long a presence subscription waits for the node to catch up with its cluster.
const PRESENCE_CATCH_UP: Duration = Duration::from_secs(10);

/// How long a client resuming from an offset this node has not stored yet waits for it, before
/// it is told it was not recovered.
pub const RESUME_WAIT: Duration = Duration::from_secs(5);

/// A channel a connection joins without asking (an SSE stream's), already checked and
/// authorised.
pub struct Join {
    pub channel: String,
    pub member: Option<Member>,
    pub since: Option<Since>,
}

/// What the client asked for, once admitted: what joining the channel takes.
struct Request {
    /// Tells this subscription from an earlier one to the same channel.
    id: u64,
    kind: ChannelKind,
    member: Option<Member>,
    since: Option<Since>,
}

/// Where a subscription stands, with what it needs there (the map holds one per channel).
enum State {
    AwaitingCluster {
        awaited: Awaited,
        request: Box<Request>,
    },
    CatchingUp(Box<CatchingUp>),
    Live(Confirmed),
}

/// A subscription confirmed to the client: what its client events need.
struct Confirmed {
    kind: ChannelKind,
    /// The presence user it joined as.
    user_id: Option<String>,
}

impl Confirmed {
    fn of(request: &Request) -> Confirmed {
        Confirmed {
            kind: request.kind,
            user_id: request.member.as_ref().map(|m| m.user_id.clone()),
        }
    }
}

/// A subscription confirmed, whose missed events go out in parts: those of `epoch` after
/// `after` are still to be sent.
struct CatchingUp {
    id: u64,
    confirmed: Confirmed,
    epoch: String,
    after: u64,
}

/// What an awaiting subscription waits for.
enum Awaited {
    /// This node to catch up with its cluster (a presence channel).
    CaughtUp,
    /// This node to store the history the client resumes from.
    Stored,
}

/// What the connection is to do next for a subscription.
pub enum Step {
    Done,
    /// Wait `until`, then call [`Subscriptions::woken`] with whether it came in time.
    Await {
        channel: String,
        id: u64,
        until: Until,
    },
    /// Push `frames` (a part of a catch-up), then once the outbox has drained call
    /// [`Subscriptions::next_part`].
    SendPart {
        channel: String,
        id: u64,
        frames: Vec<Frame>,
    },
}

/// What a subscription waits for, bounded.
pub enum Until {
    CaughtUp(Cluster),
    /// History stored that far; for a leader, at the latest once it has applied what it had
    /// committed (`through`).
    Stored {
        stored: oneshot::Receiver<()>,
        through: Option<(Cluster, u64)>,
    },
}

impl Until {
    /// Waits; says whether what it waits for came in time.
    pub async fn wait(self) -> bool {
        match self {
            Until::CaughtUp(cluster) => cluster.await_caught_up(PRESENCE_CATCH_UP).await,
            Until::Stored { stored, through } => {
                let applied = async move {
                    match through {
                        Some((cluster, index)) => cluster.await_applied(index, RESUME_WAIT).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    woken = tokio::time::timeout(RESUME_WAIT, stored) => matches!(woken, Ok(Ok(()))),
                    _ = applied => false,
                }
            }
        }
    }
}

/// Why a subscribe is refused: `pusher:subscription_error` with `{type, error, status}`.
struct Refusal {
    kind: &'static str,
    message: String,
    status: u16,
}

fn refusal(kind: &'static str, message: impl Into<String>, status: u16) -> Refusal {
    Refusal {
        kind,
        message: message.into(),
        status,
    }
}

/// The subscriptions of one connection.
pub struct Subscriptions {
    app: Arc<App>,
    order: Order,
    /// The connection, as channels see it.
    me: Subscriber,
    map: HashMap<String, State>,
    next_id: u64,
}

impl Subscriptions {
    pub fn new(app: Arc<App>, order: Order, me: Subscriber) -> Subscriptions {
        Subscriptions {
            app,
            order,
            me,
            map: HashMap::new(),
            next_id: 0,
        }
    }

    /// A client's `pusher:subscribe`; `user` is who the connection signed in as.
    pub fn subscribe(&mut self, data: SubscribeData, user: Option<&str>) -> Step {
        let channel = data.channel.clone();
        if let Some(existing) = self.map.get(&channel) {
            // pusher-js never does this. Once confirmed, it is answered as a success; while it
            // waits, the answer still to come answers both.
            if !matches!(existing, State::AwaitingCluster { .. }) {
                self.answer(frame::subscription_succeeded(
                    &channel,
                    &serde_json::json!({}),
                ));
            }
            return Step::Done;
        }
        match self.admit(data, user) {
            Ok(request) => self.start(channel, request),
            Err(r) => {
                let refused = frame::subscription_error(&channel, r.kind, &r.message, r.status);
                self.answer(refused);
                Step::Done
            }
        }
    }

    /// Joins a channel the connection was given already checked (an SSE stream's).
    pub fn join(&mut self, join: Join) -> Step {
        let request = Request {
            id: self.next_id(),
            kind: ChannelKind::of(&join.channel),
            member: join.member,
            since: join.since,
        };
        self.start(join.channel, request)
    }

    /// What a wait of subscription `id` to `channel` came to: `in_time` or not.
    pub fn woken(&mut self, channel: &str, id: u64, in_time: bool) -> Step {
        let caught_up = match self.map.get(channel) {
            Some(State::AwaitingCluster { awaited, request }) if request.id == id => {
                matches!(awaited, Awaited::CaughtUp)
            }
            // It left meanwhile (and perhaps came back: another subscription).
            _ => return Step::Done,
        };
        let Some(State::AwaitingCluster { request, .. }) = self.map.remove(channel) else {
            return Step::Done;
        };
        if caught_up && !in_time {
            let message = "this node has not caught up with its cluster; try again";
            self.answer(frame::subscription_error(
                channel,
                "ClusterUnavailable",
                message,
                503,
            ));
            return Step::Done;
        }
        // Caught up, it may still wait for history; after waiting for history, stored that far
        // or tired of waiting, it is answered now.
        self.join_now(channel.to_owned(), *request, caught_up)
    }

    /// The outbox drained the last part of subscription `id`'s catch-up: the next part.
    pub fn next_part(&mut self, channel: &str, id: u64) -> Step {
        let (epoch, after) = match self.map.get(channel) {
            Some(State::CatchingUp(c)) if c.id == id => (c.epoch.clone(), c.after),
            _ => return Step::Done,
        };
        if self.me.outbox.is_closed() {
            return Step::Done;
        }
        let budget = self.budget();
        let caught_up = self
            .order
            .catch_up(&self.app, channel, &self.me, (&epoch, after), budget);
        match caught_up {
            Ok(CatchUp::Part { frames, last }) => {
                if let Some(State::CatchingUp(c)) = self.map.get_mut(channel) {
                    c.after = last;
                }
                let channel = channel.to_owned();
                Step::SendPart {
                    channel,
                    id,
                    frames,
                }
            }
            Ok(CatchUp::Joined) => {
                if let Some(State::CatchingUp(c)) = self.map.remove(channel) {
                    self.map
                        .insert(channel.to_owned(), State::Live(c.confirmed));
                }
                Step::Done
            }
            Err(e) => self.history_failed(channel, &e),
        }
    }

    /// A client's `pusher:unsubscribe` (or a presence channel refusing it): the connection
    /// leaves the channel if it had joined, and forgets the subscription whatever its state.
    pub fn unsubscribe(&mut self, channel: &str) {
        if let Some(State::Live(_)) = self.map.remove(channel) {
            self.app.channels.unsubscribe(channel, self.me.socket_id);
        }
    }

    /// The connection closes: it leaves every channel it joined.
    pub fn leave_all(&mut self) {
        for (channel, state) in self.map.drain() {
            if let State::Live(_) = state {
                self.app.channels.unsubscribe(&channel, self.me.socket_id);
            }
        }
    }

    /// The kind of a channel the connection's subscription was confirmed on, and the presence
    /// user it joined as; `None` while it is not subscribed, or still waiting.
    pub fn confirmed(&self, channel: &str) -> Option<(ChannelKind, Option<&str>)> {
        let confirmed = match self.map.get(channel)? {
            State::AwaitingCluster { .. } => return None,
            State::CatchingUp(c) => &c.confirmed,
            State::Live(confirmed) => confirmed,
        };
        Some((confirmed.kind, confirmed.user_id.as_deref()))
    }

    /// Checks a new subscribe: the name, the connection's limit, and that the client may join
    /// the channel (signed by the app's backend, or its own user channel); gives what joining
    /// takes.
    fn admit(&mut self, data: SubscribeData, user: Option<&str>) -> Result<Request, Refusal> {
        let limits = &self.app.limits;
        let name = &data.channel;
        channel::validate_channel_name(name, limits.max_channel_name_len)
            .map_err(|e| refusal("InvalidChannel", format!("invalid channel name: {e}"), 400))?;
        // Waiting subscriptions count: they are in the map.
        let max = limits.max_subscriptions_per_connection;
        if self.map.len() >= max {
            let message = format!("at most {max} subscriptions per connection");
            return Err(refusal("LimitReached", message, 429));
        }
        let kind = ChannelKind::of(name);
        self.authorize(&data, kind, user)?;
        let member = if kind.is_presence() {
            let channel_data = data.channel_data.as_deref().unwrap_or("");
            let member = parse_member(
                channel_data,
                limits.max_user_id_len,
                limits.max_user_info_bytes,
            );
            Some(member.map_err(|message| refusal("InvalidChannelData", message, 400))?)
        } else {
            None
        };
        Ok(Request {
            id: self.next_id(),
            kind,
            member,
            since: data.since,
        })
    }

    /// Whether the client may join `data.channel`.
    fn authorize(
        &self,
        data: &SubscribeData,
        kind: ChannelKind,
        user: Option<&str>,
    ) -> Result<(), Refusal> {
        let name = &data.channel;
        match kind.access {
            Access::Public => Ok(()),
            Access::User if user == Some(&name[USER_CHANNEL_PREFIX.len()..]) => Ok(()),
            Access::User => Err(refusal("AuthError", "sign in as this user first", 401)),
            Access::Private | Access::Encrypted | Access::Presence => {
                let channel_data = kind
                    .is_presence()
                    .then(|| data.channel_data.as_deref().unwrap_or(""));
                let socket_id = self.me.socket_id.to_string();
                let to_sign = signature::channel_string(&socket_id, name, channel_data);
                let auth = data.auth.as_deref().unwrap_or("");
                if signature::verify_auth(&self.app.key, &self.app.secret, auth, &to_sign) {
                    return Ok(());
                }
                let message = if auth.is_empty() {
                    "auth is required for this channel"
                } else {
                    "invalid signature"
                };
                Err(refusal("AuthError", message, 401))
            }
        }
    }

    /// Starts an admitted subscription: it waits for the cluster first when it is a presence
    /// channel and this node has not caught up (until then its members may be of an earlier
    /// run), else it joins.
    fn start(&mut self, channel: String, request: Request) -> Step {
        let cluster = &self.app.cluster;
        if !request.kind.is_presence() || cluster.caught_up() {
            return self.join_now(channel, request, true);
        }
        let until = Until::CaughtUp(cluster.clone());
        let id = request.id;
        let state = State::AwaitingCluster {
            awaited: Awaited::CaughtUp,
            request: Box::new(request),
        };
        self.map.insert(channel.clone(), state);
        Step::Await { channel, id, until }
    }

    /// Joins the subscription to `channel` now (with what it missed, when it resumes a history
    /// channel); if it resumes from an offset this node has not stored yet and `may_wait`, it
    /// waits for that instead.
    fn join_now(&mut self, channel: String, request: Request, may_wait: bool) -> Step {
        let id = request.id;
        let joining = Joining {
            channel: channel.clone(),
            subscriber: self.me.clone(),
            member: request.member.clone(),
            since: request.since.clone(),
            budget: self.budget(),
        };
        let (state, step) = match self.order.join(&self.app, joining, may_wait) {
            Ok(Joined::Live) => (State::Live(Confirmed::of(&request)), Step::Done),
            Ok(Joined::CatchingUp {
                confirmation,
                first,
                epoch,
                after,
            }) => {
                self.answer(confirmation.frame(&channel));
                let part = Step::SendPart {
                    channel: channel.clone(),
                    id,
                    frames: first,
                };
                let confirmed = Confirmed::of(&request);
                let state = CatchingUp {
                    id,
                    confirmed,
                    epoch,
                    after,
                };
                (State::CatchingUp(Box::new(state)), part)
            }
            Ok(Joined::Ahead { stored, committed }) => {
                let through = committed.map(|index| (self.app.cluster.clone(), index));
                let wait = Step::Await {
                    channel: channel.clone(),
                    id,
                    until: Until::Stored { stored, through },
                };
                let state = State::AwaitingCluster {
                    awaited: Awaited::Stored,
                    request: Box::new(request),
                };
                (state, wait)
            }
            Err(e) => return self.history_failed(&channel, &e),
        };
        self.map.insert(channel, state);
        step
    }

    fn history_failed(&mut self, channel: &str, e: &StorageError) -> Step {
        tracing::error!(error = %e, "reading history failed");
        self.map.remove(channel);
        let error = "history could not be read";
        self.answer(frame::subscription_error(
            channel,
            "HistoryUnavailable",
            error,
            503,
        ));
        Step::Done
    }

    fn answer(&self, frame: Frame) {
        self.me.outbox.answer(frame, &self.app.metrics);
    }

    /// The most bytes of missed events sent at once: half the outbound bound.
    fn budget(&self) -> usize {
        self.me.outbox.limit() / 2
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}
