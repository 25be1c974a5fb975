//! Node configuration: the TOML file, the `CHORUS_*` environment and the command-line flags.
//!
//! Precedence, lowest first: built-in defaults, the TOML file (`--config` / `CHORUS_CONFIG`),
//! environment variables, flags. With no file at all the node serves one default development app.
//! A file that cannot be read or parsed, or a value that makes no sense, stops start-up with a
//! message that names the key; nothing falls back to a default silently.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chorus_cluster::{ClusterSecret, ClusterSettings, NodeId, Peers};
use clap::Args;
use serde::Deserialize;

/// The development app served when no app is configured.
pub const DEV_APP_ID: &str = "1";
pub const DEV_APP_KEY: &str = "chorus-dev-key";
pub const DEV_APP_SECRET: &str = "chorus-dev-secret";

/// The cluster secret of a node with no peers and no secret configured.
pub const DEV_CLUSTER_SECRET: &str = "chorus-dev-cluster-secret";

/// The cluster port when none is configured.
pub const DEFAULT_CLUSTER_PORT: u16 = 6002;

/// The shortest cluster secret accepted.
const MIN_CLUSTER_SECRET_LEN: usize = 16;

/// Why a configuration was refused. Every variant names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {problem}")]
    Invalid { key: String, problem: String },
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

/// The whole node configuration, as read from the TOML file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the public and metrics listeners bind to.
    pub host: IpAddr,
    /// Public port: WebSocket, HTTP API, health.
    pub port: u16,
    /// Prometheus `/metrics`.
    pub metrics_port: u16,
    /// Where the node keeps its data.
    pub data_dir: PathBuf,
    /// Seconds of silence after which a client should ping (sent to clients) and the server pings.
    pub activity_timeout_secs: u64,
    /// Seconds the server waits for a pong before closing with 4201.
    pub pong_timeout_secs: u64,
    /// Seconds between heartbeat comments on an SSE stream (keeps proxies from closing it).
    pub sse_heartbeat_secs: u64,
    /// Seconds a graceful shutdown waits for connections to close.
    pub shutdown_timeout_secs: u64,
    /// Bytes queued towards one connection before it is cut off as a slow reader (4100).
    pub max_outbound_bytes: usize,
    /// Largest HTTP API request body, in bytes (413 above it).
    pub max_request_bytes: usize,
    /// actix-web worker threads; 0 means one per core.
    pub workers: usize,
    /// This node's id in the cluster. Absent: the number after the last `-` of the hostname (a
    /// StatefulSet pod's ordinal), else 1. Filled in by [`Config::load`].
    pub node_id: Option<NodeId>,
    /// The cluster port (Raft RPCs, `GET /cluster`). Absent: 6002 (see [`Config::cluster_port`]).
    pub cluster_port: Option<u16>,
    /// The cluster's nodes: `id@host:port` comma-separated (this node among them), or one DNS
    /// name whose address records are the nodes. Empty: a one-node cluster.
    pub peers: String,
    /// The secret every request to the cluster port carries. Required when `peers` is given.
    pub cluster_secret: Option<String>,
    /// Seconds a cluster member may go without answering before the leader declares it dead and
    /// removes its presence members and channel interest (at least 2).
    pub dead_after_secs: u64,
    /// Raft log entries between two snapshots of the replicated state; as many are kept after
    /// each snapshot, so a node that was down for fewer catches up from the log.
    pub raft_snapshot_every: u64,
    pub apps: Vec<AppConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            host: IpAddr::from([0, 0, 0, 0]),
            port: 6001,
            metrics_port: 9601,
            data_dir: PathBuf::from("./chorus-data"),
            activity_timeout_secs: 120,
            pong_timeout_secs: 30,
            sse_heartbeat_secs: 15,
            shutdown_timeout_secs: 10,
            max_outbound_bytes: 1024 * 1024,
            max_request_bytes: 256 * 1024,
            workers: 0,
            node_id: None,
            cluster_port: None,
            peers: String::new(),
            cluster_secret: None,
            dead_after_secs: chorus_cluster::DEFAULT_DEAD_AFTER.as_secs(),
            raft_snapshot_every: chorus_cluster::DEFAULT_SNAPSHOT_EVERY,
            apps: Vec::new(),
        }
    }
}

/// One tenant: its credentials, limits and allowed origins.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    pub id: String,
    pub key: String,
    pub secret: String,
    /// Origins allowed to open a WebSocket; empty allows any. `https://*.example.com` matches
    /// subdomains.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    #[serde(default)]
    pub limits: Limits,
    /// Which channels keep a durable history, by glob on the channel name.
    #[serde(default)]
    pub history: Vec<HistoryRule>,
}

/// Channels matching `channels` keep their events on disk, within the retention given.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryRule {
    /// A glob on the channel name, e.g. `chat-*`.
    pub channels: String,
    #[serde(default = "HistoryRule::default_max_events")]
    pub max_events: u64,
    #[serde(default = "HistoryRule::default_max_age_secs")]
    pub max_age_secs: u64,
}

impl HistoryRule {
    fn default_max_events() -> u64 {
        1000
    }

    fn default_max_age_secs() -> u64 {
        86_400
    }
}

/// Per-app limits. Every one is configurable; the defaults are Pusher's.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_connections: usize,
    pub max_message_bytes: usize,
    pub max_channels_per_trigger: usize,
    pub max_batch_events: usize,
    pub max_presence_members: usize,
    pub max_user_info_bytes: usize,
    pub max_user_id_len: usize,
    pub max_channel_name_len: usize,
    pub max_event_name_len: usize,
    pub max_subscriptions_per_connection: usize,
    pub client_events_per_sec: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_message_bytes: 10 * 1024,
            max_channels_per_trigger: 100,
            max_batch_events: 10,
            max_presence_members: 100,
            max_user_info_bytes: 1024,
            max_user_id_len: 128,
            max_channel_name_len: 164,
            max_event_name_len: 200,
            max_subscriptions_per_connection: 1000,
            client_events_per_sec: 10,
        }
    }
}

/// Settings given on the command line or in the environment; each wins over the file.
#[derive(Debug, Default, Clone, Args)]
pub struct Overrides {
    /// TOML configuration file.
    #[arg(long = "config", env = "CHORUS_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "CHORUS_HOST")]
    pub host: Option<IpAddr>,
    #[arg(long, env = "CHORUS_PORT")]
    pub port: Option<u16>,
    #[arg(long, env = "CHORUS_METRICS_PORT")]
    pub metrics_port: Option<u16>,
    #[arg(long, env = "CHORUS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    #[arg(long, env = "CHORUS_WORKERS")]
    pub workers: Option<usize>,
    /// This node's id in the cluster.
    #[arg(long, env = "CHORUS_NODE_ID")]
    pub node_id: Option<NodeId>,
    /// The cluster port (default 6002).
    #[arg(long, env = "CHORUS_CLUSTER_PORT")]
    pub cluster_port: Option<u16>,
    /// The cluster's nodes: `id@host:port,...` or a DNS name.
    #[arg(long, env = "CHORUS_PEERS")]
    pub peers: Option<String>,
    /// The secret of the cluster port.
    #[arg(long, env = "CHORUS_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// Seconds without an answer after which a cluster member is declared dead (default 5).
    #[arg(long, env = "CHORUS_DEAD_AFTER_SECS")]
    pub dead_after_secs: Option<u64>,
    /// Raft log entries between two snapshots (default 20000).
    #[arg(long, env = "CHORUS_RAFT_SNAPSHOT_EVERY")]
    pub raft_snapshot_every: Option<u64>,
    /// Id of the default (first) app.
    #[arg(long, env = "CHORUS_APP_ID")]
    pub app_id: Option<String>,
    /// Key of the default (first) app.
    #[arg(long, env = "CHORUS_APP_KEY")]
    pub app_key: Option<String>,
    /// Secret of the default (first) app.
    #[arg(long, env = "CHORUS_APP_SECRET", hide_env_values = true)]
    pub app_secret: Option<String>,
}

/// How the configuration came to be: callers warn when the development credentials are in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppSource {
    Configured,
    DevelopmentDefault,
}

impl Config {
    /// Reads the file named by the overrides (if any), applies the overrides and validates.
    pub fn load(overrides: &Overrides) -> Result<(Config, AppSource), ConfigError> {
        let mut config = match &overrides.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        let source = config.apply(overrides);
        config.validate()?;
        Ok((config, source))
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses TOML text; the error message names the key and the line.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
    }

    fn apply(&mut self, o: &Overrides) -> AppSource {
        if let Some(v) = o.host {
            self.host = v;
        }
        if let Some(v) = o.port {
            self.port = v;
        }
        if let Some(v) = o.metrics_port {
            self.metrics_port = v;
        }
        if let Some(v) = &o.data_dir {
            self.data_dir = v.clone();
        }
        if let Some(v) = o.workers {
            self.workers = v;
        }
        if let Some(v) = o.node_id {
            self.node_id = Some(v);
        }
        if self.node_id.is_none() {
            self.node_id = Some(
                hostname()
                    .as_deref()
                    .and_then(chorus_cluster::ordinal_of_hostname)
                    .unwrap_or(1),
            );
        }
        if let Some(v) = o.cluster_port {
            self.cluster_port = Some(v);
        }
        if let Some(v) = &o.peers {
            self.peers = v.clone();
        }
        if let Some(v) = &o.cluster_secret {
            self.cluster_secret = Some(v.clone());
        }
        if let Some(v) = o.dead_after_secs {
            self.dead_after_secs = v;
        }
        if let Some(v) = o.raft_snapshot_every {
            self.raft_snapshot_every = v;
        }
        let mut source = AppSource::Configured;
        if self.apps.is_empty() {
            let all_given = o.app_id.is_some() && o.app_key.is_some() && o.app_secret.is_some();
            if !all_given {
                source = AppSource::DevelopmentDefault;
            }
            self.apps.push(AppConfig {
                id: DEV_APP_ID.into(),
                key: DEV_APP_KEY.into(),
                secret: DEV_APP_SECRET.into(),
                allowed_origins: Vec::new(),
                limits: Limits::default(),
                history: Vec::new(),
            });
        }
        let first = &mut self.apps[0];
        if let Some(v) = &o.app_id {
            first.id = v.clone();
        }
        if let Some(v) = &o.app_key {
            first.key = v.clone();
        }
        if let Some(v) = &o.app_secret {
            first.secret = v.clone();
        }
        source
    }

    /// Checks every value a node cannot run with.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.activity_timeout_secs == 0 {
            return Err(invalid("activity_timeout_secs", "must be at least 1"));
        }
        if self.pong_timeout_secs == 0 {
            return Err(invalid("pong_timeout_secs", "must be at least 1"));
        }
        if self.sse_heartbeat_secs == 0 {
            return Err(invalid("sse_heartbeat_secs", "must be at least 1"));
        }
        if self.max_outbound_bytes < 16 * 1024 {
            return Err(invalid("max_outbound_bytes", "must be at least 16384"));
        }
        if self.max_request_bytes < 1024 {
            return Err(invalid("max_request_bytes", "must be at least 1024"));
        }
        if self.port == self.metrics_port && self.port != 0 {
            return Err(invalid("metrics_port", "must differ from port"));
        }
        self.validate_cluster()?;
        let mut ids = std::collections::HashSet::new();
        let mut keys = std::collections::HashSet::new();
        for (i, app) in self.apps.iter().enumerate() {
            let key = |field: &str| format!("apps[{i}].{field}");
            if app.id.is_empty() || !app.id.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid(
                    key("id"),
                    format!("{:?} is not a numeric id", app.id),
                ));
            }
            if app.key.is_empty() || !app.key.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(invalid(key("key"), "must be non-empty printable ASCII"));
            }
            if app.secret.len() < 8 {
                return Err(invalid(key("secret"), "must be at least 8 characters"));
            }
            if !ids.insert(app.id.as_str()) {
                return Err(invalid(key("id"), format!("{:?} is used twice", app.id)));
            }
            if !keys.insert(app.key.as_str()) {
                return Err(invalid(key("key"), format!("{:?} is used twice", app.key)));
            }
            for origin in &app.allowed_origins {
                if origin.is_empty() || origin.contains(char::is_whitespace) {
                    return Err(invalid(
                        key("allowed_origins"),
                        format!("{origin:?} is not an origin"),
                    ));
                }
            }
            for (j, rule) in app.history.iter().enumerate() {
                let key = |field: &str| format!("apps[{i}].history[{j}].{field}");
                if let Err(e) = globset::Glob::new(&rule.channels) {
                    return Err(invalid(key("channels"), e.to_string()));
                }
                if rule.max_events == 0 {
                    return Err(invalid(key("max_events"), "must be at least 1"));
                }
                if rule.max_age_secs == 0 {
                    return Err(invalid(key("max_age_secs"), "must be at least 1"));
                }
            }
            let l = &app.limits;
            let positive = [
                ("max_connections", l.max_connections),
                ("max_message_bytes", l.max_message_bytes),
                ("max_channels_per_trigger", l.max_channels_per_trigger),
                ("max_batch_events", l.max_batch_events),
                ("max_presence_members", l.max_presence_members),
                ("max_user_info_bytes", l.max_user_info_bytes),
                ("max_user_id_len", l.max_user_id_len),
                ("max_channel_name_len", l.max_channel_name_len),
                ("max_event_name_len", l.max_event_name_len),
                (
                    "max_subscriptions_per_connection",
                    l.max_subscriptions_per_connection,
                ),
            ];
            for (name, value) in positive {
                if value == 0 {
                    return Err(invalid(
                        key(&format!("limits.{name}")),
                        "must be at least 1",
                    ));
                }
            }
            if l.max_message_bytes > self.max_outbound_bytes / 2 {
                return Err(invalid(
                    key("limits.max_message_bytes"),
                    "must be at most half of max_outbound_bytes",
                ));
            }
            if l.max_message_bytes * l.max_batch_events > self.max_request_bytes * 4 {
                return Err(invalid(
                    key("limits.max_message_bytes"),
                    "a full batch would exceed max_request_bytes; raise max_request_bytes",
                ));
            }
        }
        Ok(())
    }
}

/// This machine's hostname, if it can be read.
fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
}

impl Config {
    /// This node's id (resolved by [`Config::load`]; 1 if it never ran).
    pub fn node_id(&self) -> NodeId {
        self.node_id.unwrap_or(1)
    }

    /// The cluster port: as configured, else [`DEFAULT_CLUSTER_PORT`].
    pub fn cluster_port(&self) -> u16 {
        self.cluster_port.unwrap_or(DEFAULT_CLUSTER_PORT)
    }

    /// The peers as parsed (validated by [`Config::validate`]); `None` for a one-node cluster.
    pub fn peers(&self) -> Option<Peers> {
        Peers::parse(&self.peers, self.cluster_port())
            .ok()
            .flatten()
    }

    /// True when the node runs alone on the public development cluster secret.
    pub fn uses_dev_cluster_secret(&self) -> bool {
        self.cluster_secret.is_none()
    }

    /// How this node joins the cluster.
    pub fn cluster_settings(&self) -> ClusterSettings {
        let peers = self.peers();
        let host = if self.host.is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            self.host.to_string()
        };
        let advertise_addr = match &peers {
            Some(Peers::Static(nodes)) => nodes.get(&self.node_id()).cloned(),
            Some(Peers::Dns { .. }) => {
                hostname().map(|name| format!("{name}:{}", self.cluster_port()))
            }
            None => None,
        }
        .unwrap_or_else(|| format!("{host}:{}", self.cluster_port()));
        ClusterSettings {
            node_id: self.node_id(),
            advertise_addr,
            peers,
            secret: ClusterSecret::new(
                self.cluster_secret.as_deref().unwrap_or(DEV_CLUSTER_SECRET),
            ),
            dead_after: Duration::from_secs(self.dead_after_secs),
            snapshot_every: self.raft_snapshot_every,
            // A node listening on one address sends its cluster traffic from it.
            local_address: (!self.host.is_unspecified()).then_some(self.host),
        }
    }

    fn validate_cluster(&self) -> Result<(), ConfigError> {
        if self.raft_snapshot_every < 10 {
            return Err(invalid("raft_snapshot_every", "must be at least 10"));
        }
        let min_dead_after = chorus_cluster::MIN_DEAD_AFTER.as_secs();
        if self.dead_after_secs < min_dead_after {
            return Err(invalid(
                "dead_after_secs",
                format!(
                    "must be at least {min_dead_after}: a Raft election takes up to 2 s, and a \
                     shorter silence does not mean a node is dead"
                ),
            ));
        }
        let cluster_port = self.cluster_port();
        if cluster_port != 0 && (cluster_port == self.port || cluster_port == self.metrics_port) {
            return Err(invalid(
                "cluster_port",
                format!("{cluster_port} must differ from port and metrics_port"),
            ));
        }
        let peers =
            Peers::parse(&self.peers, cluster_port).map_err(|e| invalid("peers", e.to_string()))?;
        if let Some(peers) = &peers {
            peers
                .check_lists(self.node_id())
                .map_err(|e| invalid("peers", e.to_string()))?;
        }
        match &self.cluster_secret {
            None if peers.is_some() => Err(invalid(
                "cluster_secret",
                "required when peers are given (CHORUS_CLUSTER_SECRET)",
            )),
            Some(secret) if secret.len() < MIN_CLUSTER_SECRET_LEN => Err(invalid(
                "cluster_secret",
                format!("must be at least {MIN_CLUSTER_SECRET_LEN} characters"),
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_file_gives_the_development_app() {
        let (config, source) = Config::load(&Overrides::default()).unwrap();
        assert_eq!(source, AppSource::DevelopmentDefault);
        assert_eq!(config.port, 6001);
        assert_eq!(config.metrics_port, 9601);
        assert_eq!(config.apps.len(), 1);
        assert_eq!(config.apps[0].id, DEV_APP_ID);
        assert_eq!(config.apps[0].limits.max_message_bytes, 10 * 1024);
    }

    #[test]
    fn overrides_win_over_the_file() {
        let mut config = Config::from_toml(
            "port = 7000\n[[apps]]\nid = \"5\"\nkey = \"k\"\nsecret = \"secret-secret\"\n",
        )
        .unwrap();
        let overrides = Overrides {
            port: Some(7001),
            app_secret: Some("another-secret".into()),
            ..Overrides::default()
        };
        assert_eq!(config.apply(&overrides), AppSource::Configured);
        config.validate().unwrap();
        assert_eq!(config.port, 7001);
        assert_eq!(config.apps[0].id, "5");
        assert_eq!(config.apps[0].secret, "another-secret");
    }

    #[test]
    fn several_apps_with_limits() {
        let config = Config::from_toml(
            r#"
            [[apps]]
            id = "1"
            key = "a"
            secret = "aaaaaaaaaa"
            allowed_origins = ["https://example.com"]
            [apps.limits]
            max_presence_members = 3
            [[apps.history]]
            channels = "chat-*"
            max_events = 50
            [[apps]]
            id = "2"
            key = "b"
            secret = "bbbbbbbbbb"
            "#,
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.apps[0].limits.max_presence_members, 3);
        assert_eq!(config.apps[1].limits.max_presence_members, 100);
        assert_eq!(config.apps[0].history[0].channels, "chat-*");
        assert_eq!(config.apps[0].history[0].max_events, 50);
        assert_eq!(config.apps[0].history[0].max_age_secs, 86_400);
        assert!(config.apps[1].history.is_empty());
    }

    #[test]
    fn unknown_keys_and_bad_types_name_the_key() {
        let err = Config::from_toml("prot = 1").unwrap_err();
        assert!(err.contains("prot"), "{err}");
        let err = Config::from_toml("port = \"x\"").unwrap_err();
        assert!(err.contains("port"), "{err}");
        let err = Config::from_toml(
            "[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n[apps.limits]\nmax_conections = 3",
        )
        .unwrap_err();
        assert!(err.contains("max_conections"), "{err}");
    }

    #[test]
    fn a_node_alone_is_a_one_node_cluster_on_the_default_port() {
        let (config, _) = Config::load(&Overrides {
            node_id: Some(4),
            ..Overrides::default()
        })
        .unwrap();
        assert_eq!(config.cluster_port(), 6002);
        assert!(config.uses_dev_cluster_secret());
        let settings = config.cluster_settings();
        assert_eq!(settings.node_id, 4);
        assert_eq!(settings.advertise_addr, "127.0.0.1:6002");
        assert_eq!(settings.peers, None);
        assert_eq!(settings.local_address, None, "listening on every address");
    }

    #[test]
    fn a_node_on_one_address_sends_its_cluster_traffic_from_it() {
        let (config, _) = Config::load(&Overrides {
            host: Some("127.0.1.2".parse().unwrap()),
            ..Overrides::default()
        })
        .unwrap();
        let settings = config.cluster_settings();
        assert_eq!(settings.local_address, Some("127.0.1.2".parse().unwrap()));
        assert_eq!(settings.advertise_addr, "127.0.1.2:6002");
    }

    #[test]
    fn peers_give_this_node_its_advertised_address() {
        let (config, _) = Config::load(&Overrides {
            node_id: Some(2),
            cluster_port: Some(7002),
            peers: Some("1@10.0.0.1:7002,2@10.0.0.2:7002,3@10.0.0.3:7002".into()),
            cluster_secret: Some("a-long-cluster-secret".into()),
            ..Overrides::default()
        })
        .unwrap();
        let settings = config.cluster_settings();
        assert_eq!(settings.advertise_addr, "10.0.0.2:7002");
        assert_eq!(settings.dead_after, Duration::from_secs(5));
        assert!(matches!(settings.peers, Some(Peers::Static(ref nodes)) if nodes.len() == 3));
        assert!(settings.secret.admits(b"a-long-cluster-secret"));
    }

    #[test]
    fn bad_cluster_settings_name_the_key() {
        let load = |node_id: u64, peers: &str, secret: Option<&str>, cluster_port: Option<u16>| {
            Config::load(&Overrides {
                node_id: Some(node_id),
                peers: Some(peers.into()),
                cluster_secret: secret.map(Into::into),
                cluster_port,
                ..Overrides::default()
            })
            .unwrap_err()
            .to_string()
        };
        let secret = Some("a-long-cluster-secret");
        let err = load(1, "1@a:6002,2@b:6002", None, None);
        assert!(
            err.contains("`cluster_secret`") && err.contains("required"),
            "{err}"
        );
        let err = load(1, "1@a:6002", Some("short"), None);
        assert!(err.contains("`cluster_secret`"), "{err}");
        let err = load(3, "1@a:6002,2@b:6002", secret, None);
        assert!(err.contains("`peers`") && err.contains("id 3"), "{err}");
        let err = load(1, "1@a", secret, None);
        assert!(err.contains("`peers`"), "{err}");
        let err = load(1, "", None, Some(9601));
        assert!(err.contains("`cluster_port`"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases = [
            ("[[apps]]\nid = \"abc\"\nkey = \"k\"\nsecret = \"ssssssssss\"", "apps[0].id"),
            ("[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"", "apps[0].secret"),
            (
                "[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"ssssssssss\"\n[apps.limits]\nmax_connections = 0",
                "apps[0].limits.max_connections",
            ),
            ("activity_timeout_secs = 0", "activity_timeout_secs"),
            ("dead_after_secs = 1", "dead_after_secs"),
            ("raft_snapshot_every = 5", "raft_snapshot_every"),
            (
                "[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"ssssssssss\"\n[[apps.history]]\nchannels = \"a[\"",
                "apps[0].history[0].channels",
            ),
            (
                "[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"ssssssssss\"\n[[apps]]\nid = \"1\"\nkey = \"j\"\nsecret = \"ssssssssss\"",
                "apps[1].id",
            ),
        ];
        for (text, key) in cases {
            let config = Config::from_toml(text).unwrap();
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }
}
