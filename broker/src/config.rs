//! Node configuration: the built-in defaults, the TOML file, the `CHORUS_*` environment and the
//! command-line flags.
//!
//! Each node setting is one field of [`Config`]: its doc comment is its `--help` text and its
//! line in the README's table, and its `#[arg]` names its default, its environment variable and
//! its flag. clap reads the defaults, the environment and the flags; the file (`--config` /
//! `CHORUS_CONFIG`) comes in between ([`Config::load`]), so the precedence, lowest first, is:
//! default, file, environment, flag. The apps come from the file (`[[apps]]`), the first one's
//! credentials also from the environment ([`FirstApp`]); with none at all the node serves one
//! development app. A file that cannot be read or parsed, an unknown key or a value that makes no
//! sense stops start-up with a message that names the key; nothing falls back to a default
//! silently. One exception, for Kubernetes: a Service named `chorus` gives every pod of its
//! namespace `CHORUS_PORT=tcp://...` (a service link; `chorus-metrics` and `chorus-cluster` give
//! `CHORUS_METRICS_PORT` and `CHORUS_CLUSTER_PORT`), which is not a port: such a variable is left
//! unread, with a warning that names it ([`without_service_links`]).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chorus_cluster::{ClusterSecret, ClusterSettings, DesiredMembers, NodeId, Peers};
use clap::builder::TypedValueParser;
use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Args, Command, FromArgMatches};
use serde::{Deserialize, Serialize};

use crate::http::client_ip::Network;
use crate::tls::{
    CertificateFiles, ClusterTls, NodeTls, ServedCertificate, TlsFile, TlsFileError,
    TrustedAuthority,
};
use crate::webhooks::settings::{check_delivery, check_webhook, WebhookConfig, WebhookDelivery};

/// The development app served when no app is configured.
pub const DEV_APP_ID: &str = "1";
pub const DEV_APP_KEY: &str = "chorus-dev-key";
/// The file in the data directory that keeps the development app's random secret (mode 0600),
/// so that it stays the same from one start to the next.
pub const DEV_APP_SECRET_FILE: &str = "dev-app-secret";

/// The file in the data directory that holds the random cluster secret of a one-node cluster
/// started without one (mode 0600), for `chorus cluster` commands on the same machine.
pub const CLUSTER_SECRET_FILE: &str = "cluster-secret";

/// The cluster port when none is configured.
pub const DEFAULT_CLUSTER_PORT: u16 = 6002;

/// The shortest cluster secret accepted.
const MIN_CLUSTER_SECRET_LEN: usize = 16;

/// The longest app id accepted.
const MAX_APP_ID_LEN: usize = 128;

/// Webhooks per app at most.
const MAX_WEBHOOKS_PER_APP: usize = 100;

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
    #[error("{0}")]
    Arguments(#[from] clap::Error),
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

/// What the command line and the environment give: the file to read, the first app's
/// credentials and every node setting. `main` flattens it into its command line.
#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// TOML configuration file.
    #[arg(long = "config", env = "CHORUS_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub first_app: FirstApp,
    #[command(flatten)]
    pub settings: Config,
}

/// The first app's credentials, over the file's first app (or the development app).
#[derive(Debug, Clone, Default, Args)]
pub struct FirstApp {
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

/// The whole node configuration. Every field but `apps` is a setting: a key of the file, a
/// `CHORUS_*` variable and a flag, documented here once (the README's table is made from these
/// comments: see the test `the_readme_lists_every_setting`).
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address of the listeners; a specific address is also the source of the node's cluster
    /// traffic.
    #[arg(long, env = "CHORUS_HOST", default_value_t = IpAddr::from([0, 0, 0, 0]))]
    pub host: IpAddr,
    /// Public port: WebSocket, SSE, the HTTP API, health.
    #[arg(long, env = "CHORUS_PORT", default_value_t = 6001, value_parser = PortNumber)]
    pub port: u16,
    /// Prometheus port (`/metrics`), always plain HTTP.
    #[arg(long, env = "CHORUS_METRICS_PORT", default_value_t = 9601, value_parser = PortNumber)]
    pub metrics_port: u16,
    /// The node's data.
    #[arg(long, env = "CHORUS_DATA_DIR", default_value = "./chorus-data")]
    pub data_dir: PathBuf,
    /// HTTP worker threads; 0: one per core.
    #[arg(long, env = "CHORUS_WORKERS", default_value_t = 0)]
    pub workers: usize,
    /// This node's id in the cluster. Absent: the number after the last `-` of the hostname (a
    /// StatefulSet pod's ordinal), else 1.
    #[arg(long, env = "CHORUS_NODE_ID")]
    pub node_id: Option<NodeId>,
    /// The cluster port: Raft RPCs, `/cluster/join`, `GET /cluster` (all need the secret).
    /// Absent: 6002, or a free port with a warning when a node alone finds 6002 taken.
    #[arg(long, env = "CHORUS_CLUSTER_PORT", value_parser = PortNumber)]
    pub cluster_port: Option<u16>,
    /// `id@host:port,...` naming every node (this one too), or one DNS name (`name` or
    /// `name:port`) whose address records are the nodes. Empty: a one-node cluster.
    #[arg(long, env = "CHORUS_PEERS", default_value = "")]
    pub peers: String,
    /// A members file the node re-reads every 2 s: the nodes the cluster should have, by
    /// revision; exclusive with `peers`; must be readable at start.
    #[arg(long, env = "CHORUS_MEMBERS_FILE")]
    pub members_file: Option<PathBuf>,
    /// At least 16 characters, required with `peers` or `members_file`; sent as
    /// `x-chorus-cluster-secret`. A node alone without one makes a random one at start and writes
    /// it to `data_dir/cluster-secret` (mode 0600) for `chorus cluster` commands.
    #[arg(long, env = "CHORUS_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// The cluster secret was made at start, at random: none was configured.
    #[arg(skip)]
    #[serde(skip)]
    pub cluster_secret_generated: bool,
    /// The first app is the development app with a random secret: none was given.
    #[arg(skip)]
    #[serde(skip)]
    pub app_secret_generated: bool,
    /// Seconds a cluster member may go without answering before the leader declares it dead and
    /// removes its presence members and channel interest (at least 2, above Raft's 0.6-1.2 s
    /// election timeout).
    #[arg(long, env = "CHORUS_DEAD_AFTER_SECS", default_value_t = chorus_cluster::DEFAULT_DEAD_AFTER.as_secs())]
    pub dead_after_secs: u64,
    /// Raft log entries between two snapshots of the replicated state; as many stay in the log
    /// after each, so a node down for fewer catches up from the log.
    #[arg(long, env = "CHORUS_RAFT_SNAPSHOT_EVERY", default_value_t = chorus_cluster::DEFAULT_SNAPSHOT_EVERY)]
    pub raft_snapshot_every: u64,
    /// Seconds of silence after which a client should ping (sent to clients) and the server
    /// pings.
    #[arg(long, env = "CHORUS_ACTIVITY_TIMEOUT_SECS", default_value_t = 120)]
    pub activity_timeout_secs: u64,
    /// Seconds the server waits for a pong before closing with 4201.
    #[arg(long, env = "CHORUS_PONG_TIMEOUT_SECS", default_value_t = 30)]
    pub pong_timeout_secs: u64,
    /// Seconds between heartbeat comments on an SSE stream (keeps proxies from closing it).
    #[arg(long, env = "CHORUS_SSE_HEARTBEAT_SECS", default_value_t = 15)]
    pub sse_heartbeat_secs: u64,
    /// Seconds a graceful shutdown waits for connections to close.
    #[arg(long, env = "CHORUS_SHUTDOWN_TIMEOUT_SECS", default_value_t = 10)]
    pub shutdown_timeout_secs: u64,
    /// Seconds an idle HTTP keep-alive connection of the public port stays open (1-3600): longer
    /// than clients keep theirs idle (Node's agent 5 s, load balancers 60 s), so a client never
    /// sends on a connection the server is closing.
    #[arg(long, env = "CHORUS_KEEP_ALIVE_SECS", default_value_t = 75)]
    pub keep_alive_secs: u64,
    /// Bytes queued towards one connection before it is cut off as a slow reader (4100).
    #[arg(long, env = "CHORUS_MAX_OUTBOUND_BYTES", default_value_t = 1024 * 1024)]
    pub max_outbound_bytes: usize,
    /// Largest HTTP API request body, in bytes (413 above it).
    #[arg(long, env = "CHORUS_MAX_REQUEST_BYTES", default_value_t = 256 * 1024)]
    pub max_request_bytes: usize,
    /// Seconds an HTTP API request body may pause (1-3600); every body may also take this long
    /// on top of its length at `body_min_bytes_per_sec`. A body later than that is answered 408
    /// and its connection closed.
    #[arg(long, env = "CHORUS_BODY_TIMEOUT_SECS", default_value_t = 5)]
    pub body_timeout_secs: u64,
    /// The slowest an HTTP API request body may arrive, in bytes per second over the whole body.
    #[arg(long, env = "CHORUS_BODY_MIN_BYTES_PER_SEC", default_value_t = 16 * 1024)]
    pub body_min_bytes_per_sec: u64,
    /// Open WebSocket and SSE connections per client address; 0: no limit. Over it, a WebSocket
    /// gets the Pusher error 4100 (retry later) and an SSE request 429.
    #[arg(long, env = "CHORUS_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: u32,
    /// WebSocket and SSE handshakes per client address per second; 0: no limit. Refused as over
    /// `max_connections_per_ip`.
    #[arg(
        long,
        env = "CHORUS_MAX_HANDSHAKES_PER_IP_PER_SEC",
        default_value_t = 0
    )]
    pub max_handshakes_per_ip_per_sec: u32,
    /// Proxies (addresses or networks, comma-separated: `10.0.0.0/8,fd00::/8`) whose
    /// `X-Forwarded-For` names the client for the per-IP limits; a trusted proxy itself is never
    /// limited as one client. Empty: the peer's address is the client's.
    #[arg(long, env = "CHORUS_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<Network>,
    /// The public port's certificate chain (PEM), with `tls_key_file`: the public port then
    /// speaks only TLS (`wss://`, `https://`). Re-read when the file changes.
    #[arg(long, env = "CHORUS_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// The private key of `tls_cert_file` (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "CHORUS_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// The cluster port's certificate chain (PEM), with `cluster_tls_key_file` and
    /// `cluster_tls_ca_file`: the cluster port then speaks only TLS, and so does this node's
    /// traffic to the others. Re-read when the file changes.
    #[arg(long, env = "CHORUS_CLUSTER_TLS_CERT_FILE")]
    pub cluster_tls_cert_file: Option<PathBuf>,
    /// The private key of `cluster_tls_cert_file` (PEM).
    #[arg(long, env = "CHORUS_CLUSTER_TLS_KEY_FILE")]
    pub cluster_tls_key_file: Option<PathBuf>,
    /// The certificate authority (PEM) that issued the nodes' cluster certificates: the only one
    /// this node trusts on the cluster port of another. Re-read when the file changes.
    #[arg(long, env = "CHORUS_CLUSTER_TLS_CA_FILE")]
    pub cluster_tls_ca_file: Option<PathBuf>,
    /// The certificates and the authority the TLS settings name, loaded by [`Config::load`].
    #[arg(skip)]
    #[serde(skip)]
    pub tls: NodeTls,
    /// The apps (`[[apps]]` in the file).
    #[arg(skip)]
    #[serde(default, skip_serializing)]
    pub apps: Vec<AppConfig>,
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
    /// Where the app's webhooks go, each with the events it wants (`[[apps.webhooks]]`).
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    /// How the app's webhooks are sent (`[apps.webhook_delivery]`).
    #[serde(default)]
    pub webhook_delivery: WebhookDelivery,
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
    /// Seconds a publish's idempotency key is remembered: a repeat within them is answered as
    /// the first publish was and delivered once (cluster-wide on history channels, by the node
    /// that took it on the others). Chorus's own, not Pusher's.
    pub idempotency_window_secs: u64,
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
            idempotency_window_secs: 300,
        }
    }
}

/// A port number from a flag or a variable; what is not one is refused naming both.
#[derive(Debug, Clone, Copy)]
struct PortNumber;

impl TypedValueParser for PortNumber {
    type Value = u16;

    fn parse_ref(&self, _: &Command, arg: Option<&Arg>, value: &OsStr) -> Result<u16, clap::Error> {
        let text = value.to_string_lossy();
        text.trim().parse().map_err(|_| {
            let names = arg.map(names_of).unwrap_or_default();
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!(
                    "{names}: {text:?} is not a port number (a Kubernetes service link, \
                     tcp://host:port, in the variable is ignored)\n"
                ),
            )
        })
    }
}

/// An argument's variable and flag, `CHORUS_PORT / --port`.
fn names_of(arg: &Arg) -> String {
    let flag = arg.get_long().map(|long| format!("--{long}"));
    let variable = arg
        .get_env()
        .map(|name| name.to_string_lossy().into_owned());
    [variable, flag]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" / ")
}

/// `command` with every port variable (`CHORUS_*_PORT`) that holds a Kubernetes service link
/// left unread, as if it were not set, with a warning that names it. Any other value that is not
/// a port still stops start-up, naming the variable.
pub fn without_service_links(command: Command) -> Command {
    ignoring_service_links(command, |name| std::env::var(name).ok())
}

/// [`without_service_links`], the variables read by `environment`.
fn ignoring_service_links(
    command: Command,
    environment: impl Fn(&str) -> Option<String>,
) -> Command {
    command.mut_args(|arg| {
        let link = arg
            .get_env()
            .and_then(OsStr::to_str)
            .filter(|name| name.ends_with("_PORT"))
            .and_then(|name| Some((name.to_owned(), environment(name)?)))
            .filter(|(_, value)| is_service_link(value));
        match link {
            Some((variable, value)) => {
                tracing::warn!(
                    variable = variable.as_str(),
                    value = %value,
                    "ignored: a Kubernetes service link (a Service named after it), not a port; \
                     set enableServiceLinks: false on the pod"
                );
                arg.env(None)
            }
            None => arg,
        }
    })
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

/// How the configuration came to be: callers warn when the development credentials are in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppSource {
    Configured,
    DevelopmentDefault,
}

impl Config {
    /// The configuration from what clap read (`args`, out of `matches`, which says where each
    /// value came from) and the file it names, validated, its TLS files loaded.
    pub fn load(
        args: ConfigArgs,
        matches: &ArgMatches,
    ) -> Result<(Config, AppSource), ConfigError> {
        let file = match &args.config {
            Some(path) => Some((path, read_table(path)?)),
            None => None,
        };
        let mut config = match file {
            Some((path, table)) => {
                layered(&args.settings, &given(matches), table).map_err(|message| {
                    ConfigError::Parse {
                        path: path.clone(),
                        message,
                    }
                })?
            }
            None => args.settings,
        };
        let source = config.add_first_app(&args.first_app);
        if config.node_id.is_none() {
            config.node_id = Some(
                hostname()
                    .as_deref()
                    .and_then(chorus_cluster::ordinal_of_hostname)
                    .unwrap_or(1),
            );
        }
        config.validate()?;
        config.make_secret_if_alone();
        config.tls = config.load_tls()?;
        Ok((config, source))
    }

    /// The defaults with the settings of a TOML text over them (no environment, no flags); the
    /// error message names the key.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        let table = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())?;
        layered(&defaults(), &HashSet::new(), table)
    }

    /// Adds the development app when the file declares none, then puts the first app's
    /// credentials given in the environment or as flags over the first app.
    fn add_first_app(&mut self, given: &FirstApp) -> AppSource {
        let mut source = AppSource::Configured;
        if self.apps.is_empty() {
            let all_given =
                given.app_id.is_some() && given.app_key.is_some() && given.app_secret.is_some();
            if !all_given {
                source = AppSource::DevelopmentDefault;
            }
            self.apps.push(AppConfig {
                id: DEV_APP_ID.into(),
                key: DEV_APP_KEY.into(),
                secret: hex::encode(rand::random::<[u8; 16]>()),
                allowed_origins: Vec::new(),
                limits: Limits::default(),
                history: Vec::new(),
                webhooks: Vec::new(),
                webhook_delivery: WebhookDelivery::default(),
            });
        }
        self.app_secret_generated =
            source == AppSource::DevelopmentDefault && given.app_secret.is_none();
        let first = &mut self.apps[0];
        for (field, value) in [
            (&mut first.id, &given.app_id),
            (&mut first.key, &given.app_key),
            (&mut first.secret, &given.app_secret),
        ] {
            if let Some(value) = value {
                value.clone_into(field);
            }
        }
        source
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
}

/// Every setting at its default: the command line of a node given nothing, its environment
/// unread.
fn defaults() -> Config {
    let command = Config::augment_args(Command::new("chorus")).mut_args(|arg| arg.env(None));
    let matches = command
        .try_get_matches_from(["chorus"])
        .expect("every setting has a default or is optional");
    Config::from_arg_matches(&matches).expect("the defaults are settings")
}

/// The settings given in the environment or as flags: they win over the file.
fn given(matches: &ArgMatches) -> HashSet<String> {
    matches
        .ids()
        .map(|id| id.as_str())
        .filter(|id| {
            matches!(
                matches.value_source(id),
                Some(ValueSource::EnvVariable | ValueSource::CommandLine)
            )
        })
        .map(str::to_owned)
        .collect()
}

/// `from_args` (the defaults, the environment, the flags) with `file` in between: a key of the
/// file wins over a default and loses to a setting `given` in the environment or as a flag. An
/// unknown key or a value of the wrong type is refused, naming the key.
fn layered(
    from_args: &Config,
    given: &HashSet<String>,
    file: toml::Table,
) -> Result<Config, String> {
    let mut merged = toml::Table::try_from(from_args).map_err(|e| e.to_string())?;
    for (key, value) in file {
        if !given.contains(&key) {
            merged.insert(key, value);
        }
    }
    merged
        .try_into()
        .map_err(|e: toml::de::Error| e.to_string().trim_end().to_owned())
}

/// The file's table; a file that cannot be read or is not TOML is refused, with the line.
fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })
}

impl Config {
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
        if !(1..=3600).contains(&self.body_timeout_secs) {
            return Err(invalid("body_timeout_secs", "must be between 1 and 3600"));
        }
        if self.body_min_bytes_per_sec == 0 {
            return Err(invalid("body_min_bytes_per_sec", "must be at least 1"));
        }
        self.validate_cluster()?;
        self.validate_tls()?;
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
        self.validate_webhooks(i, app)?;
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
        if !(1..=86_400).contains(&l.idempotency_window_secs) {
            return Err(invalid(
                key("limits.idempotency_window_secs"),
                "must be between 1 and 86400",
            ));
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

impl Config {
    /// Checks app `i`'s webhooks and how they are sent.
    fn validate_webhooks(&self, i: usize, app: &AppConfig) -> Result<(), ConfigError> {
        if app.webhooks.len() > MAX_WEBHOOKS_PER_APP {
            return Err(invalid(
                format!("apps[{i}].webhooks"),
                format!("at most {MAX_WEBHOOKS_PER_APP} webhooks per app"),
            ));
        }
        for (j, webhook) in app.webhooks.iter().enumerate() {
            if let Err((key, problem)) = check_webhook(webhook) {
                return Err(invalid(format!("apps[{i}].webhooks[{j}].{key}"), problem));
            }
        }
        if let Err((key, problem)) = check_delivery(&app.webhook_delivery) {
            return Err(invalid(
                format!("apps[{i}].webhook_delivery.{key}"),
                problem,
            ));
        }
        Ok(())
    }
}

impl Config {
    /// TLS settings come whole: a certificate with its key, the cluster's also with its
    /// authority.
    fn validate_tls(&self) -> Result<(), ConfigError> {
        let public = [
            ("tls_cert_file", &self.tls_cert_file),
            ("tls_key_file", &self.tls_key_file),
        ];
        let cluster = [
            ("cluster_tls_cert_file", &self.cluster_tls_cert_file),
            ("cluster_tls_key_file", &self.cluster_tls_key_file),
            ("cluster_tls_ca_file", &self.cluster_tls_ca_file),
        ];
        for group in [&public[..], &cluster[..]] {
            let given: Vec<&str> = group
                .iter()
                .filter(|(_, file)| file.is_some())
                .map(|(key, _)| *key)
                .collect();
            let missing = group.iter().find(|(_, file)| file.is_none());
            if let (Some((key, _)), false) = (missing, given.is_empty()) {
                return Err(invalid(
                    *key,
                    format!("required with {}", given.join(" and ")),
                ));
            }
        }
        Ok(())
    }

    /// Reads the certificates and the authority the TLS settings name (validated whole); a file
    /// that does not load is refused, naming its key.
    fn load_tls(&self) -> Result<NodeTls, ConfigError> {
        let public = match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => {
                let files = CertificateFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                };
                let served = ServedCertificate::load("the public port's certificate", files);
                Some(Arc::new(served.map_err(|e| tls_invalid("", e))?))
            }
            _ => None,
        };
        let cluster = match (
            &self.cluster_tls_cert_file,
            &self.cluster_tls_key_file,
            &self.cluster_tls_ca_file,
        ) {
            (Some(cert), Some(key), Some(ca)) => {
                let files = CertificateFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                };
                let served = ServedCertificate::load("the cluster port's certificate", files)
                    .map_err(|e| tls_invalid("cluster_", e))?;
                let trusted = TrustedAuthority::load("the cluster's authority", ca.clone())
                    .map_err(|e| tls_invalid("cluster_", e))?;
                Some(ClusterTls {
                    served: Arc::new(served),
                    trusted: Arc::new(trusted),
                })
            }
            _ => None,
        };
        Ok(NodeTls { public, cluster })
    }
}

/// A TLS file that does not load, named by its key (`prefix` `tls_cert_file`, ...).
fn tls_invalid(prefix: &str, e: TlsFileError) -> ConfigError {
    let key = match e.file {
        TlsFile::Cert => "tls_cert_file",
        TlsFile::Key => "tls_key_file",
        TlsFile::Ca => "tls_ca_file",
    };
    invalid(format!("{prefix}{key}"), e.to_string())
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
            tls: self.tls.cluster.as_ref().map(ClusterTls::client_config),
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

    /// A scratch directory of its own for each call.
    fn scratch(name: &str) -> PathBuf {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("chorus-config-{}-{name}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The configuration a node would run with, given these flags (its environment unread) and,
    /// when there is one, a file with this text.
    fn load(flags: &[&str], file: Option<&str>) -> Result<(Config, AppSource), ConfigError> {
        let mut words = vec!["chorus".to_owned()];
        if let Some(text) = file {
            let path = scratch("file").join("chorus.toml");
            std::fs::write(&path, text).unwrap();
            words.extend(["--config".to_owned(), path.display().to_string()]);
        }
        words.extend(flags.iter().map(|flag| flag.to_string()));
        let command = ConfigArgs::augment_args(Command::new("chorus")).mut_args(|a| a.env(None));
        let matches = command.try_get_matches_from(words)?;
        Config::load(ConfigArgs::from_arg_matches(&matches)?, &matches)
    }

    #[test]
    fn no_file_gives_the_development_app() {
        let (config, source) = load(&[], None).unwrap();
        assert_eq!(source, AppSource::DevelopmentDefault);
        assert_eq!(config.port, 6001);
        assert_eq!(config.metrics_port, 9601);
        assert_eq!(config.apps.len(), 1);
        assert_eq!(config.apps[0].id, DEV_APP_ID);
        assert_eq!(config.apps[0].limits.max_message_bytes, 10 * 1024);
    }

    #[test]
    fn overrides_win_over_the_file() {
        let file = "port = 7000\nmetrics_port = 7009\n[[apps]]\nid = \"5\"\nkey = \"k\"\n\
                    secret = \"secret-secret\"\n";
        let flags = ["--port", "7001", "--app-secret", "another-secret"];
        let (config, source) = load(&flags, Some(file)).unwrap();
        assert_eq!(source, AppSource::Configured);
        assert_eq!(config.port, 7001, "the flag over the file");
        assert_eq!(config.metrics_port, 7009, "the file over the default");
        assert_eq!(config.keep_alive_secs, 75, "the default");
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
        let (config, _) = load(&["--node-id", "4"], None).unwrap();
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
        let (config, _) = load(&["--host", "127.0.1.2"], None).unwrap();
        let settings = config.cluster_settings();
        assert_eq!(settings.local_address, Some("127.0.1.2".parse().unwrap()));
        assert_eq!(settings.advertise_addr, "127.0.1.2:6002");
    }

    #[test]
    fn peers_give_this_node_its_advertised_address() {
        let flags = [
            "--node-id=2",
            "--cluster-port=7002",
            "--peers=1@10.0.0.1:7002,2@10.0.0.2:7002,3@10.0.0.3:7002",
            "--cluster-secret=a-long-cluster-secret",
        ];
        let (config, _) = load(&flags, None).unwrap();
        let settings = config.cluster_settings();
        assert_eq!(settings.advertise_addr, "10.0.0.2:7002");
        assert_eq!(settings.dead_after, Duration::from_secs(5));
        assert!(matches!(settings.peers, Some(Peers::Static(ref nodes)) if nodes.len() == 3));
        assert!(settings.secret.admits(b"a-long-cluster-secret"));
    }

    #[test]
    fn bad_cluster_settings_name_the_key() {
        let load = |node_id: u64, peers: &str, secret: Option<&str>, cluster_port: Option<u16>| {
            let mut flags = vec![format!("--node-id={node_id}"), format!("--peers={peers}")];
            flags.extend(secret.map(|secret| format!("--cluster-secret={secret}")));
            flags.extend(cluster_port.map(|port| format!("--cluster-port={port}")));
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            load(&flags, None).unwrap_err().to_string()
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
        let (first, _) = load(&[], None).unwrap();
        let (second, _) = load(&[], None).unwrap();
        let (a, b) = (
            first.cluster_secret.unwrap(),
            second.cluster_secret.unwrap(),
        );
        assert_eq!(a.len(), 64);
        assert_ne!(a, b, "made at random at each start");
        let (given, _) = load(&["--cluster-secret", "a-long-cluster-secret"], None).unwrap();
        assert!(!given.cluster_secret_generated);
    }

    #[test]
    fn a_kubernetes_service_link_is_no_port_and_anything_else_is_refused() {
        assert!(is_service_link("tcp://10.0.0.7:6001"));
        assert!(is_service_link("udp://[fd00::1]:53"));
        for other in [
            "http://10.0.0.7:6001",
            "tcp://10.0.0.7",
            "six",
            "70000",
            "6001",
        ] {
            assert!(!is_service_link(other), "{other}");
        }
        // A port variable holding one is left unread; the others are read as before.
        let environment = |name: &str| match name {
            "CHORUS_PORT" => Some("tcp://10.0.0.7:6001".to_owned()),
            "CHORUS_METRICS_PORT" => Some("9602".to_owned()),
            _ => None,
        };
        let command = ignoring_service_links(Config::augment_args(Command::new("c")), environment);
        let variable = |id: &str| {
            let arg = command
                .get_arguments()
                .find(|arg| arg.get_id() == id)
                .unwrap();
            arg.get_env().map(|name| name.to_owned())
        };
        assert_eq!(variable("port"), None);
        assert_eq!(variable("metrics_port").unwrap(), "CHORUS_METRICS_PORT");
        // Any other value that is not a port is refused, naming the flag (and the variable: see
        // `tests/node_entry_points.rs`).
        for bad in ["six", "70000", "tcp://10.0.0.7:6001"] {
            let err = load(&["--port", bad], None).unwrap_err().to_string();
            assert!(
                err.contains("--port") && err.contains(&format!("{bad:?}")),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn a_members_file_is_exclusive_with_peers_and_needs_a_secret() {
        let dir = scratch("members");
        let file = dir.join("members.toml");
        std::fs::write(&file, "revision = 3\npeers = \"0@a:6002,1@b:6002\"\n").unwrap();
        let load = |peers: Option<&str>, secret: Option<&str>, path: &Path| {
            let mut flags = vec![
                "--node-id=1".to_owned(),
                format!("--members-file={}", path.display()),
            ];
            flags.extend(peers.map(|peers| format!("--peers={peers}")));
            flags.extend(secret.map(|secret| format!("--cluster-secret={secret}")));
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            load(&flags, None)
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
            (
                "[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"ssssssssss\"\n[apps.limits]\nidempotency_window_secs = 0",
                "apps[0].limits.idempotency_window_secs",
            ),
            ("activity_timeout_secs = 0", "activity_timeout_secs"),
            ("dead_after_secs = 1", "dead_after_secs"),
            ("raft_snapshot_every = 5", "raft_snapshot_every"),
            ("tls_cert_file = \"c.pem\"", "tls_key_file"),
            ("tls_key_file = \"k.pem\"", "tls_cert_file"),
            (
                "cluster_tls_cert_file = \"c.pem\"\ncluster_tls_key_file = \"k.pem\"",
                "cluster_tls_ca_file",
            ),
            ("cluster_tls_ca_file = \"ca.pem\"", "cluster_tls_cert_file"),
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

    #[test]
    fn a_bad_value_in_the_file_names_the_file_and_the_key() {
        let err = load(&[], Some("keep_alive_secs = \"long\""))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("chorus.toml") && err.contains("keep_alive_secs"),
            "{err}"
        );
        let err = load(&[], Some("keep_alive_secs = 0"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`keep_alive_secs`"), "{err}");
        let err = load(&[], Some("app_id = \"1\"")).unwrap_err().to_string();
        assert!(err.contains("app_id"), "not a key of the file: {err}");
        // A flag's value stands even where the file has a bad one for the same key.
        let (config, _) = load(&["--keep-alive-secs=9"], Some("keep_alive_secs = 0")).unwrap();
        assert_eq!(config.keep_alive_secs, 9);
    }

    #[test]
    fn tls_files_that_do_not_load_are_refused_naming_the_key() {
        let dir = scratch("tls");
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let made = |name: &str| rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        let (one, other) = (made("one.test"), made("other.test"));
        let cert = write("cert.pem", &one.cert.pem());
        let key = write("key.pem", &one.signing_key.serialize_pem());
        let other_key = write("other-key.pem", &other.signing_key.serialize_pem());
        let garbage = write("garbage.pem", "not a certificate");
        let tls = |cert: &str, key: &str| {
            let flags = [
                format!("--tls-cert-file={cert}"),
                format!("--tls-key-file={key}"),
            ];
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            load(&flags, None)
        };
        let (config, _) = tls(&cert, &key).unwrap();
        assert!(config.tls.public.is_some() && config.tls.cluster.is_none());
        let cases = [
            (garbage.as_str(), key.as_str(), "`tls_cert_file`"),
            (cert.as_str(), garbage.as_str(), "`tls_key_file`"),
            (cert.as_str(), other_key.as_str(), "`tls_key_file`"),
            ("/nonexistent/cert.pem", key.as_str(), "`tls_cert_file`"),
        ];
        for (cert, key, named) in cases {
            let err = tls(cert, key).unwrap_err().to_string();
            assert!(err.contains(named), "{cert} {key}: {err}");
        }
        let flags = [
            format!("--cluster-tls-cert-file={cert}"),
            format!("--cluster-tls-key-file={key}"),
            format!("--cluster-tls-ca-file={garbage}"),
        ];
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let err = load(&flags, None).unwrap_err().to_string();
        assert!(err.contains("`cluster_tls_ca_file`"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The README's table of settings, one row a field of [`Config`] from its `#[arg]` and doc
    /// comment.
    fn settings_table() -> String {
        let command = Config::augment_args(Command::new("chorus"));
        let mut table =
            String::from("| key | env / flag | default | meaning |\n|---|---|---|---|\n");
        for arg in command.get_arguments() {
            let (Some(variable), Some(flag)) = (arg.get_env(), arg.get_long()) else {
                continue;
            };
            let default = match arg.get_default_values() {
                [] => "none".to_owned(),
                [value] if value.is_empty() => "empty".to_owned(),
                values => format!("`{}`", values[0].to_string_lossy()),
            };
            let meaning = arg.get_long_help().or(arg.get_help()).unwrap().to_string();
            let meaning = meaning.split_whitespace().collect::<Vec<_>>().join(" ");
            table.push_str(&format!(
                "| `{}` | `{}` / `--{flag}` | {default} | {meaning} |\n",
                arg.get_id(),
                variable.to_string_lossy(),
            ));
        }
        table
    }

    #[test]
    fn the_readme_lists_every_setting() {
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"));
        let table = settings_table();
        assert!(
            readme.contains(&table),
            "the README's table of settings is not the one the code documents; it should read:\n\n{table}"
        );
    }
}
