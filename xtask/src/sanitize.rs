//! `cargo xtask sanitize`: the tests of every crate with `unsafe` code under AddressSanitizer
//! (with LeakSanitizer), the multi-threaded ones under ThreadSanitizer, both with the
//! nightly toolchain; and valgrind's memcheck over the fork start method end to end (a
//! normal debug build; see [`valgrind`] for why not the other two methods).
//!
//! - Everything is instrumented, std included (`-Zbuild-std`, with the nightly toolchain's
//!   `rust-src`, added by rustup if missing): a sanitizer that cannot see std's mutexes and
//!   atomics takes them for races. rustix is built on its libc backend
//!   (`--cfg rustix_use_libc`), so that the sanitizers see its system calls through the C
//!   library they intercept, not as inline assembly.
//! - Processes: children made by `fork` carry the parent's instrumentation; children of the
//!   `spawn` and `forkserver` methods run the same instrumented test binary. A sanitizer
//!   report in any of them makes that child fail, and so the test that started it.
//! - ThreadSanitizer cannot follow a `fork` made while other threads run (its own locks
//!   may be held in the child, which then hangs), and libtest runs each test on a thread of
//!   its own. So under TSan only the unit tests run (the threads sharing our `unsafe` code
//!   are there), one at a time with `die_after_fork=0`; the integration tests, which start
//!   and kill processes by the hundred from a process with threads, run under ASan only.

use std::{path::Path, process::Command};

/// The crates with `unsafe` code: their unit and integration tests run under ASan.
const UNSAFE_CRATES: &[&str] = &[
    "mp-codec", "mp-pipe", "mp-spawn", "mp-sync", "mp-shm", "mp-queue", "mp-pool",
];

/// The crates whose `unsafe` code runs on several threads at once in their unit tests:
/// those run under TSan.
const THREADED_CRATES: &[&str] = &["mp-sync", "mp-shm", "mp-queue", "mp-spawn", "mp-pool"];

/// Tests skipped under ASan (by name filter), and why.
const ASAN_SKIPS: &[(&str, &str, &str)] = &[(
    "mp-spawn",
    "exit_in_a_fork_child_runs_its_own_handlers_and_none_of_its_parents",
    "LeakSanitizer's check at exit stops every thread of the process, and hangs in a child \
     forked from a parent with threads, as this test's child is",
)];

/// ASan's options: a deliberate segfault (the tests kill children that way) must kill the
/// child by its signal, not become a report and an exit code.
const ASAN_OPTIONS: &str = "handle_segv=0 detect_leaks=1";

/// What the target triple is: given explicitly, so that build scripts and proc macros are
/// not instrumented.
const TARGET: &str = "x86_64-unknown-linux-gnu";

/// One run's outcome, for the summary.
struct Outcome {
    what: String,
    passed: bool,
    note: String,
}

pub struct Options {
    address: bool,
    thread: bool,
    valgrind: bool,
    crates: Vec<String>,
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let mut options = Options {
            address: false,
            thread: false,
            valgrind: false,
            crates: Vec::new(),
        };
        for arg in args {
            match arg.as_str() {
                "address" => options.address = true,
                "thread" => options.thread = true,
                "valgrind" => options.valgrind = true,
                name if UNSAFE_CRATES.contains(&name) => options.crates.push(name.to_string()),
                other => {
                    return Err(format!(
                        "sanitize: unknown argument {other:?} (address, thread, valgrind, or \
                         one of {})",
                        UNSAFE_CRATES.join(", ")
                    ));
                }
            }
        }
        if !(options.address || options.thread || options.valgrind) {
            options.address = true;
            options.thread = true;
            options.valgrind = true;
        }
        Ok(options)
    }

    fn selected<'a>(&self, from: &'a [&'a str]) -> Vec<&'a str> {
        from.iter()
            .copied()
            .filter(|c| self.crates.is_empty() || self.crates.iter().any(|s| s == c))
            .collect()
    }
}

pub fn run(options: Options) -> Result<(), String> {
    let root = crate::bench::root();
    check_nightly()?;
    let mut outcomes = Vec::new();
    if options.address {
        for krate in options.selected(UNSAFE_CRATES) {
            let skips: Vec<&(&str, &str, &str)> =
                ASAN_SKIPS.iter().filter(|(c, _, _)| *c == krate).collect();
            let mut args = Vec::new();
            for (_, filter, _) in &skips {
                args.extend(["--skip", *filter]);
            }
            let mut outcome = sanitized(
                &root,
                "address",
                krate,
                &args,
                &[("ASAN_OPTIONS", ASAN_OPTIONS)],
            )?;
            for (_, filter, why) in &skips {
                outcome.note += &format!(" (skipped `{filter}`: {why})");
            }
            outcomes.push(outcome);
        }
    }
    if options.thread {
        let tsan_options = "die_after_fork=0 halt_on_error=1";
        for krate in options.selected(THREADED_CRATES) {
            outcomes.push(sanitized(
                &root,
                "thread",
                krate,
                &["--test-threads=1"],
                &[("TSAN_OPTIONS", tsan_options)],
            )?);
        }
    }
    if options.valgrind {
        outcomes.push(valgrind(&root)?);
    }
    eprintln!();
    eprintln!("sanitize: summary");
    for o in &outcomes {
        eprintln!(
            "  {:<24} {:<6} {}",
            o.what,
            if o.passed { "ok" } else { "FAILED" },
            o.note
        );
    }
    if outcomes.iter().all(|o| o.passed) {
        Ok(())
    } else {
        Err("sanitize: a run failed (its report is above)".into())
    }
}

/// The nightly toolchain, with its `rust-src` (added if missing: `-Zbuild-std` needs it).
fn check_nightly() -> Result<(), String> {
    let out = Command::new("cargo")
        .args(["+nightly", "--version"])
        .output()
        .map_err(|e| format!("sanitize: running cargo +nightly: {e}"))?;
    if !out.status.success() {
        return Err("sanitize: the sanitizers need the nightly toolchain \
                    (rustup toolchain install nightly)"
            .into());
    }
    let installed = Command::new("rustup")
        .args(["+nightly", "component", "list", "--installed"])
        .output()
        .map_err(|e| format!("sanitize: running rustup: {e}"))?;
    if !String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        eprintln!("xtask sanitize: adding rust-src to the nightly toolchain");
        let added = Command::new("rustup")
            .args(["component", "add", "rust-src", "--toolchain", "nightly"])
            .status()
            .map_err(|e| format!("sanitize: running rustup: {e}"))?;
        if !added.success() {
            return Err(
                "sanitize: -Zbuild-std needs the nightly toolchain's rust-src \
                        (rustup component add rust-src --toolchain nightly)"
                    .into(),
            );
        }
    }
    Ok(())
}

/// Runs `krate`'s unit and integration tests under `sanitizer` (only its unit tests under
/// `thread`), with `test_args` after `--` and `env`.
fn sanitized(
    root: &Path,
    sanitizer: &str,
    krate: &str,
    test_args: &[&str],
    env: &[(&str, &str)],
) -> Result<Outcome, String> {
    // `mp_sanitize` tells the few tests that cannot run as they are under a sanitizer.
    let flags = format!(
        "-Zsanitizer={sanitizer} -Cunsafe-allow-abi-mismatch=sanitizer --cfg rustix_use_libc \
         --cfg mp_sanitize=\"{sanitizer}\""
    );
    let target_dir = root.join("target").join(format!("sanitize-{sanitizer}"));
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root)
        .args([
            "+nightly",
            "test",
            "-Zbuild-std",
            "--target",
            TARGET,
            "-p",
            krate,
        ])
        .args(if sanitizer == "thread" {
            &["--lib"][..]
        } else {
            &["--lib", "--tests"][..]
        })
        .env("RUSTFLAGS", &flags)
        .env("CARGO_TARGET_DIR", &target_dir)
        // The integration tests' children find the instrumented examples and binaries.
        .env_remove("CARGO_BUILD_TARGET");
    if !test_args.is_empty() {
        cmd.arg("--").args(test_args);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    eprintln!("xtask sanitize: {sanitizer} {krate}");
    let out = cmd
        .output()
        .map_err(|e| format!("sanitize: running cargo: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let passed = out.status.success();
    let tests: u64 = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("test result: "))
        .filter_map(|l| {
            l.split(" passed")
                .next()?
                .rsplit(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    if !passed {
        // The sanitizer's report, and the failing tests.
        print!("{stdout}");
        eprint!("{stderr}");
    }
    Ok(Outcome {
        what: format!("{sanitizer:<8} {krate}"),
        passed,
        note: format!("{tests} tests passed"),
    })
}

/// Valgrind's memcheck over starting processes: the fork tour ([`fork_tour`]) in a debug build
/// of this tool, every process it starts traced too.
///
/// Only the fork start method: this machine's valgrind (Debian 12's 3.19) does not know
/// `pidfd_open` (it fails with `ENOSYS`), which the `spawn` and `forkserver` methods and
/// the pool need to watch their children, and its loader cannot map a re-executed binary.
/// Under it, those fail at their first step, before any of our memory handling runs.
fn valgrind(root: &Path) -> Result<Outcome, String> {
    let which = Command::new("valgrind").arg("--version").output();
    if !which.is_ok_and(|o| o.status.success()) {
        return Err("sanitize: valgrind is not installed (apt-get install valgrind)".into());
    }
    eprintln!("xtask sanitize: valgrind, the fork tour");
    let target_dir = root.join("target").join("sanitize-valgrind");
    let built = Command::new("cargo")
        .current_dir(root)
        .args(["build", "-p", "xtask"])
        .env("CARGO_TARGET_DIR", &target_dir)
        // valgrind hides the vDSO that rustix's own backend reads: the C library's calls.
        .env("RUSTFLAGS", "--cfg rustix_use_libc")
        .status()
        .map_err(|e| format!("sanitize: running cargo: {e}"))?;
    if !built.success() {
        return Err("sanitize: building xtask failed".into());
    }
    let out = Command::new("valgrind")
        .args([
            "--tool=memcheck",
            "--error-exitcode=99",
            "--trace-children=yes",
            "--leak-check=no",
            "--quiet",
        ])
        .arg(target_dir.join("debug/xtask"))
        .arg("__fork_tour")
        .output()
        .map_err(|e| format!("sanitize: running valgrind: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let passed = out.status.success() && stdout.contains("fork tour: done");
    if !passed {
        print!("{stdout}");
        eprint!("{stderr}");
    }
    Ok(Outcome {
        what: "valgrind fork tour".into(),
        passed,
        note: format!(
            "children traced: {}",
            if passed { "no error" } else { "errors (above)" }
        ),
    })
}

fn sum(data: Vec<u64>) -> u64 {
    data.iter().sum()
}

/// Answers one message (the child holds a copy of the parent's end too, as a fork child
/// does: it would never see end of file).
fn echo(conn: mp_pipe::Connection) {
    if let Ok(text) = conn.recv::<String>() {
        let _ = conn.send(&text.to_uppercase());
    }
}

fn produce((q, n): (mp_queue::Queue<Vec<u64>>, u64)) {
    for i in 0..n {
        q.put((0..i).collect()).expect("put");
    }
    // A big one: through a memfd and the side channel.
    q.put((0..BIG).collect()).expect("put");
}

/// Values in the fork tour's big queue item (400 KB: past an eighth of the default ring).
const BIG: u64 = 50_000;

/// The fork start method end to end, for valgrind to watch: a child's result, a pipe, a
/// queue (small items and large ones). Started as `xtask __fork_tour`. (Not a pool: it
/// watches its workers through pidfds, which this valgrind cannot open.)
pub fn fork_tour() -> Result<(), String> {
    use mp_spawn::{Process, StartMethod::Fork};
    let e = |what: &str| {
        let what = what.to_string();
        move |err: &dyn std::fmt::Display| format!("fork tour: {what}: {err}")
    };
    let total = Process::new(sum, (1..=1000).collect::<Vec<u64>>())
        .method(Fork)
        .start()
        .map_err(|x| e("start")(&x))?
        .join()
        .map_err(|x| e("join")(&x))?;
    if total != 500_500 {
        return Err(format!("fork tour: the sum came back as {total}"));
    }
    let (ours, theirs) = mp_pipe::pipe(true).map_err(|x| e("pipe")(&x))?;
    let mut child = Process::new(echo, theirs)
        .method(Fork)
        .start()
        .map_err(|x| e("start")(&x))?;
    ours.send("ping").map_err(|x| e("send")(&x))?;
    let back: String = ours.recv().map_err(|x| e("recv")(&x))?;
    child.join().map_err(|x| e("join")(&x))?;
    if back != "PING" {
        return Err(format!("fork tour: the echo came back as {back:?}"));
    }
    let q = mp_queue::Queue::<Vec<u64>>::new().map_err(|x| e("queue")(&x))?;
    let n = 200;
    let mut producer = Process::new(produce, (q.clone(), n))
        .method(Fork)
        .start()
        .map_err(|x| e("start")(&x))?;
    for i in 0..n {
        let item = q.get().map_err(|x| e("get")(&x))?;
        if item.len() as u64 != i {
            return Err(format!("fork tour: item {i} has {} values", item.len()));
        }
    }
    let big = q.get().map_err(|x| e("get")(&x))?;
    if big.len() as u64 != BIG || big.iter().sum::<u64>() != BIG * (BIG - 1) / 2 {
        return Err("fork tour: the big item came back changed".into());
    }
    producer.join().map_err(|x| e("join")(&x))?;
    println!("fork tour: done");
    Ok(())
}
