//! The Pusher Channels protocol, independent of transport: frames, names, signatures, codes,
//! presence members and subscription confirmations.

pub mod channel;
pub mod confirmation;
pub mod frame;
pub mod presence;
pub mod publish;
pub mod signature;
pub mod since;
pub mod socket_id;
pub mod sse;
pub mod websocket;

/// Close and error codes of the Pusher protocol used by Chorus.
pub mod code {
    /// App key unknown: clients must not reconnect.
    pub const APP_UNKNOWN: u16 = 4001;
    /// Over the app's connection quota.
    pub const OVER_QUOTA: u16 = 4004;
    /// Unsupported protocol version.
    pub const UNSUPPORTED_PROTOCOL: u16 = 4007;
    /// No protocol version given.
    pub const NO_PROTOCOL: u16 = 4008;
    /// Unauthorized: refused origin, bad sign-in, forbidden client event, terminated by the app.
    pub const UNAUTHORIZED: u16 = 4009;
    /// Over capacity: a reader too slow for its outbound buffer. Clients reconnect after backoff.
    pub const OVER_CAPACITY: u16 = 4100;
    /// Reconnect now: the node is shutting down.
    pub const RECONNECT: u16 = 4200;
    /// No pong came back in time.
    pub const PONG_NOT_RECEIVED: u16 = 4201;
    /// Client events over the per-connection rate.
    pub const RATE_LIMITED: u16 = 4301;
}
