//! Process-shared synchronization: Python's `Lock`, `RLock`, `Semaphore`,
//! `BoundedSemaphore`, `Condition`, `Event` and `Barrier`, on futex words in shared memory.
//!
//! Each primitive is a placeable `#[repr(C)]` type ([`RawLock`], [`RawCondition`], …) whose
//! all-zero bytes are its initial state, so it can sit inside any shared struct; the handles
//! ([`Lock`], [`Condition`], …) put one in its own anonymous shared [`Region`] and are
//! `Message`s, so a fork inherits them and a pipe carries them to any process.
//!
//! - No system call when uncontended; a busy lock is spun on briefly (adaptively) before
//!   sleeping, because waking an idle CPU costs tens of microseconds.
//! - Deadlines are absolute `CLOCK_MONOTONIC`.
//! - A lock records its owner's pid, pid and time namespaces and start time: if the owner
//!   dies holding it, a waiter takes it over within about 100 ms and is told so
//!   ([`Acquire::OwnerDied`], [`OwnerDied`]), like `EOWNERDEAD`, never a deadlock. Waits on
//!   conditions, events and barriers honour their timeouts whoever died; a notify skips
//!   dead waiters, and a barrier breaks when an enrolled party dies before arriving.
//!
//! ## Why pid + start time + namespace, and not the kernel's robust futex lists
//!
//! A robust list survives pid reuse and namespaces by itself, but glibc owns each thread's
//! list head: a library registering its own would break glibc's robust mutexes in that
//! thread, and building on process-shared robust `pthread_mutex_t` instead would cost our
//! spin-then-park hand-off and the rule that all-zero bytes are an unlocked lock. So a lock
//! records an identity that can be neither reused nor misread: the pid (in the futex word,
//! with an index naming the owner's pid and time namespaces in a table inside the lock)
//! and the process's start time beside it (field 22 of `/proc/PID/stat`). The identity is
//! read once per process (again after a fork), so taking a free lock is still one
//! compare-and-swap and a store, with no system call. The cost: a waiter outside the
//! owner's namespaces never takes the lock from a dead owner (it cannot tell), and an owner
//! that dies in the two stores between winning the lock and recording its start time, and
//! whose pid a live process takes at once, is noticed only when that process exits. See
//! `RawLock`'s `take_from_dead` for the whole argument.
//!
//! ```
//! let lock = mp_sync::Lock::new()?;
//! let event = mp_sync::Event::new()?;
//! {
//!     let _held = lock.lock().expect("no owner died");
//!     event.set();
//! }
//! assert!(event.is_set() && !lock.is_locked());
//! # Ok::<(), mp_sync::Error>(())
//! ```
#![deny(missing_docs)]

mod barrier;
mod condition;
mod error;
mod event;
mod handles;
mod lock;
mod process_id;
mod region;
mod rlock;
mod semaphore;
mod sys;
#[cfg(test)]
mod test_util;

// The layouts other processes see: pinned, so a change is a deliberate format change.
const _: () = {
    use std::mem::{align_of, size_of};
    assert!(size_of::<RawLock>() == 40 && align_of::<RawLock>() == 8);
    assert!(size_of::<RawRLock>() == 56 && align_of::<RawRLock>() == 8);
    assert!(size_of::<RawSemaphore>() == 12);
    assert!(size_of::<RawCondition>() == 64 + 8 * condition::WAITER_SLOTS);
    assert!(size_of::<RawEvent>() == 8);
    assert!(size_of::<RawBarrier>() == 72 + 12 * barrier::ROSTER);
};

pub use crate::{
    barrier::{Enrollment, RawBarrier},
    condition::RawCondition,
    error::{Error, Result},
    event::RawEvent,
    handles::{Barrier, BoundedSemaphore, Condition, Event, Lock, RLock, Semaphore},
    lock::{Acquire, LockGuard, LockResult, OwnerDied, RawLock, TryLockError, TryLockResult},
    process_id::ProcessId,
    region::{Placeable, Region, Shared, Spec},
    rlock::{RLockGuard, RawRLock},
    semaphore::{MAX_SEMAPHORE_VALUE, RawSemaphore},
};

/// A number naming the calling thread, unique among the threads of this process image (a
/// fork child's thread keeps its parent thread's, but has another pid): the token the
/// `RLock`s record, for mp-queue's biased sides. Not part of the API.
#[doc(hidden)]
#[inline]
pub fn __thread_token() -> u64 {
    sys::thread_token()
}
