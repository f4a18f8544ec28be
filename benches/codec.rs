//! Criterion benches of the codec: our `Encode`/`Decode` against bare postcard on the same
//! values. `cargo xtask bench codec` runs the same workloads side by side in one table.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use multiprocessing::codec::{Decode, Encode, Frame};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
struct Small {
    id: u64,
    name: String,
    scores: [u32; 4],
    done: bool,
}

fn small() -> Small {
    Small {
        id: 1234567,
        name: "worker-7".into(),
        scores: [1, 20, 300, 4000],
        done: false,
    }
}

fn round_trip<T>(c: &mut Criterion, name: &str, value: T, bytes: u64)
where
    T: Serialize + for<'de> Deserialize<'de> + Encode + Decode,
{
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Bytes(bytes));
    let mut frame = Frame::new();
    group.bench_function("ours", |b| {
        b.iter(|| {
            frame.clear();
            black_box(&value).encode(&mut frame).unwrap();
            black_box(T::decode(&mut frame).unwrap())
        })
    });
    let mut buf = Vec::new();
    group.bench_function("postcard", |b| {
        b.iter(|| {
            buf.clear();
            postcard::to_io(black_box(&value), &mut buf).unwrap();
            black_box(postcard::from_bytes::<T>(&buf).unwrap())
        })
    });
    group.finish();
}

fn codec(c: &mut Criterion) {
    round_trip(c, "codec_u64", 0x1234_5678_9abc_u64, 8);
    round_trip(c, "codec_small_struct", small(), 32);
    round_trip(c, "codec_64kib", vec![7u8; 64 << 10], 64 << 10);
}

criterion_group!(benches, codec);
criterion_main!(benches);
