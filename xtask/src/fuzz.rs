//! `cargo xtask fuzz [TARGET...] [--seconds N]`: the fuzz targets of `crates/mp-fuzz` under
//! libFuzzer (cargo-fuzz, on the nightly toolchain, installed here if missing), each for `N`
//! seconds (60 by default), then a line per target: executions, their rate, the corpus
//! reached, crashes.
//!
//! Each run starts from the committed seeds (`fuzz/corpus/<target>`) and regressions
//! (`fuzz/regressions/<target>`), and grows a working corpus under `target/fuzz-corpus`,
//! so the committed corpus stays small and chosen. A crash is written straight into
//! `fuzz/regressions/<target>/`: commit it with its fix, and `cargo test -p mp-fuzz` (stable,
//! in CI) replays it for ever after.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

pub struct Options {
    targets: Vec<String>,
    seconds: u64,
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let mut targets = Vec::new();
        let mut seconds = 60;
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            if arg == "--seconds" {
                seconds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|&s| s > 0)
                    .ok_or("--seconds wants a whole number of seconds above 0")?;
            } else if arg.starts_with('-') {
                return Err(format!("fuzz: unknown option {arg}"));
            } else {
                targets.push(arg.clone());
            }
        }
        Ok(Options { targets, seconds })
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The harness's targets: the files of `fuzz/fuzz_targets`.
fn all_targets() -> Result<Vec<String>, String> {
    let dir = root().join("fuzz/fuzz_targets");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".rs"))
                .map(String::from)
        })
        .collect();
    names.sort();
    Ok(names)
}

fn ensure_tools() -> Result<(), String> {
    let nightly = Command::new("cargo")
        .args(["+nightly", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !nightly {
        return Err("fuzz needs the nightly toolchain: rustup toolchain install nightly".into());
    }
    let have = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        eprintln!("xtask: installing cargo-fuzz");
        let ok = Command::new("cargo")
            .args(["install", "cargo-fuzz", "--locked"])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err("could not install cargo-fuzz (cargo install cargo-fuzz)".into());
        }
    }
    Ok(())
}

/// What libFuzzer said of a run, from its final statistics.
#[derive(Debug, Default, PartialEq)]
struct Stats {
    execs: u64,
    rate: u64,
    corpus: u64,
}

fn parse_stats(output: &str) -> Stats {
    let mut stats = Stats::default();
    for line in output.lines() {
        let value = |key: &str| {
            line.strip_prefix(key)
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let Some(v) = value("stat::number_of_executed_units:") {
            stats.execs = v;
        } else if let Some(v) = value("stat::average_exec_per_sec:") {
            stats.rate = v;
        } else if let Some(corpus) = line
            .split_whitespace()
            .skip_while(|w| *w != "corp:")
            .nth(1)
            .and_then(|c| c.split('/').next())
            .and_then(|c| c.parse().ok())
        {
            stats.corpus = corpus;
        }
    }
    stats
}

pub fn run(options: Options) -> Result<(), String> {
    let all = all_targets()?;
    let targets = if options.targets.is_empty() {
        all.clone()
    } else {
        options.targets.clone()
    };
    if let Some(unknown) = targets.iter().find(|t| !all.contains(t)) {
        return Err(format!(
            "no fuzz target {unknown} (there are: {})",
            all.join(", ")
        ));
    }
    ensure_tools()?;
    let root = root();
    let mut failed = Vec::new();
    let mut lines = Vec::new();
    for target in &targets {
        let work = root.join("target/fuzz-corpus").join(target);
        let regressions = root.join("fuzz/regressions").join(target);
        for dir in [&work, &regressions] {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let before = std::fs::read_dir(&regressions).map_or(0, |d| d.count());
        let output = Command::new("cargo")
            .current_dir(&root)
            .args(["+nightly", "fuzz", "run", target])
            .arg(&work)
            .arg(root.join("fuzz/corpus").join(target))
            .arg(&regressions)
            .arg("--")
            .arg(format!("-max_total_time={}", options.seconds))
            .arg("-print_final_stats=1")
            .arg("-timeout=10")
            .arg("-rss_limit_mb=2048")
            .arg(format!("-artifact_prefix={}/", regressions.display()))
            .output()
            .map_err(|e| format!("cargo fuzz: {e}"))?;
        let text = String::from_utf8_lossy(&output.stderr);
        let stats = parse_stats(&text);
        let crashes = std::fs::read_dir(&regressions).map_or(0, |d| d.count()) - before;
        if !output.status.success() || crashes > 0 {
            eprintln!(
                "{}",
                text.lines()
                    .rev()
                    .take(40)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            failed.push(target.clone());
        }
        lines.push(format!(
            "{target:<12} {:>6} s {:>12} execs {:>8}/s  corpus {:>5}  new crashes {crashes}",
            options.seconds, stats.execs, stats.rate, stats.corpus
        ));
        println!("{}", lines.last().expect("just pushed"));
    }
    println!("\n{}", lines.join("\n"));
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "fuzzing found crashes in {} (inputs in fuzz/regressions/)",
            failed.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_and_stats_are_read() {
        let o = Options::parse(&["frame".into(), "--seconds".into(), "5".into()]).unwrap();
        assert_eq!((o.targets, o.seconds), (vec!["frame".to_string()], 5));
        assert!(Options::parse(&["--seconds".into(), "0".into()]).is_err());
        assert!(Options::parse(&["--fast".into()]).is_err());
        let out = "#1024\tpulse  cov: 10 ft: 12 corp: 7/90b exec/s: 512 rss: 40Mb\n\
                   #2000\tDONE   cov: 11 ft: 13 corp: 9/99b lim: 4 exec/s: 1000 rss: 41Mb\n\
                   stat::number_of_executed_units: 2000\n\
                   stat::average_exec_per_sec:     1000\n";
        assert_eq!(
            parse_stats(out),
            Stats {
                execs: 2000,
                rate: 1000,
                corpus: 9
            }
        );
    }

    #[test]
    fn every_target_of_the_harness_is_found() {
        let all = all_targets().unwrap();
        for name in ["frame", "message", "queue_ring"] {
            assert!(all.iter().any(|t| t == name), "{all:?}");
        }
    }
}
