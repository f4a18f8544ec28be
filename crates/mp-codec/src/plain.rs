//! Runs of plain numbers: values of a primitive number type crossing as their native bytes.
//!
//! A `u64` encoded as a [`Message`](crate::Message) is a postcard varint, written and read
//! by a call per value: about 5 ns each way on our machines, which is most of the cost of a
//! pool's `map` over a million numbers. Between two processes of the same executable (a
//! pool and its workers, whose [`TargetId`]s check exactly that) a run of such values can
//! cross as its bytes instead, at the cost of a copy.
//!
//! The plain types are the primitive integers and floats (`u8` … `u128`, `usize`, `i8` …
//! `i128`, `isize`, `f32`, `f64`): every pattern of their bytes is a value, so reading them
//! needs no check but the length. `bool` and `char` are not (most patterns are invalid),
//! nor is anything else: those take the [`Message`](crate::Message) encoding.
//!
//! The bytes are native-endian: a run is only for a process of the same executable on the
//! same machine, never for a file or another host.
//!
//! [`TargetId`]: https://docs.rs/mp-spawn
//!
//! ```
//! use mp_codec::plain;
//!
//! assert_eq!(plain::size_of::<u64>(), Some(8));
//! assert_eq!(plain::size_of::<String>(), None);
//!
//! let mut run = Vec::new();
//! for x in [3u64, 1, 4] {
//!     plain::put(&x, &mut run);
//! }
//! let back: Vec<u64> = run.chunks_exact(8).map(|b| plain::take(b).unwrap()).collect();
//! assert_eq!(back, [3, 1, 4]);
//! ```

use std::any::{Any, TypeId};

/// Calls `$m!` with the list of plain types.
macro_rules! with_plain_types {
    ($m:ident) => {
        $m!(u8 u16 u32 u64 u128 usize i8 i16 i32 i64 i128 isize f32 f64)
    };
}

/// The size of a `T` in a run, if `T` is a plain type; `None` otherwise.
///
/// ```
/// assert_eq!(mp_codec::plain::size_of::<f32>(), Some(4));
/// assert_eq!(mp_codec::plain::size_of::<bool>(), None);
/// ```
#[inline]
pub fn size_of<T: 'static>() -> Option<usize> {
    let id = TypeId::of::<T>();
    macro_rules! find {
        ($($t:ty)*) => {
            $(if id == TypeId::of::<$t>() {
                return Some(std::mem::size_of::<$t>());
            })*
        };
    }
    with_plain_types!(find);
    None
}

/// Appends `value`'s bytes to `out`, and returns `true`, if `T` is a plain type; leaves
/// `out` alone and returns `false` otherwise.
///
/// ```
/// let mut out = Vec::new();
/// assert!(mp_codec::plain::put(&1.5f64, &mut out));
/// assert_eq!(out, 1.5f64.to_ne_bytes());
/// assert!(!mp_codec::plain::put(&"text", &mut out));
/// ```
#[inline(always)]
pub fn put<T: 'static>(value: &T, out: &mut Vec<u8>) -> bool {
    // The type's check is decided when `put` is compiled for `T`: what is left is a store.
    let value = value as &dyn Any;
    macro_rules! put {
        ($($t:ty)*) => {
            $(if let Some(v) = value.downcast_ref::<$t>() {
                out.extend_from_slice(&v.to_ne_bytes());
                return true;
            })*
        };
    }
    with_plain_types!(put);
    false
}

/// The `T` whose bytes are `bytes`, if `T` is a plain type and `bytes` are exactly its size;
/// `None` otherwise.
///
/// ```
/// let bytes = 7u32.to_ne_bytes();
/// assert_eq!(mp_codec::plain::take::<u32>(&bytes), Some(7));
/// assert_eq!(mp_codec::plain::take::<u64>(&bytes), None); // too short for a u64
/// assert_eq!(mp_codec::plain::take::<String>(&bytes), None);
/// ```
#[inline(always)]
pub fn take<T: 'static>(bytes: &[u8]) -> Option<T> {
    let mut slot: Option<T> = None;
    let any = &mut slot as &mut dyn Any;
    macro_rules! take {
        ($($t:ty)*) => {
            $(if let Some(slot) = any.downcast_mut::<Option<$t>>() {
                *slot = Some(<$t>::from_ne_bytes(bytes.try_into().ok()?));
            } else)* {}
        };
    }
    with_plain_types!(take);
    slot
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip<T: 'static + Copy + PartialEq + std::fmt::Debug>(value: T) {
        let mut out = Vec::new();
        assert!(put(&value, &mut out));
        assert_eq!(Some(out.len()), size_of::<T>());
        assert_eq!(take::<T>(&out), Some(value));
        assert_eq!(take::<T>(&out[1..]), None);
        let mut longer = out.clone();
        longer.push(0);
        assert_eq!(take::<T>(&longer), None);
    }

    proptest! {
        #[test]
        fn every_plain_type_round_trips(a in any::<u8>(), b in any::<u16>(), c in any::<u32>(),
            d in any::<u64>(), e in any::<u128>(), f in any::<usize>(), g in any::<i8>(),
            h in any::<i16>(), i in any::<i32>(), j in any::<i64>(), k in any::<i128>(),
            l in any::<isize>(), m in any::<f32>(), n in any::<f64>()) {
            round_trip(a); round_trip(b); round_trip(c); round_trip(d); round_trip(e);
            round_trip(f); round_trip(g); round_trip(h); round_trip(i); round_trip(j);
            round_trip(k); round_trip(l);
            // Floats by their bits (a NaN is not equal to itself).
            let mut out = Vec::new();
            prop_assert!(put(&m, &mut out) && put(&n, &mut out));
            prop_assert_eq!(take::<f32>(&out[..4]).map(f32::to_bits), Some(m.to_bits()));
            prop_assert_eq!(take::<f64>(&out[4..]).map(f64::to_bits), Some(n.to_bits()));
        }

        #[test]
        fn any_bytes_of_the_size_are_a_value(bytes in proptest::collection::vec(any::<u8>(), 16)) {
            prop_assert!(take::<u128>(&bytes).is_some());
            prop_assert!(take::<f64>(&bytes[..8]).is_some());
            prop_assert!(take::<i16>(&bytes[..2]).is_some());
        }
    }

    #[test]
    fn other_types_are_not_plain() {
        let mut out = Vec::new();
        assert_eq!(size_of::<bool>(), None);
        assert_eq!(size_of::<char>(), None);
        assert_eq!(size_of::<(u64, u64)>(), None);
        assert_eq!(size_of::<[u8; 8]>(), None);
        assert!(!put(&true, &mut out));
        assert!(!put(&String::from("x"), &mut out));
        assert!(out.is_empty());
        assert_eq!(take::<bool>(&[1]), None);
        assert_eq!(take::<char>(&[0x41, 0, 0, 0]), None);
    }
}
