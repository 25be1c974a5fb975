//! The `--report FILE.html` output: the summary table and SVG plots (plotters) of the timeline
//! (deliveries, publishes, CPU, memory, connections) and of the latency distribution, for one run
//! or for several drawn on the same plots (a `compare`). Axis labels are humanised (300k, 1.5M).

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::human::human;
use crate::report::{Report, Sample};

type Series = (String, RGBColor, Vec<(f64, f64)>);

/// One color per run drawn on a plot (a compare's A, B, ...), and a lighter one for its second
/// series (the harness's CPU beside the server's).
pub const SIDE_COLORS: [RGBColor; 4] = [BLUE, RED, GREEN, MAGENTA];
const LIGHT_COLORS: [RGBColor; 4] = [
    RGBColor(140, 170, 255),
    RGBColor(255, 150, 150),
    RGBColor(140, 220, 140),
    RGBColor(230, 150, 230),
];

fn plot_err<E: std::fmt::Debug>(e: E) -> Error {
    Error::Report(format!("plotting: {e:?}"))
}

/// How a chart's x axis is scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XScale {
    Linear,
    /// Logarithmic: for figures against counts that grow tenfold (100, 1k, 10k subscribers).
    Log,
}

/// One line chart as an SVG string, with humanised axis labels.
pub fn line_chart(title: &str, x_desc: &str, y_desc: &str, series: &[Series]) -> Result<String> {
    chart(title, x_desc, y_desc, series, XScale::Linear)
}

/// [`line_chart`] with a chosen x scale; points are marked when there are few of them.
pub fn chart(
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
    x_scale: XScale,
) -> Result<String> {
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
        let mut builder = ChartBuilder::on(&root);
        builder
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(70);
        let label = |v: &f64| human(*v);
        match x_scale {
            XScale::Linear => {
                let mut c = builder
                    .build_cartesian_2d(x_min..x_max, 0f64..y_max)
                    .map_err(plot_err)?;
                c.configure_mesh()
                    .x_desc(x_desc)
                    .y_desc(y_desc)
                    .x_label_formatter(&label)
                    .y_label_formatter(&label)
                    .draw()
                    .map_err(plot_err)?;
                draw_series(&mut c, series)?;
            }
            XScale::Log => {
                let (lo, hi) = (x_min.max(1e-9) / 1.5, x_max * 1.5);
                let mut c = builder
                    .build_cartesian_2d((lo..hi).log_scale(), 0f64..y_max)
                    .map_err(plot_err)?;
                c.configure_mesh()
                    .x_desc(x_desc)
                    .y_desc(y_desc)
                    .x_label_formatter(&label)
                    .y_label_formatter(&label)
                    .draw()
                    .map_err(plot_err)?;
                draw_series(&mut c, series)?;
            }
        }
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

/// The lines (with their points marked when there are few), and the legend.
fn draw_series<'a, X>(
    chart: &mut ChartContext<
        'a,
        SVGBackend<'a>,
        Cartesian2d<X, plotters::coord::types::RangedCoordf64>,
    >,
    series: &[Series],
) -> Result<()>
where
    X: Ranged<ValueType = f64>,
{
    for (label, color, pts) in series {
        let color = *color;
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(plot_err)?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        if pts.len() <= 12 {
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(plot_err)?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    Ok(())
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

/// A series' label: the figure alone for one run, prefixed by the run's name for several.
fn label(name: &str, figure: &str) -> String {
    if name.is_empty() {
        figure.to_owned()
    } else {
        format!("{name} {figure}")
    }
}

/// One series per run, from `f`, when any run has points.
fn per_side(
    sides: &[(String, &Report)],
    figure: &str,
    f: impl Fn(&Report) -> Vec<(f64, f64)>,
) -> Vec<Series> {
    let series: Vec<Series> = sides
        .iter()
        .enumerate()
        .map(|(i, (name, r))| (label(name, figure), SIDE_COLORS[i % 4], f(r)))
        .collect();
    if series.iter().all(|s| s.2.is_empty()) {
        Vec::new()
    } else {
        series
    }
}

/// All plots of a report.
pub fn charts(r: &Report) -> Result<Vec<String>> {
    charts_of(&[(String::new(), r)])
}

/// The plots of several runs (a compare's servers), each figure's runs drawn on the same plot.
pub fn charts_of(sides: &[(String, &Report)]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    if sides.iter().any(|(_, r)| r.delivered > 0) {
        out.push(line_chart(
            "Deliveries",
            "seconds",
            "deliveries per second",
            &per_side(sides, "deliveries/s", |r| {
                rates(&r.timeline, |s| Some(s.delivered))
            }),
        )?);
    }
    if sides.iter().any(|(_, r)| r.published > 0) {
        out.push(line_chart(
            "Publishes",
            "seconds",
            "events published per second",
            &per_side(sides, "publishes/s", |r| {
                rates(&r.timeline, |s| Some(s.published))
            }),
        )?);
    }
    let percent = |v: Vec<(f64, f64)>| v.into_iter().map(|(x, y)| (x, y / 10_000.0)).collect();
    let mut cpu = per_side(sides, "server CPU %", |r| {
        percent(rates(&r.timeline, |s| s.server_cpu_us))
    });
    for (i, (name, r)) in sides.iter().enumerate() {
        cpu.push((
            label(name, "harness CPU %"),
            LIGHT_COLORS[i % 4],
            percent(rates(&r.timeline, |s| Some(s.harness_cpu_us))),
        ));
    }
    out.push(line_chart("CPU", "seconds", "% of one core", &cpu)?);
    out.push(line_chart(
        "Connections",
        "seconds",
        "open connections",
        &per_side(sides, "connections", |r| {
            r.timeline
                .iter()
                .map(|s| (s.t, s.connections as f64))
                .collect()
        }),
    )?);
    let rss = per_side(sides, "server RSS", |r| {
        r.timeline
            .iter()
            .filter_map(|s| Some((s.t, s.server_rss_kib? as f64 / 1024.0)))
            .collect()
    });
    if !rss.is_empty() {
        out.push(line_chart("Server memory", "seconds", "RSS MiB", &rss)?);
    }
    let latency = per_side(sides, "latency", |r| nines(&r.latency_distribution));
    if !latency.is_empty() {
        out.push(line_chart(
            "Latency by percentile (x: 1 = p90, 2 = p99, 3 = p99.9, ...)",
            "nines",
            "milliseconds",
            &latency,
        )?);
    }
    let recovery = per_side(sides, "recovery", |r| {
        r.history
            .as_ref()
            .map(|h| nines(&h.recover_distribution))
            .unwrap_or_default()
    });
    if !recovery.is_empty() {
        out.push(line_chart(
            "Time to recover by percentile (x: 1 = p90, 2 = p99, ...)",
            "nines",
            "milliseconds",
            &recovery,
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

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The page around `body`.
pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>chorus-loadtest {t}</title>\
         <style>body{{font-family:sans-serif;margin:2em}}pre{{background:#f4f4f4;padding:1em}}\
         svg{{display:block;margin:1em 0}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}\
         td:first-child,th:first-child{{text-align:left}}</style></head><body>\n\
         <h1>chorus-loadtest: {t}</h1>\n{body}</body></html>\n",
        t = escape(title)
    )
}

pub fn render(r: &Report) -> Result<String> {
    let mut body = String::new();
    let _ = writeln!(body, "<pre>{}</pre>", escape(&r.human()));
    for svg in charts(r)? {
        body.push_str(&svg);
        body.push('\n');
    }
    Ok(page(&r.scenario, &body))
}

/// Writes `html` to `path`.
pub fn write_page(path: &Path, html: &str) -> Result<()> {
    std::fs::write(path, html)
        .map_err(|e| Error::Report(format!("writing {}: {e}", path.display())))
}

pub fn write(r: &Report, path: &Path) -> Result<()> {
    write_page(path, &render(r)?)
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
        assert_eq!(html.matches("<svg").count(), 6);
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
        assert_eq!(html.matches("<svg").count(), 7);
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
