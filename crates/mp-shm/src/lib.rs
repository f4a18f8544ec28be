//! Typed shared memory between processes: Python's `Value`, `Array`, `RawValue`,
//! `RawArray` (`multiprocessing.sharedctypes`) and `SharedMemory`
//! (`multiprocessing.shared_memory`).
//!
//! Values and arrays live in anonymous regions (`memfd_create` + `mmap(MAP_SHARED)`, see
//! [`mp_sync::Region`]): nothing names them in the filesystem, so nothing leaks, even when
//! every process is killed with SIGKILL. Each region starts with a header (magic, version,
//! layout, type fingerprint) checked when another process attaches. Element types are plain
//! data ([`Plain`]: zerocopy's `FromBytes + IntoBytes + Immutable + KnownLayout`). Every
//! handle is a `Message`: a fork inherits it, a pipe carries it (as a descriptor), and all
//! copies see the same memory.
//!
//! ```
//! let total = mp_shm::Value::new(0u64)?;
//! let data = mp_shm::Array::from_slice(&[1u64, 2, 3])?;
//! total.set(data.lock().expect("nobody died").iter().sum());
//! assert_eq!(total.get(), 6);
//! # Ok::<(), mp_shm::Error>(())
//! ```
#![deny(missing_docs)]

mod array;
mod error;
mod mem;
mod named;
mod sys;
mod value;

pub use crate::{
    array::{Array, ArrayGuard, RawArray},
    error::{Error, Result},
    named::SharedMemory,
    value::{Integer, RawValue, Value, ValueGuard},
};

/// Plain data that can live in shared memory: any bytes are a valid value, and it has no
/// padding, pointers or interior mutability (zerocopy's derives check this for your types).
pub trait Plain:
    zerocopy::FromBytes + zerocopy::IntoBytes + zerocopy::Immutable + zerocopy::KnownLayout + Sized
{
}

impl<T> Plain for T where
    T: zerocopy::FromBytes + zerocopy::IntoBytes + zerocopy::Immutable + zerocopy::KnownLayout
{
}
