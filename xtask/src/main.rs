//! `cargo xtask`: the project's own tasks.
//!
//! - `cargo xtask ci`: what `.ci/run` runs: fmt, clippy, tests, docs.
//! - `cargo xtask bench [FILTER] [--json] [--runs N]`: our crates side by side with bare
//!   libraries, raw syscalls, CPython's multiprocessing and the Rust peers, in one run;
//!   `--report DIR` also writes `DIR/REPORT.md` and one SVG chart per group.
//! - `cargo xtask sanitize [address] [thread] [valgrind] [CRATE...]`: the tests of the crates
//!   with `unsafe` code under AddressSanitizer and ThreadSanitizer (nightly), and valgrind's
//!   memcheck over the quickstart tour.
//! - `cargo xtask fuzz [TARGET...] [--seconds N]`: the fuzz targets (`crates/mp-fuzz`) under
//!   libFuzzer, with cargo-fuzz on the nightly toolchain.
//! - `cargo xtask soak [--quick | --minutes N] [--seed S] [--only WORKLOAD]`: the fault campaign: workloads
//!   across processes, killed at random moments, and what must hold afterwards.
//! - `cargo xtask test-mpi`: `mp-mpi` under Open MPI's `mpirun` (installing Open MPI where
//!   it can).

mod bench;
mod ci;
mod fuzz;
mod mpi;
mod sanitize;
mod soak;

use std::process::ExitCode;

const USAGE: &str = "usage: cargo xtask ci
       cargo xtask bench [FILTER] [--json] [--runs N] [--report DIR]
       cargo xtask sanitize [address] [thread] [valgrind] [CRATE...]
       cargo xtask fuzz [TARGET...] [--seconds N]
       cargo xtask soak [--quick | --minutes N] [--seed S] [--only WORKLOAD]
       cargo xtask test-mpi
       cargo xtask mpi-setup

FILTER is a group (codec, pipe, spawn, shm, queue, pool, mpi) or part of a workload's name;
several, comma-separated (queue,pool), select what any of them selects.
--report DIR also writes DIR/REPORT.md (every row, the targets, the machine) and
one SVG chart per group, linked from it.
sanitize runs the tests of the crates with unsafe code under AddressSanitizer (address)
and ThreadSanitizer (thread) with the nightly toolchain, and the quickstart tour under
valgrind's memcheck (valgrind); all three when none is named.
fuzz runs each fuzz target (all when none is named) under libFuzzer for N seconds
(default 60) and prints what it ran; a crash lands in fuzz/regressions/.
soak runs random workloads across processes for N minutes (5 by default; --quick: 80 s),
SIGKILLs some of their processes at random moments, and checks that nothing hangs, is
lost beyond the documented rules, is garbled or is left behind; --seed S replays a run.
test-mpi checks for Open MPI and libclang (installing them with apt-get as root where it
can, else saying what to install), then builds mp-mpi and runs its tests under mpirun;
mpi-setup does only the first part.";

fn main() -> ExitCode {
    // procspawn's children re-enter here and are dispatched by this call.
    procspawn::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "help") || args.iter().any(|a| a == "--help" || a == "-h")
    {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let result = match args.first().map(String::as_str) {
        Some("ci") if args.len() == 1 => ci::run(),
        Some("bench") => bench::Options::parse(&args[1..]).and_then(bench::run),
        Some("sanitize") => sanitize::Options::parse(&args[1..]).and_then(sanitize::run),
        Some("fuzz") => fuzz::Options::parse(&args[1..]).and_then(fuzz::run),
        Some("soak") => soak::Options::parse(&args[1..]).and_then(soak::run),
        Some("test-mpi") if args.len() == 1 => mpi::test(),
        Some("mpi-setup") if args.len() == 1 => mpi::ensure(),
        // The other process of a two-process workload (started by `bench`, not by hand).
        Some("__peer") if args.len() == 2 => bench::peer(&args[1]),
        // What `sanitize` runs under valgrind.
        Some("__fork_tour") => sanitize::fork_tour(),
        // The raw re-exec baseline of spawn_join_spawn: start and exit at once.
        Some("__noop") => Ok(()),
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}
