//! Pool workloads (issue 15): our `mp_pool::Pool` of 2 workers against the raw floors
//! ([`raw`]), CPython's `multiprocessing.Pool(2)` (`benches/python/pool.py`), procspawn's
//! `Pool` of 2 and rayon's `ThreadPool` of 2 threads (the in-process ceiling).
//!
//! - `pool_startup` (ns, shown in µs by the report): from nothing to the first result: the
//!   pool's creation and one `apply(square, 3)`, timed to the answer's arrival. Dropping
//!   (terminating) the pool is outside the clock. `raw/` is two `fork`s and one round trip
//!   of a `u64` over a pair of pipes (the children are told to end after the clock stops).
//! - `pool_task_chunk1` (ns per task): `map` of `square` over `0..n` with chunksize 1 on a
//!   running pool, `n` calibrated so a run takes about 100 ms. `raw/` hands each task to
//!   one of two forked workers as one word through its own shared-memory ring, and takes
//!   each answer back through another: one task per message, nothing else. procspawn has
//!   no `map`: a task is one `Pool::spawn` (at most 64 in flight); rayon is
//!   `par_iter().with_max_len(1)`.
//! - `pool_map_1m` (ns per item): `map` of `square` over `0..1_000_000` with the default
//!   chunks (CPython's: ceil(len / (4 × workers)) = 125,000 items) on a running pool, into a
//!   `Vec`. `raw/` moves the bytes and nothing else: inputs written into one shared array,
//!   chunks claimed by the workers with a shared counter, squares written into a second
//!   array, copied into the `Vec`. procspawn spawns the same 8 chunks as `Vec<u64>`s; rayon
//!   collects a `par_iter` (its own splitting).
//! - `pool_cpu16_speedup` (×, higher is better): 16 tasks of about 20 ms each (a xorshift
//!   loop over its seed, see [`burn`], whose results are summed and checked), run serially in
//!   the bench process and then by the pool (`map`, default chunks); the row is serial time
//!   over pool time, both measured in the same run. rayon's 2 threads are the reference:
//!   the ceiling a process pool can approach.
//!
//! Placement: every implementation runs with the bench thread, and so every thread and
//! process it starts, on the machine's first 2 CPUs ([`Impl::on_first_cpus`]), and nothing is
//! pinned finer: a pool's 2 workers need the 2 CPUs to themselves while the parent mostly
//! waits, as rayon's 2 threads get them; pinning the parent apart (as the queue group does
//! with its consumer) would leave the 2 workers sharing one. The CPython script inherits the
//! placement.
//!
//! Our rows (`ours/mp-pool`) fork their workers, as CPython's rows and the raw floors do;
//! `pool_startup` also has `ours/mp-pool forkserver`, the default start method, its server
//! already running after the warm-up. (The server keeps the CPU placement of the moment it
//! started, and so do the workers it forks: in a run of every group, that is the spawn
//! group's single CPU, which is why the other rows do not use it.) Forking from the bench
//! process while rayon's or procspawn's idle threads exist is safe enough for a bench:
//! they hold no lock a worker needs.
//!
//! Pools are created once per implementation (outside the clock, on the first, warm-up run)
//! and dropped with the workload, except in `pool_startup`. Every result is checked (the sum
//! of the squares, or of the [`burn`] results against the serial run's), so a broken run
//! fails instead of counting; every wait has a deadline ([`DEADLINE`]).
//!
//! procspawn needs `procspawn::init()` early in `main`: its workers are this xtask binary
//! run again, and that call (the first line of xtask's `main`) turns such a run into a
//! worker. The benches run in the xtask process itself, so nothing else is needed.

mod raw;

use std::{
    hint::black_box,
    sync::OnceLock,
    time::{Duration, Instant},
};

use mp_pool::Pool;
use mp_spawn::StartMethod;
use rayon::prelude::*;

use super::{Bound, Impl, Target, Unit, Workload, cpython_with, queue::per_item};

/// How long any wait on another process or thread may last before its run fails.
const DEADLINE: Duration = Duration::from_secs(10);
/// Workers of every pool (the machines have 2 cores).
const WORKERS: usize = 2;
/// Items of `pool_map_1m`.
const MAP_ITEMS: u64 = raw::MAP_ITEMS as u64;
/// Chunks of `pool_map_1m` (CPython's default chunk size), for procspawn.
const MAP_CHUNK: u64 = MAP_ITEMS.div_ceil(4 * WORKERS as u64);
/// Tasks of `pool_cpu16_speedup`, and about how long each takes.
const CPU_TASKS: u64 = 16;
const CPU_TASK_TIME: Duration = Duration::from_millis(20);
/// At most this many procspawn tasks in flight (each holds two ipc channels' descriptors).
const PROCSPAWN_WINDOW: usize = 64;

/// The task of the small workloads.
pub fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

/// The task of `pool_cpu16_speedup`: `iterations` rounds of xorshift64 from `seed`, a pure
/// function of its input that the compiler cannot shorten (each round needs the last).
pub fn burn((seed, iterations): (u64, u64)) -> u64 {
    let mut x = seed | 1;
    for _ in 0..iterations {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    x
}

/// Rounds of [`burn`] that take about [`CPU_TASK_TIME`] here, measured once.
fn burn_iterations() -> u64 {
    static ITERATIONS: OnceLock<u64> = OnceLock::new();
    *ITERATIONS.get_or_init(|| {
        let mut n = 1u64 << 16;
        loop {
            let start = Instant::now();
            black_box(burn(black_box((1, n))));
            let took = start.elapsed();
            if took >= CPU_TASK_TIME / 4 {
                return (n as f64 * CPU_TASK_TIME.as_secs_f64() / took.as_secs_f64()) as u64;
            }
            n *= 2;
        }
    })
}

/// The 16 tasks of `pool_cpu16_speedup`.
fn cpu_tasks() -> Vec<(u64, u64)> {
    let iterations = burn_iterations();
    (0..CPU_TASKS).map(|seed| (seed, iterations)).collect()
}

/// What the squares of `0..n` sum to (wrapping).
fn sum_of_squares(n: u64) -> u64 {
    (0..n).fold(0, |sum, x| sum.wrapping_add(square(x)))
}

fn wrapping_sum(values: impl IntoIterator<Item = u64>) -> u64 {
    values.into_iter().fold(0, u64::wrapping_add)
}

pub fn workloads() -> Vec<Workload> {
    let two = |imp: Impl| imp.on_first_cpus(WORKERS);
    vec![
        Workload {
            name: "pool_startup",
            unit: Unit::NsPerOp,
            impls: [
                Impl::new("raw/2 forks+pipe rtt", timed_each(raw::startup)),
                ours_startup("ours/mp-pool", Some(StartMethod::Fork)),
                ours_startup("ours/mp-pool forkserver", None),
                cpython("pool_startup"),
                procspawn_startup(),
                rayon_startup(),
            ]
            .into_iter()
            .map(two)
            .collect(),
        },
        Workload {
            name: "pool_task_chunk1",
            unit: Unit::NsPerOp,
            impls: [
                raw_chunk1(),
                ours_chunk1(),
                cpython("pool_task_chunk1"),
                procspawn_chunk1(),
                rayon_chunk1(),
            ]
            .into_iter()
            .map(two)
            .collect(),
        },
        Workload {
            name: "pool_map_1m",
            unit: Unit::NsPerOp,
            impls: [
                raw_map(),
                ours_map(),
                cpython("pool_map_1m"),
                procspawn_map(),
                rayon_map(),
            ]
            .into_iter()
            .map(two)
            .collect(),
        },
        Workload {
            name: "pool_cpu16_speedup",
            unit: Unit::Speedup,
            impls: [
                rayon_cpu16(),
                ours_cpu16(),
                cpython("pool_cpu16_speedup"),
                procspawn_cpu16(),
            ]
            .into_iter()
            .map(two)
            .collect(),
        },
    ]
}

/// Issue 15's targets for the pool, checked after the table.
pub fn targets() -> Vec<Target> {
    let ours = "ours/mp-pool";
    vec![
        Target::new(
            "pool_startup",
            ours,
            "raw/2 forks+pipe rtt",
            Bound::AtMost(2.0),
        ),
        Target::absolute("pool_task_chunk1", ours, Bound::AtMost(5_000.0)),
        Target::new(
            "pool_task_chunk1",
            "cpython/Pool",
            ours,
            Bound::AtLeast(7.0),
        ),
        Target::absolute("pool_map_1m", ours, Bound::AtMost(20.0)),
        Target::new(
            "pool_cpu16_speedup",
            ours,
            "rayon/ThreadPool",
            Bound::AtLeast(0.95),
        ),
    ]
}

fn cpython(workload: &str) -> Impl {
    cpython_with("Pool", "pool.py", &[workload])
}

/// An implementation timing `once()` (which returns how long its timed part took), as many
/// times per run as first make up 50 ms; nanoseconds per call.
fn timed_each(
    mut once: impl FnMut() -> Result<Duration, String>,
) -> impl FnMut() -> Result<f64, String> {
    const TARGET: Duration = Duration::from_millis(50);
    let mut count = 0u32;
    move || {
        let mut total = Duration::ZERO;
        let mut done = 0u32;
        while (count == 0 && total < TARGET) || done < count {
            total += once()?;
            done += 1;
        }
        count = done;
        Ok(total.as_nanos() as f64 / f64::from(done))
    }
}

/// An implementation of a per-task workload: `run(n)` does `n` tasks and returns how long
/// that took; `n` is calibrated on the warm-up run. Nanoseconds per task.
fn per_task(name: &str, mut run: impl FnMut(u64) -> Result<Duration, String> + 'static) -> Impl {
    let mut n = 0;
    Impl::new(name, move || {
        per_item(&mut n, 1, &mut run).map(|seconds| seconds * 1e9)
    })
}

/// A fresh pool of ours, its workers forked (as CPython's here, and as the raw floors').
fn ours_pool() -> Result<Pool, String> {
    Pool::builder()
        .processes(WORKERS)
        .method(StartMethod::Fork)
        .build()
        .map_err(|e| format!("Pool: {e}"))
}

/// A fresh process pool of procspawn's.
fn procspawn_pool() -> Result<procspawn::Pool, String> {
    procspawn::Pool::new(WORKERS).map_err(|e| format!("procspawn Pool::new: {e}"))
}

/// A fresh thread pool of rayon's.
fn rayon_pool() -> Result<rayon::ThreadPool, String> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(WORKERS)
        .build()
        .map_err(|e| format!("rayon ThreadPoolBuilder: {e}"))
}

/// Our pool's start-up with `method` (`None`: the default, the forkserver).
fn ours_startup(name: &str, method: Option<StartMethod>) -> Impl {
    Impl::new(
        name,
        timed_each(move || {
            let start = Instant::now();
            let builder = Pool::builder().processes(WORKERS);
            let pool = match method {
                Some(method) => builder.method(method),
                None => builder,
            }
            .build()
            .map_err(|e| format!("Pool: {e}"))?;
            let answer = pool.apply(square, 3).map_err(|e| format!("apply: {e}"))?;
            let took = start.elapsed();
            drop(pool);
            check_nine(answer).map(|()| took)
        }),
    )
}

fn procspawn_startup() -> Impl {
    Impl::new(
        "procspawn/Pool",
        timed_each(|| {
            let start = Instant::now();
            let pool = procspawn_pool()?;
            let answer = pool
                .spawn(3, square)
                .join_timeout(DEADLINE)
                .map_err(|e| format!("procspawn: {e}"))?;
            let took = start.elapsed();
            drop(pool);
            check_nine(answer).map(|()| took)
        }),
    )
}

fn rayon_startup() -> Impl {
    Impl::new(
        "rayon/ThreadPool",
        timed_each(|| {
            let start = Instant::now();
            let pool = rayon_pool()?;
            let answer = pool.install(|| square(black_box(3)));
            let took = start.elapsed();
            drop(pool);
            check_nine(answer).map(|()| took)
        }),
    )
}

fn check_nine(answer: u64) -> Result<(), String> {
    if answer == 9 {
        Ok(())
    } else {
        Err(format!("square(3) came back as {answer}"))
    }
}

fn raw_chunk1() -> Impl {
    let mut region = None;
    per_task("raw/2 forks, word rings", move |n| {
        if region.is_none() {
            region = Some(raw::chunk1_region()?);
        }
        raw::chunk1(region.as_ref().unwrap(), n, sum_of_squares(n))
    })
}

pub(crate) fn ours_chunk1() -> Impl {
    let mut pool = None;
    per_task("ours/mp-pool", move |n| {
        if pool.is_none() {
            pool = Some(ours_pool()?);
        }
        let expected = sum_of_squares(n);
        let start = Instant::now();
        let squares = pool
            .as_ref()
            .unwrap()
            .map_chunked(square, 0..n, 1)
            .map_err(|e| format!("map_chunked: {e}"))?;
        let took = start.elapsed();
        raw::check_sum(wrapping_sum(squares), expected).map(|()| took)
    })
}

fn procspawn_chunk1() -> Impl {
    let mut pool = None;
    per_task("procspawn/Pool", move |n| {
        if pool.is_none() {
            pool = Some(procspawn_pool()?);
        }
        let pool = pool.as_ref().unwrap();
        let expected = sum_of_squares(n);
        let start = Instant::now();
        let mut handles = std::collections::VecDeque::with_capacity(PROCSPAWN_WINDOW);
        let mut sum = 0u64;
        for x in 0..n {
            if handles.len() == PROCSPAWN_WINDOW {
                sum = sum.wrapping_add(procspawn_join(handles.pop_front())?);
            }
            handles.push_back(pool.spawn(x, square));
        }
        while let Some(handle) = handles.pop_front() {
            sum = sum.wrapping_add(procspawn_join(Some(handle))?);
        }
        let took = start.elapsed();
        raw::check_sum(sum, expected).map(|()| took)
    })
}

fn procspawn_join<T>(handle: Option<procspawn::JoinHandle<T>>) -> Result<T, String>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    handle
        .ok_or("no task to join")?
        .join_timeout(DEADLINE)
        .map_err(|e| format!("procspawn: {e}"))
}

fn rayon_chunk1() -> Impl {
    let mut pool = None;
    per_task("rayon/ThreadPool", move |n| {
        if pool.is_none() {
            pool = Some(rayon_pool()?);
        }
        let expected = sum_of_squares(n);
        let start = Instant::now();
        let sum = pool.as_ref().unwrap().install(|| {
            // A range of u64 has no indexed parallel iterator (it may be longer than usize).
            (0..n as usize)
                .into_par_iter()
                .with_max_len(1)
                .map(|x| square(x as u64))
                .reduce(|| 0, u64::wrapping_add)
        });
        let took = start.elapsed();
        raw::check_sum(sum, expected).map(|()| took)
    })
}

/// An implementation of `pool_map_1m`: `run()` maps once and returns how long that took;
/// nanoseconds per item.
fn per_map_item(name: &str, mut run: impl FnMut() -> Result<Duration, String> + 'static) -> Impl {
    Impl::new(name, move || {
        run().map(|took| took.as_nanos() as f64 / MAP_ITEMS as f64)
    })
}

fn map_expected() -> u64 {
    static EXPECTED: OnceLock<u64> = OnceLock::new();
    *EXPECTED.get_or_init(|| sum_of_squares(MAP_ITEMS))
}

fn raw_map() -> Impl {
    let mut region = None;
    per_map_item("raw/2 forks, shared arrays", move || {
        if region.is_none() {
            region = Some(raw::map_region()?);
        }
        raw::map_1m(region.as_ref().unwrap(), map_expected())
    })
}

pub(crate) fn ours_map() -> Impl {
    let mut pool = None;
    per_map_item("ours/mp-pool", move || {
        if pool.is_none() {
            pool = Some(ours_pool()?);
        }
        let start = Instant::now();
        let squares = pool
            .as_ref()
            .unwrap()
            .map(square, 0..MAP_ITEMS)
            .map_err(|e| format!("map: {e}"))?;
        let took = start.elapsed();
        check_map(&squares).map(|()| took)
    })
}

fn square_all(chunk: Vec<u64>) -> Vec<u64> {
    chunk.into_iter().map(square).collect()
}

fn procspawn_map() -> Impl {
    let mut pool = None;
    per_map_item("procspawn/Pool", move || {
        if pool.is_none() {
            pool = Some(procspawn_pool()?);
        }
        let pool = pool.as_ref().unwrap();
        let start = Instant::now();
        let handles: Vec<_> = (0..MAP_ITEMS)
            .step_by(MAP_CHUNK as usize)
            .map(|first| {
                let chunk: Vec<u64> = (first..(first + MAP_CHUNK).min(MAP_ITEMS)).collect();
                pool.spawn(chunk, square_all)
            })
            .collect();
        let mut squares = Vec::with_capacity(MAP_ITEMS as usize);
        for handle in handles {
            squares.extend(procspawn_join(Some(handle))?);
        }
        let took = start.elapsed();
        check_map(&squares).map(|()| took)
    })
}

fn check_map(squares: &[u64]) -> Result<(), String> {
    if squares.len() != MAP_ITEMS as usize {
        return Err(format!("{} answers, not {MAP_ITEMS}", squares.len()));
    }
    raw::check_sum(wrapping_sum(squares.iter().copied()), map_expected())
}

fn rayon_map() -> Impl {
    let mut pool = None;
    per_map_item("rayon/ThreadPool", move || {
        if pool.is_none() {
            pool = Some(rayon_pool()?);
        }
        let start = Instant::now();
        let squares: Vec<u64> = pool
            .as_ref()
            .unwrap()
            .install(|| (0..MAP_ITEMS).into_par_iter().map(square).collect());
        let took = start.elapsed();
        check_map(&squares).map(|()| took)
    })
}

/// An implementation of `pool_cpu16_speedup`: times the tasks run serially here, then
/// `parallel(tasks)` (which returns their results, in order, and how long it took); the
/// results must be the serial run's. Serial time over parallel time.
fn speedup(
    name: &str,
    mut parallel: impl FnMut(&[(u64, u64)]) -> Result<(Vec<u64>, Duration), String> + 'static,
) -> Impl {
    Impl::new(name, move || {
        let tasks = cpu_tasks();
        let start = Instant::now();
        let serial: Vec<u64> = tasks.iter().map(|&task| burn(black_box(task))).collect();
        let serial_time = start.elapsed();
        let (results, parallel_time) = parallel(&tasks)?;
        if results != serial {
            return Err("the pool's results differ from the serial run's".into());
        }
        Ok(serial_time.as_secs_f64() / parallel_time.as_secs_f64())
    })
}

fn rayon_cpu16() -> Impl {
    let mut pool = None;
    speedup("rayon/ThreadPool", move |tasks| {
        if pool.is_none() {
            pool = Some(rayon_pool()?);
        }
        let start = Instant::now();
        let results = pool
            .as_ref()
            .unwrap()
            .install(|| tasks.par_iter().map(|&task| burn(task)).collect());
        Ok((results, start.elapsed()))
    })
}

pub(crate) fn ours_cpu16() -> Impl {
    let mut pool = None;
    speedup("ours/mp-pool", move |tasks| {
        if pool.is_none() {
            pool = Some(ours_pool()?);
        }
        let start = Instant::now();
        let results = pool
            .as_ref()
            .unwrap()
            .map(burn, tasks.iter().copied())
            .map_err(|e| format!("map: {e}"))?;
        Ok((results, start.elapsed()))
    })
}

fn procspawn_cpu16() -> Impl {
    let mut pool = None;
    speedup("procspawn/Pool", move |tasks| {
        if pool.is_none() {
            pool = Some(procspawn_pool()?);
        }
        let pool = pool.as_ref().unwrap();
        let start = Instant::now();
        let handles: Vec<_> = tasks.iter().map(|&task| pool.spawn(task, burn)).collect();
        let results = handles
            .into_iter()
            .map(|handle| procspawn_join(Some(handle)))
            .collect::<Result<_, _>>()?;
        Ok((results, start.elapsed()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_startup_answers_square_of_three() {
        assert!(raw::startup().is_ok());
    }

    #[test]
    fn raw_chunk1_answers_every_task_and_fails_on_a_wrong_sum() {
        let region = raw::chunk1_region().unwrap();
        let n = 10_000;
        assert!(raw::chunk1(&region, n, sum_of_squares(n)).is_ok());
        let wrong = raw::chunk1(&region, n, sum_of_squares(n) + 1).unwrap_err();
        assert!(wrong.contains("lost or garbled"), "{wrong}");
    }

    #[test]
    fn raw_map_squares_every_item_and_fails_on_a_wrong_sum() {
        let region = raw::map_region().unwrap();
        assert!(raw::map_1m(&region, map_expected()).is_ok());
        let wrong = raw::map_1m(&region, map_expected() ^ 1).unwrap_err();
        assert!(wrong.contains("lost or garbled"), "{wrong}");
    }

    #[test]
    fn burn_depends_on_its_seed_and_its_rounds() {
        assert_ne!(burn((1, 1000)), burn((2, 1000)));
        assert_ne!(burn((1, 1000)), burn((1, 1001)));
        assert_eq!(burn((1, 1000)), burn((1, 1000)));
    }
}
