//! Raw copies in and out of shared memory: this crate's pointer work, in one place.
//!
//! Two kinds of copies: plain ones for memory the caller's lock protects (`Value`, `Array`),
//! and racy ones, atomic byte by byte, for memory anyone may write at any time (`RawValue`,
//! `RawArray`). Every `T` here is `FromBytes`, so a torn copy is still a valid `T`.
//! (`SharedMemory` copies with `pread`/`pwrite` instead: a named segment can be shrunk
//! under its mapping, which these regions, sealed against resizing, cannot.)

use std::{
    ptr::NonNull,
    sync::atomic::{AtomicU8, Ordering},
};

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

/// Copies `out.len()` bytes from shared memory that other threads or processes may write at
/// the same time: byte by byte with relaxed atomic loads, so a race tears the copy but is
/// never undefined behaviour.
///
/// # Safety
/// `src` points to `out.len()` mapped bytes.
pub(crate) unsafe fn racy_copy_out(src: *const u8, out: &mut [u8]) {
    for (i, byte) in out.iter_mut().enumerate() {
        // SAFETY: in range of the mapping (the caller's promise); `AtomicU8` has the size and
        // alignment of `u8`, and every access to racy memory goes through atomics like this.
        *byte = unsafe { AtomicU8::from_ptr(src.add(i).cast_mut()) }.load(Ordering::Relaxed);
    }
}

/// Copies `src` into shared memory that others may read or write at the same time, with
/// relaxed atomic byte stores.
///
/// # Safety
/// `dst` points to `src.len()` mapped, writable bytes.
pub(crate) unsafe fn racy_copy_in(dst: *mut u8, src: &[u8]) {
    for (i, &byte) in src.iter().enumerate() {
        // SAFETY: as in `racy_copy_out`.
        unsafe { AtomicU8::from_ptr(dst.add(i)) }.store(byte, Ordering::Relaxed);
    }
}
