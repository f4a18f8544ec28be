//! Criterion benches of queues between threads: `put` while a thread drains (1→1 8-byte
//! items), a round trip over two queues to an echoing thread, and a `put` and a `get` in
//! turn by one thread (where each get finds the one item just put). `cargo xtask bench queue`
//! runs the same workloads between processes, side by side with a raw shared-memory ring,
//! CPython, ipc-channel and crossbeam-channel.

use std::{hint::black_box, thread};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use multiprocessing::Queue;

/// Tells the draining or echoing thread to stop.
const STOP: u64 = u64::MAX;

fn queues(c: &mut Criterion) {
    let alone = Queue::<u64>::new().unwrap();
    c.bench_function("queue_put_get_8b/one thread", |b| {
        b.iter(|| {
            alone.put(black_box(7)).unwrap();
            black_box(alone.get().unwrap())
        })
    });

    let q = Queue::<u64>::new().unwrap();
    let drain = {
        let q = q.clone();
        thread::spawn(move || while q.get().unwrap() != STOP {})
    };
    let mut group = c.benchmark_group("queue_1to1_8b");
    group.throughput(Throughput::Elements(1));
    group.bench_function("thread", |b| b.iter(|| q.put(black_box(7)).unwrap()));
    group.finish();
    q.put(STOP).unwrap();
    drain.join().unwrap();

    let (ping, pong) = (Queue::<u64>::new().unwrap(), Queue::<u64>::new().unwrap());
    let echo = {
        let (ping, pong) = (ping.clone(), pong.clone());
        thread::spawn(move || {
            loop {
                let item = ping.get().unwrap();
                pong.put(item).unwrap();
                if item == STOP {
                    return;
                }
            }
        })
    };
    c.bench_function("queue_rtt_8b/thread", |b| {
        b.iter(|| {
            ping.put(black_box(7)).unwrap();
            black_box(pong.get().unwrap())
        })
    });
    ping.put(STOP).unwrap();
    assert_eq!(pong.get().unwrap(), STOP);
    echo.join().unwrap();
}

criterion_group!(benches, queues);
criterion_main!(benches);
