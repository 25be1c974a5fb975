//! The client side of the Pusher Channels protocol: signatures, frames, the REST API and WebSocket connections.

pub mod frame;
pub mod rest;
pub mod signing;
pub mod ws;
