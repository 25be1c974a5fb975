//! The client side of the Pusher Channels protocol: signatures, frames, the REST API, WebSocket
//! connections and Chorus's Server-Sent Events streams.

pub mod frame;
pub mod rest;
pub mod signing;
pub mod sse;
pub mod ws;
