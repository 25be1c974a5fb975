//! An app's channels on this node: the map from channel name to its actor, and the cache of
//! cache channels' last events (in memory, and in the node's store so a restart keeps them).
//!
//! Every change goes through one lock, and the messages to a channel's actor are sent while it is
//! held, so the actor sees subscribes, unsubscribes and publishes in the order the lock gave
//! them: a cache channel's new subscriber gets either the cached event or the live one, never
//! both. A channel's actor is created by its first subscriber and dropped with its last.
//!
//! The registry also tells the node's cluster when a channel's first subscriber comes and its last
//! goes (the node's channel interest, recorded in the background: the lock never waits on Raft),
//! and gives presence actors the cluster to declare their users to.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix::{Actor, Addr};
use chorus_cluster::Cluster;
use chorus_storage::{LastEvent, LastEvents};
use parking_lot::Mutex;

use crate::actors::channel::ChannelActor;
use crate::actors::messages::{MemberChanged, Publish, Subscribe, Unsubscribe};
use crate::actors::presence::PresenceActor;
use crate::fanout::{InFlight, Taken, PUBLISH_WEIGHT};
use crate::history::now_ms;
use crate::metrics::AppMetrics;
use crate::protocol::channel::ChannelKind;
use crate::protocol::frame::{Frame, SocketId};
use crate::webhooks::Webhooks;

/// How long a cache channel keeps its last event.
pub const CACHE_TTL: Duration = Duration::from_secs(30 * 60);

/// The actor serving one channel.
#[derive(Clone)]
pub enum ChannelAddr {
    Plain(Addr<ChannelActor>),
    Presence(Addr<PresenceActor>),
}

impl ChannelAddr {
    fn publish(&self, msg: Publish) {
        match self {
            ChannelAddr::Plain(a) => a.do_send(msg),
            ChannelAddr::Presence(a) => a.do_send(msg),
        }
    }
}

struct Entry {
    addr: ChannelAddr,
    subscriptions: usize,
    in_flight: InFlight,
}

/// Frames admitted by their channels on this node and not yet handed to any actor: published
/// with [`Registry::publish_admitted`]; dropped, they give back what they took and go nowhere.
/// `C` names a channel: owned, or borrowed by a caller that publishes at once.
pub struct Admitted<C = String>(Vec<AdmittedFrame<C>>);

/// A frame of [`Admitted`].
pub struct AdmittedFrame<C = String> {
    pub channel: C,
    pub frame: Frame,
    pub except: Option<SocketId>,
    /// Its share of its channel's bound; none when the channel had no subscriber here.
    taken: Option<Taken>,
}

impl<C> Admitted<C> {
    pub fn frames(&self) -> impl Iterator<Item = &AdmittedFrame<C>> {
        self.0.iter()
    }
}

/// Admits `frames` by their channels in `table` (see [`Registry::admit_all`]).
fn admit<C: AsRef<str>>(
    table: &Table,
    frames: Vec<(C, Frame, Option<SocketId>)>,
) -> Result<Admitted<C>, Overloaded> {
    let mut admitted = Vec::with_capacity(frames.len());
    for (channel, frame, except) in frames {
        let taken = match table.live.get(channel.as_ref()) {
            None => None,
            Some(entry) => {
                let work = entry.subscriptions + PUBLISH_WEIGHT;
                let Some(taken) = entry.in_flight.take(work, frame.len()) else {
                    return Err(Overloaded(channel.as_ref().to_owned()));
                };
                Some(taken)
            }
        };
        admitted.push(AdmittedFrame {
            channel,
            frame,
            except,
            taken,
        });
    }
    Ok(Admitted(admitted))
}

/// A channel's actor has too much fan-out work waiting: publishers are outrunning delivery.
#[derive(Debug, thiserror::Error)]
#[error("channel {0} has too many events waiting to be delivered; publish more slowly")]
pub struct Overloaded(pub String);

#[derive(Default)]
struct Table {
    live: HashMap<String, Entry>,
    cache: HashMap<String, (Frame, Instant)>,
    cache_writes: u64,
}

impl Table {
    fn cached(&self, channel: &str) -> Option<Frame> {
        self.cache
            .get(channel)
            .filter(|(_, at)| at.elapsed() < CACHE_TTL)
            .map(|(frame, _)| frame.clone())
    }

    fn remember(&mut self, channel: &str, frame: &Frame, at: Instant) {
        self.cache.insert(channel.to_owned(), (frame.clone(), at));
        self.cache_writes += 1;
        if self.cache_writes.is_multiple_of(1024) {
            self.cache.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
        }
    }
}

/// The channels of one app on this node.
pub struct Registry {
    app_id: String,
    table: Mutex<Table>,
    metrics: AppMetrics,
    max_presence_members: usize,
    max_outbound_bytes: usize,
    /// Where cache channels' last events outlive the process.
    last_events: LastEvents,
    /// Told of cache misses.
    webhooks: Webhooks,
    /// The node's cluster.
    cluster: Cluster,
}

/// A channel as the HTTP API reports it.
#[derive(Debug, Clone)]
pub struct ChannelSummary {
    pub name: String,
    pub subscriptions: usize,
    pub addr: ChannelAddr,
}

impl Registry {
    pub fn new(
        app_id: &str,
        metrics: AppMetrics,
        max_presence_members: usize,
        max_outbound_bytes: usize,
        last_events: LastEvents,
        webhooks: Webhooks,
        cluster: Cluster,
    ) -> Registry {
        Registry {
            app_id: app_id.to_owned(),
            table: Mutex::default(),
            metrics,
            max_presence_members,
            max_outbound_bytes,
            last_events,
            webhooks,
            cluster,
        }
    }

    pub fn app_id(&self) -> &str {
        &self.app_id
    }

    /// A cache channel's last event: from memory, or from the store after a restart.
    fn cached(&self, table: &mut Table, channel: &str) -> Option<Frame> {
        if let Some(frame) = table.cached(channel) {
            return Some(frame);
        }
        let stored = match self.last_events.get(&self.app_id, channel) {
            Ok(stored) => stored?,
            Err(e) => {
                tracing::error!(error = %e, "reading a cache channel's last event failed");
                return None;
            }
        };
        let age = Duration::from_millis(now_ms().saturating_sub(stored.time_ms));
        if age >= CACHE_TTL {
            return None;
        }
        let frame = Frame::from_text(stored.frame);
        let at = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        table.remember(channel, &frame, at);
        Some(frame)
    }

    /// Adds a subscriber to a channel, starting the channel's actor if it is the first; on a
    /// cache channel, with the cached event. A subscriber of a history or presence channel
    /// joins under the node's order lock (see `crate::order`).
    pub fn subscribe(&self, channel: &str, mut msg: Subscribe) {
        let kind = ChannelKind::of(channel);
        let mut table = self.table.lock();
        msg.cached = kind.cache.then(|| self.cached(&mut table, channel));
        let missed = matches!(msg.cached, Some(None));
        let entry = table.live.entry(channel.to_owned()).or_insert_with(|| {
            self.metrics.channels.inc();
            self.cluster.declare_interest(&self.app_id, channel, true);
            let in_flight = InFlight::new(self.max_outbound_bytes);
            let metrics = self.metrics.clone();
            let addr = if kind.is_presence() {
                let actor = PresenceActor::new(
                    &self.app_id,
                    channel,
                    self.max_presence_members,
                    metrics,
                    in_flight.clone(),
                    self.cluster.clone(),
                );
                ChannelAddr::Presence(actor.start())
            } else {
                ChannelAddr::Plain(ChannelActor::new(channel, metrics, in_flight.clone()).start())
            };
            Entry {
                addr,
                subscriptions: 0,
                in_flight,
            }
        });
        entry.subscriptions += 1;
        self.metrics.subscriptions.inc();
        match &entry.addr {
            ChannelAddr::Plain(a) => a.do_send(msg),
            ChannelAddr::Presence(a) => a.do_send(msg),
        }
        drop(table);
        self.webhooks.subscription_count_changed(channel);
        if missed {
            self.webhooks.cache_miss(channel);
        }
    }

    /// Tells a presence channel's actor, if this node has one, that the cluster committed a user
    /// joining or leaving it.
    pub fn member_changed(&self, channel: &str, change: MemberChanged) {
        let table = self.table.lock();
        if let Some(ChannelAddr::Presence(actor)) = table.live.get(channel).map(|e| &e.addr) {
            actor.do_send(change);
        }
    }

    /// Removes a subscriber; the channel's actor stops once it has none.
    pub fn unsubscribe(&self, channel: &str, socket_id: SocketId) {
        let mut table = self.table.lock();
        let Some(entry) = table.live.get_mut(channel) else {
            return;
        };
        match &entry.addr {
            ChannelAddr::Plain(a) => a.do_send(Unsubscribe(socket_id)),
            ChannelAddr::Presence(a) => a.do_send(Unsubscribe(socket_id)),
        }
        entry.subscriptions -= 1;
        self.metrics.subscriptions.dec();
        if entry.subscriptions == 0 {
            // Dropping the last address stops the actor once its mailbox is empty.
            table.live.remove(channel);
            self.metrics.channels.dec();
            self.cluster.declare_interest(&self.app_id, channel, false);
        }
        drop(table);
        self.webhooks.subscription_count_changed(channel);
    }

    /// Delivers a frame to this node's subscribers of `channel`, except `except`.
    pub fn publish(
        &self,
        channel: &str,
        frame: Frame,
        except: Option<SocketId>,
    ) -> Result<(), Overloaded> {
        self.publish_all(vec![(channel, frame, except)])
    }

    /// Delivers frames to this node's subscribers of their channels, all or none (see
    /// [`Registry::admit_all`]).
    pub fn publish_all<C: AsRef<str>>(
        &self,
        frames: Vec<(C, Frame, Option<SocketId>)>,
    ) -> Result<(), Overloaded> {
        let mut table = self.table.lock();
        let admitted = admit(&table, frames)?;
        self.hand_out(&mut table, admitted);
        Ok(())
    }

    /// Admits frames by their channels' in-flight bounds, all or none: when one is refused, the
    /// others give back what they took. Nothing goes out until [`Registry::publish_admitted`].
    pub fn admit_all(
        &self,
        frames: Vec<(String, Frame, Option<SocketId>)>,
    ) -> Result<Admitted, Overloaded> {
        admit(&self.table.lock(), frames)
    }

    /// Delivers admitted frames to this node's subscribers of their channels, in order.
    pub fn publish_admitted(&self, admitted: Admitted) {
        self.hand_out(&mut self.table.lock(), admitted);
    }

    fn hand_out<C: AsRef<str>>(&self, table: &mut Table, admitted: Admitted<C>) {
        for AdmittedFrame {
            channel,
            frame,
            except,
            taken,
        } in admitted.0
        {
            let channel = channel.as_ref();
            if ChannelKind::of(channel).cache {
                self.remember_last(table, channel, &frame);
            }
            if let Some(entry) = table.live.get(channel) {
                let taken = match taken {
                    Some(taken) if taken.is_of(&entry.in_flight) => taken,
                    // The channel's actor was replaced since (its last subscriber left, then
                    // another came): the new one takes the frame, the old share is given back.
                    _ => entry
                        .in_flight
                        .take_anyway(entry.subscriptions + PUBLISH_WEIGHT, frame.len()),
                };
                entry.addr.publish(Publish {
                    frame,
                    except,
                    weight: taken.hand_over(),
                });
            }
        }
    }

    /// Keeps a cache channel's last event, in memory and in the node's store.
    fn remember_last(&self, table: &mut Table, channel: &str, frame: &Frame) {
        table.remember(channel, frame, Instant::now());
        let last = LastEvent {
            time_ms: now_ms(),
            frame: frame.text.to_string(),
        };
        if let Err(e) = self.last_events.put(&self.app_id, channel, &last) {
            tracing::error!(error = %e, "storing a cache channel's last event failed");
        }
    }

    pub fn get(&self, channel: &str) -> Option<ChannelSummary> {
        self.table.lock().live.get(channel).map(|e| ChannelSummary {
            name: channel.to_owned(),
            subscriptions: e.subscriptions,
            addr: e.addr.clone(),
        })
    }

    /// Occupied channels whose name starts with `prefix`, sorted by name.
    pub fn list(&self, prefix: &str) -> Vec<ChannelSummary> {
        let table = self.table.lock();
        let mut list: Vec<ChannelSummary> = table
            .live
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(name, e)| ChannelSummary {
                name: name.clone(),
                subscriptions: e.subscriptions,
                addr: e.addr.clone(),
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }
}

impl std::fmt::Debug for ChannelAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChannelAddr::Plain(_) => f.write_str("ChannelAddr::Plain"),
            ChannelAddr::Presence(_) => f.write_str("ChannelAddr::Presence"),
        }
    }
}
