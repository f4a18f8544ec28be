//! The only `unsafe` of `mp-queue`: views of the shared ring's bytes, and copies in and out
//! of memory that other processes may write at any moment.
//!
//! # Safety
//! Every process that maps a queue's region can write any byte of it at any time, hostile or
//! buggy ones included. So nothing here forms a `&[u8]` or `&mut` into the ring: words are
//! read and written through atomics, and payload bytes are copied with relaxed atomic
//! loads and stores, word by word. A race then tears a copy, which the codec rejects or
//! accepts as some value, but it is never undefined behaviour.

use std::{
    ptr::NonNull,
    sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering},
    time::Duration,
};

use rustix::{io::Errno, thread::futex};

/// `len` bytes of shared memory starting at an 8-aligned address, mapped for as long as the
/// value lives (its owner keeps the mapping).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bytes {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: a view of shared memory that is only ever accessed through atomics (see the module
// docs); it is as shareable between threads as between processes.
unsafe impl Send for Bytes {}
// SAFETY: as above.
unsafe impl Sync for Bytes {}

impl Bytes {
    /// A view of `len` bytes at `base`.
    ///
    /// # Safety
    /// `base` is 8-aligned and `len` bytes from it stay mapped, readable and writable while
    /// the view (or any copy of it) is used.
    pub(crate) unsafe fn new(base: NonNull<u8>, len: usize) -> Bytes {
        debug_assert!((base.as_ptr() as usize).is_multiple_of(8));
        Bytes { base, len }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The 4-byte word at `offset`.
    ///
    /// # Panics
    /// If the word is not 4-aligned or not inside the view (a caller's bug, never a peer's
    /// bytes: offsets are checked before they get here).
    pub(crate) fn u32_at(&self, offset: usize) -> &AtomicU32 {
        assert!(offset.is_multiple_of(4) && offset.checked_add(4).is_some_and(|e| e <= self.len));
        // SAFETY: in bounds and aligned (checked above; the base is 8-aligned); every access
        // to shared words is atomic, and any bits are a valid `AtomicU32`.
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(offset).cast()) }
    }

    /// The 8-byte word at `offset`.
    ///
    /// # Panics
    /// As [`Bytes::u32_at`].
    pub(crate) fn u64_at(&self, offset: usize) -> &AtomicU64 {
        assert!(offset.is_multiple_of(8) && offset.checked_add(8).is_some_and(|e| e <= self.len));
        // SAFETY: as in `u32_at`.
        unsafe { AtomicU64::from_ptr(self.base.as_ptr().add(offset).cast()) }
    }

    /// Copies `out.len()` bytes from `offset` (8-aligned) into `out`.
    ///
    /// # Panics
    /// If the range is not inside the view, or `offset` is not 8-aligned.
    pub(crate) fn copy_out(&self, offset: usize, out: &mut [u8]) {
        assert!(
            offset.is_multiple_of(8)
                && offset.checked_add(out.len()).is_some_and(|e| e <= self.len)
        );
        let mut words = out.chunks_exact_mut(8);
        let mut at = offset;
        for chunk in &mut words {
            let word = self.u64_at(at).load(Ordering::Relaxed);
            chunk.copy_from_slice(&word.to_ne_bytes());
            at += 8;
        }
        for byte in words.into_remainder() {
            *byte = self.u8_at(at).load(Ordering::Relaxed);
            at += 1;
        }
    }

    /// Copies `src` to `offset` (8-aligned).
    ///
    /// # Panics
    /// As [`Bytes::copy_out`].
    pub(crate) fn copy_in(&self, offset: usize, src: &[u8]) {
        assert!(
            offset.is_multiple_of(8)
                && offset.checked_add(src.len()).is_some_and(|e| e <= self.len)
        );
        let mut words = src.chunks_exact(8);
        let mut at = offset;
        for chunk in &mut words {
            let word = u64::from_ne_bytes(chunk.try_into().expect("8 bytes"));
            self.u64_at(at).store(word, Ordering::Relaxed);
            at += 8;
        }
        for &byte in words.remainder() {
            self.u8_at(at).store(byte, Ordering::Relaxed);
            at += 1;
        }
    }

    fn u8_at(&self, offset: usize) -> &AtomicU8 {
        assert!(offset < self.len);
        // SAFETY: in bounds (checked); `AtomicU8` has `u8`'s size and alignment.
        unsafe { AtomicU8::from_ptr(self.base.as_ptr().add(offset)) }
    }
}

/// Sleeps while `*word == expected`, for at most `timeout` (`None`: until woken). The word is
/// in memory shared with other processes, so the wait is not `PRIVATE`. Any return means
/// "look again". See [futex(2)](https://man7.org/linux/man-pages/man2/futex.2.html).
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let spec = timeout.map(|t| rustix::time::Timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(t.subsec_nanos()),
    });
    match futex::wait(word, futex::Flags::empty(), expected, spec.as_ref()) {
        Ok(()) | Err(Errno::AGAIN | Errno::INTR | Errno::TIMEDOUT) => {}
        // Cannot happen for a mapped, aligned word; a short sleep keeps deadlines honest.
        Err(_) => std::thread::sleep(Duration::from_micros(100)),
    }
}

/// Wakes every waiter sleeping on `word`, in any process.
pub(crate) fn futex_wake_all(word: &AtomicU32) {
    let _ = futex::wake(word, futex::Flags::empty(), i32::MAX as u32);
}

impl Bytes {
    /// The lock placed at `offset`.
    ///
    /// # Panics
    /// If it does not fit in the view or is misaligned (a caller's bug: offsets are constants).
    pub(crate) fn lock_at(&self, offset: usize) -> &mp_sync::RawLock {
        let size = std::mem::size_of::<mp_sync::RawLock>();
        let align = std::mem::align_of::<mp_sync::RawLock>();
        assert!(
            offset.is_multiple_of(align) && offset.checked_add(size).is_some_and(|e| e <= self.len)
        );
        // SAFETY: in bounds and aligned (checked; the base is 8-aligned and so is every
        // offset used); `RawLock` is `Placeable`: every bit pattern is a valid lock, all-zero
        // is unlocked, it holds no pointers, and all its mutation is atomic, so a shared
        // reference into memory other processes write is sound.
        unsafe {
            self.base
                .as_ptr()
                .add(offset)
                .cast::<mp_sync::RawLock>()
                .as_ref()
        }
        .expect("non-null")
    }
}
