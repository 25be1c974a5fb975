//! The `--report FILE.html` output: the summary table and SVG plots (plotters) of the timeline
//! (throughput, CPU, memory, connections) and of the latency distribution.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::report::{Report, Sample};

type Series = (String, RGBColor, Vec<(f64, f64)>);

fn plot_err<E: std::fmt::Debug>(e: E) -> Error {
    Error::Report(format!("plotting: {e:?}"))
}

/// One line chart as an SVG string.
fn line_chart(title: &str, x_desc: &str, y_desc: &str, series: &[Series]) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (860, 320)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let points = series.iter().flat_map(|s| s.2.iter());
        let x_max = points.clone().map(|p| p.0).fold(0.0, f64::max).max(1e-9);
        let x_min = points
            .clone()
            .map(|p| p.0)
            .fold(f64::INFINITY, f64::min)
            .min(x_max);
        let y_max = points.map(|p| p.1).fold(0.0, f64::max).max(1e-9) * 1.1;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(x_min..x_max, 0f64..y_max)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .draw()
            .map_err(plot_err)?;
        for (label, color, pts) in series {
            let color = *color;
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                .map_err(plot_err)?
                .label(label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

/// Per-second rate of a cumulative counter between consecutive samples.
fn rates(timeline: &[Sample], f: impl Fn(&Sample) -> Option<u64>) -> Vec<(f64, f64)> {
    timeline
        .windows(2)
        .filter_map(|w| {
            let dt = w[1].t - w[0].t;
            let (a, b) = (f(&w[0])?, f(&w[1])?);
            (dt > 0.0).then(|| (w[1].t, b.saturating_sub(a) as f64 / dt))
        })
        .collect()
}

/// All plots of a report.
pub fn charts(r: &Report) -> Result<Vec<String>> {
    let t = &r.timeline;
    let mut out = Vec::new();
    if r.published > 0 || r.delivered > 0 {
        out.push(line_chart(
            "Throughput",
            "seconds",
            "per second",
            &[
                ("deliveries/s".into(), BLUE, rates(t, |s| Some(s.delivered))),
                ("publishes/s".into(), RED, rates(t, |s| Some(s.published))),
            ],
        )?);
    }
    let mut cpu: Vec<Series> = vec![(
        "harness CPU %".into(),
        RED,
        rates(t, |s| Some(s.harness_cpu_us))
            .into_iter()
            .map(|(x, y)| (x, y / 10_000.0))
            .collect(),
    )];
    if t.iter().any(|s| s.server_cpu_us.is_some()) {
        cpu.push((
            "server CPU %".into(),
            BLUE,
            rates(t, |s| s.server_cpu_us)
                .into_iter()
                .map(|(x, y)| (x, y / 10_000.0))
                .collect(),
        ));
    }
    out.push(line_chart("CPU", "seconds", "% of one core", &cpu)?);
    out.push(line_chart(
        "Connections",
        "seconds",
        "open connections",
        &[(
            "connections".into(),
            GREEN,
            t.iter().map(|s| (s.t, s.connections as f64)).collect(),
        )],
    )?);
    if t.iter().any(|s| s.server_rss_kib.is_some()) {
        out.push(line_chart(
            "Server memory",
            "seconds",
            "RSS MiB",
            &[(
                "server RSS".into(),
                MAGENTA,
                t.iter()
                    .filter_map(|s| Some((s.t, s.server_rss_kib? as f64 / 1024.0)))
                    .collect(),
            )],
        )?);
    }
    if !r.latency_distribution.is_empty() {
        out.push(line_chart(
            "Latency by percentile (x: 1 = p90, 2 = p99, 3 = p99.9, ...)",
            "nines",
            "milliseconds",
            &[("latency".into(), BLUE, nines(&r.latency_distribution))],
        )?);
    }
    if let Some(h) = r
        .history
        .as_ref()
        .filter(|h| !h.recover_distribution.is_empty())
    {
        out.push(line_chart(
            "Time to recover by percentile (x: 1 = p90, 2 = p99, ...)",
            "nines",
            "milliseconds",
            &[("recovery".into(), MAGENTA, nines(&h.recover_distribution))],
        )?);
    }
    Ok(out)
}

/// x: "nines" of the percentile (0 = p0, 1 = p90, 2 = p99, ...), so the tail is readable.
fn nines(distribution: &[(f64, f64)]) -> Vec<(f64, f64)> {
    distribution
        .iter()
        .map(|&(p, ms)| ((-(1.0 - p / 100.0).max(1e-6).log10()), ms))
        .collect()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub fn render(r: &Report) -> Result<String> {
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>chorus-loadtest {}</title>\
         <style>body{{font-family:sans-serif;margin:2em}}pre{{background:#f4f4f4;padding:1em}}\
         svg{{display:block;margin:1em 0}}</style></head><body>\n<h1>chorus-loadtest: {}</h1>\n<pre>{}</pre>\n",
        escape(&r.scenario),
        escape(&r.scenario),
        escape(&r.human())
    );
    for svg in charts(r)? {
        html.push_str(&svg);
        html.push('\n');
    }
    html.push_str("</body></html>\n");
    Ok(html)
}

pub fn write(r: &Report, path: &Path) -> Result<()> {
    std::fs::write(path, render(r)?)
        .map_err(|e| Error::Report(format!("writing {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_plot_as_svg() {
        let timeline = (0..5)
            .map(|i| Sample {
                t: i as f64 * 0.5,
                connections: 10,
                published: i * 100,
                delivered: i * 1000,
                harness_cpu_us: i * 100_000,
                server_cpu_us: Some(i * 200_000),
                server_rss_kib: Some(10_000 + i),
            })
            .collect();
        let r = Report {
            scenario: "fanout".into(),
            published: 400,
            delivered: 4000,
            latency_distribution: vec![(0.0, 0.1), (50.0, 0.5), (99.0, 2.0), (100.0, 3.0)],
            timeline,
            ..Report::default()
        };
        let html = render(&r).unwrap();
        assert_eq!(html.matches("<svg").count(), 5);
        assert!(html.contains("deliveries/s"));
        // A history run adds the time to recover, and its figures in the summary.
        let r = Report {
            scenario: "history".into(),
            history: Some(crate::report::HistoryStats {
                reconnects: 7,
                recovered_true: 7,
                recover_distribution: vec![(0.0, 1.0), (50.0, 5.0), (100.0, 9.0)],
                ..Default::default()
            }),
            ..r
        };
        let html = render(&r).unwrap();
        assert_eq!(html.matches("<svg").count(), 6);
        assert!(html.contains("Time to recover"));
        assert!(html.contains("7 reconnects"));
    }

    #[test]
    fn rates_are_per_second_differences() {
        let t = vec![
            Sample {
                t: 0.0,
                delivered: 0,
                ..Sample::default()
            },
            Sample {
                t: 0.5,
                delivered: 100,
                ..Sample::default()
            },
        ];
        assert_eq!(rates(&t, |s| Some(s.delivered)), vec![(0.5, 200.0)]);
    }
}
