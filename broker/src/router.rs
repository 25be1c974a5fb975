//! Where a published frame goes on its way out of this node.
//!
//! A frame of a channel without history (an HTTP API publish, a client event) goes to this
//! node's subscribers of the channel, then to every other node with interest in the channel
//! (queued on the node's stream to each, see `chorus_cluster::forward`; never waited for),
//! which delivers it to its own subscribers with [`deliver_forwarded`]. Which published events
//! are history events is decided by the HTTP API (`http/api.rs`, from the app's history rules):
//! those go through the Raft log with [`PendingHistory::publish`], and once committed every node
//! stores them and delivers them to its own subscribers (`crate::commits`).

use std::time::Duration;

use chorus_cluster::history_batch::HistoryRun;
use chorus_cluster::{Cluster, ClusterError, ForwardedFrame, NodeId, Request, Response};
use chorus_storage::StoredEvent;

use crate::apps::{App, Apps};
use crate::protocol::frame::{Frame, SocketId};
use crate::registry::{Admitted, Overloaded};

/// Publishes `frame` on `channel` of `app`, except to the connection `except`, here and on every
/// other node with subscribers of the channel. Refused when this node's subscribers of the
/// channel are too far behind to take more; then it goes nowhere.
pub fn publish(
    app: &App,
    channel: &str,
    frame: Frame,
    except: Option<SocketId>,
) -> Result<(), Overloaded> {
    publish_all(app, vec![(channel.to_owned(), frame, except)])
}

/// Publishes several frames of `app`, each on its channel, all or none: every one is admitted
/// by this node's channel before any goes out (see [`admit_all`]); refused, none goes anywhere.
pub fn publish_all(
    app: &App,
    frames: Vec<(String, Frame, Option<SocketId>)>,
) -> Result<(), Overloaded> {
    publish_admitted(app, admit_all(app, frames)?);
    Ok(())
}

/// Admits frames of `app` by this node's channels, all or none (see
/// [`crate::registry::Registry::admit_all`]); nothing goes out until [`publish_admitted`].
pub fn admit_all(
    app: &App,
    frames: Vec<(String, Frame, Option<SocketId>)>,
) -> Result<Admitted, Overloaded> {
    app.channels.admit_all(frames)
}

/// Publishes admitted frames: each is forwarded to the other nodes with subscribers of its
/// channel and delivered to this node's, in order.
pub fn publish_admitted(app: &App, admitted: Admitted) {
    for f in admitted.frames() {
        app.cluster
            .forwarder()
            .forward(&app.id, &f.channel, || ForwardedFrame {
                app: app.id.clone(),
                channel: f.channel.clone(),
                frame: f.frame.text.to_string(),
                except: f.except.map(|socket| socket.to_string()),
            });
    }
    app.channels.publish_admitted(admitted);
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

/// The history events of one request (the events of a batch, or one event on several channels),
/// in order, to be published together with [`PendingHistory::publish`].
#[derive(Default)]
pub struct PendingHistory {
    /// Runs of events of one channel with the same socket left out, in the order given.
    runs: Vec<HistoryRun>,
    /// Where each event pushed is: its run and its place in the run, in the order pushed.
    pushed: Vec<(usize, usize)>,
}

/// Where a published history event was placed: its channel's epoch and its offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPlaced {
    pub channel: String,
    pub epoch: String,
    pub offset: u64,
}

impl PendingHistory {
    /// Adds an event on `channel`, with its idempotency key if it has one.
    pub fn push(
        &mut self,
        channel: &str,
        except: Option<SocketId>,
        name: &str,
        data: &str,
        key: Option<&str>,
    ) {
        let event = StoredEvent {
            event: name.to_owned(),
            data: data.to_owned(),
            time_ms: crate::history::now_ms(),
        };
        let except = except.map(|socket| socket.to_string());
        let last = self.runs.iter().rposition(|run| run.channel == channel);
        let run = match last {
            Some(i) if self.runs[i].except == except => i,
            _ => {
                self.runs.push(HistoryRun {
                    channel: channel.to_owned(),
                    fresh_epoch: chorus_storage::fresh_epoch(),
                    events: Vec::new(),
                    except,
                    keys: Vec::new(),
                });
                self.runs.len() - 1
            }
        };
        let run_events = &mut self.runs[run];
        self.pushed.push((run, run_events.events.len()));
        run_events.events.push(event);
        run_events.keys.push(key.map(str::to_owned));
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Publishes the events through the cluster's log as one entry, and returns once a majority
    /// of the nodes has it: acknowledged, they survive the loss of a minority; not committed,
    /// none of them is. Every node then stores the events at the offsets applying gave them and
    /// delivers them (`crate::commits`). An event whose idempotency key was placed on its
    /// channel within `key_window` is not placed again. Returns where each event is, in the
    /// order pushed. Fails when the cluster cannot commit (no quorum).
    pub async fn publish(
        mut self,
        cluster: &Cluster,
        app: &App,
        key_window: Duration,
    ) -> Result<Vec<HistoryPlaced>, ClusterError> {
        for run in &mut self.runs {
            if run.keys.iter().all(Option::is_none) {
                run.keys.clear();
            }
        }
        let channels: Vec<String> = self.runs.iter().map(|run| run.channel.clone()).collect();
        let request = Request::HistoryBatch {
            app: app.id.clone(),
            time_ms: crate::history::now_ms(),
            key_window_ms: key_window.as_millis() as u64,
            runs: self.runs,
        };
        let Response::HistoryBatchPlaced { runs } = cluster.propose(request).await? else {
            return Err(ClusterError::History(
                "the leader answered a history batch with something else".to_owned(),
            ));
        };
        self.pushed
            .into_iter()
            .map(|(run, i)| {
                let at = runs
                    .get(run)
                    .and_then(|placed| placed.get(i))
                    .ok_or_else(|| {
                        ClusterError::History("the leader placed fewer events than sent".to_owned())
                    })?;
                Ok(HistoryPlaced {
                    channel: channels[run].clone(),
                    epoch: at.epoch.clone(),
                    offset: at.offset,
                })
            })
            .collect()
    }
}
