//! The HTML report of a `compare`: for each regime, the table of medians and ratios (every run's
//! figure beside them), then both servers drawn on the same plots (each side's median run).

use std::fmt::Write as _;

use serde_json::Value;

use crate::error::Result;
use crate::html::{charts_of, escape, page};
use crate::human::human;
use crate::report::Report;
use crate::scenario::compare::{CompareArgs, Regime};

/// The run whose deliveries/s (or, without deliveries, acknowledged publishes/s) is the median
/// of its side: the one drawn for that side.
pub fn median_run(runs: &[Value]) -> Option<Report> {
    let key = |v: &Value| {
        ["deliveries_per_sec", "publishes_per_sec"]
            .iter()
            .find_map(|k| v.get(*k).and_then(Value::as_f64).filter(|x| *x > 0.0))
            .unwrap_or(0.0)
    };
    let mut order: Vec<&Value> = runs.iter().collect();
    order.sort_by(|a, b| key(a).total_cmp(&key(b)));
    let middle = order.get(order.len().checked_sub(1)? / 2)?;
    serde_json::from_value((*middle).clone()).ok()
}

fn cell(v: Option<f64>) -> String {
    v.map_or("-".to_owned(), human)
}

fn runs(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| human(*v))
        .collect::<Vec<_>>()
        .join(" / ")
}

fn table(args: &CompareArgs, regime: &Regime) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "<table><tr><th>figure (median)</th><th>{a}</th><th>{b}</th><th>{b} / {a}</th>\
         <th>{a} runs</th><th>{b} runs</th></tr>",
        a = escape(&args.a_name),
        b = escape(&args.b_name)
    );
    for row in &regime.figures {
        let _ = writeln!(
            t,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&row.figure),
            cell(row.a_median),
            cell(row.b_median),
            row.ratio.map_or("-".to_owned(), |r| format!("{r:.2}")),
            runs(&row.a),
            runs(&row.b)
        );
    }
    t.push_str("</table>\n");
    t
}

pub fn render(args: &CompareArgs, regimes: &[Regime]) -> Result<String> {
    let mut body = String::new();
    let _ = writeln!(
        body,
        "<p>{} ({}) against {} ({}), {} rounds, A B A B: <code>{}</code></p>",
        escape(&args.a_name),
        escape(&args.a.join(",")),
        escape(&args.b_name),
        escape(&args.b.join(",")),
        args.rounds,
        escape(&args.scenario.join(" "))
    );
    for regime in regimes {
        let _ = writeln!(body, "<h2>regime: {}</h2>", escape(&regime.name));
        body.push_str(&table(args, regime));
        let sides: Vec<(String, Report)> = [
            (&args.a_name, &regime.a_runs),
            (&args.b_name, &regime.b_runs),
        ]
        .into_iter()
        .filter_map(|(name, runs)| Some((name.clone(), median_run(runs)?)))
        .collect();
        let sides: Vec<(String, &Report)> = sides.iter().map(|(n, r)| (n.clone(), r)).collect();
        for svg in charts_of(&sides)? {
            body.push_str(&svg);
            body.push('\n');
        }
    }
    Ok(page(
        &format!("compare {} / {}", args.a_name, args.b_name),
        &body,
    ))
}
