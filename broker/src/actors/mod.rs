//! The actors of a node: one per connection, one per channel, one per presence channel. They
//! know each other only through the messages they accept, all in [`messages`].

pub mod channel;
pub mod connection;
pub mod messages;
pub mod presence;
