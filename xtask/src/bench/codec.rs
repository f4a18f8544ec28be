//! Codec workloads: an encode + decode round trip through our `Encode`/`Decode` and through
//! bare postcard on the same value and a reused buffer; CPython's pickle for scale.

use std::hint::black_box;

use mp_codec::{Bytes, Decode, Encode, Frame, Pod};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::{Impl, Unit, Workload, cpython, time_per_op};

#[derive(Serialize, Deserialize, Clone)]
struct Small {
    id: u64,
    name: String,
    scores: [u32; 4],
    done: bool,
}

pub fn workloads() -> Vec<Workload> {
    let small = Small {
        id: 1234567,
        name: "worker-7".into(),
        scores: [1, 20, 300, 4000],
        done: false,
    };
    let mut u64_rows = round_trip("codec_u64", 0x1234_5678_9abc_u64);
    u64_rows
        .impls
        .insert(2, raw_path("ours/mp-codec Pod", Pod(0x1234_5678_9abc_u64)));
    let mut bytes_rows = round_trip("codec_64kib", vec![7u8; 64 << 10]);
    bytes_rows.impls.insert(
        2,
        raw_path("ours/mp-codec Bytes", Bytes(vec![7u8; 64 << 10])),
    );
    vec![
        u64_rows,
        round_trip("codec_small_struct", small),
        bytes_rows,
    ]
}

/// The same round trip through one of the paths that skip serde: `Pod` or `Bytes`.
fn raw_path<T: Encode + Decode + 'static>(name: &str, value: T) -> Impl {
    let (mut frame, mut iters) = (Frame::new(), 0);
    Impl::new(name, move || {
        Ok(time_per_op(&mut iters, || {
            frame.clear();
            black_box(&value).encode(&mut frame).unwrap();
            black_box(T::decode(&mut frame).unwrap());
        }))
    })
}

fn round_trip<T>(name: &'static str, value: T) -> Workload
where
    T: Serialize + DeserializeOwned + Clone + 'static,
{
    let bare = value.clone();
    let (mut buf, mut bare_iters) = (Vec::new(), 0);
    let (mut frame, mut our_iters) = (Frame::new(), 0);
    Workload {
        name,
        unit: Unit::NsPerOp,
        impls: vec![
            Impl::new("postcard/", move || {
                Ok(time_per_op(&mut bare_iters, || {
                    buf.clear();
                    postcard::to_io(black_box(&bare), &mut buf).unwrap();
                    black_box(postcard::from_bytes::<T>(&buf).unwrap());
                }))
            }),
            Impl::new("ours/mp-codec", move || {
                Ok(time_per_op(&mut our_iters, || {
                    frame.clear();
                    black_box(&value).encode(&mut frame).unwrap();
                    black_box(T::decode(&mut frame).unwrap());
                }))
            }),
            cpython("pickle", "codec.py", name),
        ],
    }
}
