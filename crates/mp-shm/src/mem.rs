//! Raw copies in and out of shared memory: this crate's pointer work, in one place.
//!
//! Memory another process may write at the same time is outside what Rust's aliasing rules
//! can describe; these helpers copy bytes (never hand out references), and every `T` here is
//! `FromBytes`, so a copy torn by a concurrent writer is still a valid `T`.

use std::ptr::NonNull;

use crate::Plain;

/// Copies `out.len()` elements starting at `src` into `out`.
///
/// # Safety
/// `src` points to `out.len()` mapped, aligned `T`s.
pub(crate) unsafe fn copy_out<T: Plain>(src: NonNull<T>, out: &mut [T]) {
    // SAFETY: the caller guarantees the source; `out` is a distinct Rust allocation, and any
    // bytes are a valid `T`.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), out.as_mut_ptr(), out.len()) };
}

/// Copies `src` to `dst`.
///
/// # Safety
/// `dst` points to `src.len()` mapped, aligned, writable `T`s.
pub(crate) unsafe fn copy_in<T: Plain>(dst: NonNull<T>, src: &[T]) {
    // SAFETY: as the caller guarantees; `src` is a distinct Rust allocation.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_ptr(), src.len()) };
}

/// Reads one `T`.
///
/// # Safety
/// `src` points to a mapped, aligned `T`.
pub(crate) unsafe fn read<T: Plain>(src: NonNull<T>) -> T {
    // SAFETY: as the caller guarantees; volatile so each call really reads the shared
    // memory, and any bytes are a valid `T`.
    unsafe { src.as_ptr().read_volatile() }
}

/// Writes one `T`.
///
/// # Safety
/// `dst` points to a mapped, aligned, writable `T`.
pub(crate) unsafe fn write<T: Plain>(dst: NonNull<T>, value: T) {
    // SAFETY: as the caller guarantees; the old value is overwritten without being dropped,
    // which is always safe.
    unsafe { dst.as_ptr().write_volatile(value) };
}

/// A `Vec` of `len` elements copied from `src`.
///
/// # Safety
/// As [`copy_out`].
pub(crate) unsafe fn to_vec<T: Plain>(src: NonNull<T>, len: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(len);
    // SAFETY: the capacity is `len`; the caller guarantees the source; once copied, every
    // element is initialized (any bytes are a valid `T`).
    unsafe {
        std::ptr::copy_nonoverlapping(src.as_ptr(), out.as_mut_ptr(), len);
        out.set_len(len);
    }
    out
}
