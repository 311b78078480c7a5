//! PNG charts of a comparison run (plotters, bitmap backend):
//! - `compare-throughput.png`: ops/s and p99 by target and client count, one column per
//!   added RTT, for each redis-benchmark test at `-P 1` (medians over rounds);
//! - `compare-latency-1ms.png`: the task-claim latency distribution at 1 ms added RTT
//!   (open loop, every round's histogram merged), one curve per target and client pool.
//!
//! Text needs a TrueType font; the DejaVu fonts Debian ships are looked up at run time.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::report::{Run, TaskRun};

const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

fn register_font() -> Result<(), String> {
    for path in FONT_CANDIDATES {
        if let Ok(bytes) = std::fs::read(path) {
            // plotters keeps fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            return plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| format!("{path}: not a usable font"));
        }
    }
    Err(format!(
        "no font for the charts (apt-get install fonts-dejavu-core); looked in {}",
        FONT_CANDIDATES.join(", ")
    ))
}

fn colour(target: &str) -> RGBColor {
    match target {
        "direct" => RGBColor(90, 90, 90),
        "twemproxy" => RGBColor(214, 96, 26),
        _ => RGBColor(31, 119, 180),
    }
}

fn err(e: impl std::fmt::Display) -> String {
    format!("chart: {e}")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn sorted_unique<T: PartialOrd + Copy>(mut v: Vec<T>) -> Vec<T> {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v.dedup_by(|a, b| a == b);
    v
}

/// Writes the charts into `dir` and returns their paths.
pub fn charts(dir: &Path, runs: &[Run], task_runs: &[TaskRun]) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    register_font()?;
    let mut out = Vec::new();
    if !runs.is_empty() {
        let p = dir.join("compare-throughput.png");
        throughput(&p, runs)?;
        out.push(p);
    }
    if task_runs
        .iter()
        .any(|r| (r.rtt_ms - 1.0).abs() < 1e-9 && r.rate.is_some())
    {
        let p = dir.join("compare-latency-1ms.png");
        latency_distribution(&p, task_runs)?;
        out.push(p);
    }
    Ok(out)
}

/// Grid: rows = (test, ops/s | p99), columns = added RTT; x = client count (categorical).
fn throughput(path: &Path, runs: &[Run]) -> Result<(), String> {
    let p1: Vec<&Run> = runs.iter().filter(|r| r.pipeline == 1).collect();
    let mut tests: Vec<String> = Vec::new();
    for r in &p1 {
        if !tests.contains(&r.test) {
            tests.push(r.test.clone());
        }
    }
    // Two tests are enough to show the shape; more rows would be unreadable.
    tests.truncate(2);
    let rtts = sorted_unique(p1.iter().map(|r| r.rtt_ms).collect());
    let clients = sorted_unique(p1.iter().map(|r| r.clients).collect());
    let mut targets: Vec<&str> = Vec::new();
    for t in ["direct", "twemproxy", "respipe"] {
        if p1.iter().any(|r| r.target == t) {
            targets.push(t);
        }
    }
    let rows = tests.len() * 2;
    let (w, h) = (420 * rtts.len() as u32 + 40, 300 * rows as u32 + 40);
    let root = BitMapBackend::new(path, (w, h)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root
        .titled(
            "redis-benchmark -P 1: ops/s and p99 by client count (medians over rounds)",
            ("sans-serif", 22),
        )
        .map_err(err)?;
    let areas = root.split_evenly((rows, rtts.len()));
    for (ti, test) in tests.iter().enumerate() {
        for (ri, &rtt) in rtts.iter().enumerate() {
            for metric in 0..2 {
                let area = &areas[(ti * 2 + metric) * rtts.len() + ri];
                let value = |r: &Run| if metric == 0 { r.m.ops } else { r.m.p99_ms };
                let series: Vec<(&str, Vec<(f64, f64)>)> = targets
                    .iter()
                    .map(|&t| {
                        let pts = clients
                            .iter()
                            .enumerate()
                            .map(|(ci, &c)| {
                                let v = median(
                                    p1.iter()
                                        .filter(|r| {
                                            r.target == t
                                                && &r.test == test
                                                && r.clients == c
                                                && (r.rtt_ms - rtt).abs() < 1e-9
                                        })
                                        .map(|r| value(r))
                                        .collect(),
                                );
                                (ci as f64, v)
                            })
                            .filter(|(_, v)| v.is_finite())
                            .collect();
                        (t, pts)
                    })
                    .collect();
                let ymax = series
                    .iter()
                    .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
                    .fold(0.0f64, f64::max)
                    * 1.15;
                let ymax = if ymax > 0.0 { ymax } else { 1.0 };
                let caption = format!(
                    "{} {} — {} ms added RTT",
                    test.to_uppercase(),
                    if metric == 0 { "ops/s" } else { "p99 ms" },
                    rtt
                );
                let mut chart = ChartBuilder::on(area)
                    .caption(caption, ("sans-serif", 16))
                    .margin(8)
                    .x_label_area_size(28)
                    .y_label_area_size(62)
                    .build_cartesian_2d(-0.3f64..(clients.len() as f64 - 0.7), 0f64..ymax)
                    .map_err(err)?;
                let labels = clients.clone();
                chart
                    .configure_mesh()
                    .x_labels(clients.len())
                    .x_label_formatter(&|x| {
                        let i = x.round() as usize;
                        if (x - i as f64).abs() < 0.01 && i < labels.len() {
                            format!("-c {}", labels[i])
                        } else {
                            String::new()
                        }
                    })
                    .y_label_formatter(&|y| {
                        if metric == 0 {
                            format!("{:.0}k", y / 1000.0)
                        } else {
                            format!("{y:.2}")
                        }
                    })
                    .light_line_style(WHITE)
                    .draw()
                    .map_err(err)?;
                for (t, pts) in series {
                    let c = colour(t);
                    chart
                        .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
                        .map_err(err)?
                        .label(t)
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                        });
                    chart
                        .draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))
                        .map_err(err)?;
                }
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::UpperLeft)
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .label_font(("sans-serif", 12))
                    .draw()
                    .map_err(err)?;
            }
        }
    }
    root.present().map_err(err)
}

/// One percentile curve: label, colour, thin (second pool of a target), points.
type Curve = (String, RGBColor, bool, Vec<(f64, f64)>);

/// Percentile curve: x = "nines" (-log10(1 - q)), y = latency, log scale.
fn latency_distribution(path: &Path, task_runs: &[TaskRun]) -> Result<(), String> {
    let at1: Vec<&TaskRun> = task_runs
        .iter()
        .filter(|r| (r.rtt_ms - 1.0).abs() < 1e-9 && r.rate.is_some())
        .collect();
    let pools = sorted_unique(at1.iter().map(|r| r.pool).collect());
    let mut curves: Vec<Curve> = Vec::new();
    let mut rate = f64::NAN;
    for t in ["direct", "twemproxy", "respipe"] {
        for (pi, &pool) in pools.iter().enumerate() {
            let rs: Vec<&&TaskRun> = at1
                .iter()
                .filter(|r| r.target == t && r.pool == pool)
                .collect();
            let Some(first) = rs.first() else { continue };
            rate = first.rate.map_or(rate, |r| r * 2.0);
            let mut hist = first.outcome.hist.clone();
            for r in &rs[1..] {
                let _ = hist.add(&r.outcome.hist);
            }
            let pts: Vec<(f64, f64)> = (0..=300)
                .map(|i| {
                    let nines = i as f64 / 100.0;
                    let q = 1.0 - 10f64.powf(-nines);
                    (
                        nines,
                        (hist.value_at_quantile(q) as f64 / 1000.0).max(0.001),
                    )
                })
                .collect();
            curves.push((format!("{t}, client pool {pool}"), colour(t), pi > 0, pts));
        }
    }
    let ymax = curves
        .iter()
        .flat_map(|c| c.3.iter().map(|p| p.1))
        .fold(0.01f64, f64::max)
        * 1.5;
    let ymin = curves
        .iter()
        .flat_map(|c| c.3.iter().map(|p| p.1))
        .fold(f64::INFINITY, f64::min)
        .max(0.001)
        / 1.5;
    let root = BitMapBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "task-claim at 1 ms added RTT: latency per command, open loop at {:.0} cmd/s offered",
                rate
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..3f64, (ymin..ymax).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_labels(7)
        .x_label_formatter(&|x| {
            let q = (1.0 - 10f64.powf(-x)) * 100.0;
            match (x * 2.0).round() as i64 {
                0 => "p0".into(),
                1 => "p68".into(),
                2 => "p90".into(),
                4 => "p99".into(),
                6 => "p99.9".into(),
                _ => format!("p{q:.1}"),
            }
        })
        .x_desc("percentile")
        .y_desc("ms (log scale)")
        .draw()
        .map_err(err)?;
    for (name, c, dashed, pts) in curves {
        let style = c.stroke_width(if dashed { 1 } else { 3 });
        chart
            .draw_series(LineSeries::new(pts, style))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}
