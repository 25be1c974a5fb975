//! The connection actor: one per client, WebSocket or Server-Sent Events. On a WebSocket it reads
//! the client's frames, answers pings, keeps the connection's subscriptions and signed-in user,
//! and enforces the per-connection limits (frame size, subscriptions, client-event rate). An SSE
//! client is listen-only: it joins the channels its request named (checked by `http/sse.rs`)
//! and gets heartbeats instead of pings. Either closes when told to.
//!
//! It never writes to the socket itself: everything goes through its [`Outbox`]. Published events
//! reach the outbox straight from channel actors.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{
    Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, Message, StreamHandler,
    WrapFuture,
};
use actix_ws::{AggregatedMessage, CloseCode, ProtocolError};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::actors::channel::{Recovery, Subscriber};
use crate::actors::presence::Member;
use crate::apps::App;
use crate::outbox::Outbox;
use crate::protocol::channel::{self, Access, ChannelKind, USER_CHANNEL_PREFIX};
use crate::protocol::code;
use crate::protocol::frame::{self, ClientMessage, Frame, Since, SocketId, SubscribeData};
use crate::protocol::signature;
use crate::router;

/// Timing settings shared by all connections of a node.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Silence after which the server pings the client.
    pub activity: Duration,
    /// Time a ping may go unanswered before the connection is closed with 4201.
    pub pong: Duration,
    /// Interval of the heartbeat comments on an idle SSE stream.
    pub heartbeat: Duration,
}

/// Closes the connection with a code. Sent by the REST API (terminate), channel actors (slow
/// reader) and the node (shutdown).
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

/// A presence channel refused the subscription (it was full): forget it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SubscriptionRejected {
    pub channel: String,
}

/// A channel an SSE stream joins when it starts, already checked and authorised.
pub struct Join {
    pub channel: String,
    pub member: Option<Member>,
    pub since: Option<Since>,
}

/// How the client is connected.
enum Client {
    WebSocket,
    /// Listen-only; the channels still to join when the actor starts.
    EventStream(Vec<Join>),
}

/// What the connection remembers of one subscription.
struct Subscription {
    kind: ChannelKind,
    /// The presence user id the subscription joined as.
    user_id: Option<String>,
}

/// Counts client events in one-second windows.
#[derive(Debug)]
struct RateWindow {
    started: Instant,
    count: u32,
}

impl RateWindow {
    fn new(now: Instant) -> RateWindow {
        RateWindow {
            started: now,
            count: 0,
        }
    }

    /// Takes one event at `now`; `false` when `per_sec` were already taken this second.
    fn allow(&mut self, now: Instant, per_sec: u32) -> bool {
        if now.duration_since(self.started) >= Duration::from_secs(1) {
            *self = RateWindow::new(now);
        }
        if self.count >= per_sec {
            return false;
        }
        self.count += 1;
        true
    }
}

pub struct Connection {
    id: SocketId,
    client: Client,
    app: Arc<App>,
    outbox: Outbox,
    timeouts: Timeouts,
    subscriptions: HashMap<String, Subscription>,
    /// History channels whose missed events are being sent in parts before the connection joins
    /// them live: channel -> (epoch, offset of the last event sent).
    catching_up: HashMap<String, (String, u64)>,
    /// The user id after `pusher:signin`.
    user: Option<String>,
    last_heard: Instant,
    ping_sent: Option<Instant>,
    client_events: RateWindow,
    /// Why the connection is closing, for the disconnect metric.
    closing: Option<(&'static str, u16)>,
}

/// Frames larger than this are refused (the data limit plus room for the envelope).
fn frame_limit(app: &App) -> usize {
    app.limits.max_message_bytes + 1024
}

impl Connection {
    /// A WebSocket client's connection.
    pub fn new(id: SocketId, app: Arc<App>, outbox: Outbox, timeouts: Timeouts) -> Connection {
        Connection::with_client(id, Client::WebSocket, app, outbox, timeouts)
    }

    /// An SSE client's connection, which joins `joins` as it starts.
    pub fn event_stream(
        id: SocketId,
        joins: Vec<Join>,
        app: Arc<App>,
        outbox: Outbox,
        timeouts: Timeouts,
    ) -> Connection {
        Connection::with_client(id, Client::EventStream(joins), app, outbox, timeouts)
    }

    fn with_client(
        id: SocketId,
        client: Client,
        app: Arc<App>,
        outbox: Outbox,
        timeouts: Timeouts,
    ) -> Connection {
        let now = Instant::now();
        Connection {
            id,
            client,
            app,
            outbox,
            timeouts,
            subscriptions: HashMap::new(),
            catching_up: HashMap::new(),
            user: None,
            last_heard: now,
            ping_sent: None,
            client_events: RateWindow::new(now),
            closing: None,
        }
    }

    fn send(&self, frame: Frame) {
        self.app.metrics.messages_sent.inc();
        self.app.metrics.bytes_sent.inc_by(frame.len() as u64);
        if self.outbox.push_protocol(frame).is_err() {
            self.outbox
                .abort(code::OVER_CAPACITY, "outbound buffer full");
        }
    }

    fn error(&self, code: Option<u16>, message: &str) {
        self.send(frame::error(code, message));
    }

    fn close(&mut self, ctx: &mut Context<Self>, code: u16, message: &str, reason: &'static str) {
        if self.closing.is_none() {
            self.closing = Some((reason, code));
        }
        self.outbox.close(code, message);
        ctx.stop();
    }

    fn on_text(&mut self, text: &str, ctx: &mut Context<Self>) {
        if text.len() > frame_limit(&self.app) {
            self.error(
                None,
                &format!(
                    "message of {} bytes is over the limit of {} bytes",
                    text.len(),
                    frame_limit(&self.app)
                ),
            );
            return;
        }
        match frame::parse_client_message(text) {
            Ok(ClientMessage::Ping) => self.send(frame::pong()),
            Ok(ClientMessage::Pong) => {}
            Ok(ClientMessage::Subscribe(data)) => self.subscribe(data, ctx),
            Ok(ClientMessage::Unsubscribe { channel }) => self.unsubscribe(&channel),
            Ok(ClientMessage::Signin(data)) => self.signin(&data.auth, &data.user_data, ctx),
            Ok(ClientMessage::ClientEvent {
                event,
                channel,
                data,
            }) => self.client_event(&event, &channel, &data),
            Err(e) => self.error(None, &e.to_string()),
        }
    }

    fn subscribe(&mut self, data: SubscribeData, ctx: &mut Context<Self>) {
        let name = data.channel;
        let limits = &self.app.limits;
        let refuse = |kind: &str, message: &str, status: u16| {
            self.send(frame::subscription_error(&name, kind, message, status));
        };
        if let Err(e) = channel::validate_channel_name(&name, limits.max_channel_name_len) {
            return refuse("InvalidChannel", &format!("invalid channel name: {e}"), 400);
        }
        if self.subscriptions.contains_key(&name) {
            // pusher-js never does this; a repeated subscribe is answered as a success.
            return self.send(frame::subscription_succeeded(&name, &serde_json::json!({})));
        }
        if self.subscriptions.len() >= limits.max_subscriptions_per_connection {
            return refuse(
                "LimitReached",
                &format!(
                    "at most {} subscriptions per connection",
                    limits.max_subscriptions_per_connection
                ),
                429,
            );
        }
        let kind = ChannelKind::of(&name);
        let socket_id = self.id.to_string();
        match kind.access {
            Access::User => {
                let owner = &name[USER_CHANNEL_PREFIX.len()..];
                if self.user.as_deref() != Some(owner) {
                    return refuse("AuthError", "sign in as this user first", 401);
                }
            }
            Access::Public => {}
            Access::Private | Access::Encrypted | Access::Presence => {
                let channel_data = kind
                    .is_presence()
                    .then(|| data.channel_data.as_deref().unwrap_or(""));
                let to_sign = signature::channel_string(&socket_id, &name, channel_data);
                let auth = data.auth.as_deref().unwrap_or("");
                if !signature::verify_auth(&self.app.key, &self.app.secret, auth, &to_sign) {
                    let message = if auth.is_empty() {
                        "auth is required for this channel"
                    } else {
                        "invalid signature"
                    };
                    return refuse("AuthError", message, 401);
                }
            }
        }
        let member = if kind.is_presence() {
            match parse_member(data.channel_data.as_deref().unwrap_or(""), &self.app) {
                Ok(m) => Some(m),
                Err(message) => return refuse("InvalidChannelData", &message, 400),
            }
        } else {
            None
        };
        self.join(name, kind, member, data.since.as_ref(), ctx);
    }

    /// Joins a channel the client may join: records the subscription and hands it to the
    /// channel, with what it missed on a history channel.
    fn join(
        &mut self,
        name: String,
        kind: ChannelKind,
        member: Option<Member>,
        since: Option<&Since>,
        ctx: &mut Context<Self>,
    ) {
        self.subscriptions.insert(
            name.clone(),
            Subscription {
                kind,
                user_id: member.as_ref().map(|m| m.user_id.clone()),
            },
        );
        // On a history channel, reading what the subscriber missed and joining the channel
        // happen under the channel order lock: no event is stored in between.
        let app = self.app.clone();
        let in_order = app.history.keeps(&name).then(|| app.history.order.lock());
        let mut recovery = None;
        if in_order.is_some() {
            let budget = self.outbox.limit() / 2;
            match app.history.recovery(&app.id, &name, since, budget) {
                Ok(r) => recovery = Some(r),
                Err(e) => return self.history_failed(&name, &e),
            }
        }
        if let Some(r) = recovery.as_mut().filter(|r| r.more_after.is_some()) {
            if kind.is_presence() {
                // A presence channel's confirmation comes from its actor: no replay in parts.
                r.replay.clear();
                r.more_after = None;
                if let Some(fields) = r.fields.as_mut() {
                    fields.insert("recovered".into(), false.into());
                }
            } else {
                drop(in_order);
                let r = recovery.take().expect("checked above");
                return self.start_catch_up(name, r, ctx);
            }
        }
        app.channels
            .subscribe(&name, self.subscriber(ctx), member, recovery);
    }

    fn subscriber(&self, ctx: &mut Context<Self>) -> Subscriber {
        Subscriber {
            socket_id: self.id,
            outbox: self.outbox.clone(),
            connection: ctx.address(),
        }
    }

    fn history_failed(&mut self, channel: &str, e: &chorus_storage::StorageError) {
        tracing::error!(error = %e, "reading history failed");
        self.subscriptions.remove(channel);
        self.catching_up.remove(channel);
        let error = "history could not be read";
        self.send(frame::subscription_error(
            channel,
            "HistoryUnavailable",
            error,
            503,
        ));
    }

    /// More was missed than half the outbound bound: confirm now, send the first part, and the
    /// rest part by part as the connection drains; join live once caught up.
    fn start_catch_up(&mut self, channel: String, r: Recovery, ctx: &mut Context<Self>) {
        let fields = r.fields.unwrap_or_default();
        let epoch = fields["epoch"].as_str().unwrap_or_default().to_owned();
        self.send(frame::subscription_succeeded(
            &channel,
            &serde_json::Value::Object(fields),
        ));
        let after = r.more_after.expect("a catch-up has more to send");
        self.catching_up.insert(channel.clone(), (epoch, after));
        self.send_part(channel, &r.replay, ctx);
    }

    /// Pushes one part of a catch-up and waits for the outbox to drain before the next.
    fn send_part(&mut self, channel: String, frames: &[Frame], ctx: &mut Context<Self>) {
        for f in frames {
            if self.outbox.push_event(f).is_err() {
                return ctx.notify(Disconnect::slow_reader());
            }
        }
        let outbox = self.outbox.clone();
        ctx.spawn(
            async move { outbox.drained().await }
                .into_actor(self)
                .map(move |(), act, ctx| act.catch_up(channel, ctx)),
        );
    }

    /// The next part of a catch-up; the last one is read under the order lock and joins live.
    fn catch_up(&mut self, channel: String, ctx: &mut Context<Self>) {
        let Some((epoch, after)) = self.catching_up.get(&channel).cloned() else {
            return; // unsubscribed meanwhile
        };
        if self.outbox.is_closed() {
            return;
        }
        let app = self.app.clone();
        let budget = self.outbox.limit() / 2;
        let mut in_order = None;
        loop {
            let missed = match app
                .history
                .catch_up(&app.id, &channel, &epoch, after, budget)
            {
                Ok(missed) => missed,
                Err(e) => return self.history_failed(&channel, &e),
            };
            let recovery = match missed {
                Some(m) if m.more => {
                    drop(in_order);
                    self.catching_up.insert(channel.clone(), (epoch, m.last));
                    return self.send_part(channel, &m.frames, ctx);
                }
                // Near the end: read again under the lock, so nothing lands between the read
                // and joining live.
                Some(_) if in_order.is_none() => {
                    in_order = Some(app.history.order.lock());
                    continue;
                }
                Some(m) => Recovery {
                    fields: None,
                    replay: m.frames,
                    more_after: None,
                },
                // History was lost meanwhile: confirm again, unrecovered.
                None => match app.history.recovery(&app.id, &channel, None, 0) {
                    Ok(mut r) => {
                        if let Some(fields) = r.fields.as_mut() {
                            fields.insert("recovered".into(), false.into());
                        }
                        r
                    }
                    Err(e) => return self.history_failed(&channel, &e),
                },
            };
            self.catching_up.remove(&channel);
            let subscriber = self.subscriber(ctx);
            app.channels
                .subscribe(&channel, subscriber, None, Some(recovery));
            return;
        }
    }

    fn unsubscribe(&mut self, channel: &str) {
        let caught_up = self.catching_up.remove(channel).is_none();
        if self.subscriptions.remove(channel).is_some() && caught_up {
            self.app.channels.unsubscribe(channel, self.id);
        }
    }

    fn signin(&mut self, auth: &str, user_data: &str, ctx: &mut Context<Self>) {
        let to_sign = signature::signin_string(&self.id.to_string(), user_data);
        if !signature::verify_auth(&self.app.key, &self.app.secret, auth, &to_sign) {
            return self.error(
                Some(code::UNAUTHORIZED),
                "sign-in refused: invalid signature",
            );
        }
        #[derive(Deserialize)]
        struct UserData {
            id: serde_json::Value,
        }
        let id = match serde_json::from_str::<UserData>(user_data).map(|u| u.id) {
            Ok(serde_json::Value::String(s)) => s,
            Ok(serde_json::Value::Number(n)) => n.to_string(),
            _ => {
                return self.error(
                    Some(code::UNAUTHORIZED),
                    "sign-in refused: user_data must be a JSON object with an id",
                )
            }
        };
        if let Err(e) = channel::validate_user_id(&id, self.app.limits.max_user_id_len) {
            return self.error(
                Some(code::UNAUTHORIZED),
                &format!("sign-in refused: user id {e}"),
            );
        }
        if let Some(previous) = self.user.take() {
            self.app.user_signed_out(&previous, self.id);
        }
        self.app.user_signed_in(&id, self.id, ctx.address());
        self.user = Some(id);
        self.send(frame::internal(
            "pusher:signin_success",
            None,
            &serde_json::json!({"user_data": user_data}),
        ));
    }

    fn client_event(&mut self, event: &str, channel: &str, data: &RawValue) {
        let limits = &self.app.limits;
        let Some(subscription) = self.subscriptions.get(channel) else {
            return self.error(
                Some(code::UNAUTHORIZED),
                &format!("client event refused: not subscribed to {channel}"),
            );
        };
        if !subscription.kind.allows_client_events() {
            return self.error(
                Some(code::UNAUTHORIZED),
                "client events are allowed only on private and presence channels",
            );
        }
        if let Err(e) = channel::validate_event_name(event, limits.max_event_name_len) {
            return self.error(None, &format!("invalid event name: {e}"));
        }
        if data.get().len() > limits.max_message_bytes {
            return self.error(
                None,
                &format!("event data is over {} bytes", limits.max_message_bytes),
            );
        }
        if !self
            .client_events
            .allow(Instant::now(), limits.client_events_per_sec)
        {
            return self.error(
                Some(code::RATE_LIMITED),
                &format!(
                    "client event rate limit: at most {} per second",
                    limits.client_events_per_sec
                ),
            );
        }
        let frame = frame::client_event(channel, event, data, subscription.user_id.as_deref());
        self.app.metrics.published_client.inc();
        if let Err(e) = router::publish(&self.app, channel, frame, Some(self.id)) {
            self.error(None, &e.to_string());
        }
    }

    /// Pings a silent client and closes one that did not answer.
    fn check_liveness(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        match self.ping_sent {
            Some(sent) if now.duration_since(sent) >= self.timeouts.pong => {
                self.close(
                    ctx,
                    code::PONG_NOT_RECEIVED,
                    "pong not received",
                    "pong_timeout",
                );
            }
            Some(_) => {}
            None if now.duration_since(self.last_heard) >= self.timeouts.activity => {
                self.send(frame::ping());
                self.ping_sent = Some(now);
            }
            None => {}
        }
    }
}

impl Connection {
    /// Keeps an SSE stream open through proxies, and notices a client that left.
    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        if self.outbox.is_closed() {
            self.closing.get_or_insert(("client_closed", 1000));
            ctx.stop();
            return;
        }
        self.outbox.push_heartbeat();
    }
}

/// Parses and checks presence `channel_data`: `{"user_id": ..., "user_info"?: ...}`.
pub fn parse_member(channel_data: &str, app: &App) -> Result<Member, String> {
    #[derive(Deserialize)]
    struct ChannelData {
        user_id: serde_json::Value,
        #[serde(default)]
        user_info: Option<Box<RawValue>>,
    }
    let data: ChannelData = serde_json::from_str(channel_data)
        .map_err(|e| format!("channel_data must be a JSON object with a user_id: {e}"))?;
    let user_id = match data.user_id {
        serde_json::Value::String(s) => s,
        serde_json::Value::Number(n) => n.to_string(),
        _ => return Err("user_id must be a string or a number".into()),
    };
    channel::validate_user_id(&user_id, app.limits.max_user_id_len)
        .map_err(|e| format!("user_id: {e}"))?;
    let user_info = match data.user_info {
        Some(raw) if raw.get().len() > app.limits.max_user_info_bytes => {
            return Err(format!(
                "user_info is over {} bytes",
                app.limits.max_user_info_bytes
            ))
        }
        Some(raw) => serde_json::from_str(raw.get()).map_err(|e| e.to_string())?,
        None => serde_json::Value::Null,
    };
    Ok(Member { user_id, user_info })
}

impl Actor for Connection {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.app.connection_opened(self.id, ctx.address());
        self.send(frame::connection_established(
            self.id,
            self.timeouts.activity.as_secs(),
        ));
        match std::mem::replace(&mut self.client, Client::EventStream(Vec::new())) {
            Client::WebSocket => {
                self.client = Client::WebSocket;
                let tick = (self.timeouts.activity.min(self.timeouts.pong) / 2)
                    .max(Duration::from_millis(100));
                ctx.run_interval(tick, Self::check_liveness);
            }
            Client::EventStream(joins) => {
                self.app.metrics.sse_connections.inc();
                for j in joins {
                    let kind = ChannelKind::of(&j.channel);
                    self.join(j.channel, kind, j.member, j.since.as_ref(), ctx);
                }
                ctx.run_interval(self.timeouts.heartbeat, Self::heartbeat);
            }
        }
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        if matches!(self.client, Client::EventStream(_)) {
            self.app.metrics.sse_connections.dec();
        }
        for channel in self.subscriptions.keys() {
            if !self.catching_up.contains_key(channel) {
                self.app.channels.unsubscribe(channel, self.id);
            }
        }
        self.app.connection_closed(self.id, self.user.as_deref());
        let (reason, code) = self.closing.unwrap_or(("client_closed", 0));
        self.app.metrics.disconnect(reason, code);
        // Lets the writer finish if the client left without a close frame.
        self.outbox.close(1000, "closed");
    }
}

impl StreamHandler<Result<AggregatedMessage, ProtocolError>> for Connection {
    fn handle(&mut self, msg: Result<AggregatedMessage, ProtocolError>, ctx: &mut Context<Self>) {
        self.last_heard = Instant::now();
        self.ping_sent = None;
        let metrics = &self.app.metrics;
        match msg {
            Ok(AggregatedMessage::Text(text)) => {
                metrics.ws_messages_received.inc();
                metrics.ws_bytes_received.inc_by(text.len() as u64);
                self.on_text(&text, ctx);
            }
            Ok(AggregatedMessage::Binary(bytes)) => {
                metrics.ws_messages_received.inc();
                metrics.ws_bytes_received.inc_by(bytes.len() as u64);
                self.error(
                    None,
                    "binary frames are not part of the protocol; send JSON text",
                );
            }
            Ok(AggregatedMessage::Ping(payload)) => self.outbox.push_pong(payload),
            Ok(AggregatedMessage::Pong(_)) => {}
            Ok(AggregatedMessage::Close(_)) => {
                self.closing.get_or_insert(("client_closed", 1000));
                self.outbox.close(1000, "bye");
                ctx.stop();
            }
            Err(e) => {
                let (close, reason) = match e {
                    ProtocolError::Overflow => (CloseCode::Size, "frame_too_large"),
                    // The client went away without a close frame.
                    ProtocolError::Io(_) => (CloseCode::Abnormal, "client_gone"),
                    _ => (CloseCode::Protocol, "protocol_error"),
                };
                let code: u16 = close.into();
                self.close(ctx, code, &e.to_string(), reason);
            }
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<Disconnect> for Connection {
    type Result = ();

    fn handle(&mut self, msg: Disconnect, ctx: &mut Context<Self>) {
        if msg.reason == "slow_reader" {
            self.app.metrics.slow_readers.inc();
        }
        if msg.announce {
            self.error(Some(msg.code), msg.message);
        }
        self.close(ctx, msg.code, msg.message, msg.reason);
    }
}

impl Handler<SubscriptionRejected> for Connection {
    type Result = ();

    fn handle(&mut self, msg: SubscriptionRejected, _: &mut Context<Self>) {
        self.unsubscribe(&msg.channel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_event_rate_is_per_second() {
        let t0 = Instant::now();
        let mut window = RateWindow::new(t0);
        for _ in 0..10 {
            assert!(window.allow(t0, 10));
        }
        assert!(!window.allow(t0 + Duration::from_millis(999), 10));
        assert!(window.allow(t0 + Duration::from_secs(1), 10));
        assert!(!RateWindow::new(t0).allow(t0, 0));
    }

    fn app(limits: crate::config::Limits) -> App {
        let config = crate::config::AppConfig {
            id: "1".into(),
            key: "k".into(),
            secret: "secret-secret".into(),
            allowed_origins: Vec::new(),
            history: Vec::new(),
            limits,
        };
        App::new(
            &config,
            &crate::metrics::Metrics::new(),
            1 << 20,
            chorus_storage::Store::temporary().unwrap(),
            std::sync::Arc::default(),
        )
    }

    #[test]
    fn presence_channel_data_is_checked_against_the_limits() {
        let app = app(crate::config::Limits {
            max_user_info_bytes: 20,
            max_user_id_len: 5,
            ..Default::default()
        });
        let m = parse_member(r#"{"user_id":"ann","user_info":{"n":1}}"#, &app).unwrap();
        assert_eq!(m.user_id, "ann");
        assert_eq!(m.user_info, serde_json::json!({"n": 1}));
        assert_eq!(
            parse_member(r#"{"user_id":42}"#, &app).unwrap().user_id,
            "42"
        );
        for bad in [
            "",
            "not json",
            "{}",
            r#"{"user_id":null}"#,
            r#"{"user_id":["a"]}"#,
            r#"{"user_id":""}"#,
            r#"{"user_id":"toolong"}"#,
            r#"{"user_id":"a","user_info":{"name":"far too long for the limit"}}"#,
        ] {
            assert!(parse_member(bad, &app).is_err(), "{bad}");
        }
    }
}
