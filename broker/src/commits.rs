//! What the node does with each change its cluster commits, in log order: history events go to
//! this node's subscribers with their offsets and epoch (they are already stored here), and wake
//! the subscribers waiting for this node to store that far; presence changes go to the
//! channels' presence actors, which tell their subscribers who joined or left. Channels occupied
//! and vacated and users joining and leaving are queued for the apps' webhooks (on every node;
//! the leader sends them), and the webhooks' committed marks drop what the leader sent. Nodes
//! admitted and gone are no client's business here.
//!
//! The net changes of a snapshot installed queue no webhooks: the leader has queued the changes
//! it sums up one by one, and sends them; only a node that installed a snapshot and then came to
//! lead before the leader sent them would miss them.
//!
//! [`deliver_all`] takes the cluster's feed on a thread of its own, batch after batch. The
//! cluster's state machine holds the node's order lock until a batch is dropped (see
//! `crate::order`), so this thread never takes the order lock and never blocks: frames go into
//! the subscribers' outboxes and messages into the actors' mailboxes.

use chorus_cluster::{Change, CommitFeed, Committed, HistoryCommit, PresenceEvent};

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
    deliver_batch(&apps, &order, &feed.take_replayed(), false);
    std::thread::Builder::new()
        .name("chorus-commits".to_owned())
        .spawn(move || {
            while let Some(batch) = feed.blocking_next() {
                deliver_batch(&apps, &order, &batch.changes, batch.from_snapshot);
                // Dropping the batch lets the state machine go on.
            }
        })
}

/// Hands the changes of whole log entries (or of a snapshot installed) on, in order.
fn deliver_batch(apps: &Apps, order: &Order, changes: &[Committed], from_snapshot: bool) {
    let mut place = (0, 0);
    for committed in changes {
        // The changes of one entry come together: each takes the next place in it.
        place = match place {
            (index, seq) if index == committed.index => (index, seq + 1),
            _ => (committed.index, 0),
        };
        deliver(apps, order, &committed.change);
        to_webhooks(apps, committed, place.1, from_snapshot);
    }
}

/// Queues the webhook a committed change calls for (unless it comes from a snapshot), or drops
/// what the leader has sent.
fn to_webhooks(apps: &Apps, committed: &Committed, seq: u32, from_snapshot: bool) {
    let app_id = match &committed.change {
        Change::ChannelOccupied(key) | Change::ChannelVacated(key) => &key.app,
        Change::Presence(event) => &event.app,
        Change::WebhooksSent { target, through } => {
            if let Some(app) = apps.by_id(&target.app) {
                app.webhooks.sent_through(&target.url, *through);
            }
            return;
        }
        Change::History(_) | Change::NodeAdmitted { .. } | Change::NodeLeft { .. } => return,
    };
    if from_snapshot {
        return;
    }
    if let Some(app) = apps.by_id(app_id) {
        (app.webhooks).committed(committed.index, seq, &committed.change);
    }
}

/// Hands one committed change to this node's subscribers.
fn deliver(apps: &Apps, order: &Order, change: &Change) {
    match change {
        Change::History(commit) => history_stored(apps, order, commit),
        Change::Presence(event) => presence_changed(apps, event),
        Change::ChannelOccupied(_)
        | Change::ChannelVacated(_)
        | Change::NodeAdmitted { .. }
        | Change::NodeLeft { .. }
        | Change::WebhooksSent { .. } => {}
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
