//! The apps a node serves. Each app has its own channels, users and connections, so apps are
//! isolated by construction: nothing is looked up across them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use chorus_cluster::Cluster;
use chorus_storage::{StorageError, Store};
use parking_lot::Mutex;

use crate::actors::messages::{ConnectionRecipients, Disconnect};
use crate::config::{AppConfig, Limits};
use crate::history::Histories;
use crate::metrics::{AppMetrics, Metrics};
use crate::protocol::frame::SocketId;
use crate::registry::Registry;
use crate::webhooks::metrics::WebhookMetrics;
use crate::webhooks::Webhooks;

/// One app and everything the node holds for it.
pub struct App {
    pub id: String,
    pub key: String,
    pub secret: String,
    pub allowed_origins: Vec<String>,
    pub limits: Limits,
    pub metrics: AppMetrics,
    pub channels: Registry,
    pub history: Histories,
    /// The node's cluster: what it forwards with and asks, where it declares its channels and
    /// users.
    pub cluster: Cluster,
    pub webhooks: Webhooks,
    /// Open connections, for shutdown.
    connections: Mutex<HashMap<SocketId, Arc<ConnectionRecipients>>>,
    /// Signed-in users and their connections, for termination.
    users: Mutex<HashMap<String, HashMap<SocketId, Arc<ConnectionRecipients>>>>,
    /// Admitted connections, counted before their actor starts.
    admitted: AtomicUsize,
}

impl App {
    pub fn new(
        config: &AppConfig,
        metrics: &Metrics,
        max_outbound_bytes: usize,
        store: Store,
        webhook_metrics: &WebhookMetrics,
        cluster: &Cluster,
    ) -> Result<App, StorageError> {
        let app_metrics = metrics.for_app(&config.id);
        let webhooks = Webhooks::new(config, store.webhooks(), webhook_metrics)?;
        Ok(App {
            id: config.id.clone(),
            key: config.key.clone(),
            secret: config.secret.clone(),
            allowed_origins: config.allowed_origins.clone(),
            limits: config.limits.clone(),
            channels: Registry::new(
                &config.id,
                app_metrics.clone(),
                config.limits.max_presence_members,
                max_outbound_bytes,
                store.last_events().clone(),
                webhooks.clone(),
                cluster.clone(),
            ),
            history: Histories::new(&config.history, store),
            webhooks,
            cluster: cluster.clone(),
            metrics: app_metrics,
            connections: Mutex::default(),
            users: Mutex::default(),
            admitted: AtomicUsize::new(0),
        })
    }

    /// Takes a connection slot; `false` when the app is at `max_connections`.
    pub fn admit_connection(&self) -> bool {
        let before = self.admitted.fetch_add(1, Ordering::Relaxed);
        if before >= self.limits.max_connections {
            self.admitted.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    pub fn connection_opened(&self, id: SocketId, connection: Arc<ConnectionRecipients>) {
        self.connections.lock().insert(id, connection);
        self.metrics.connections.inc();
    }

    /// Forgets a connection and gives its slot back.
    pub fn connection_closed(&self, id: SocketId, user: Option<&str>) {
        self.connections.lock().remove(&id);
        if let Some(user) = user {
            self.user_signed_out(user, id);
        }
        self.admitted.fetch_sub(1, Ordering::Relaxed);
        self.metrics.connections.dec();
    }

    /// Asks every connection to close (node shutdown).
    pub fn disconnect_all(&self, why: Disconnect) {
        for connection in self.connections.lock().values() {
            connection.disconnect.do_send(why.clone());
        }
    }

    pub fn user_signed_in(&self, user: &str, id: SocketId, connection: Arc<ConnectionRecipients>) {
        self.users
            .lock()
            .entry(user.to_owned())
            .or_default()
            .insert(id, connection);
    }

    pub fn user_signed_out(&self, user: &str, id: SocketId) {
        let mut users = self.users.lock();
        if let Some(sockets) = users.get_mut(user) {
            sockets.remove(&id);
            if sockets.is_empty() {
                users.remove(user);
            }
        }
    }

    /// Closes every connection of a signed-in user; returns how many there were.
    pub fn terminate_user(&self, user: &str) -> usize {
        let sockets = self.users.lock().get(user).cloned().unwrap_or_default();
        for connection in sockets.values() {
            connection.disconnect.do_send(Disconnect::terminated());
        }
        sockets.len()
    }

    /// Whether a WebSocket upgrade from `origin` may proceed.
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        if self.allowed_origins.is_empty() {
            return true;
        }
        let Some(origin) = origin else {
            // Not a browser: there is no cross-site request to refuse.
            return true;
        };
        self.allowed_origins
            .iter()
            .any(|pattern| origin_matches(pattern, origin))
    }
}

/// `*` matches anything; `https://*.example.com` matches any subdomain of example.com.
fn origin_matches(pattern: &str, origin: &str) -> bool {
    if pattern == "*" || pattern.eq_ignore_ascii_case(origin) {
        return true;
    }
    match pattern.split_once("*.") {
        Some((scheme, domain)) => origin
            .strip_prefix(scheme)
            .and_then(|host| host.strip_suffix(domain))
            .is_some_and(|sub| sub.ends_with('.') && sub.len() > 1),
        None => false,
    }
}

/// Every app of the node, by id and by key.
#[derive(Clone)]
pub struct Apps {
    by_id: HashMap<String, Arc<App>>,
    by_key: HashMap<String, Arc<App>>,
}

impl Apps {
    pub fn new(
        configs: &[AppConfig],
        metrics: &Metrics,
        max_outbound_bytes: usize,
        store: &Store,
        cluster: &Cluster,
    ) -> Result<Apps, StorageError> {
        let webhook_metrics = WebhookMetrics::register(metrics.registry());
        let app = |c| {
            let app = App::new(
                c,
                metrics,
                max_outbound_bytes,
                store.clone(),
                &webhook_metrics,
                cluster,
            );
            app.map(Arc::new)
        };
        let apps = configs.iter().map(app).collect::<Result<Vec<_>, _>>()?;
        Ok(Apps {
            by_id: apps.iter().map(|a| (a.id.clone(), a.clone())).collect(),
            by_key: apps.iter().map(|a| (a.key.clone(), a.clone())).collect(),
        })
    }

    pub fn by_id(&self, id: &str) -> Option<&Arc<App>> {
        self.by_id.get(id)
    }

    pub fn by_key(&self, key: &str) -> Option<&Arc<App>> {
        self.by_key.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<App>> {
        self.by_id.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        assert!(origin_matches("https://example.com", "https://example.com"));
        assert!(origin_matches("*", "http://x"));
        assert!(!origin_matches("https://example.com", "https://evil.com"));
        assert!(origin_matches(
            "https://*.example.com",
            "https://a.example.com"
        ));
        assert!(origin_matches(
            "https://*.example.com",
            "https://a.b.example.com"
        ));
        assert!(!origin_matches(
            "https://*.example.com",
            "https://example.com"
        ));
        assert!(!origin_matches(
            "https://*.example.com",
            "https://evilexample.com"
        ));
        assert!(!origin_matches(
            "https://*.example.com",
            "http://a.example.com"
        ));
    }
}
