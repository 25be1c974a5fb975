//! `cross-node`: what forwarding an event to another node of a cluster costs. The publisher posts
//! to node A (the first `--target`); the subscribers are on node B (the second) or, for the same
//! load on one node, on A. Two shapes: one channel per subscriber (every delivery is one forwarded
//! event) and one channel for all (one forward per event, shared by every subscriber on B).
//!
//! Each round runs, per shape, the local then the cross-node placement (the `fanout` machinery,
//! in this process); the server CPU is summed over every `--server-pid` (both chorus processes).
//! Forwarded events are the accepted publishes (each crosses once), so the extra server CPU per
//! forwarded event is the cross-node CPU per published event minus the local one (medians).

use std::fmt::Write as _;

use clap::Args;
use serde::Serialize;

use crate::common::CommonArgs;
use crate::compare_report::median_run;
use crate::error::{Error, Result};
use crate::html::{charts_of, escape, page, write_page};
use crate::human::human;
use crate::report::Report;
use crate::scenario::compare::median;
use crate::scenario::fanout::{self, FanoutParams, Transport};

#[derive(Debug, Clone, Args)]
pub struct CrossNodeArgs {
    /// `--target` twice: node A (the publisher's) then node B (the subscribers').
    #[command(flatten)]
    pub common: CommonArgs,
    /// Subscribers (on B, or on A for the local placement).
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Concurrent publish requests.
    #[arg(long, default_value_t = 8)]
    pub window: usize,
    /// Events per request (1: POST /events).
    #[arg(long, default_value_t = 10)]
    pub batch: usize,
    /// Fixed publish rate in events per second (default: closed loop).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Rounds (each runs every shape local then cross-node); medians over them.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// After publishing, wait at most this long for outstanding deliveries.
    #[arg(long, default_value_t = 5)]
    pub drain_secs: u64,
}

/// Where the subscribers are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    Local,
    Cross,
}

/// One shape's runs and what they show.
#[derive(Debug, Serialize)]
pub struct Shape {
    pub shape: &'static str,
    pub channels: usize,
    pub local_runs: Vec<Report>,
    pub cross_runs: Vec<Report>,
    /// Server CPU (all `--server-pid`s) per accepted publish, one per run.
    pub local_cpu_us_per_event: Vec<f64>,
    pub cross_cpu_us_per_event: Vec<f64>,
    pub local_cpu_us_per_delivery: Option<f64>,
    pub cross_cpu_us_per_delivery: Option<f64>,
    /// Median cross-node CPU per event minus the median local one.
    pub extra_cpu_us_per_forwarded_event: Option<f64>,
    /// Median cross-node CPU per delivery over the median local one.
    pub cross_over_local_per_delivery: Option<f64>,
    pub local_deliveries_per_sec: Option<f64>,
    pub cross_deliveries_per_sec: Option<f64>,
    /// Lost, duplicated and out-of-order deliveries over every run (0 when all is well).
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
}

fn cpu_us_per_event(r: &Report) -> Option<f64> {
    let cpu = r.server_cpu_us_per_delivery? * r.delivered as f64;
    (r.published > 0).then(|| cpu / r.published as f64)
}

fn median_of(runs: &[Report], f: impl Fn(&Report) -> Option<f64>) -> Option<f64> {
    median(&runs.iter().filter_map(f).collect::<Vec<_>>())
}

impl Shape {
    fn new(shape: &'static str, channels: usize, local: Vec<Report>, cross: Vec<Report>) -> Shape {
        let local_cpu: Vec<f64> = local.iter().filter_map(cpu_us_per_event).collect();
        let cross_cpu: Vec<f64> = cross.iter().filter_map(cpu_us_per_event).collect();
        let per_delivery = |runs: &[Report]| median_of(runs, |r| r.server_cpu_us_per_delivery);
        let (lpd, cpd) = (per_delivery(&local), per_delivery(&cross));
        let all = local.iter().chain(cross.iter());
        Shape {
            shape,
            channels,
            extra_cpu_us_per_forwarded_event: median(&cross_cpu)
                .zip(median(&local_cpu))
                .map(|(c, l)| c - l),
            cross_over_local_per_delivery: cpd.zip(lpd).map(|(c, l)| c / l),
            local_cpu_us_per_delivery: lpd,
            cross_cpu_us_per_delivery: cpd,
            local_deliveries_per_sec: median_of(&local, |r| Some(r.deliveries_per_sec)),
            cross_deliveries_per_sec: median_of(&cross, |r| Some(r.deliveries_per_sec)),
            lost: all.clone().map(|r| r.lost).sum(),
            duplicates: all.clone().map(|r| r.duplicates).sum(),
            out_of_order: all.map(|r| r.out_of_order).sum(),
            local_cpu_us_per_event: local_cpu,
            cross_cpu_us_per_event: cross_cpu,
            local_runs: local,
            cross_runs: cross,
        }
    }
}

/// One fan-out run with the subscribers on `placement`'s node and the publisher on A.
async fn run_one(args: &CrossNodeArgs, channels: usize, placement: Placement) -> Result<Report> {
    let (a, b) = (&args.common.targets[0], &args.common.targets[1]);
    let mut common = args.common.clone();
    common.targets = vec![if placement == Placement::Local { a } else { b }.clone()];
    common.api_targets = vec![a.clone()];
    common.json = None;
    common.report = None;
    let params = FanoutParams {
        subscribers: args.subscribers,
        channels,
        window: args.window,
        batch: args.batch,
        rate: args.rate,
        max_events: u64::MAX,
        max_pending_per_subscriber: 100,
        drain_secs: args.drain_secs,
        private: false,
        transport: Transport::Ws,
        idempotency_keys: false,
    };
    fanout::run_with(&common, &params, "fanout").await
}

pub async fn run(args: &CrossNodeArgs) -> Result<()> {
    if args.common.targets.len() != 2 || args.subscribers == 0 || args.rounds == 0 {
        return Err(Error::Args(
            "cross-node takes --target twice (node A, the publisher's; node B, the \
             subscribers'), --subscribers and --rounds at least 1"
                .into(),
        ));
    }
    let shapes = [
        ("channel per subscriber", args.subscribers),
        ("one channel", 1),
    ];
    let mut runs: Vec<[Vec<Report>; 2]> = shapes.iter().map(|_| [vec![], vec![]]).collect();
    for round in 0..args.rounds {
        for (s, (shape, channels)) in shapes.iter().enumerate() {
            for (p, placement) in [Placement::Local, Placement::Cross].into_iter().enumerate() {
                eprintln!(
                    "round {}/{}: {shape}, subscribers {} ...",
                    round + 1,
                    args.rounds,
                    if p == 0 {
                        "on A (local)"
                    } else {
                        "on B (cross-node)"
                    }
                );
                let report = run_one(args, *channels, placement).await?;
                eprintln!(
                    "  {:.0} deliveries/s, lost {}, server {} us/delivery",
                    report.deliveries_per_sec,
                    report.lost,
                    report
                        .server_cpu_us_per_delivery
                        .map_or("-".into(), |v| format!("{v:.3}"))
                );
                runs[s][p].push(report);
            }
        }
    }
    let shapes: Vec<Shape> = shapes
        .iter()
        .zip(runs)
        .map(|(&(shape, channels), [local, cross])| Shape::new(shape, channels, local, cross))
        .collect();
    println!("{}", summary(args, &shapes));
    if let Some(path) = &args.common.json {
        let out = serde_json::json!({
            "scenario": "cross-node",
            "node_a": args.common.targets[0],
            "node_b": args.common.targets[1],
            "subscribers": args.subscribers,
            "shapes": shapes,
        });
        std::fs::write(path, serde_json::to_string_pretty(&out)? + "\n")?;
    }
    if let Some(path) = &args.common.report {
        write_page(path, &render(args, &shapes)?)?;
    }
    Ok(())
}

fn opt(v: Option<f64>) -> String {
    v.map_or("-".into(), human)
}

/// The table printed and put at the top of the HTML report.
fn summary(args: &CrossNodeArgs, shapes: &[Shape]) -> String {
    let mut t = format!(
        "== cross-node: publisher on {}, {} subscribers on {} (cross) or on the publisher's node \
         (local), {} rounds, medians\n",
        args.common.targets[0], args.subscribers, args.common.targets[1], args.rounds
    );
    let _ = writeln!(
        t,
        "{:<24} {:>14} {:>14} {:>12} {:>14} {:>14} {:>16}",
        "shape",
        "local us/deliv",
        "cross us/deliv",
        "cross/local",
        "local deliv/s",
        "cross deliv/s",
        "extra us/fwd ev"
    );
    for s in shapes {
        let _ = writeln!(
            t,
            "{:<24} {:>14} {:>14} {:>12} {:>14} {:>14} {:>16}",
            s.shape,
            opt(s.local_cpu_us_per_delivery),
            opt(s.cross_cpu_us_per_delivery),
            s.cross_over_local_per_delivery
                .map_or("-".into(), |r| format!("{r:.2}")),
            opt(s.local_deliveries_per_sec),
            opt(s.cross_deliveries_per_sec),
            opt(s.extra_cpu_us_per_forwarded_event),
        );
        let _ = writeln!(
            t,
            "{:<24} lost {}, duplicates {}, out of order {}",
            "", s.lost, s.duplicates, s.out_of_order
        );
    }
    t
}

fn render(args: &CrossNodeArgs, shapes: &[Shape]) -> Result<String> {
    let mut body = format!("<pre>{}</pre>\n", escape(&summary(args, shapes)));
    for s in shapes {
        let _ = writeln!(body, "<h2>{}</h2>", escape(s.shape));
        let sides: Vec<(String, Report)> =
            [("local", &s.local_runs), ("cross-node", &s.cross_runs)]
                .into_iter()
                .filter_map(|(name, runs)| {
                    let json: Vec<_> = runs
                        .iter()
                        .filter_map(|r| serde_json::to_value(r).ok())
                        .collect();
                    Some((name.to_owned(), median_run(&json)?))
                })
                .collect();
        let sides: Vec<(String, &Report)> = sides.iter().map(|(n, r)| (n.clone(), r)).collect();
        for svg in charts_of(&sides)? {
            body.push_str(&svg);
            body.push('\n');
        }
    }
    Ok(page("cross-node", &body))
}
