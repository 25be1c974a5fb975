//! Chorus: a realtime message broker that speaks the Pusher Channels protocol.
//!
//! Reading order: [`server`] runs a node; [`http`] holds its endpoints (the WebSocket in
//! `http::websocket`, the REST API in `http::api`, what it asks the other nodes in
//! `http::peers`); [`actors`] holds the connection, channel and presence actors; [`router`] is
//! where a published frame is sent on its way; [`channel_view`] is an app's channels as the REST
//! API reports them, one node's or the cluster's; [`protocol`] is the wire format, names and
//! signatures.

pub mod actors;
pub mod apps;
pub mod channel_view;
pub mod config;
pub mod history;
pub mod http;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod protocol;
pub mod registry;
pub mod router;
pub mod server;
pub mod tls;
