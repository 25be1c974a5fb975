//! The connection actor: one per client, WebSocket or Server-Sent Events. It owns the socket's
//! sending side (its [`Outbox`]), reads the client's frames and dispatches them, answers pings,
//! and enforces the per-connection limits (frame size, client-event rate, liveness). Its
//! subscriptions are [`Subscriptions`]: it runs the steps they answer (waiting for the cluster,
//! draining a catch-up part). An SSE client is listen-only: it joins the channels its request
//! named (checked by `http/sse.rs`) and gets heartbeats instead of pings. Either closes when
//! told to ([`Disconnect`]).
//!
//! It never writes to the socket itself: everything goes through its outbox. Published events
//! reach the outbox straight from the channels' actors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{
    Actor, ActorContext, ActorFutureExt, Addr, AsyncContext, Context, Handler, StreamHandler,
    WrapFuture,
};
use actix_ws::{AggregatedMessage, CloseCode, ProtocolError};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::actors::messages::{ConnectionRecipients, Disconnect, Subscriber, SubscriptionRejected};
use crate::apps::App;
use crate::order::Order;
use crate::outbox::Outbox;
use crate::protocol::channel;
use crate::protocol::code;
use crate::protocol::frame::{self, ClientMessage, Frame, SocketId};
use crate::protocol::signature;
use crate::router;
use crate::subscriptions::{Join, Step, Subscriptions};

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

/// A connection an endpoint accepted: what the actor is made of.
pub struct Accepted {
    pub socket_id: SocketId,
    pub app: Arc<App>,
    pub order: Order,
    pub outbox: Outbox,
    pub timeouts: Timeouts,
}

/// How the client is connected.
enum Client {
    WebSocket,
    /// Listen-only; the channels still to join when the actor starts.
    EventStream(Vec<Join>),
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
    subscriptions: Subscriptions,
    /// The user id after `pusher:signin`.
    user: Option<String>,
    /// How the app and the channels reach it.
    recipients: Arc<ConnectionRecipients>,
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
    /// A WebSocket client's connection; `me` is the address of the actor it will be.
    pub fn websocket(accepted: Accepted, me: Addr<Connection>) -> Connection {
        Connection::with_client(accepted, Client::WebSocket, me)
    }

    /// An SSE client's connection, which joins `joins` as it starts.
    pub fn event_stream(accepted: Accepted, joins: Vec<Join>, me: Addr<Connection>) -> Connection {
        Connection::with_client(accepted, Client::EventStream(joins), me)
    }

    fn with_client(accepted: Accepted, client: Client, me: Addr<Connection>) -> Connection {
        let Accepted {
            socket_id,
            app,
            order,
            outbox,
            timeouts,
        } = accepted;
        let recipients = Arc::new(ConnectionRecipients {
            disconnect: me.clone().recipient(),
            rejected: me.recipient(),
        });
        let subscriber = Subscriber {
            socket_id,
            outbox: outbox.clone(),
            connection: recipients.clone(),
        };
        let now = Instant::now();
        Connection {
            id: socket_id,
            client,
            subscriptions: Subscriptions::new(app.clone(), order, subscriber),
            app,
            outbox,
            timeouts,
            user: None,
            recipients,
            last_heard: now,
            ping_sent: None,
            client_events: RateWindow::new(now),
            closing: None,
        }
    }

    fn send(&self, frame: Frame) {
        self.outbox.answer(frame, &self.app.metrics);
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
            Ok(ClientMessage::Subscribe(data)) => {
                let step = self.subscriptions.subscribe(data, self.user.as_deref());
                self.run(step, ctx);
            }
            Ok(ClientMessage::Unsubscribe { channel }) => self.subscriptions.unsubscribe(&channel),
            Ok(ClientMessage::Signin(data)) => self.signin(&data.auth, &data.user_data),
            Ok(ClientMessage::ClientEvent {
                event,
                channel,
                data,
            }) => self.client_event(&event, &channel, &data),
            Err(e) => self.error(None, &e.to_string()),
        }
    }

    /// Runs what a subscription is to do next: wait for the cluster, or push a part of a
    /// catch-up and wait for the outbox to drain it; then hands the outcome back.
    fn run(&mut self, step: Step, ctx: &mut Context<Self>) {
        match step {
            Step::Done => {}
            Step::Await { channel, id, until } => {
                ctx.spawn(until.wait().into_actor(self).map(move |in_time, act, ctx| {
                    let step = act.subscriptions.woken(&channel, id, in_time);
                    act.run(step, ctx);
                }));
            }
            Step::SendPart {
                channel,
                id,
                frames,
            } => {
                for f in &frames {
                    if self.outbox.push_event(f).is_err() {
                        return ctx.notify(Disconnect::slow_reader());
                    }
                }
                let outbox = self.outbox.clone();
                let drained = async move { outbox.drained().await };
                ctx.spawn(drained.into_actor(self).map(move |(), act, ctx| {
                    let step = act.subscriptions.next_part(&channel, id);
                    act.run(step, ctx);
                }));
            }
        }
    }

    fn signin(&mut self, auth: &str, user_data: &str) {
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
        self.app
            .user_signed_in(&id, self.id, self.recipients.clone());
        self.user = Some(id);
        self.send(frame::internal(
            "pusher:signin_success",
            None,
            &serde_json::json!({"user_data": user_data}),
        ));
    }

    fn client_event(&mut self, event: &str, channel: &str, data: &RawValue) {
        let limits = &self.app.limits;
        let Some((kind, user_id)) = self.subscriptions.confirmed(channel) else {
            return self.error(
                Some(code::UNAUTHORIZED),
                &format!("client event refused: not subscribed to {channel}"),
            );
        };
        if !kind.allows_client_events() {
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
        let frame = frame::client_event(channel, event, data, user_id);
        self.app.metrics.published_client.inc();
        if let Err(e) = router::publish(&self.app, channel, frame, Some(self.id)) {
            return self.error(None, &e.to_string());
        }
        let presence_user = user_id.filter(|_| kind.is_presence());
        let socket_id = self.id.to_string();
        (self.app.webhooks).client_event(channel, event, data, &socket_id, presence_user);
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

impl Actor for Connection {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.app.connection_opened(self.id, self.recipients.clone());
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
                for join in joins {
                    let step = self.subscriptions.join(join);
                    self.run(step, ctx);
                }
                ctx.run_interval(self.timeouts.heartbeat, Self::heartbeat);
            }
        }
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        if matches!(self.client, Client::EventStream(_)) {
            self.app.metrics.sse_connections.dec();
        }
        self.subscriptions.leave_all();
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
        self.subscriptions.unsubscribe(&msg.channel);
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
}
