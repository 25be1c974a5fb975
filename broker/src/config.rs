//! Node configuration: the TOML file, the `CHORUS_*` environment and the command-line flags.
//!
//! Precedence, lowest first: built-in defaults, the TOML file (`--config` / `CHORUS_CONFIG`),
//! environment variables, flags. With no file at all the node serves one default development app.
//! A file that cannot be read or parsed, or a value that makes no sense, stops start-up with a
//! message that names the key; nothing falls back to a default silently. One exception, for
//! Kubernetes: a Service named `chorus` gives every pod of its namespace `CHORUS_PORT=tcp://...`
//! (a service link; `chorus-metrics` and `chorus-cluster` give `CHORUS_METRICS_PORT` and
//! `CHORUS_CLUSTER_PORT`), which is not a port: it is ignored, with a warning that names it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chorus_cluster::{ClusterSecret, ClusterSettings, DesiredMembers, NodeId, Peers};
use clap::Args;
use serde::Deserialize;

/// The development app served when no app is configured.
pub const DEV_APP_ID: &str = "1";
pub const DEV_APP_KEY: &str = "chorus-dev-key";
pub const DEV_APP_SECRET: &str = "chorus-dev-secret";

/// The file in the data directory that holds the random cluster secret of a one-node cluster
/// started without one (mode 0600), for `chorus cluster` commands on the same machine.
pub const CLUSTER_SECRET_FILE: &str = "cluster-secret";

/// The cluster port when none is configured.
pub const DEFAULT_CLUSTER_PORT: u16 = 6002;

/// The shortest cluster secret accepted.
const MIN_CLUSTER_SECRET_LEN: usize = 16;

/// The longest app id accepted.
const MAX_APP_ID_LEN: usize = 128;

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
    /// name whose address records are the nodes. Empty: a one-node cluster (unless
    /// `members_file` is given).
    pub peers: String,
    /// A members file the node re-reads every 2 s: the nodes the cluster should have, by
    /// revision (`revision = N`, `peers = "id@host:port,..."`); the leader adds and removes
    /// voters to match. Exclusive with `peers`.
    pub members_file: Option<PathBuf>,
    /// The secret every request to the cluster port carries. Required with `peers` or
    /// `members_file`; a one-node cluster without one makes a random one at start (see
    /// [`Config::cluster_secret_generated`]).
    pub cluster_secret: Option<String>,
    /// The cluster secret was made at start, at random: none was configured.
    #[serde(skip)]
    pub cluster_secret_generated: bool,
    /// Seconds an idle HTTP keep-alive connection of the public port stays open: longer than
    /// the clients' own idle timeouts (Node's agent: 5 s), as load balancers do.
    pub keep_alive_secs: u64,
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
            members_file: None,
            cluster_secret: None,
            cluster_secret_generated: false,
            keep_alive_secs: 75,
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
    #[arg(long, env = "CHORUS_PORT", value_parser = port_setting("CHORUS_PORT"))]
    pub port: Option<PortSetting>,
    #[arg(long, env = "CHORUS_METRICS_PORT", value_parser = port_setting("CHORUS_METRICS_PORT"))]
    pub metrics_port: Option<PortSetting>,
    #[arg(long, env = "CHORUS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    #[arg(long, env = "CHORUS_WORKERS")]
    pub workers: Option<usize>,
    /// This node's id in the cluster.
    #[arg(long, env = "CHORUS_NODE_ID")]
    pub node_id: Option<NodeId>,
    /// The cluster port (default 6002).
    #[arg(long, env = "CHORUS_CLUSTER_PORT", value_parser = port_setting("CHORUS_CLUSTER_PORT"))]
    pub cluster_port: Option<PortSetting>,
    /// The cluster's nodes: `id@host:port,...` or a DNS name.
    #[arg(long, env = "CHORUS_PEERS")]
    pub peers: Option<String>,
    /// A members file to follow: the nodes the cluster should have, by revision.
    #[arg(long, env = "CHORUS_MEMBERS_FILE")]
    pub members_file: Option<PathBuf>,
    /// Seconds an idle HTTP keep-alive connection stays open (default 75).
    #[arg(long, env = "CHORUS_KEEP_ALIVE_SECS")]
    pub keep_alive_secs: Option<u64>,
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

/// A port from the environment or the command line, or a Kubernetes service link that stands
/// where a port was expected (`tcp://10.0.0.7:6001`), to be ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSetting {
    Port(u16),
    /// The variable that held it, and its value.
    ServiceLink {
        variable: &'static str,
        value: String,
    },
}

/// The parser of a port setting read from `variable` (or its flag): a port number, or a service
/// link; anything else is refused, naming the variable.
fn port_setting(
    variable: &'static str,
) -> impl Fn(&str) -> Result<PortSetting, String> + Clone + Send + Sync + 'static {
    move |text| {
        if let Ok(port) = text.trim().parse::<u16>() {
            return Ok(PortSetting::Port(port));
        }
        if is_service_link(text) {
            return Ok(PortSetting::ServiceLink {
                variable,
                value: text.to_owned(),
            });
        }
        Err(format!(
            "{variable}: {text:?} is neither a port number nor a Kubernetes service link \
             (tcp://host:port)"
        ))
    }
}

/// Whether `text` is a Kubernetes service link: `tcp://`, `udp://` or `sctp://`, an address,
/// a port.
fn is_service_link(text: &str) -> bool {
    let Some((scheme, rest)) = text.split_once("://") else {
        return false;
    };
    let address = rest.rsplit_once(':');
    ["tcp", "udp", "sctp"].contains(&scheme)
        && address.is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

/// The port a setting gives; none for a service link, with a warning that names it.
fn port_given(setting: &Option<PortSetting>) -> Option<u16> {
    match setting {
        Some(PortSetting::Port(port)) => Some(*port),
        Some(PortSetting::ServiceLink { variable, value }) => {
            tracing::warn!(
                variable = *variable,
                value = %value,
                "ignored: a Kubernetes service link (a Service named after it), not a port; set \
                 enableServiceLinks: false on the pod"
            );
            None
        }
        None => None,
    }
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
        config.make_secret_if_alone();
        Ok((config, source))
    }

    /// A node alone (no peers, no members file) without a cluster secret gets a random one, so
    /// that its cluster port never takes a secret anyone can know.
    fn make_secret_if_alone(&mut self) {
        let alone = self.peers().is_none() && self.members_file.is_none();
        if alone && self.cluster_secret.is_none() {
            self.cluster_secret = Some(hex::encode(rand::random::<[u8; 32]>()));
            self.cluster_secret_generated = true;
        }
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
        if let Some(v) = port_given(&o.port) {
            self.port = v;
        }
        if let Some(v) = port_given(&o.metrics_port) {
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
        if let Some(v) = port_given(&o.cluster_port) {
            self.cluster_port = Some(v);
        }
        if let Some(v) = &o.peers {
            self.peers = v.clone();
        }
        if let Some(v) = &o.members_file {
            self.members_file = Some(v.clone());
        }
        if let Some(v) = o.keep_alive_secs {
            self.keep_alive_secs = v;
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
        if !(1..=3600).contains(&self.keep_alive_secs) {
            return Err(invalid("keep_alive_secs", "must be between 1 and 3600"));
        }
        self.validate_cluster()?;
        let mut ids = std::collections::HashSet::new();
        let mut keys = std::collections::HashSet::new();
        for (i, app) in self.apps.iter().enumerate() {
            let key = |field: &str| format!("apps[{i}].{field}");
            if let Err(problem) = check_app_id(&app.id) {
                return Err(invalid(key("id"), problem));
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
            self.validate_app(i, app)?;
        }
        Ok(())
    }

    /// Checks app `i`'s origins, history rules and limits.
    fn validate_app(&self, i: usize, app: &AppConfig) -> Result<(), ConfigError> {
        let key = |field: &str| format!("apps[{i}].{field}");
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
        Ok(())
    }
}

/// Checks an app id: any text a URL path segment carries as it is (RFC 3986's unreserved
/// characters, sub-delimiters, `:` and `@`), so `/apps/{id}/events` needs no escaping.
fn check_app_id(id: &str) -> Result<(), String> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b);
    if id.is_empty() || id.len() > MAX_APP_ID_LEN {
        return Err(format!("must be 1 to {MAX_APP_ID_LEN} characters"));
    }
    if id == "." || id == ".." || !id.bytes().all(allowed) {
        return Err(format!(
            "{id:?} does not fit a URL path as it is: use letters, digits and -._~!$&'()*+,;=:@"
        ));
    }
    Ok(())
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

    /// The members file as it is now, if the node follows one.
    pub fn members(&self) -> Option<DesiredMembers> {
        let path = self.members_file.as_ref()?;
        chorus_cluster::read_members_file(path).ok()
    }

    /// How this node joins the cluster.
    pub fn cluster_settings(&self) -> ClusterSettings {
        let peers = self.peers();
        let host = if self.host.is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            self.host.to_string()
        };
        let listed = self.members().map(|desired| desired.members);
        let advertise_addr = match (&peers, listed) {
            (Some(Peers::Static(nodes)), _) => nodes.get(&self.node_id()).cloned(),
            (Some(Peers::Dns { .. }), _) => {
                hostname().map(|name| format!("{name}:{}", self.cluster_port()))
            }
            (None, Some(members)) => members.get(&self.node_id()).cloned(),
            (None, None) => None,
        }
        .unwrap_or_else(|| format!("{host}:{}", self.cluster_port()));
        ClusterSettings {
            node_id: self.node_id(),
            advertise_addr,
            peers,
            members_file: self.members_file.clone(),
            // Validated and filled in by `Config::load`: never empty there.
            secret: ClusterSecret::new(self.cluster_secret.clone().unwrap_or_default()),
            dead_after: Duration::from_secs(self.dead_after_secs),
            snapshot_every: self.raft_snapshot_every,
            // A node listening on one address sends its cluster traffic from it.
            local_address: (!self.host.is_unspecified()).then_some(self.host),
            tls: None,
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
        if let Some(path) = &self.members_file {
            if peers.is_some() {
                return Err(invalid(
                    "members_file",
                    "give peers or a members file, not both",
                ));
            }
            if let Err(e) = chorus_cluster::read_members_file(path) {
                return Err(invalid("members_file", e.to_string()));
            }
        }
        let with_others = peers.is_some() || self.members_file.is_some();
        match &self.cluster_secret {
            None if with_others => Err(invalid(
                "cluster_secret",
                "required with peers or a members file (CHORUS_CLUSTER_SECRET)",
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
            port: Some(PortSetting::Port(7001)),
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
        assert!(config.cluster_secret_generated);
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
            cluster_port: Some(PortSetting::Port(7002)),
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
                cluster_port: cluster_port.map(PortSetting::Port),
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
    fn app_ids_are_what_a_url_path_carries_as_it_is() {
        for id in ["1", "app-id", "my_app.v2", "A~b", "tenant:42@eu"] {
            let text = format!("[[apps]]\nid = {id:?}\nkey = \"k\"\nsecret = \"ssssssssss\"");
            Config::from_toml(&text).unwrap().validate().unwrap();
        }
        let long = "a".repeat(MAX_APP_ID_LEN + 1);
        assert!(check_app_id(&long).is_err());
    }

    #[test]
    fn a_node_alone_without_a_secret_gets_a_random_one() {
        let (first, _) = Config::load(&Overrides::default()).unwrap();
        let (second, _) = Config::load(&Overrides::default()).unwrap();
        let (a, b) = (
            first.cluster_secret.unwrap(),
            second.cluster_secret.unwrap(),
        );
        assert_eq!(a.len(), 64);
        assert_ne!(a, b, "made at random at each start");
        let (given, _) = Config::load(&Overrides {
            cluster_secret: Some("a-long-cluster-secret".into()),
            ..Overrides::default()
        })
        .unwrap();
        assert!(!given.cluster_secret_generated);
    }

    #[test]
    fn a_kubernetes_service_link_is_no_port_and_anything_else_is_refused() {
        let parse = port_setting("CHORUS_PORT");
        assert_eq!(parse("6001"), Ok(PortSetting::Port(6001)));
        assert_eq!(
            parse("tcp://10.0.0.7:6001"),
            Ok(PortSetting::ServiceLink {
                variable: "CHORUS_PORT",
                value: "tcp://10.0.0.7:6001".into()
            })
        );
        assert!(parse("udp://[fd00::1]:53").is_ok());
        for bad in ["http://10.0.0.7:6001", "tcp://10.0.0.7", "six", "70000"] {
            let err = parse(bad).unwrap_err();
            assert!(err.starts_with("CHORUS_PORT:"), "{bad}: {err}");
        }
        let mut config = Config::default();
        let overrides = Overrides {
            port: parse("tcp://10.0.0.7:6001").ok(),
            ..Overrides::default()
        };
        config.apply(&overrides);
        assert_eq!(config.port, 6001, "the default stays");
    }

    #[test]
    fn a_members_file_is_exclusive_with_peers_and_needs_a_secret() {
        let dir =
            std::env::temp_dir().join(format!("chorus-config-members-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("members.toml");
        std::fs::write(&file, "revision = 3\npeers = \"0@a:6002,1@b:6002\"\n").unwrap();
        let load = |peers: Option<&str>, secret: Option<&str>, path: &Path| {
            Config::load(&Overrides {
                node_id: Some(1),
                peers: peers.map(Into::into),
                members_file: Some(path.to_owned()),
                cluster_secret: secret.map(Into::into),
                ..Overrides::default()
            })
        };
        let secret = Some("a-long-cluster-secret");
        let (config, _) = load(None, secret, &file).unwrap();
        let settings = config.cluster_settings();
        assert_eq!(settings.advertise_addr, "b:6002", "its own entry");
        assert_eq!(settings.members_file.as_deref(), Some(file.as_path()));
        let err = load(Some("1@b:6002"), secret, &file)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`members_file`") && err.contains("not both"),
            "{err}"
        );
        let err = load(None, None, &file).unwrap_err().to_string();
        assert!(err.contains("`cluster_secret`"), "{err}");
        let err = load(None, secret, &dir.join("missing.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`members_file`") && err.contains("missing.toml"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases = [
            ("[[apps]]\nid = \"a/b\"\nkey = \"k\"\nsecret = \"ssssssssss\"", "apps[0].id"),
            ("[[apps]]\nid = \"..\"\nkey = \"k\"\nsecret = \"ssssssssss\"", "apps[0].id"),
            ("[[apps]]\nid = \"\"\nkey = \"k\"\nsecret = \"ssssssssss\"", "apps[0].id"),
            ("[[apps]]\nid = \"a b\"\nkey = \"k\"\nsecret = \"ssssssssss\"", "apps[0].id"),
            ("[[apps]]\nid = \"a%20\"\nkey = \"k\"\nsecret = \"ssssssssss\"", "apps[0].id"),
            ("keep_alive_secs = 0", "keep_alive_secs"),
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
