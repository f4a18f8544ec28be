//! `Array` and `RawArray` slice operations against a `Vec` model: the same operations, the
//! same results, the same errors, and a second mapping (as another process gets) agrees.

use mp_shm::{Array, RawArray};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Set(usize, i64),
    Get(usize),
    Write(usize, Vec<i64>),
    Read(usize, usize),
    Guard(usize, i64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..40usize, any::<i64>()).prop_map(|(i, v)| Op::Set(i, v)),
        (0..40usize).prop_map(Op::Get),
        (0..40usize, prop::collection::vec(any::<i64>(), 0..20)).prop_map(|(s, v)| Op::Write(s, v)),
        (0..40usize, 0..20usize).prop_map(|(s, n)| Op::Read(s, n)),
        (0..40usize, any::<i64>()).prop_map(|(i, v)| Op::Guard(i, v)),
    ]
}

fn in_range(start: usize, count: usize, len: usize) -> bool {
    start + count <= len
}

proptest! {
    #[test]
    fn array_matches_a_vec(len in 0..32usize, ops in prop::collection::vec(op(), 0..60)) {
        let array = Array::<i64>::new(len).unwrap();
        let other: Array<i64> = mp_codec::Frame::encode(&array).unwrap().decode().unwrap();
        let mut model = vec![0i64; len];
        for op in ops {
            match op {
                Op::Set(i, v) => {
                    prop_assert_eq!(array.set(i, v).is_ok(), i < len);
                    if i < len { model[i] = v; }
                }
                Op::Get(i) => prop_assert_eq!(other.get(i), model.get(i).copied()),
                Op::Write(s, v) => {
                    let ok = in_range(s, v.len(), len);
                    prop_assert_eq!(other.write_from(s, &v).is_ok(), ok);
                    if ok { model[s..s + v.len()].copy_from_slice(&v); }
                }
                Op::Read(s, n) => {
                    let mut out = vec![7i64; n];
                    let ok = in_range(s, n, len);
                    prop_assert_eq!(array.read_into(s, &mut out).is_ok(), ok);
                    if ok { prop_assert_eq!(&out[..], &model[s..s + n]); }
                    else { prop_assert!(out.iter().all(|&x| x == 7), "untouched on error"); }
                }
                Op::Guard(i, v) => {
                    let mut guard = array.lock().unwrap();
                    prop_assert_eq!(&guard[..], &model[..]);
                    if let Some(x) = guard.get_mut(i) { *x = v; model[i] = v; }
                }
            }
        }
        prop_assert_eq!(other.to_vec(), model);
    }

    #[test]
    fn raw_array_matches_a_vec(len in 0..32usize, ops in prop::collection::vec(op(), 0..60)) {
        let array = RawArray::<i64>::new(len).unwrap();
        let other: RawArray<i64> = mp_codec::Frame::encode(&array).unwrap().decode().unwrap();
        let mut model = vec![0i64; len];
        for op in ops {
            match op {
                Op::Set(i, v) | Op::Guard(i, v) => {
                    prop_assert_eq!(array.set(i, v).is_ok(), i < len);
                    if i < len { model[i] = v; }
                }
                Op::Get(i) => prop_assert_eq!(other.get(i), model.get(i).copied()),
                Op::Write(s, v) => {
                    let ok = in_range(s, v.len(), len);
                    prop_assert_eq!(other.write_from(s, &v).is_ok(), ok);
                    if ok { model[s..s + v.len()].copy_from_slice(&v); }
                }
                Op::Read(s, n) => {
                    let mut out = vec![7i64; n];
                    let ok = in_range(s, n, len);
                    prop_assert_eq!(array.read_into(s, &mut out).is_ok(), ok);
                    if ok { prop_assert_eq!(&out[..], &model[s..s + n]); }
                }
            }
        }
        prop_assert_eq!(other.to_vec(), model);
    }
}
