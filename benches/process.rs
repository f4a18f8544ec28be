//! Criterion benches of starting and joining a process that does nothing, per start method.
//! `cargo xtask bench spawn` compares the same with raw fork/exec, procspawn and CPython.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use multiprocessing::{Process, StartMethod};

fn noop(_: ()) {}

fn start_join(c: &mut Criterion) {
    let mut group = c.benchmark_group("spawn_join");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(3));
    for method in [
        StartMethod::Fork,
        StartMethod::Forkserver,
        StartMethod::Spawn,
    ] {
        group.bench_function(format!("{method:?}").to_lowercase(), |b| {
            b.iter(|| {
                Process::new(noop, ())
                    .method(method)
                    .start()
                    .unwrap()
                    .join()
                    .unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, start_join);
criterion_main!(benches);
