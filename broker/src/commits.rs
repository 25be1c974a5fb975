//! What the node does with each change its cluster commits, in log order: history events go to
//! this node's subscribers with their offsets and epoch (they are already stored here), and wake
//! the subscribers waiting for this node to store that far; presence changes go to the
//! channels' presence actors, which tell their subscribers who joined or left. Channels occupied
//! and vacated cluster-wide, and nodes admitted and gone, are no client's business here.
//!
//! [`deliver_all`] takes the cluster's feed on a thread of its own, batch after batch. The
//! cluster's state machine holds the node's order lock until a batch is dropped (see
//! `crate::order`), so this thread never takes the order lock and never blocks: frames go into
//! the subscribers' outboxes and messages into the actors' mailboxes.

use chorus_cluster::{Change, CommitFeed, HistoryCommit, PresenceEvent};

use crate::actors::messages::MemberChanged;
use crate::apps::Apps;
use crate::order::Order;
use crate::protocol::frame::{self, SocketId};

/// Delivers what the cluster re-applied as it started, at once (call it before the node serves
/// anyone), then every batch of `feed`, in order, on a thread of its own, until the cluster
/// stops.
pub fn deliver_all(
    mut feed: CommitFeed,
    apps: Apps,
    order: Order,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    for committed in feed.take_replayed() {
        deliver(&apps, &order, &committed.change);
    }
    std::thread::Builder::new()
        .name("chorus-commits".to_owned())
        .spawn(move || {
            while let Some(batch) = feed.blocking_next() {
                for committed in &batch.changes {
                    deliver(&apps, &order, &committed.change);
                }
                // Dropping the batch lets the state machine go on.
            }
        })
}

/// Hands one committed change to this node's subscribers.
fn deliver(apps: &Apps, order: &Order, change: &Change) {
    match change {
        Change::History(commit) => history_stored(apps, order, commit),
        Change::Presence(event) => presence_changed(apps, event),
        Change::ChannelOccupied(_)
        | Change::ChannelVacated(_)
        | Change::NodeAdmitted { .. }
        | Change::NodeLeft { .. } => {}
    }
}

/// Tells a presence channel's actor, if this node has one, that a user joined or left it.
fn presence_changed(apps: &Apps, event: &PresenceEvent) {
    let Some(app) = apps.by_id(&event.app) else {
        return;
    };
    let joined = event
        .joined
        .as_ref()
        .map(|info| serde_json::from_str(info).unwrap_or_else(|_| info.as_str().into()));
    let change = MemberChanged {
        user_id: event.user_id.clone(),
        joined,
    };
    app.channels.member_changed(&event.channel, change);
}

/// Delivers stored history events to their channel's subscribers here, and wakes the resumes
/// waiting for them.
fn history_stored(apps: &Apps, order: &Order, commit: &HistoryCommit) {
    let Some(app) = apps.by_id(&commit.app) else {
        tracing::debug!(app = %commit.app, "committed history of an unknown app");
        return;
    };
    let except = commit
        .except
        .as_deref()
        .and_then(|socket| socket.parse::<SocketId>().ok());
    for (offset, event) in (commit.first_offset..).zip(&commit.events) {
        let frame = frame::history_event(
            &commit.channel,
            &event.event,
            &event.data,
            offset,
            &commit.epoch,
        );
        if let Err(e) = app.channels.publish(&commit.channel, frame, except) {
            // Stored, so a subscriber can recover it; the live copy is dropped.
            tracing::warn!(error = %e, offset, "history event stored but not delivered live");
        }
    }
    if let Some(last) = (commit.events.len() as u64).checked_sub(1) {
        let last = commit.first_offset + last;
        order.stored(&app.id, &commit.channel, &commit.epoch, last);
    }
}
