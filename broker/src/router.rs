//! The publish path's one decision point: where a published frame goes.
//!
//! A frame of an ordinary channel goes to this node's subscribers of the channel, then to every
//! other node with interest in the channel (queued on the node's stream to each, see
//! `chorus_cluster::forward`; never waited for), which delivers it to its own subscribers with
//! [`deliver_forwarded`]. A history channel's events stay on this node for now (they will go
//! through the Raft log). Callers (the HTTP API, client events) never need to know which.

use chorus_cluster::{ForwardedFrame, NodeId};
use chorus_storage::{StorageError, StoredEvent};

use crate::apps::{App, Apps};
use crate::protocol::frame::{self, Frame, SocketId};
use crate::registry::Overloaded;

/// Publishes `frame` on `channel` of `app`, except to the connection `except`, here and on every
/// other node with subscribers of the channel. Refused when this node's subscribers of the
/// channel are too far behind to take more; then it goes nowhere.
pub fn publish(
    app: &App,
    channel: &str,
    frame: Frame,
    except: Option<SocketId>,
) -> Result<(), Overloaded> {
    let forwarded = app.channels.cluster().map(|cluster| {
        let text = frame.text.clone();
        (cluster.forwarder(), text)
    });
    app.channels.publish(channel, frame, except)?;
    if let Some((forwarder, text)) = forwarded {
        forwarder.forward(&app.id, channel, || ForwardedFrame {
            app: app.id.clone(),
            channel: channel.to_owned(),
            frame: text.to_string(),
            except: except.map(|socket| socket.to_string()),
        });
    }
    Ok(())
}

/// Delivers frames another node forwarded to this node's subscribers, in their order; returns
/// how many it delivered. They are not forwarded again: the node that published them did.
pub fn deliver_forwarded(apps: &Apps, from: NodeId, frames: Vec<ForwardedFrame>) -> usize {
    let mut delivered = 0;
    for forwarded in frames {
        let Some(app) = apps.by_id(&forwarded.app) else {
            tracing::debug!(from, app = %forwarded.app, "forwarded frame of an unknown app");
            continue;
        };
        let except = forwarded
            .except
            .as_deref()
            .and_then(|socket| socket.parse::<SocketId>().ok());
        let frame = Frame::from_text(forwarded.frame);
        match app.channels.publish(&forwarded.channel, frame, except) {
            Ok(()) => delivered += 1,
            Err(e) => tracing::debug!(from, error = %e, "forwarded frame not delivered"),
        }
    }
    delivered
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
