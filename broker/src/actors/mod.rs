//! The actors of a node: one per connection, one per channel, one per presence channel.

pub mod channel;
pub mod connection;
pub mod presence;
