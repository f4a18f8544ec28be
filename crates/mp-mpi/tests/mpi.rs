//! The MPI tests: one program, every rank running it (MPI is initialized once per process,
//! so these are checks in a row, not libtest's tests on threads).
//!
//! - Under `mpirun -n N` (`cargo xtask test-mpi` runs it with N = 4): rank 0 checks the pool
//!   of `MpiPool::world`, the other ranks serve it from inside that same call.
//! - Alone (as `cargo test -p mp-mpi` runs it): the same checks on `MpiPool::spawn(3)`,
//!   whose workers are this program started again by `MPI_Comm_spawn`.
//! - `die` (under `mpirun`): a task kills its own rank. MPI ends the whole job, and `mpirun`
//!   says which rank died and exits non-zero: `cargo xtask test-mpi` checks that, and that
//!   it happens within its deadline.
//!
//! Every check that fails panics, and a panic on rank 0 fails the job.

use std::{
    sync::{Arc, atomic::AtomicUsize, atomic::Ordering},
    time::Duration,
};

use mp_mpi::{Error, MpiPool};

fn square(x: u64) -> u64 {
    x * x
}

fn shout(s: String) -> String {
    s.to_uppercase()
}

fn fail_on_13(x: u32) -> u32 {
    assert!(x != 13, "unlucky {x}");
    x
}

fn length(s: String) -> u64 {
    s.len() as u64
}

fn power(base: u64, exp: u32) -> u64 {
    base.pow(exp)
}

fn die(_: u8) -> u8 {
    // SAFETY: raise has no preconditions; SIGKILL ends this process at once.
    unsafe { libc::raise(libc::SIGKILL) };
    unreachable!("SIGKILL returned")
}

/// Open MPI lets a singleton spawn only as many processes as the machine has free cores,
/// unless told to oversubscribe; this program spawns 3 on any machine. The variable is set
/// for a new run of the program (setting it here, with MPI's threads about, would race).
const OVERSUBSCRIBE: &str = "OMPI_MCA_rmaps_base_oversubscribe";

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let under_mpirun = std::env::var_os("OMPI_COMM_WORLD_SIZE").is_some();
    if !under_mpirun && std::env::var_os(OVERSUBSCRIBE).is_none() {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(std::env::args_os().skip(1))
            .env(OVERSUBSCRIBE, "1")
            .status()
            .expect("running the program again");
        std::process::exit(status.code().unwrap_or(1));
    }
    let pool = if under_mpirun {
        MpiPool::world()
    } else {
        MpiPool::spawn(3)
    }
    .expect("a pool");
    // Only rank 0 gets here.
    if mode == "foreign" {
        // The workers run another executable (`mpirun -n 1 this foreign : -n 2 other`).
        let err = pool.apply(square, 3u64).unwrap_err();
        assert!(
            matches!(&err, Error::Spawn(_)) && err.to_string().contains("another executable"),
            "{err:?}"
        );
        println!("refused by a worker of another build: {err}");
        return;
    }
    if mode == "die" {
        let outcome = pool.apply(die, 0);
        panic!("the job outlived a dead rank: {outcome:?}");
    }
    let mut checks = 0;
    let mut check = |name: &str, ok: bool| {
        assert!(ok, "check failed: {name}");
        checks += 1;
    };

    check(
        "map: the documentation's program",
        pool.map(square, 1..=5u64).unwrap() == [1, 4, 9, 16, 25],
    );
    let n = 100_000u64;
    check(
        "map of 100,000 numbers, default chunks",
        pool.map(square, 0..n).unwrap().iter().sum::<u64>() == (0..n).map(square).sum(),
    );
    check(
        "map_chunked with chunks of 1",
        pool.map_chunked(square, 0..50u64, 1).unwrap() == (0..50).map(square).collect::<Vec<_>>(),
    );
    check(
        "map of strings (encoded, not plain)",
        pool.map(shout, ["a".to_string(), "bc".to_string()])
            .unwrap()
            == ["A", "BC"],
    );
    check(
        "imap over an endless iterator, in order",
        pool.imap(square, 0..)
            .unwrap()
            .take(200)
            .map(Result::unwrap)
            .eq((0..200).map(square)),
    );
    let mut unordered: Vec<u64> = pool
        .imap_unordered_chunked(square, 0..1000u64, 7)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    unordered.sort_unstable();
    check(
        "imap_unordered: every value once",
        unordered == (0..1000).map(square).collect::<Vec<_>>(),
    );
    check(
        "starmap",
        pool.starmap(power, [(2u64, 10u32), (3, 3)]).unwrap() == [1024, 27],
    );
    check("apply", pool.apply(square, 12u64).unwrap() == 144);
    check(
        "apply: an encoded argument, a plain result",
        pool.apply(length, "four".to_string()).unwrap() == 4,
    );
    let noisy = pool.apply_async(square, 2u64).unwrap();
    noisy.on_ready(|_| panic!("a callback that panics"));
    check(
        "a panicking callback harms neither its result nor the pool",
        noisy.get().unwrap() == 4 && pool.apply(square, 3u64).unwrap() == 9,
    );
    let later = pool.apply_async(square, 9u64).unwrap();
    let called = Arc::new(AtomicUsize::new(0));
    let seen = called.clone();
    later.on_ready(move |value| {
        if value.is_ok_and(|&v| v == 81) {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });
    check(
        "apply_async: get_timeout",
        later.get_timeout(Duration::from_secs(60)).unwrap() == 81,
    );
    check(
        "apply_async: the callback ran",
        called.load(Ordering::SeqCst) == 1,
    );
    check("apply_async: successful", later.successful() == Some(true));
    let err = pool.map_chunked(fail_on_13, 0..20u32, 5).unwrap_err();
    check(
        "a panicking task fails with its message",
        matches!(&err, Error::Panicked { message } if message.contains("unlucky 13")),
    );
    check(
        "and the pool goes on",
        pool.map(fail_on_13, 0..10u32).unwrap() == (0..10).collect::<Vec<_>>(),
    );
    let each: Vec<_> = pool.imap(fail_on_13, 12..15u32).unwrap().collect();
    check(
        "imap: a failed item fails in its place",
        matches!(
            each.as_slice(),
            [Ok(12), Err(Error::Panicked { .. }), Ok(14)]
        ),
    );
    let async_map = pool.map_async(square, 0..10u64).unwrap();
    check(
        "map_async",
        async_map.get().unwrap() == (0..10).map(square).collect::<Vec<_>>(),
    );
    check(
        "join before close is an error",
        matches!(pool.join(), Err(Error::Running)),
    );
    let pending = pool.map_async(square, 0..1000u64).unwrap();
    let mut endless = pool.imap(square, 0u64..).unwrap();
    check(
        "imap before the end",
        endless
            .by_ref()
            .take(5)
            .map(Result::unwrap)
            .eq((0..5).map(square)),
    );
    pool.close();
    check(
        "closed: no new work",
        matches!(pool.apply(square, 1u64), Err(Error::Closed)),
    );
    pool.join().unwrap();
    check(
        "close and join finish what was given",
        pending.get().unwrap().len() == 1000,
    );
    // The imap made before the end: what it had sent comes back, then it fails and stops
    // (its input is endless: it must not go on taking from it).
    let rest: Vec<_> = endless.collect();
    check(
        "an imap outliving its pool ends with Terminated",
        rest.len() < 100 && matches!(rest.last(), Some(Err(Error::Terminated))),
    );
    println!(
        "mp-mpi: {checks} checks passed on a pool of {} workers ({})",
        pool.processes(),
        if under_mpirun { "mpirun" } else { "spawned" }
    );
}
