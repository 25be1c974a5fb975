//! `chorus`: starts a node. With no configuration at all it serves one development app.

use anyhow::Context as _;
use clap::Parser;

use chorus_broker::config::{AppSource, Config, Overrides};
use chorus_broker::server;

/// Chorus, a realtime message broker that speaks the Pusher Channels protocol.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    overrides: Overrides,
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
    let (config, source) = Config::load(&cli.overrides).context("invalid configuration")?;
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
    for app in &config.apps {
        tracing::info!(app_id = %app.id, key = %app.key, "app");
    }
    actix_rt::System::new().block_on(server::run(config))
}
