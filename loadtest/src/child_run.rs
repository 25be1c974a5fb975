//! One scenario run as a child process of this binary, writing its JSON report: how `compare`
//! and `sweep` run each of their measurements in a fresh process.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::error::{Error, Result};
use crate::report::Report;

/// Runs `chorus-loadtest ARGS --no-progress --json JSON` (killed after `timeout`) and reads the
/// report; prints one line of it under `name`.
pub async fn run(args: &[String], json: &Path, timeout: Duration, name: &str) -> Result<Report> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(args)
        .arg("--no-progress")
        .arg("--json")
        .arg(json)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let status = tokio::time::timeout(timeout, child.wait())
        .await
        .map_err(|_| Error::Timeout("a child run"))??;
    if !status.success() {
        return Err(Error::Worker(format!("{name} run failed: {status}")));
    }
    let report = Report::read_json(json)?;
    eprintln!(
        "  {name}: {:.0} deliveries/s, {:.0} publishes/s, lost {}, p99 {:.2} ms, server {} us/delivery",
        report.deliveries_per_sec,
        report.publishes_per_sec,
        report.lost,
        report.latency_ms.p99,
        report
            .server_cpu_us_per_delivery
            .map_or("-".into(), |v| format!("{v:.3}"))
    );
    Ok(report)
}
