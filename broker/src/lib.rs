//! Chorus: a realtime message broker that speaks the Pusher Channels protocol.
//!
//! Reading order: [`server`] runs a node, which [`node`] builds (its apps, order lock and
//! cluster); [`http`] holds its endpoints (the WebSocket in `http::websocket`, SSE in
//! `http::sse`, the REST API in `http::api`, what it asks the other nodes in `http::peers`);
//! [`actors`] holds the connection, channel and presence actors and the messages they accept;
//! [`subscriptions`] is a connection's subscriptions, each an explicit state; [`order`] is the
//! node's order lock and what runs under it; [`router`] is where a published frame is sent on
//! its way and [`commits`] what the node does with what its cluster commits; [`registry`] is an
//! app's channels on this node and [`fanout`] a channel's subscribers; [`history`] says which
//! channels keep history and what a resuming subscriber gets; [`channel_view`] is an app's
//! channels as the REST API reports them, one node's or the cluster's; [`protocol`] is the wire
//! format, names, signatures and confirmations; [`config`] the settings, one field each, and
//! [`tls`] the certificates of the public and cluster ports, re-read when their files change;
//! [`webhooks`] what the app's receivers are told, queued on disk and retried.

pub mod actors;
pub mod apps;
pub mod channel_view;
pub mod commits;
pub mod config;
pub mod fanout;
pub mod history;
pub mod http;
pub mod metrics;
pub mod node;
pub mod order;
pub mod outbox;
pub mod protocol;
pub mod recent_keys;
pub mod registry;
pub mod router;
pub mod secret_file;
pub mod server;
pub mod subscriptions;
pub mod tls;
pub mod webhooks;
