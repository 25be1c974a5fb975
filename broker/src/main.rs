//! `chorus`: starts a node. With no configuration at all it serves one development app.
//! `chorus cluster status` prints a node's view of its cluster; `chorus cluster remove` takes a
//! node out of it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{ArgMatches, Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

use chorus_broker::config::{self, AppSource, Config, ConfigArgs, CLUSTER_SECRET_FILE};
use chorus_broker::{server, tls};
use chorus_cluster::{
    fetch_status, ClusterClient, ClusterSecret, RemoveOutcome, RemoveRequest, SECRET_HEADER,
};

/// Chorus, a realtime message broker that speaks the Pusher Channels protocol.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Ask a node about its cluster.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Print a node's view of the cluster: leader, term, members (desired and actual), commit
    /// and applied index.
    Status {
        #[command(flatten)]
        node: NodeAccess,
        /// Print the node's JSON answer instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Take a node out of the cluster for good (clusters without a members file): it stops
    /// being a voter, and its presence members leave. Refused when the voters left could not
    /// commit. Through any node; a leader removed hands its leadership over first.
    Remove {
        /// The id of the node to remove.
        id: u64,
        #[command(flatten)]
        node: NodeAccess,
    },
}

/// Which node's cluster port to ask, and with what secret.
#[derive(Debug, Args)]
struct NodeAccess {
    /// The node's cluster port, `host:port`.
    #[arg(long, default_value = "127.0.0.1:6002")]
    addr: String,
    /// The cluster secret (default: the one a node started without one wrote in its data
    /// directory).
    #[arg(long, env = "CHORUS_CLUSTER_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// The data directory of a node on this machine started without a cluster secret.
    #[arg(long, env = "CHORUS_DATA_DIR", default_value = "./chorus-data")]
    data_dir: PathBuf,
    /// The certificate authority (PEM) of a cluster whose ports speak TLS: the command then
    /// speaks https, trusting it alone.
    #[arg(long, env = "CHORUS_CLUSTER_TLS_CA_FILE")]
    cluster_tls_ca_file: Option<PathBuf>,
}

impl NodeAccess {
    /// The secret given, or the one in the data directory.
    fn secret(&self) -> anyhow::Result<ClusterSecret> {
        if let Some(secret) = &self.secret {
            return Ok(ClusterSecret::new(secret.clone()));
        }
        let path = self.data_dir.join(CLUSTER_SECRET_FILE);
        let secret = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no cluster secret: pass --secret (or CHORUS_CLUSTER_SECRET), or --data-dir of a \
                 node on this machine started without one (cannot read {})",
                path.display()
            )
        })?;
        Ok(ClusterSecret::new(secret.trim()))
    }

    /// A client of the node's cluster port: https when a certificate authority is given.
    fn client(&self) -> anyhow::Result<ClusterClient> {
        let tls = match &self.cluster_tls_ca_file {
            Some(ca) => {
                let trusted = tls::TrustedAuthority::load("the cluster's authority", ca.clone())?;
                Some(tls::client_config(Arc::new(trusted)))
            }
            None => None,
        };
        Ok(chorus_cluster::operator_client(tls.as_ref())?)
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CHORUS_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,openraft=warn,actix_server=warn")
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let matches = config::without_service_links(Cli::command()).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match cli.command {
        None => run_node(cli.config, &matches),
        Some(Command::Cluster {
            command: ClusterCommand::Status { node, json },
        }) => print_cluster_status(&node, json),
        Some(Command::Cluster {
            command: ClusterCommand::Remove { id, node },
        }) => remove_node(&node, id),
    }
}

fn run_node(args: ConfigArgs, matches: &ArgMatches) -> anyhow::Result<()> {
    let (mut config, source) = Config::load(args, matches).context("invalid configuration")?;
    if config.app_secret_generated {
        let path = config.data_dir.join(config::DEV_APP_SECRET_FILE);
        let kept = chorus_broker::secret_file::kept_or(&path, &config.apps[0].secret);
        config.apps[0].secret =
            kept.with_context(|| format!("keeping the development secret in {}", path.display()))?;
    }
    // Every connection is a file: take as many as the hard limit allows.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(open_files = limit, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
    if source == AppSource::DevelopmentDefault {
        let app = &config.apps[0];
        tracing::warn!(
            app_id = %app.id,
            key = %app.key,
            secret = %app.secret,
            file = %config.data_dir.join(config::DEV_APP_SECRET_FILE).display(),
            "no app configured: serving the development app (its secret is random, kept in the \
             file); configure apps for production"
        );
    }
    if config.cluster_secret_generated {
        tracing::info!(
            file = %config.data_dir.join(CLUSTER_SECRET_FILE).display(),
            "no cluster secret configured: this one-node cluster's port takes a random one, \
             written to the file for `chorus cluster` commands on this machine"
        );
    }
    for app in &config.apps {
        tracing::info!(app_id = %app.id, key = %app.key, "app");
    }
    actix_rt::System::new().block_on(server::run(config))
}

/// Runs `work` on a runtime of its own, for a `chorus cluster` command.
fn block_on<T>(work: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")?
        .block_on(work)
}

/// `chorus cluster status`: asks the node and prints its answer.
fn print_cluster_status(node: &NodeAccess, json: bool) -> anyhow::Result<()> {
    let secret = node.secret()?;
    let client = node.client()?;
    let status = block_on(async {
        Ok(fetch_status(&client, &node.addr, &secret, Duration::from_secs(5)).await?)
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{status}");
    }
    Ok(())
}

/// How long a removal may take: a leader that removes itself hands over first.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(20);

/// `chorus cluster remove ID`: asks the node to have node `id` removed, and says what became of
/// it.
fn remove_node(node: &NodeAccess, id: u64) -> anyhow::Result<()> {
    let secret = node.secret()?;
    let client = node.client()?;
    let (status, body) = block_on(async {
        let response = client
            .post(&node.addr, "/cluster/remove")
            .header(SECRET_HEADER, secret.as_str())
            .json(&RemoveRequest { id })
            .timeout(REMOVE_TIMEOUT)
            .send()
            .await
            .with_context(|| format!("cannot reach the cluster port at {}", node.addr))?;
        Ok((response.status().as_u16(), response.text().await?))
    })?;
    match serde_json::from_str::<RemoveOutcome>(&body) {
        Ok(RemoveOutcome::Removed { id, voters }) if status == 200 => {
            let voters: Vec<String> = voters.iter().map(u64::to_string).collect();
            println!("node {id} removed; voters now: {}", voters.join(", "));
            Ok(())
        }
        _ => Err(anyhow::anyhow!("{}", refusal(status, &body))),
    }
}

/// The reason a node gave for refusing, from its JSON `{"error": ...}`.
fn refusal(status: u16, body: &str) -> String {
    let reason = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|answer| answer["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.to_owned());
    format!("refused ({status}): {reason}")
}
