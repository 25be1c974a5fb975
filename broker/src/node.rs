//! What every request handler of a node shares: its configuration, apps, metrics and state.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::actors::connection::Timeouts;
use crate::apps::Apps;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::protocol::frame::SocketIds;

pub struct Node {
    pub config: Config,
    pub apps: Apps,
    pub metrics: Metrics,
    pub socket_ids: SocketIds,
    ready: AtomicBool,
}

impl Node {
    pub fn new(config: Config) -> Node {
        let metrics = Metrics::new();
        let apps = Apps::new(&config.apps, &metrics, config.max_outbound_bytes);
        Node {
            config,
            apps,
            metrics,
            socket_ids: SocketIds::default(),
            ready: AtomicBool::new(false),
        }
    }

    pub fn timeouts(&self) -> Timeouts {
        Timeouts {
            activity: Duration::from_secs(self.config.activity_timeout_secs),
            pong: Duration::from_secs(self.config.pong_timeout_secs),
        }
    }

    /// Serving (`/readyz` answers 200) or not (starting, shutting down).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}
