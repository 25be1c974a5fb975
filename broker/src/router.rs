//! The publish path's one decision point: where a published frame goes.
//!
//! Today a node is alone, so a frame goes to this node's subscribers of the channel. The cluster
//! adds its forwarding here: to every other node with interest in the channel for ordinary
//! channels, and through the Raft log for history channels. Callers (the HTTP API, client events)
//! never need to know which.

use crate::apps::App;
use crate::protocol::frame::{Frame, SocketId};
use crate::registry::Overloaded;

/// Publishes `frame` on `channel` of `app`, except to the connection `except`. Refused when the
/// channel's subscribers are too far behind to take more.
pub fn publish(
    app: &App,
    channel: &str,
    frame: Frame,
    except: Option<SocketId>,
) -> Result<(), Overloaded> {
    app.channels.publish(channel, frame, except)
}
