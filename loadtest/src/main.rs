//! `chorus-loadtest`: a load-test harness for servers that speak the Pusher Channels protocol
//! (Chorus, Soketi, Sockudo, Pusher). It is only a client: Pusher WebSocket connections and the
//! signed HTTP API. Each subcommand is one scenario, bounded by `--duration-secs` and by counts.

mod child_run;
mod cluster_admin;
mod common;
mod compare_report;
mod deliveries;
mod error;
mod fleet;
mod html;
mod human;
mod limits;
mod offsets;
mod payload;
mod proc_stats;
mod publisher;
mod pusher;
mod ramp;
mod recovering;
mod report;
mod retrying_publisher;
mod sampler;
mod scenario;
mod sequence;
mod sse_subscriber;
mod subscriber;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::common::CommonArgs;
use crate::error::Result;
use crate::report::Report;
use crate::scenario::{
    catch_up, cluster_history, compare, connections, cross_node, fanout, history, latency,
    presence, sweep,
};

#[derive(Debug, Parser)]
#[command(name = "chorus-loadtest", version, about)]
struct Cli {
    /// Worker threads of the async runtime (default: one per CPU).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// S subscribers over C channels; publishes over the HTTP API; delivered/lost/duplicated/out-of-order, throughput, latency, server CPU per delivery.
    Fanout(fanout::FanoutArgs),
    /// Publish-to-receive latency at a fixed rate, as an HDR histogram.
    Latency(latency::LatencyArgs),
    /// Ramp to N idle subscribed connections; connect rate, failures, server RSS per connection.
    Connections(connections::ConnectionsArgs),
    /// Members joining and leaving presence channels; checks member_added / member_removed.
    Presence(presence::PresenceArgs),
    /// Publishes to history channels while subscribers go through disconnect storms and resubscribe with `since`; checks every offset arrives exactly once, in order.
    History(history::HistoryArgs),
    /// Publishes a large backlog to one history channel, then times subscribers catching up on it with `since` from offset 0; checks every offset arrives exactly once, in order.
    CatchUp(catch_up::CatchUpArgs),
    /// Publishes batches to a history channel over every node of a cluster (retrying on another node), optionally kills the leader; committed events/s, commit latency, time to the first acknowledged publish after the kill; checks every node replays every offset once, in order.
    ClusterHistory(cluster_history::ClusterHistoryArgs),
    /// Fan-out with the publisher on node A and the subscribers on node B, against the same load on A alone (one channel per subscriber, and one channel for all); the extra server CPU per forwarded event.
    CrossNode(cross_node::CrossNodeArgs),
    /// Run a scenario against two targets in turn (A B A B) and compare the medians.
    Compare(compare::CompareArgs),
    /// Run a scenario at several sizes (`--point`), each a child process; table and plots of each figure's median against the size.
    Sweep(sweep::SweepArgs),
    /// Internal: one worker process of `connections`.
    #[command(hide = true)]
    ConnectionsWorker(connections::WorkerArgs),
}

impl Command {
    fn common(&self) -> Option<&CommonArgs> {
        match self {
            Command::Fanout(a) => Some(&a.common),
            Command::Latency(a) => Some(&a.common),
            Command::Connections(a) => Some(&a.common),
            Command::Presence(a) => Some(&a.common),
            Command::History(a) => Some(&a.common),
            Command::CatchUp(a) => Some(&a.common),
            Command::ClusterHistory(a) => Some(&a.common),
            Command::Compare(_)
            | Command::CrossNode(_)
            | Command::Sweep(_)
            | Command::ConnectionsWorker(_) => None,
        }
    }
}

async fn run(command: Command) -> Result<()> {
    let report: Report = match &command {
        Command::Fanout(a) => fanout::run(a).await?,
        Command::Latency(a) => latency::run(a).await?,
        Command::Connections(a) => connections::run(a).await?,
        Command::Presence(a) => presence::run(a).await?,
        Command::History(a) => history::run(a).await?,
        Command::CatchUp(a) => catch_up::run(a).await?,
        Command::ClusterHistory(a) => cluster_history::run(a).await?,
        Command::Compare(a) => return compare::run(a).await,
        Command::CrossNode(a) => return cross_node::run(a).await,
        Command::Sweep(a) => return sweep::run(a).await,
        Command::ConnectionsWorker(a) => return connections::run_worker(a).await,
    };
    let common = command.common().expect("scenarios have common options");
    report.emit(common.json.as_deref(), common.report.as_deref())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    limits::raise_nofile();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = cli.threads {
        builder.worker_threads(n.max(1));
    }
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chorus-loadtest: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chorus-loadtest: {e}");
            ExitCode::FAILURE
        }
    }
}
