//! `compare`: runs one scenario against two targets in turn (A B A B ...), each run a child process
//! of this binary writing its JSON report, then prints each figure's median per side and the ratio.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use serde_json::Value;
use tokio::process::Command;

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
    /// Write the comparison as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
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

pub async fn run(args: &CompareArgs) -> Result<()> {
    for forbidden in ["--target", "--server-pid", "--json"] {
        if args
            .scenario
            .iter()
            .any(|a| a == forbidden || a.starts_with(&format!("{forbidden}=")))
        {
            return Err(Error::Args(format!(
                "{forbidden} is set by compare; use --a/--b, --a-pid/--b-pid, --json"
            )));
        }
    }
    let exe = std::env::current_exe()?;
    let dir = std::env::temp_dir().join(format!("chorus-loadtest-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut results: [Vec<Value>; 2] = [Vec::new(), Vec::new()];
    for round in 0..args.rounds {
        for (side, (targets, pids, extra, name)) in [
            (&args.a, &args.a_pids, &args.a_args, &args.a_name),
            (&args.b, &args.b_pids, &args.b_args, &args.b_name),
        ]
        .into_iter()
        .enumerate()
        {
            let json = dir.join(format!("round{round}-{side}.json"));
            let mut cmd = Command::new(&exe);
            cmd.args(&args.scenario).arg("--no-progress");
            for t in targets {
                cmd.args(["--target", t]);
            }
            for p in pids {
                cmd.args(["--server-pid", &p.to_string()]);
            }
            cmd.args(extra)
                .arg("--json")
                .arg(&json)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .kill_on_drop(true);
            eprintln!("round {}/{}: {name} ...", round + 1, args.rounds);
            let mut child = cmd.spawn()?;
            let status =
                tokio::time::timeout(Duration::from_secs(args.run_timeout_secs), child.wait())
                    .await
                    .map_err(|_| Error::Timeout("a compare run"))??;
            if !status.success() {
                return Err(Error::Worker(format!(
                    "{name} run {round} failed: {status}"
                )));
            }
            let report = Report::read_json(&json)?;
            eprintln!(
                "  {name}: {:.0} deliveries/s, lost {}, p99 {:.2} ms, server {} us/delivery",
                report.deliveries_per_sec,
                report.lost,
                report.latency_ms.p99,
                report
                    .server_cpu_us_per_delivery
                    .map_or("-".into(), |v| format!("{v:.3}"))
            );
            results[side].push(serde_json::to_value(&report)?);
            tokio::time::sleep(Duration::from_secs(args.pause_secs)).await;
        }
    }
    let table = compare(FIGURES, &results[0], &results[1]);
    println!(
        "{:<30} {:>14} {:>14} {:>9}",
        "figure (median)", args.a_name, args.b_name, "B/A"
    );
    let fmt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
    for row in &table {
        println!(
            "{:<30} {:>14} {:>14} {:>9}",
            row.figure,
            fmt(row.a_median),
            fmt(row.b_median),
            fmt(row.ratio)
        );
    }
    if let Some(path) = &args.json {
        let out = serde_json::json!({
            "a": { "name": args.a_name, "targets": args.a, "runs": results[0] },
            "b": { "name": args.b_name, "targets": args.b, "runs": results[1] },
            "figures": table,
        });
        std::fs::write(path, serde_json::to_string_pretty(&out)? + "\n")?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
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
