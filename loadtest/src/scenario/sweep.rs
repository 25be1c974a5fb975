//! `sweep`: how a cost grows with the work. Runs one scenario at several points (each the
//! scenario's arguments plus the point's own, e.g. `--subscribers 100`, `--subscribers 1000`),
//! each run a child process, `--rounds` times; prints and plots each figure's median against the
//! point's size (`--x`: a figure of the report such as `connections`, or `nodes`, the number of
//! `--target`s). A point named `NAME: ARGS` belongs to the series NAME, so several shapes (one
//! channel, 1k channels of 10) are lines of the same plots.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::html::{chart, escape, page, write_page, XScale};
use crate::human::human;
use crate::scenario::compare::median;

#[derive(Debug, Clone, Args)]
pub struct SweepArgs {
    /// A point: arguments added to the scenario's, optionally after a series name and `: `
    /// (`"one channel: --subscribers 1000 --channels 1"`). Repeatable, in order.
    #[arg(long = "point", required = true, allow_hyphen_values = true)]
    pub points: Vec<String>,
    /// What a point's size is: a figure of its report (`connections`, `channels`, ...), or
    /// `nodes` (its number of --target).
    #[arg(long, default_value = "connections")]
    pub x: String,
    /// Rounds; each runs every point once. Medians over them.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Kill a run that takes longer than this.
    #[arg(long, default_value_t = 900)]
    pub run_timeout_secs: u64,
    /// Pause between runs so the servers settle.
    #[arg(long, default_value_t = 2)]
    pub pause_secs: u64,
    /// Write every run and the medians as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an HTML report: the table, and each figure's plot against the size.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// The scenario and the options every point shares, after `--`.
    #[arg(last = true, required = true)]
    pub scenario: Vec<String>,
}

/// The figures tabled and plotted, with their plot titles, when a run reports them.
const FIGURES: &[(&str, &str)] = &[
    ("server_cpu_us_per_delivery", "server CPU per delivery (us)"),
    ("latency_ms.p99", "p99 publish-to-receive latency (ms)"),
    ("latency_ms.p50", "p50 publish-to-receive latency (ms)"),
    ("deliveries_per_sec", "deliveries per second"),
    ("publishes_per_sec", "publishes per second"),
    ("publish_events_per_sec", "acknowledged events per second"),
    ("server_rss_kib_per_conn", "server RSS per connection (KiB)"),
    ("server_rss_kib", "server RSS (KiB)"),
    ("server_cpu_us_per_event", "server CPU per event (us)"),
    ("publish_latency_ms.p99", "p99 publish request latency (ms)"),
    ("lost", "lost"),
    ("duplicates", "duplicates"),
];

/// One point: its series, arguments, size and runs' figures.
#[derive(Debug, Serialize)]
pub struct Point {
    pub series: String,
    pub args: Vec<String>,
    pub x: Option<f64>,
    pub runs: Vec<Value>,
    /// Figure -> median over the runs.
    pub medians: BTreeMap<String, f64>,
}

/// Splits `NAME: ARGS` into the series name and the arguments (`runs` without a name).
pub fn parse_point(point: &str) -> (String, Vec<String>) {
    let (series, args) = match point.split_once(": ") {
        Some((name, args)) if !name.trim_start().starts_with('-') => (name.trim(), args),
        _ => ("runs", point),
    };
    (
        series.to_owned(),
        args.split_whitespace().map(str::to_owned).collect(),
    )
}

fn figure(report: &Value, path: &str) -> Option<f64> {
    if path == "nodes" {
        return report.get("targets")?.as_array().map(|t| t.len() as f64);
    }
    path.split('.')
        .try_fold(report, |v, key| v.get(key))
        .and_then(Value::as_f64)
}

pub async fn run(args: &SweepArgs) -> Result<()> {
    if args.rounds == 0 {
        return Err(Error::Args("--rounds must be at least 1".into()));
    }
    let dir = std::env::temp_dir().join(format!("chorus-loadtest-sweep-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut points: Vec<Point> = args
        .points
        .iter()
        .map(|p| {
            let (series, args) = parse_point(p);
            Point {
                series,
                args,
                x: None,
                runs: Vec::new(),
                medians: BTreeMap::new(),
            }
        })
        .collect();
    let timeout = Duration::from_secs(args.run_timeout_secs);
    for round in 0..args.rounds {
        for (i, point) in points.iter_mut().enumerate() {
            let name = format!("{}: {}", point.series, point.args.join(" "));
            eprintln!("round {}/{}, {name} ...", round + 1, args.rounds);
            let run: Vec<String> = args.scenario.iter().chain(&point.args).cloned().collect();
            let json = dir.join(format!("round{round}-point{i}.json"));
            let report = crate::child_run::run(&run, &json, timeout, &name).await?;
            point.runs.push(serde_json::to_value(&report)?);
            tokio::time::sleep(Duration::from_secs(args.pause_secs)).await;
        }
    }
    for point in &mut points {
        let of = |path: &str| -> Vec<f64> {
            point.runs.iter().filter_map(|r| figure(r, path)).collect()
        };
        point.x = median(&of(&args.x));
        for (path, _) in FIGURES {
            if let Some(m) = median(&of(path)) {
                point.medians.insert((*path).to_owned(), m);
            }
        }
    }
    println!("{}", table(args, &points));
    if let Some(path) = &args.json {
        let out = serde_json::json!({ "scenario": args.scenario, "x": args.x, "points": points });
        std::fs::write(path, serde_json::to_string_pretty(&out)? + "\n")?;
    }
    if let Some(path) = &args.report {
        write_page(path, &render(args, &points)?)?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The figures some point reports, in [`FIGURES`] order; a rate or latency that is 0 at every
/// point is one the scenario does not measure (cluster-history has no deliveries), and is left
/// out, while counts of lost and duplicated events always stay.
fn present(points: &[Point]) -> Vec<(&'static str, &'static str)> {
    FIGURES
        .iter()
        .copied()
        .filter(|(path, _)| {
            let counts = matches!(*path, "lost" | "duplicates");
            points
                .iter()
                .any(|p| p.medians.get(*path).is_some_and(|v| counts || *v != 0.0))
        })
        .collect()
}

/// The medians as a text table: one row per point, one column per figure.
pub fn table(args: &SweepArgs, points: &[Point]) -> String {
    let figures = present(points);
    let mut t = format!(
        "== sweep of {} (medians of {} rounds)\n",
        args.scenario.join(" "),
        args.rounds
    );
    let _ = write!(t, "{:<20} {:>8}", "series", args.x);
    for (path, _) in &figures {
        let _ = write!(t, " {:>14}", short(path));
    }
    t.push('\n');
    for p in points {
        let _ = write!(t, "{:<20} {:>8}", p.series, p.x.map_or("-".into(), human));
        for (path, _) in &figures {
            let v = p.medians.get(*path).copied();
            let _ = write!(t, " {:>14}", v.map_or("-".into(), human));
        }
        t.push('\n');
    }
    t
}

/// A column heading short enough for a terminal.
fn short(path: &str) -> String {
    path.replace("server_", "")
        .replace("_per_", "/")
        .replace("latency_ms.", "lat ")
}

fn render(args: &SweepArgs, points: &[Point]) -> Result<String> {
    let mut body = format!("<pre>{}</pre>\n", escape(&table(args, points)));
    let xs: Vec<f64> = points
        .iter()
        .filter_map(|p| p.x)
        .filter(|x| *x > 0.0)
        .collect();
    let (lo, hi) = xs
        .iter()
        .fold((f64::INFINITY, 0f64), |(l, h), &x| (l.min(x), h.max(x)));
    let scale = if hi >= 10.0 * lo {
        XScale::Log
    } else {
        XScale::Linear
    };
    let mut series_names: Vec<&str> = Vec::new();
    for p in points {
        if !series_names.contains(&p.series.as_str()) {
            series_names.push(&p.series);
        }
    }
    for (path, title) in present(points) {
        let series: Vec<_> = series_names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let pts = points
                    .iter()
                    .filter(|p| p.series == *name)
                    .filter_map(|p| Some((p.x?, *p.medians.get(path)?)))
                    .collect();
                ((*name).to_owned(), crate::html::SIDE_COLORS[i % 4], pts)
            })
            .collect();
        body.push_str(&chart(title, &args.x, title, &series, scale)?);
        body.push('\n');
    }
    Ok(page(&format!("sweep {}", args.scenario.join(" ")), &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_name_their_series() {
        assert_eq!(
            parse_point("one channel: --subscribers 100 --channels 1"),
            (
                "one channel".into(),
                vec![
                    "--subscribers".into(),
                    "100".into(),
                    "--channels".into(),
                    "1".into()
                ]
            )
        );
        assert_eq!(
            parse_point("--subscribers 10"),
            ("runs".into(), vec!["--subscribers".into(), "10".into()])
        );
        let r = serde_json::json!({"targets": ["a", "b", "c"], "latency_ms": {"p99": 2.5}});
        assert_eq!(figure(&r, "nodes"), Some(3.0));
        assert_eq!(figure(&r, "latency_ms.p99"), Some(2.5));
    }
}
