//! `cargo xtask bench`: every implementation of a workload measured in one invocation,
//! interleaved round by round, so a noisy machine slows them alike.
//!
//! Each implementation is measured once to warm up, then `runs` times; the rounds rotate the
//! order of the implementations. A measurement is one value in the workload's unit; the table
//! shows median, min and max, and the ratio of each median to the first (reference) row.
//! After the table come the targets an issue set (a row's median over another's) for the
//! rows measured, each marked met or MISSED.
//!
//! With `--report DIR` the same results are also written as `DIR/REPORT.md` (with the
//! machine they were measured on) and one SVG chart per group: see [`report`].

mod codec;
mod pipe;
pub mod pool;
mod queue;
mod report;
mod shm;
mod spawn;

pub use pipe::peer;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

/// Parsed command line of `cargo xtask bench`.
pub struct Options {
    filter: Option<String>,
    json: bool,
    runs: usize,
    /// Where `--report` writes REPORT.md and the charts.
    report: Option<PathBuf>,
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let mut options = Options {
            filter: None,
            json: false,
            runs: 11,
            report: None,
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--json" => options.json = true,
                "--report" => {
                    let dir = args.next().ok_or("--report needs a directory")?;
                    options.report = Some(PathBuf::from(dir));
                }
                "--runs" => {
                    let n = args.next().ok_or("--runs needs a number")?;
                    options.runs = n
                        .parse()
                        .ok()
                        .filter(|&n| n >= 5)
                        .ok_or("--runs takes a whole number of at least 5")?;
                }
                flag if flag.starts_with('-') => return Err(format!("unknown option {flag}")),
                filter if options.filter.is_none() => options.filter = Some(filter.to_string()),
                extra => return Err(format!("unexpected argument {extra}")),
            }
        }
        Ok(options)
    }
}

/// What a measurement counts.
#[derive(Clone, Copy)]
pub enum Unit {
    /// Nanoseconds per operation: lower is better, and so is a ratio below 1.
    NsPerOp,
    /// Megabytes (10^6 bytes) per second: higher is better, and so is a ratio above 1.
    MegabytesPerSec,
    /// Operations per second: higher is better, and so is a ratio above 1.
    OpsPerSec,
    /// A speed-up (a serial time over a parallel one, ×): higher is better, and so is a
    /// ratio above 1.
    Speedup,
    /// Percent of one CPU used: lower is better.
    PercentCpu,
}

impl Unit {
    fn label(self) -> &'static str {
        match self {
            Unit::NsPerOp => "ns/op",
            Unit::MegabytesPerSec => "MB/s",
            Unit::OpsPerSec => "ops/s",
            Unit::Speedup => "x",
            Unit::PercentCpu => "% CPU",
        }
    }
}

/// One way of doing a workload. `measure` performs one run and returns its value in the
/// workload's unit, or an error that skips this implementation with a note.
pub struct Impl {
    pub name: String,
    pub measure: Box<dyn FnMut() -> Result<f64, String>>,
}

impl Impl {
    pub fn new(
        name: impl Into<String>,
        measure: impl FnMut() -> Result<f64, String> + 'static,
    ) -> Self {
        Impl {
            name: name.into(),
            measure: Box::new(measure),
        }
    }

    /// This implementation measured with the bench process (and so every process it starts)
    /// on one CPU alone: the first this process may use. A measurement fails if it cannot
    /// be placed so.
    pub fn on_one_cpu(self) -> Self {
        self.on_first_cpus(1)
    }

    /// This implementation measured with the bench thread (and so every thread and process
    /// it starts) on the first `count` CPUs this process may use, and on no other. A
    /// measurement fails if there are fewer.
    pub fn on_first_cpus(self, count: usize) -> Self {
        let mut measure = self.measure;
        Impl {
            name: self.name,
            measure: Box::new(move || {
                let allowed = rustix::thread::sched_getaffinity(None)
                    .map_err(|e| format!("sched_getaffinity: {e}"))?;
                let mut chosen = rustix::thread::CpuSet::new();
                let cpus = (0..rustix::thread::CpuSet::MAX_CPU).filter(|&cpu| allowed.is_set(cpu));
                for cpu in cpus.take(count) {
                    chosen.set(cpu);
                }
                if chosen.count() as usize != count {
                    return Err(format!("fewer than {count} CPUs to run on"));
                }
                rustix::thread::sched_setaffinity(None, &chosen)
                    .map_err(|e| format!("sched_setaffinity: {e}"))?;
                measure()
            }),
        }
    }
}

/// A workload and every implementation of it; the first is the reference for the ratios.
pub struct Workload {
    pub name: &'static str,
    pub unit: Unit,
    pub impls: Vec<Impl>,
}

/// A goal for one row of a workload, as a ratio to another row of the same workload, or
/// for its median itself; checked and printed after the table when the rows were measured.
pub struct Target {
    workload: &'static str,
    imp: &'static str,
    /// The row the median is divided by; `None` bounds the median itself, in its unit.
    reference: Option<&'static str>,
    bound: Bound,
}

impl Target {
    pub fn new(
        workload: &'static str,
        imp: &'static str,
        reference: &'static str,
        bound: Bound,
    ) -> Self {
        Target {
            workload,
            imp,
            reference: Some(reference),
            bound,
        }
    }

    /// A bound on the row's median itself, in the workload's unit.
    pub fn absolute(workload: &'static str, imp: &'static str, bound: Bound) -> Self {
        Target {
            workload,
            imp,
            reference: None,
            bound,
        }
    }
}

/// What a target's ratio (the row's median over the reference's) must be.
#[derive(Clone, Copy)]
pub enum Bound {
    AtLeast(f64),
    AtMost(f64),
}

impl Bound {
    fn met(self, ratio: f64) -> bool {
        match self {
            Bound::AtLeast(x) => ratio >= x,
            Bound::AtMost(x) => ratio <= x,
        }
    }

    fn describe(self) -> String {
        match self {
            Bound::AtLeast(x) => format!(">= {x}"),
            Bound::AtMost(x) => format!("<= {x}"),
        }
    }
}

/// One row of results.
struct Row {
    /// The group the workload belongs to (codec, pipe, …).
    group: &'static str,
    workload: &'static str,
    imp: String,
    unit: Unit,
    median: f64,
    min: f64,
    max: f64,
    runs: usize,
    ratio: f64,
}

/// Makes a group's workloads.
type Group = fn() -> Vec<Workload>;

/// Whether `filters` select the workload `name` of `group`: none selects all; each is a
/// group's name or a part of a workload's.
fn selected(filters: &[&str], group: &str, name: &str) -> bool {
    filters.is_empty() || filters.iter().any(|f| *f == group || name.contains(f))
}

pub fn run(options: Options) -> Result<(), String> {
    // A filter matches a workload's name or its group (the module's name).
    let groups: [(&str, Group); 7] = [
        ("codec", codec::workloads),
        ("pipe", pipe::workloads),
        ("spawn", spawn::workloads),
        ("shm", shm::workloads),
        ("queue", queue::workloads),
        ("pool", pool::workloads),
        ("mpi", crate::mpi::workloads),
    ];
    // Several filters, comma-separated, select what any of them selects.
    let filters: Vec<&str> = options
        .filter
        .as_deref()
        .map(|f| f.split(',').filter(|f| !f.is_empty()).collect())
        .unwrap_or_default();
    let selects = |group: &str, name: &str| selected(&filters, group, name);
    // A group is made only if a filter might select one of its workloads.
    let names_a_part = filters.iter().any(|f| groups.iter().all(|(g, _)| g != f));
    let workloads: Vec<(&'static str, Workload)> = groups
        .into_iter()
        .filter(|(group, _)| filters.is_empty() || names_a_part || filters.contains(group))
        .flat_map(|(group, make)| make().into_iter().map(move |w| (group, w)))
        .filter(|(group, w)| selects(group, w.name))
        .collect();
    if workloads.is_empty() {
        return Err(format!(
            "no workload matches {:?}",
            options.filter.unwrap_or_default()
        ));
    }
    if !options.json {
        println!(
            "{:<22} {:<26} {:>12} {:>12} {:>12} {:<6} {:>7}",
            "workload", "impl", "median", "min", "max", "unit", "ratio"
        );
    }
    // The load average before the first measurement, so the report shows what else ran.
    let machine = options.report.as_ref().map(|_| report::Machine::now());
    let mut rows = Vec::new();
    for (group, workload) in workloads {
        for row in measure(group, workload, options.runs) {
            print_row(&row, options.json);
            rows.push(row);
        }
    }
    let targets = check_targets(&rows, options.json);
    if let (Some(dir), Some(machine)) = (options.report, machine) {
        let command = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
        report::write(&dir, &machine.finished(), &rows, &targets, &command)?;
        if !options.json {
            println!("\nreport written to {}", dir.join("REPORT.md").display());
        }
    }
    Ok(())
}

/// Prints each target whose rows were measured: the ratio (or the median itself, for an
/// absolute target), and whether it is met. Returns the lines printed without `--json`, for
/// the report.
fn check_targets(rows: &[Row], json: bool) -> Vec<String> {
    let row =
        |workload: &str, imp: &str| rows.iter().find(|r| r.workload == workload && r.imp == imp);
    let mut lines = Vec::new();
    for target in (pipe::targets().into_iter())
        .chain(queue::targets())
        .chain(pool::targets())
        .chain(crate::mpi::targets())
    {
        let Some(value) = row(target.workload, target.imp) else {
            continue;
        };
        let (measured, what) = match target.reference {
            Some(reference) => {
                let Some(reference) = row(target.workload, reference) else {
                    continue;
                };
                (
                    value.median / reference.median,
                    format!("{} / {}", target.imp, reference.imp),
                )
            }
            None => (
                value.median,
                format!("{} in {}", target.imp, value.unit.label()),
            ),
        };
        let met = target.bound.met(measured);
        if json {
            println!(
                "{{\"target\":\"{}\",\"impl\":\"{}\",\"reference\":\"{}\",\"ratio\":{measured:.4},\"want\":\"{}\",\"met\":{met}}}",
                target.workload,
                target.imp,
                target.reference.unwrap_or(""),
                target.bound.describe()
            );
        }
        lines.push(format!(
            "{:<18} {what} = {measured:.3} (want {}): {}",
            target.workload,
            target.bound.describe(),
            if met { "met" } else { "MISSED" }
        ));
    }
    if !json && !lines.is_empty() {
        println!("\ntargets (ratio of medians, or a median itself):");
        for line in &lines {
            println!("  {line}");
        }
    }
    lines
}

fn measure(group: &'static str, mut workload: Workload, runs: usize) -> Vec<Row> {
    let n = workload.impls.len();
    let mut samples: Vec<Result<Vec<f64>, String>> = vec![Ok(Vec::new()); n];
    // Each implementation places itself (or not) on CPUs; none leaks its placement into the
    // next measurement.
    let placement = rustix::thread::sched_getaffinity(None).ok();
    for round in 0..=runs {
        for k in 0..n {
            let i = (k + round) % n;
            let Ok(values) = &mut samples[i] else {
                continue;
            };
            let measured = (workload.impls[i].measure)();
            if let Some(all) = &placement {
                let _ = rustix::thread::sched_setaffinity(None, all);
            }
            match measured {
                Ok(value) if round > 0 => values.push(value),
                Ok(_) => {} // warm-up
                Err(why) => samples[i] = Err(why),
            }
        }
    }
    let mut rows = Vec::new();
    let mut reference = None;
    for (imp, sample) in workload.impls.iter().zip(samples) {
        let mut values = match sample {
            Ok(values) => values,
            Err(why) => {
                eprintln!("note: {} {} skipped: {why}", workload.name, imp.name);
                continue;
            }
        };
        values.sort_by(f64::total_cmp);
        let median = median(&values);
        let reference = *reference.get_or_insert(median);
        rows.push(Row {
            group,
            workload: workload.name,
            imp: imp.name.clone(),
            unit: workload.unit,
            median,
            min: values[0],
            max: values[values.len() - 1],
            runs: values.len(),
            ratio: median / reference,
        });
    }
    rows
}

fn median(sorted: &[f64]) -> f64 {
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

fn print_row(row: &Row, json: bool) {
    if json {
        println!(
            "{{\"workload\":\"{}\",\"impl\":\"{}\",\"unit\":\"{}\",\"median\":{},\"min\":{},\"max\":{},\"runs\":{},\"ratio\":{:.4}}}",
            row.workload,
            row.imp,
            row.unit.label(),
            row.median,
            row.min,
            row.max,
            row.runs,
            row.ratio
        );
    } else {
        println!(
            "{:<22} {:<26} {:>12.2} {:>12.2} {:>12.2} {:<6} {:>7.3}",
            row.workload,
            row.imp,
            row.median,
            row.min,
            row.max,
            row.unit.label(),
            row.ratio
        );
    }
}

/// Times `op` in a batch long enough to read the clock well (see [`time_batched`]);
/// returns nanoseconds per call.
pub fn time_per_op(iters: &mut u64, mut op: impl FnMut()) -> f64 {
    time_batched(iters, |n| {
        for _ in 0..n {
            op();
        }
    })
}

/// Times `batch(n)`, which performs `n` operations and returns when they are complete, with
/// `n` calibrated on the first call (kept in `iters`) so a batch takes about 50 ms; returns
/// nanoseconds per operation.
pub fn time_batched(iters: &mut u64, mut batch: impl FnMut(u64)) -> f64 {
    const TARGET: Duration = Duration::from_millis(50);
    if *iters == 0 {
        let mut n = 1u64;
        loop {
            let start = Instant::now();
            batch(n);
            let took = start.elapsed();
            if took >= TARGET / 4 || n >= 1 << 40 {
                *iters = ((n as f64) * TARGET.as_secs_f64() / took.as_secs_f64()).ceil() as u64;
                break;
            }
            n *= 2;
        }
    }
    let start = Instant::now();
    batch(*iters);
    start.elapsed().as_nanos() as f64 / *iters as f64
}

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits inside the workspace")
        .to_path_buf()
}

/// An implementation that runs `benches/python/SCRIPT WORKLOAD` with python3; the script
/// prints one number in the workload's unit. Skipped with a note when python3 is missing.
pub fn cpython(name: &str, script: &str, workload: &'static str) -> Impl {
    cpython_with(name, script, &[workload])
}

/// [`cpython`] with the script's arguments given.
pub fn cpython_with(name: &str, script: &str, args: &[&str]) -> Impl {
    let path = root().join("benches/python").join(script);
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    Impl::new(format!("cpython/{name}"), move || {
        let out = Command::new("python3")
            .arg(&path)
            .args(&args)
            .output()
            .map_err(|e| format!("python3 not runnable: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{} failed: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim()
            .parse()
            .map_err(|_| format!("{} printed {text:?}, not a number", path.display()))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn comma_separated_filters_select_what_any_of_them_selects() {
        assert!(selected(&[], "pool", "pool_map_1m"));
        assert!(selected(&["queue", "pool"], "pool", "pool_map_1m"));
        assert!(selected(&["queue", "map_1m"], "pool", "pool_map_1m"));
        assert!(!selected(&["queue"], "pool", "pool_map_1m"));
        assert!(!selected(&["spawn", "rtt"], "pool", "pool_map_1m"));
    }

    use super::*;

    fn row(workload: &'static str, imp: &str, median: f64) -> Row {
        Row {
            group: "pool",
            workload,
            imp: imp.to_string(),
            unit: Unit::NsPerOp,
            median,
            min: median,
            max: median,
            runs: 5,
            ratio: 1.0,
        }
    }

    #[test]
    fn absolute_target_bounds_the_median_itself() {
        let lines = |median| check_targets(&[row("pool_map_1m", "ours/mp-pool", median)], true);
        let met = lines(19.0);
        assert_eq!(met.len(), 1);
        assert!(met[0].ends_with(": met"), "{}", met[0]);
        assert!(
            met[0].contains("ours/mp-pool in ns/op = 19.000 (want <= 20)"),
            "{}",
            met[0]
        );
        assert!(lines(21.0)[0].ends_with(": MISSED"));
    }

    #[test]
    fn ratio_target_needs_both_rows() {
        let ours = row("pool_task_chunk1", "ours/mp-pool", 2_000.0);
        let cpython = row("pool_task_chunk1", "cpython/Pool", 30_000.0);
        let lines = check_targets(&[ours, cpython], true);
        assert!(
            lines
                .iter()
                .any(|l| l.contains("cpython/Pool / ours/mp-pool = 15.000 (want >= 7): met")),
            "{lines:?}"
        );
        let alone = check_targets(&[row("pool_task_chunk1", "cpython/Pool", 1.0)], true);
        assert!(alone.is_empty(), "{alone:?}");
    }
}
