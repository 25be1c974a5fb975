//! The publish path's one decision point: where a published frame goes.
//!
//! Today a node is alone, so a frame goes to this node's subscribers of the channel. The cluster
//! adds its forwarding here: to every other node with interest in the channel for ordinary
//! channels, and through the Raft log for history channels. Callers (the HTTP API, client events)
//! never need to know which.

use chorus_storage::{StorageError, StoredEvent};

use crate::apps::App;
use crate::protocol::frame::{self, Frame, SocketId};
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

/// Publishes an event on a history channel: stores it, which gives it its offset, then delivers
/// it with its offset and epoch. Not yet durable when this returns: the caller flushes the store
/// (once for all the events of a request) before acknowledging.
pub fn publish_history(
    app: &App,
    channel: &str,
    name: &str,
    data: &str,
    except: Option<SocketId>,
) -> Result<(), StorageError> {
    let event = StoredEvent {
        event: name.to_owned(),
        data: data.to_owned(),
        time_ms: crate::history::now_ms(),
    };
    let _in_order = app.history.order.lock();
    let (offset, epoch) = app
        .history
        .store
        .history()
        .append(&[(&app.id, channel, event)])?
        .remove(0);
    let frame = frame::history_event(channel, name, data, offset, &epoch);
    if let Err(e) = app.channels.publish(channel, frame, except) {
        // Stored, so a subscriber can recover it; the live copy is dropped.
        tracing::warn!(error = %e, offset, "history event stored but not delivered live");
    }
    Ok(())
}
