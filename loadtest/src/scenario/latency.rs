//! `latency`: publish-to-receive latency at a fixed, moderate rate, so the server is not saturated
//! and queueing does not dominate. Each event carries its intended send time; the receiver records
//! `receive time - intended send time` in an HDR histogram (publisher lateness counts, so there is
//! no coordinated omission).

use clap::Args;

use crate::common::CommonArgs;
use crate::error::Result;
use crate::report::Report;
use crate::scenario::fanout::{self, FanoutParams};

#[derive(Debug, Clone, Args)]
pub struct LatencyArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Subscribed connections (subscriber i joins channel i mod C).
    #[arg(long, default_value_t = 10)]
    pub subscribers: usize,
    /// Public channels.
    #[arg(long, default_value_t = 10)]
    pub channels: usize,
    /// Events per second, in total.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Publish requests allowed in flight at once (so a slow request does not delay the schedule).
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    /// After publishing, wait at most this long for outstanding deliveries.
    #[arg(long, default_value_t = 5)]
    pub drain_secs: u64,
}

pub async fn run(args: &LatencyArgs) -> Result<Report> {
    let params = FanoutParams {
        subscribers: args.subscribers,
        channels: args.channels,
        window: args.window,
        batch: 1,
        rate: Some(args.rate),
        max_events: u64::MAX,
        max_pending_per_subscriber: 0,
        drain_secs: args.drain_secs,
        private: false,
        transport: fanout::Transport::Ws,
        idempotency_keys: false,
    };
    fanout::run_with(&args.common, &params, "latency").await
}
