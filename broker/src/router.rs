//! Where a published frame goes on its way out of this node.
//!
//! A frame of a channel without history (an HTTP API publish, a client event) goes to this
//! node's subscribers of the channel, then to every other node with interest in the channel
//! (queued on the node's stream to each, see `chorus_cluster::forward`; never waited for),
//! which delivers it to its own subscribers with [`deliver_forwarded`]. Which published events
//! are history events is decided by the HTTP API (`http/api.rs`, from the app's history rules):
//! those go through the Raft log with [`PendingHistory::publish`], and once committed every node
//! stores them and delivers them to its own subscribers (`crate::commits`).

use chorus_cluster::{Cluster, ClusterError, ForwardedFrame, NodeId, Request};
use chorus_storage::StoredEvent;

use crate::apps::{App, Apps};
use crate::protocol::frame::{Frame, SocketId};
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
    publish_all(app, vec![(channel.to_owned(), frame, except)])
}

/// Publishes several frames of `app`, each on its channel, all or none: every one is admitted
/// by this node's channel before any goes out (see [`crate::registry::Registry::publish_all`]);
/// refused, none goes anywhere. Admitted, each is then forwarded to the other nodes with
/// subscribers of its channel, in order.
pub fn publish_all(
    app: &App,
    frames: Vec<(String, Frame, Option<SocketId>)>,
) -> Result<(), Overloaded> {
    let local = frames
        .iter()
        .map(|(channel, frame, except)| (channel.as_str(), frame.clone(), *except))
        .collect();
    app.channels.publish_all(local)?;
    for (channel, frame, except) in frames {
        app.cluster
            .forwarder()
            .forward(&app.id, &channel, || ForwardedFrame {
                app: app.id.clone(),
                channel: channel.clone(),
                frame: frame.text.to_string(),
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

/// The history events of one request (the events of a batch, or one event on several channels),
/// in order, to be published together with [`PendingHistory::publish`].
#[derive(Default)]
pub struct PendingHistory {
    /// Runs of events of one channel with the same socket left out, in the order given.
    runs: Vec<(String, Option<SocketId>, Vec<StoredEvent>)>,
}

impl PendingHistory {
    pub fn push(&mut self, channel: &str, except: Option<SocketId>, name: &str, data: &str) {
        let event = StoredEvent {
            event: name.to_owned(),
            data: data.to_owned(),
            time_ms: crate::history::now_ms(),
        };
        match self.runs.iter_mut().rev().find(|run| run.0 == channel) {
            Some(run) if run.1 == except => run.2.push(event),
            _ => self.runs.push((channel.to_owned(), except, vec![event])),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Publishes the events through the cluster's log, and returns once a majority of the nodes
    /// has them: acknowledged, they survive the loss of a minority. Each run is one log entry;
    /// the channels go concurrently, each channel's runs one after the other, in order. Every
    /// node then stores the events at the offsets applying gave them and delivers them
    /// (`crate::commits`). Fails when the cluster cannot commit (no quorum); runs already
    /// committed stay so.
    pub async fn publish(self, cluster: &Cluster, app: &App) -> Result<(), ClusterError> {
        let mut channels: Vec<Vec<Request>> = Vec::new();
        let mut seen: Vec<String> = Vec::new();
        for (channel, except, events) in self.runs {
            let request = Request::HistoryAppend {
                app: app.id.clone(),
                channel: channel.clone(),
                fresh_epoch: chorus_storage::fresh_epoch(),
                events,
                except: except.map(|socket| socket.to_string()),
            };
            match seen.iter().position(|c| *c == channel) {
                Some(i) => channels[i].push(request),
                None => {
                    seen.push(channel);
                    channels.push(vec![request]);
                }
            }
        }
        let proposals = channels.into_iter().map(|requests| async move {
            for request in requests {
                cluster.propose(request).await?;
            }
            Ok::<(), ClusterError>(())
        });
        futures_util::future::join_all(proposals)
            .await
            .into_iter()
            .collect()
    }
}
