//! Criterion benches of connections: a round trip of a small message to an echoing thread,
//! 1 MiB messages one way, and a small message sent and received in turn by one thread. `cargo xtask bench pipe` compares the same workloads across
//! processes with the raw syscalls, CPython and ipc-channel.

use std::{hint::black_box, thread};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use multiprocessing::{Connection, pipe};

/// Echoes every message until the other end closes.
fn echo(conn: Connection) {
    while let Ok(message) = conn.recv_bytes() {
        if conn.send_bytes(&message).is_err() {
            return;
        }
    }
}

fn pipes(c: &mut Criterion) {
    let (ours, theirs) = pipe(true).unwrap();
    let echoer = thread::spawn(move || echo(theirs));
    c.bench_function("pipe_rtt_8b/thread", |b| {
        b.iter(|| {
            ours.send_bytes(black_box(&[7u8; 8])).unwrap();
            black_box(ours.recv_bytes().unwrap())
        })
    });
    drop(ours);
    echoer.join().unwrap();

    let (reader, writer) = pipe(true).unwrap();
    let sink = thread::spawn(move || while reader.recv_bytes().is_ok() {});
    let message = vec![7u8; 1 << 20];
    let mut group = c.benchmark_group("pipe_1mib");
    group.throughput(Throughput::Bytes(message.len() as u64));
    group.bench_function("thread", |b| {
        b.iter(|| writer.send_bytes(&message).unwrap())
    });
    group.finish();
    drop(writer);
    sink.join().unwrap();

    let (a, b) = pipe(true).unwrap();
    c.bench_function("pipe_send_recv_8b/one thread", |bench| {
        bench.iter(|| {
            a.send_bytes(black_box(&[7u8; 8])).unwrap();
            black_box(b.recv_bytes().unwrap())
        })
    });
}

criterion_group!(benches, pipes);
criterion_main!(benches);
