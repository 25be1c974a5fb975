//! `chorus`: starts a node. With no configuration at all it serves one development app.
//! `chorus cluster status` prints a node's view of its cluster.

use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use chorus_broker::config::{AppSource, Config, Overrides, DEV_CLUSTER_SECRET};
use chorus_broker::server;
use chorus_cluster::{fetch_status, ClusterSecret};

/// Chorus, a realtime message broker that speaks the Pusher Channels protocol.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    overrides: Overrides,
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
    /// Print a node's view of the cluster: leader, term, members, commit and applied index.
    Status {
        /// The node's cluster port, `host:port`.
        #[arg(long, default_value = "127.0.0.1:6002")]
        addr: String,
        /// The cluster secret (default: the development secret of a node without peers).
        #[arg(long, env = "CHORUS_CLUSTER_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// Print the node's JSON answer instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CHORUS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        None => run_node(&cli.overrides),
        Some(Command::Cluster {
            command: ClusterCommand::Status { addr, secret, json },
        }) => print_cluster_status(&addr, secret.as_deref(), json),
    }
}

fn run_node(overrides: &Overrides) -> anyhow::Result<()> {
    let (config, source) = Config::load(overrides).context("invalid configuration")?;
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
            "no app configured: serving the development app; its credentials are public, \
             never use them in production"
        );
    }
    if config.uses_dev_cluster_secret() {
        tracing::warn!(
            cluster_secret = DEV_CLUSTER_SECRET,
            "no cluster secret configured: the cluster port uses the public development secret; \
             set CHORUS_CLUSTER_SECRET in production"
        );
    }
    for app in &config.apps {
        tracing::info!(app_id = %app.id, key = %app.key, "app");
    }
    actix_rt::System::new().block_on(server::run(config))
}

/// `chorus cluster status`: asks the node at `addr` and prints its answer.
fn print_cluster_status(addr: &str, secret: Option<&str>, json: bool) -> anyhow::Result<()> {
    let secret = ClusterSecret::new(secret.unwrap_or(DEV_CLUSTER_SECRET));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")?;
    let status = runtime.block_on(async {
        let client = reqwest::Client::new();
        fetch_status(&client, addr, &secret, Duration::from_secs(5)).await
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{status}");
    }
    Ok(())
}
