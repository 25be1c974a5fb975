//! `compare`: runs one scenario against two targets in turn (A B A B ...), each run a child process
//! of this binary writing its JSON report, then prints each figure's median per side and the ratio.
//! `--also ARGS` adds regimes (the scenario again with more arguments, e.g. paced publishing beside
//! the closed loop), run in the same rounds and reported beside the first; `--report` draws both
//! servers on the same plots.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::report::Report;

#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// Target A base URL (repeatable for a cluster).
    #[arg(long = "a", required = true)]
    pub a: Vec<String>,
    /// Target B base URL (repeatable for a cluster).
    #[arg(long = "b", required = true)]
    pub b: Vec<String>,
    /// Server process of A to sample (repeatable).
    #[arg(long = "a-pid")]
    pub a_pids: Vec<u32>,
    /// Server process of B to sample (repeatable).
    #[arg(long = "b-pid")]
    pub b_pids: Vec<u32>,
    /// Extra argument for A's runs only (repeatable, e.g. `--a-arg=--key --a-arg=app-key`).
    #[arg(long = "a-arg", allow_hyphen_values = true)]
    pub a_args: Vec<String>,
    /// Extra argument for B's runs only (repeatable).
    #[arg(long = "b-arg", allow_hyphen_values = true)]
    pub b_args: Vec<String>,
    #[arg(long, default_value = "A")]
    pub a_name: String,
    #[arg(long, default_value = "B")]
    pub b_name: String,
    /// Rounds; each runs A then B.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Kill a run that takes longer than this.
    #[arg(long, default_value_t = 900)]
    pub run_timeout_secs: u64,
    /// Pause between runs so the servers settle.
    #[arg(long, default_value_t = 2)]
    pub pause_secs: u64,
    /// Another regime: the scenario again with these arguments added (split at spaces), e.g.
    /// `--also "--rate 500 --batch 1"` for paced publishing beside the closed loop. Repeatable;
    /// each round runs every regime on A then on B.
    #[arg(long = "also", allow_hyphen_values = true)]
    pub also: Vec<String>,
    /// Write the comparison as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an HTML report: per regime, the table of medians and both servers on the same plots.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// The scenario and its options, after `--` (e.g. `-- fanout --subscribers 1000`);
    /// without --target, --server-pid or --json, which compare sets.
    #[arg(last = true, required = true)]
    pub scenario: Vec<String>,
}

/// Figures compared, as paths into the JSON report.
const FIGURES: &[&str] = &[
    "deliveries_per_sec",
    "publishes_per_sec",
    "delivered",
    "expected",
    "lost",
    "duplicates",
    "latency_ms.p50",
    "latency_ms.p90",
    "latency_ms.p99",
    "latency_ms.max",
    "server_cpu_us_per_delivery",
    "server_cpu_percent",
    "server_rss_kib_per_conn",
    "harness_cpu_percent",
    "connect.connects_per_sec",
    "connect.setup_ms.p99",
    "publish_rtt_ms.p99",
    "history.recovered_false",
    "history.gaps",
    "history.recover_ms.p50",
    "history.recover_ms.p99",
    "replay_events_per_sec",
    "catch_up.replay_mb_per_sec",
    "server_cpu_us_per_event",
    "publish_events_per_sec",
    "publish_latency_ms.p99",
];

#[derive(Debug, Serialize)]
pub struct FigureComparison {
    pub figure: String,
    pub a: Vec<f64>,
    pub b: Vec<f64>,
    pub a_median: Option<f64>,
    pub b_median: Option<f64>,
    /// b_median / a_median.
    pub ratio: Option<f64>,
}

pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn figure(report: &Value, path: &str) -> Option<f64> {
    path.split('.')
        .try_fold(report, |v, key| v.get(key))
        .and_then(Value::as_f64)
}

pub fn compare(figures: &[&str], a: &[Value], b: &[Value]) -> Vec<FigureComparison> {
    figures
        .iter()
        .filter_map(|&f| {
            let av: Vec<f64> = a.iter().filter_map(|r| figure(r, f)).collect();
            let bv: Vec<f64> = b.iter().filter_map(|r| figure(r, f)).collect();
            if av.is_empty() && bv.is_empty() {
                return None;
            }
            let (am, bm) = (median(&av), median(&bv));
            Some(FigureComparison {
                figure: f.to_owned(),
                a: av,
                b: bv,
                a_median: am,
                b_median: bm,
                ratio: match (am, bm) {
                    (Some(a), Some(b)) if a != 0.0 => Some(b / a),
                    _ => None,
                },
            })
        })
        .collect()
}

/// One regime's runs and their comparison.
#[derive(Debug, Serialize)]
pub struct Regime {
    /// `base`, or the extra arguments of an `--also`.
    pub name: String,
    pub args: Vec<String>,
    pub a_runs: Vec<Value>,
    pub b_runs: Vec<Value>,
    pub figures: Vec<FigureComparison>,
}

/// The regimes: the scenario as given, then once per `--also` with its arguments added.
fn regimes(args: &CompareArgs) -> Vec<(String, Vec<String>)> {
    let mut out = vec![("base".to_owned(), Vec::new())];
    for extra in &args.also {
        out.push((
            extra.clone(),
            extra.split_whitespace().map(str::to_owned).collect(),
        ));
    }
    out
}

fn check_scenario_args(args: &CompareArgs) -> Result<()> {
    let also = args.also.iter().flat_map(|a| a.split_whitespace());
    let all: Vec<&str> = args
        .scenario
        .iter()
        .map(String::as_str)
        .chain(also)
        .collect();
    for forbidden in ["--target", "--server-pid", "--json", "--report"] {
        if all
            .iter()
            .any(|a| *a == forbidden || a.starts_with(&format!("{forbidden}=")))
        {
            return Err(Error::Args(format!(
                "{forbidden} is set by compare; use --a/--b, --a-pid/--b-pid, --json, --report"
            )));
        }
    }
    Ok(())
}

/// One run of the scenario (with `extra` regime arguments) against one side, as a child process.
async fn run_once(
    args: &CompareArgs,
    side: usize,
    extra: &[String],
    json: &std::path::Path,
) -> Result<Report> {
    let (targets, pids, side_args, name) = if side == 0 {
        (&args.a, &args.a_pids, &args.a_args, &args.a_name)
    } else {
        (&args.b, &args.b_pids, &args.b_args, &args.b_name)
    };
    let mut run: Vec<String> = args.scenario.iter().chain(extra).cloned().collect();
    for t in targets {
        run.extend(["--target".into(), t.clone()]);
    }
    for p in pids {
        run.extend(["--server-pid".into(), p.to_string()]);
    }
    run.extend(side_args.iter().cloned());
    let timeout = Duration::from_secs(args.run_timeout_secs);
    crate::child_run::run(&run, json, timeout, name).await
}

pub async fn run(args: &CompareArgs) -> Result<()> {
    check_scenario_args(args)?;
    let dir = std::env::temp_dir().join(format!("chorus-loadtest-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let regimes = regimes(args);
    // results[regime][side]: the reports, as JSON.
    let mut results: Vec<[Vec<Value>; 2]> = vec![[Vec::new(), Vec::new()]; regimes.len()];
    for round in 0..args.rounds {
        for (r, (regime, extra)) in regimes.iter().enumerate() {
            for (side, sided) in results[r].iter_mut().enumerate() {
                let name = if side == 0 {
                    &args.a_name
                } else {
                    &args.b_name
                };
                eprintln!("round {}/{}, {regime}: {name} ...", round + 1, args.rounds);
                let json = dir.join(format!("round{round}-regime{r}-{side}.json"));
                let report = run_once(args, side, extra, &json).await?;
                sided.push(serde_json::to_value(&report)?);
                tokio::time::sleep(Duration::from_secs(args.pause_secs)).await;
            }
        }
    }
    let compared: Vec<Regime> = regimes
        .into_iter()
        .zip(results)
        .map(|((name, extra), [a_runs, b_runs])| Regime {
            figures: compare(FIGURES, &a_runs, &b_runs),
            name,
            args: extra,
            a_runs,
            b_runs,
        })
        .collect();
    for regime in &compared {
        print_table(args, regime);
    }
    if let Some(path) = &args.json {
        let first = &compared[0];
        let out = serde_json::json!({
            "a": { "name": args.a_name, "targets": args.a, "runs": first.a_runs },
            "b": { "name": args.b_name, "targets": args.b, "runs": first.b_runs },
            "figures": first.figures,
            "regimes": compared,
        });
        std::fs::write(path, serde_json::to_string_pretty(&out)? + "\n")?;
    }
    if let Some(path) = &args.report {
        crate::html::write_page(path, &crate::compare_report::render(args, &compared)?)?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn print_table(args: &CompareArgs, regime: &Regime) {
    println!("regime: {}", regime.name);
    println!(
        "{:<30} {:>14} {:>14} {:>9}",
        "figure (median)", args.a_name, args.b_name, "B/A"
    );
    let fmt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
    for row in &regime.figures {
        println!(
            "{:<30} {:>14} {:>14} {:>9}",
            row.figure,
            fmt(row.a_median),
            fmt(row.b_median),
            fmt(row.ratio)
        );
    }
    println!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    #[test]
    fn compares_nested_figures_with_ratio_b_over_a() {
        let a = vec![
            json!({"deliveries_per_sec": 100.0, "latency_ms": {"p99": 2.0}}),
            json!({"deliveries_per_sec": 120.0, "latency_ms": {"p99": 4.0}}),
        ];
        let b = vec![
            json!({"deliveries_per_sec": 220.0, "latency_ms": {"p99": 1.0}}),
            json!({"deliveries_per_sec": 220.0, "latency_ms": {"p99": 2.0}}),
        ];
        let t = compare(&["deliveries_per_sec", "latency_ms.p99", "absent"], &a, &b);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].a_median, Some(110.0));
        assert_eq!(t[0].ratio, Some(2.0));
        assert_eq!(t[1].ratio, Some(0.5));
    }
}
