//! The MPI workloads of `cargo xtask bench mpi`, the same jobs as `mp-pool`'s and as
//! `benches/python/mpi.py`'s (mpi4py), run under `mpirun -n 3` (rank 0 and two workers):
//!
//! - `mpi_task_chunk1`: ns per task of `map_chunked(square, 0..n, 1)`;
//! - `mpi_map_1m`: ns per item of `map(square, 0..1_000_000)` (default chunks);
//! - `mpi_cpu16_speedup`: serial time over pool time of 16 CPU-bound tasks of about 20 ms.
//!
//! Rank 0 prints the one number; every result is checked first.

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use mp_mpi::MpiPool;

fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

/// `iterations` rounds of xorshift64 from `seed` (as `burn` in the pool benchmark).
fn burn((seed, iterations): (u64, u64)) -> u64 {
    let mut x = seed | 1;
    for _ in 0..iterations {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    x
}

fn sum_of_squares(n: u64) -> u64 {
    (0..n).fold(0, |sum, x| sum.wrapping_add(square(x)))
}

fn wrapping_sum(values: &[u64]) -> u64 {
    values.iter().fold(0, |sum, &x| sum.wrapping_add(x))
}

/// Nanoseconds per operation of `batch(n)`, doubling `n` until a batch takes 100 ms.
fn measure(mut batch: impl FnMut(u64)) -> f64 {
    let mut n = 1;
    loop {
        let start = Instant::now();
        batch(n);
        let took = start.elapsed();
        if took >= Duration::from_millis(100) {
            return took.as_nanos() as f64 / n as f64;
        }
        n *= 2;
    }
}

fn main() {
    let workload = std::env::args().nth(1).unwrap_or_default();
    let pool = MpiPool::world().expect("a pool (run under mpirun -n 3)");
    let value = match workload.as_str() {
        "mpi_task_chunk1" => {
            pool.map_chunked(square, 0..100u64, 1).unwrap(); // warm-up
            measure(|n| {
                let squares = pool.map_chunked(square, 0..n, 1).unwrap();
                assert_eq!(wrapping_sum(&squares), sum_of_squares(n));
            })
        }
        "mpi_map_1m" => {
            let n = 1_000_000u64;
            pool.map(square, 0..1000u64).unwrap(); // warm-up
            let start = Instant::now();
            let squares = pool.map(square, 0..n).unwrap();
            let took = start.elapsed();
            assert_eq!(squares.len() as u64, n);
            assert_eq!(wrapping_sum(&squares), sum_of_squares(n));
            took.as_nanos() as f64 / n as f64
        }
        "mpi_cpu16_speedup" => {
            let mut iterations = 1u64 << 16;
            loop {
                let start = Instant::now();
                black_box(burn(black_box((1, iterations))));
                let took = start.elapsed();
                if took >= Duration::from_millis(5) {
                    iterations = (iterations as f64 * 0.020 / took.as_secs_f64()) as u64;
                    break;
                }
                iterations *= 2;
            }
            let tasks: Vec<(u64, u64)> = (0..16).map(|seed| (seed, iterations)).collect();
            pool.map(square, 0..10u64).unwrap(); // warm-up: the workers are running
            let start = Instant::now();
            let serial: Vec<u64> = tasks.iter().map(|&t| burn(black_box(t))).collect();
            let serial_time = start.elapsed();
            let start = Instant::now();
            let parallel = pool.map(burn, tasks).unwrap();
            let parallel_time = start.elapsed();
            assert_eq!(parallel, serial);
            serial_time.as_secs_f64() / parallel_time.as_secs_f64()
        }
        other => {
            panic!("unknown workload {other:?}: mpi_task_chunk1, mpi_map_1m, mpi_cpu16_speedup")
        }
    };
    println!("{value}");
}
