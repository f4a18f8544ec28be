//! `imap_unordered` over a few hundred CPU-bound tasks with a progress bar, then the wall
//! time against the same work done serially in this process.
//!
//! `cargo run --release --example progress`

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use multiprocessing::{Pool, cpu_count};

/// A CPU-bound task: the number of primes below `limit` (by trial division, on purpose).
fn count_primes(limit: u64) -> u64 {
    (2..limit)
        .filter(|&n| (2..).take_while(|d| d * d <= n).all(|d| n % d != 0))
        .count() as u64
}

fn main() -> Result<(), multiprocessing::Error> {
    let tasks: Vec<u64> = (0..300).map(|i| 80_000 + 97 * i).collect();

    let bar = ProgressBar::new(tasks.len() as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} tasks, {elapsed_precise}")
            .expect("a valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    let pool = Pool::new(cpu_count())?;
    let start = Instant::now();
    let mut parallel_total = 0;
    for primes in pool.imap_unordered(count_primes, tasks.iter().copied())? {
        parallel_total += primes?;
        bar.inc(1);
    }
    let parallel = start.elapsed();
    bar.finish();

    let start = Instant::now();
    let serial_total: u64 = tasks.iter().map(|&limit| count_primes(limit)).sum();
    let serial = start.elapsed();

    assert_eq!(parallel_total, serial_total);
    println!(
        "{} tasks: {:.2} s on a pool of {} processes, {:.2} s serially here ({:.2}x)",
        tasks.len(),
        parallel.as_secs_f64(),
        pool.processes(),
        serial.as_secs_f64(),
        serial.as_secs_f64() / parallel.as_secs_f64()
    );
    Ok(())
}
