//! Chorus: a realtime message broker that speaks the Pusher Channels protocol.
//!
//! Reading order: [`server`] runs a node; [`http`] holds its endpoints (the WebSocket in
//! `http::websocket`, the REST API in `http::api`); [`actors`] holds the connection, channel and
//! presence actors; [`router`] is where a published frame is sent on its way; [`protocol`] is the
//! wire format, names and signatures.

pub mod actors;
pub mod apps;
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
