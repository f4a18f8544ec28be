//! `cargo xtask bench --report DIR`: the results as `DIR/REPORT.md` and one SVG chart per
//! group (`DIR/<group>.svg`), linked from it.
//!
//! The markdown holds every number (median, min–max, ratio to the workload's reference row),
//! the targets' lines, and the machine they were measured on (CPU model, cores, kernel, load
//! average before and after the run), since a number without its machine means little.
//!
//! Charts: one panel per workload, a horizontal bar per implementation (its median) with a
//! line over its min–max, our rows (`ours/…`) in orange, the rest in grey-blue. A panel
//! whose medians spread more than [`LOG_SPREAD`]× apart uses a log axis, so a 1000× slower
//! peer does not flatten every other bar into a sliver. Decision: plotters' SVG backend
//! without its font features. It writes labels as SVG `<text>` and sizes them with its
//! built-in estimate, so the charts need no font files and no system library to build.

use std::{fmt::Write as _, fs, path::Path, process::Command};

use plotters::{
    coord::{
        Shift,
        ranged1d::{AsRangedCoord, ValueFormatter},
    },
    prelude::*,
};

use super::{Row, Unit};

/// Medians further apart than this (largest over smallest) get a log axis.
pub const LOG_SPREAD: f64 = 20.0;

const OURS: RGBColor = RGBColor(230, 85, 13);
const PEER: RGBColor = RGBColor(107, 142, 178);
const WIDTH: u32 = 960;

/// What the numbers were measured on.
pub struct Machine {
    cpu: String,
    cores: String,
    kernel: String,
    load_before: String,
    load_after: String,
    date: String,
}

impl Machine {
    /// The machine as it is now, before the run: its load average is the "before".
    pub fn now() -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| matches!(k.trim(), "model name" | "Model" | "Hardware"))
            .map_or_else(|| "unknown".to_string(), |(_, v)| v.trim().to_string());
        let listed = cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count();
        let usable = std::thread::available_parallelism().map_or(0, |n| n.get());
        Machine {
            cpu,
            cores: format!("{listed} ({usable} usable by this process)"),
            kernel: command_output("uname", &["-srm"]),
            load_before: load_average(),
            load_after: String::new(),
            date: command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        }
    }

    /// The same machine after the run: its load average is the "after".
    pub fn finished(mut self) -> Machine {
        self.load_after = load_average();
        self
    }
}

/// The 1, 5 and 15 minute load averages, as the kernel shows them.
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_string())
}

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".to_string())
}

/// Writes `dir/REPORT.md` and one `dir/<group>.svg` per group in `rows`.
pub fn write(
    dir: &Path,
    machine: &Machine,
    rows: &[Row],
    targets: &[String],
    command: &str,
) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    for group in groups(rows) {
        let path = dir.join(format!("{group}.svg"));
        let svg = chart(rows_of(rows, |r| r.group == group))?;
        fs::write(&path, svg).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    let path = dir.join("REPORT.md");
    fs::write(&path, markdown(machine, rows, targets, command))
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

/// The groups of `rows`, in order of first appearance.
fn groups(rows: &[Row]) -> Vec<&'static str> {
    let mut groups: Vec<&'static str> = Vec::new();
    for row in rows {
        if !groups.contains(&row.group) {
            groups.push(row.group);
        }
    }
    groups
}

/// The workloads of `rows`, in order of first appearance.
fn workloads<'a>(rows: &[&'a Row]) -> Vec<&'a str> {
    let mut names: Vec<&'a str> = Vec::new();
    for row in rows {
        if !names.contains(&row.workload) {
            names.push(row.workload);
        }
    }
    names
}

fn rows_of(rows: &[Row], keep: impl Fn(&Row) -> bool) -> Vec<&Row> {
    rows.iter().filter(|r| keep(r)).collect()
}

fn is_ours(row: &Row) -> bool {
    row.imp.starts_with("ours/")
}

fn better(unit: Unit) -> &'static str {
    match unit {
        Unit::NsPerOp | Unit::PercentCpu => "lower is better",
        Unit::MegabytesPerSec | Unit::OpsPerSec | Unit::Speedup => "higher is better",
    }
}

/// A value in its unit, to three significant digits: times scaled to ns/µs/ms/s, bandwidth
/// to MB/s or GB/s, operation rates given k/M/G, speed-ups as a factor.
fn format_value(value: f64, unit: Unit) -> String {
    match unit {
        Unit::NsPerOp => match value {
            v if v >= 1e9 => format!("{} s", sig3(v / 1e9)),
            v if v >= 1e6 => format!("{} ms", sig3(v / 1e6)),
            v if v >= 1e3 => format!("{} µs", sig3(v / 1e3)),
            v => format!("{} ns", sig3(v)),
        },
        Unit::MegabytesPerSec => match value {
            v if v >= 1e3 => format!("{} GB/s", sig3(v / 1e3)),
            v => format!("{} MB/s", sig3(v)),
        },
        Unit::OpsPerSec => match value {
            v if v >= 1e9 => format!("{} G ops/s", sig3(v / 1e9)),
            v if v >= 1e6 => format!("{} M ops/s", sig3(v / 1e6)),
            v if v >= 1e3 => format!("{} k ops/s", sig3(v / 1e3)),
            v => format!("{} ops/s", sig3(v)),
        },
        Unit::Speedup => format!("{}×", sig3(value)),
        Unit::PercentCpu => format!("{}% of a CPU", sig3(value)),
    }
}

/// Three significant digits, without trailing exponent notation.
fn sig3(value: f64) -> String {
    let decimals = match value.abs() {
        v if v >= 100.0 => 0,
        v if v >= 10.0 => 1,
        _ => 2,
    };
    format!("{value:.decimals$}")
}

/// REPORT.md: the machine, then per group its chart and per workload a table.
fn markdown(machine: &Machine, rows: &[Row], targets: &[String], command: &str) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "Made by `cargo xtask {command}` on {}. Each implementation runs once to warm up, \
         then once per round; the rounds interleave the implementations, so a noisy moment \
         slows them alike. Our rows are in bold (orange in the charts; each bar is a median, its \
         black line spans min – max); the ratio is each median over the workload's first row.\n",
        machine.date
    );
    let _ = writeln!(md, "## Machine\n");
    let _ = writeln!(md, "| | |\n|---|---|");
    let _ = writeln!(md, "| CPU | {} |", machine.cpu);
    let _ = writeln!(md, "| cores | {} |", machine.cores);
    let _ = writeln!(md, "| kernel | {} |", machine.kernel);
    let _ = writeln!(
        md,
        "| load average (1, 5, 15 min) | before {}; after {} |\n",
        machine.load_before, machine.load_after
    );
    for group in groups(rows) {
        let group_rows = rows_of(rows, |r| r.group == group);
        let _ = writeln!(md, "## {group}\n");
        let _ = writeln!(md, "![{group}]({group}.svg)\n");
        for workload in workloads(&group_rows) {
            let these: Vec<&Row> = group_rows
                .iter()
                .copied()
                .filter(|r| r.workload == workload)
                .collect();
            let unit = these[0].unit;
            let _ = writeln!(
                md,
                "### {workload}\n\n{}, {}; ratio to `{}`.\n",
                unit.label(),
                better(unit),
                these[0].imp
            );
            let _ = writeln!(md, "| implementation | median | min – max | runs | ratio |");
            let _ = writeln!(md, "|---|---:|---:|---:|---:|");
            for row in these {
                let cells = [
                    format!("`{}`", row.imp),
                    format_value(row.median, unit),
                    format!(
                        "{} – {}",
                        format_value(row.min, unit),
                        format_value(row.max, unit)
                    ),
                    row.runs.to_string(),
                    format!("{:.3}", row.ratio),
                ];
                let cells: Vec<String> = if is_ours(row) {
                    cells.iter().map(|c| format!("**{c}**")).collect()
                } else {
                    cells.to_vec()
                };
                let _ = writeln!(md, "| {} |", cells.join(" | "));
            }
            let _ = writeln!(md);
        }
    }
    if !targets.is_empty() {
        let _ = writeln!(md, "## Targets (ratio of medians)\n\n```");
        for line in targets {
            let _ = writeln!(md, "{line}");
        }
        let _ = writeln!(md, "```");
    }
    md
}

/// Whether medians this far apart need a log axis.
fn needs_log_scale(rows: &[&Row]) -> bool {
    let (lo, hi) = rows.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), r| {
        (lo.min(r.median), hi.max(r.median))
    });
    lo > 0.0 && hi / lo > LOG_SPREAD
}

fn panel_height(rows: usize) -> u32 {
    70 + 34 * rows as u32
}

/// One group's chart as an SVG document: a panel per workload.
fn chart(rows: Vec<&Row>) -> Result<String, String> {
    let names = workloads(&rows);
    let panels: Vec<Vec<&Row>> = names
        .iter()
        .map(|w| rows.iter().copied().filter(|r| r.workload == *w).collect())
        .collect();
    let height = panels.iter().map(|p| panel_height(p.len())).sum::<u32>();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height.max(1))).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| format!("drawing a chart: {e}"))?;
        let mut rest = root.clone();
        for panel in &panels {
            let (area, below) = rest.split_vertically(panel_height(panel.len()));
            draw_panel(&area, panel).map_err(|e| format!("drawing a chart: {e}"))?;
            rest = below;
        }
        root.present()
            .map_err(|e| format!("drawing a chart: {e}"))?;
    }
    Ok(svg)
}

type DrawResult = Result<(), DrawingAreaErrorKind<std::io::Error>>;

fn draw_panel(area: &DrawingArea<SVGBackend<'_>, Shift>, rows: &[&Row]) -> DrawResult {
    let hi = rows.iter().map(|r| r.max.max(r.median)).fold(0.0, f64::max);
    if needs_log_scale(rows) {
        let lo = rows.iter().map(|r| r.min.min(r.median)).fold(hi, f64::min);
        let axis = (10f64.powf(lo.log10().floor())..10f64.powf(hi.log10().ceil())).log_scale();
        let base = 10f64.powf(lo.log10().floor());
        draw_bars(area, rows, axis, base, true)
    } else {
        draw_bars(area, rows, 0.0..hi * 1.08, 0.0, false)
    }
}

fn draw_bars<X>(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    rows: &[&Row],
    axis: X,
    base: f64,
    log: bool,
) -> DrawResult
where
    X: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
{
    let unit = rows[0].unit;
    let n = rows.len();
    let caption = format!(
        "{} ({}, {}{})",
        rows[0].workload,
        unit.label(),
        better(unit),
        if log { ", log scale" } else { "" }
    );
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(8)
        .margin_right(24)
        .x_label_area_size(28)
        .y_label_area_size(230)
        .build_cartesian_2d(axis, (0..n).into_segmented())?;
    // Row 0 (the reference) on top.
    let slot = |i: usize| n - 1 - i;
    let label = |y: &SegmentValue<usize>| match y {
        SegmentValue::CenterOf(k) if *k < n => rows[n - 1 - k].imp.clone(),
        _ => String::new(),
    };
    let format_x = |x: &f64| format_value(*x, unit);
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&label)
        .x_labels(6)
        .x_label_formatter(&format_x)
        .label_style(("sans-serif", 16))
        .draw()?;
    chart.draw_series(rows.iter().enumerate().map(|(i, row)| {
        let color = if is_ours(row) { OURS } else { PEER };
        let mut bar = Rectangle::new(
            [
                (base, SegmentValue::Exact(slot(i))),
                (row.median, SegmentValue::Exact(slot(i) + 1)),
            ],
            color.filled(),
        );
        bar.set_margin(6, 6, 0, 0);
        bar
    }))?;
    chart.draw_series(rows.iter().enumerate().map(|(i, row)| {
        PathElement::new(
            vec![
                (row.min, SegmentValue::CenterOf(slot(i))),
                (row.max, SegmentValue::CenterOf(slot(i))),
            ],
            BLACK.stroke_width(2),
        )
    }))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(group: &'static str, workload: &'static str, imp: &str, median: f64) -> Row {
        Row {
            group,
            workload,
            imp: imp.to_string(),
            unit: Unit::OpsPerSec,
            median,
            min: median * 0.9,
            max: median * 1.1,
            runs: 11,
            ratio: median / 1000.0,
        }
    }

    fn machine() -> Machine {
        Machine {
            cpu: "Test CPU 9000".into(),
            cores: "2 (2 usable by this process)".into(),
            kernel: "Linux 6.1.0 x86_64".into(),
            load_before: "0.10 0.20 0.30".into(),
            load_after: "1.50 0.60 0.40".into(),
            date: "2026-01-01 00:00 UTC".into(),
        }
    }

    fn fake() -> Vec<Row> {
        vec![
            row("queue", "queue_1to1_8b", "cpython/Queue", 1000.0),
            row("queue", "queue_1to1_8b", "ours/mp-queue", 5_000_000.0),
            row("queue", "queue_rtt_8b", "ours/mp-pipe", 100_000.0),
            row("queue", "queue_rtt_8b", "ours/mp-queue", 150_000.0),
            row("codec", "codec_small", "postcard/", 2_000.0),
        ]
    }

    #[test]
    fn markdown_lists_every_row_with_its_ratio_our_rows_bold_and_the_machine() {
        let md = markdown(
            &machine(),
            &fake(),
            &["a target line: met".into()],
            "bench x",
        );
        assert!(md.contains("Test CPU 9000"), "{md}");
        assert!(
            md.contains("before 0.10 0.20 0.30; after 1.50 0.60 0.40"),
            "{md}"
        );
        assert!(md.contains("Linux 6.1.0"), "{md}");
        assert!(
            md.contains(
                "| `cpython/Queue` | 1.00 k ops/s | 900 ops/s – 1.10 k ops/s | 11 | 1.000 |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| **`ours/mp-queue`** | **5.00 M ops/s** |"),
            "{md}"
        );
        assert!(md.contains("**5000.000**"), "{md}");
        assert!(
            md.contains("![queue](queue.svg)") && md.contains("![codec](codec.svg)"),
            "{md}"
        );
        assert!(md.contains("### queue_rtt_8b"), "{md}");
        assert!(md.contains("a target line: met"), "{md}");
        assert_eq!(
            md.matches("| `").count() + md.matches("| **`").count(),
            5,
            "{md}"
        );
    }

    #[test]
    fn chart_has_a_labelled_bar_per_row_and_ours_highlighted() {
        let rows = fake();
        let svg = chart(rows_of(&rows, |r| r.group == "queue")).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        for name in ["cpython/Queue", "ours/mp-queue", "ours/mp-pipe"] {
            assert!(
                svg.contains(&format!("\n{name}\n</text>")),
                "no label {name}: {svg}"
            );
        }
        assert!(
            svg.contains("\nqueue_rtt_8b (ops/s, higher is better)\n</text>"),
            "{svg}"
        );
        let ours = svg.matches("fill=\"#E6550D\"").count();
        let peer = svg.matches("fill=\"#6B8EB2\"").count();
        assert_eq!((ours, peer), (3, 1), "{svg}");
        assert!(!svg.contains("codec_small"), "{svg}");
    }

    #[test]
    fn chart_uses_a_log_axis_only_when_medians_spread_more_than_20x() {
        let rows = fake();
        let wide = rows_of(&rows, |r| r.workload == "queue_1to1_8b");
        let narrow = rows_of(&rows, |r| r.workload == "queue_rtt_8b");
        assert!(needs_log_scale(&wide) && !needs_log_scale(&narrow));
        assert!(chart(wide).unwrap().contains("log scale"));
        assert!(!chart(narrow).unwrap().contains("log scale"));
    }

    #[test]
    fn values_keep_three_significant_digits_in_their_unit() {
        assert_eq!(format_value(1234.0, Unit::NsPerOp), "1.23 µs");
        assert_eq!(format_value(87.65, Unit::NsPerOp), "87.7 ns");
        assert_eq!(format_value(2_500_000.0, Unit::OpsPerSec), "2.50 M ops/s");
        assert_eq!(format_value(640.0, Unit::MegabytesPerSec), "640 MB/s");
        assert_eq!(format_value(70_520.0, Unit::MegabytesPerSec), "70.5 GB/s");
        assert_eq!(format_value(1.874, Unit::Speedup), "1.87×");
    }
}
