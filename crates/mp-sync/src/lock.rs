//! `Lock`: a mutex on one futex word holding the owner's pid, any process may release it.

use std::{
    fmt,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use crate::{
    Error, Result,
    sys::{self, Deadline, Woke},
};

/// Set in the state word while some process may be asleep on it.
const WAITERS: u32 = 1 << 31;
/// The owner's pid (`pid_max` is at most 2²²).
const OWNER: u32 = (1 << 30) - 1;
/// The longest a spin may run before sleeping, in `spin_loop` iterations…
const MAX_SPINS: u32 = 2000;
/// …and at most this long (a spin iteration's length varies tenfold between CPUs)…
const MAX_SPIN_NS: i128 = 20_000;
/// …and the shortest, however badly spinning has paid off lately.
const MIN_SPINS: u32 = 64;
/// `spin_loop`s before the first look at the lock word: looking at once takes the word's
/// cache line from an owner that is about to release and re-acquire (this alone moved the
/// two-process increment bench from 0.98x to 1.7x a pthread mutex)…
const FIRST_BACKOFF: u32 = 16;
/// …doubling up to this many between looks.
const MAX_BACKOFF: u32 = 128;
/// A sleeping waiter first looks at the owner's liveness after this long (an owner that is
/// already dead is noticed quickly, a busy lock's short sleeps never pay for the check)…
const FIRST_OWNER_CHECK: Duration = Duration::from_millis(10);
/// …and then this often.
const OWNER_CHECK: Duration = Duration::from_millis(100);

/// How an explicit acquisition went. `#[must_use]`: a lock taken from a dead owner guards
/// state that may need repair.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acquire {
    /// The caller holds the lock.
    Acquired,
    /// The caller holds the lock, taken over from a process that died holding it.
    OwnerDied,
    /// The lock was busy and the timeout passed (or, for a `try_`, it was busy at once).
    TimedOut,
}

impl Acquire {
    /// Whether the caller now holds the lock (`Acquired` or `OwnerDied`); Python's
    /// `acquire()` return value.
    pub fn is_held(self) -> bool {
        self != Acquire::TimedOut
    }
}

/// The lock is held by the caller, but its previous owner died holding it: the state it
/// guards may be half-updated. Carries the guard, like `std::sync::PoisonError`.
pub struct OwnerDied<G> {
    guard: G,
}

impl<G> OwnerDied<G> {
    /// Wraps a guard taken from a dead owner (for guards of types built on these locks).
    pub fn new(guard: G) -> Self {
        OwnerDied { guard }
    }

    /// The guard: the caller holds the lock.
    pub fn into_guard(self) -> G {
        self.guard
    }

    /// The guard, by reference.
    pub fn guard(&self) -> &G {
        &self.guard
    }

    /// The guard, mutably, to repair what it guards.
    pub fn guard_mut(&mut self) -> &mut G {
        &mut self.guard
    }
}

impl<G> fmt::Debug for OwnerDied<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OwnerDied { .. }")
    }
}

impl<G> fmt::Display for OwnerDied<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the previous owner died holding the lock; the caller holds it now")
    }
}

impl<G> std::error::Error for OwnerDied<G> {}

impl<G> From<OwnerDied<G>> for Error {
    fn from(_: OwnerDied<G>) -> Self {
        Error::OwnerDied
    }
}

/// What a blocking lock call returns: the guard, or the guard wrapped in [`OwnerDied`].
pub type LockResult<G> = std::result::Result<G, OwnerDied<G>>;

/// Why a `try_lock` or `lock_timeout` did not return a plain guard.
pub enum TryLockError<G> {
    /// The lock stayed busy (at once for `try_lock`, until the timeout for `lock_timeout`).
    WouldBlock,
    /// The caller holds the lock, taken over from a dead owner.
    OwnerDied(OwnerDied<G>),
}

impl<G> fmt::Debug for TryLockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryLockError::WouldBlock => f.write_str("WouldBlock"),
            TryLockError::OwnerDied(e) => e.fmt(f),
        }
    }
}

impl<G> fmt::Display for TryLockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryLockError::WouldBlock => f.write_str("the lock is busy"),
            TryLockError::OwnerDied(e) => e.fmt(f),
        }
    }
}

impl<G> std::error::Error for TryLockError<G> {}

/// What a non-blocking or timed lock call returns.
pub type TryLockResult<G> = std::result::Result<G, TryLockError<G>>;

pub(crate) fn guard_result<G>(how: Acquire, guard: impl FnOnce() -> G) -> TryLockResult<G> {
    match how {
        Acquire::Acquired => Ok(guard()),
        Acquire::OwnerDied => Err(TryLockError::OwnerDied(OwnerDied::new(guard()))),
        Acquire::TimedOut => Err(TryLockError::WouldBlock),
    }
}

pub(crate) fn blocking_result<G>(how: Acquire, guard: impl FnOnce() -> G) -> LockResult<G> {
    match how {
        Acquire::OwnerDied => Err(OwnerDied::new(guard())),
        _ => Ok(guard()),
    }
}

/// Python's `multiprocessing.Lock`, placeable in shared memory: `#[repr(C)]`, all-zero bytes
/// are an unlocked lock. [`crate::Lock`] is the handle that allocates one for you.
///
/// Any thread of any process may release it (as in Python). It records the pid of the
/// process that acquired it; if that process dies holding it, a waiter takes it over within
/// about 100 ms and is told so with [`Acquire::OwnerDied`] / [`OwnerDied`]. (All processes
/// sharing a lock must see each other's pids, i.e. share a pid namespace: a process in
/// another namespace looks dead.) Uncontended
/// acquire and release are one atomic instruction each; a busy lock is spun on briefly
/// (adaptively) before sleeping on the futex.
///
/// ```
/// let lock = mp_sync::Lock::new()?;
/// {
///     let _guard = lock.lock().expect("nobody died");
///     assert!(!lock.try_acquire().is_held());
/// }
/// assert_eq!(lock.acquire(), mp_sync::Acquire::Acquired);
/// lock.release()?;
/// assert!(lock.release().is_err()); // not held any more
/// # Ok::<(), mp_sync::Error>(())
/// ```
#[repr(C)]
#[derive(Default)]
pub struct RawLock {
    state: AtomicU32,
    spins: AtomicU32,
}

impl fmt::Debug for RawLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.load(Ordering::Relaxed);
        f.debug_struct("Lock")
            .field("owner", &(state & OWNER))
            .finish()
    }
}

impl RawLock {
    /// An unlocked lock, to place inside a shared `#[repr(C)]` struct.
    pub const fn new() -> Self {
        RawLock {
            state: AtomicU32::new(0),
            spins: AtomicU32::new(0),
        }
    }

    /// Blocks until the caller holds the lock.
    pub fn acquire(&self) -> Acquire {
        self.acquire_until(Deadline::NEVER)
    }

    /// Takes the lock only if it is free now. It does not check whether a busy lock's owner
    /// is alive (that takes system calls); any blocking or timed acquisition does.
    pub fn try_acquire(&self) -> Acquire {
        self.acquire_until(Deadline::now())
    }

    /// Blocks until the caller holds the lock or `timeout` passes.
    pub fn acquire_timeout(&self, timeout: Duration) -> Acquire {
        self.acquire_until(Deadline::after(Some(timeout)))
    }

    /// Releases the lock, whoever holds it (Python allows that for `Lock`).
    ///
    /// # Errors
    /// [`Error::NotHeld`] if the lock is not held.
    pub fn release(&self) -> Result<()> {
        let state = self.state.swap(0, Ordering::Release);
        if state & OWNER == 0 {
            return Err(Error::NotHeld);
        }
        if state & WAITERS != 0 {
            sys::futex_wake(&self.state, 1);
        }
        Ok(())
    }

    /// Blocks until held; the guard releases on drop.
    pub fn lock(&self) -> LockResult<LockGuard<'_>> {
        blocking_result(self.acquire(), || LockGuard { lock: self })
    }

    /// The guard if the lock is free now.
    pub fn try_lock(&self) -> TryLockResult<LockGuard<'_>> {
        guard_result(self.try_acquire(), || LockGuard { lock: self })
    }

    /// The guard once held, or `WouldBlock` after `timeout`.
    pub fn lock_timeout(&self, timeout: Duration) -> TryLockResult<LockGuard<'_>> {
        guard_result(self.acquire_timeout(timeout), || LockGuard { lock: self })
    }

    /// Whether some thread or process holds the lock right now (a snapshot).
    pub fn is_locked(&self) -> bool {
        self.state.load(Ordering::Relaxed) & OWNER != 0
    }

    /// The pid of the process that holds the lock, if any (a snapshot).
    pub fn owner_pid(&self) -> Option<u32> {
        Some(self.state.load(Ordering::Relaxed) & OWNER).filter(|&p| p != 0)
    }

    #[inline]
    pub(crate) fn acquire_until(&self, deadline: Deadline) -> Acquire {
        if self.try_fast() {
            return Acquire::Acquired;
        }
        self.acquire_slow(sys::pid(), deadline)
    }

    /// Takes the lock if it is free, with one compare-and-swap.
    #[inline]
    pub(crate) fn try_fast(&self) -> bool {
        self.state
            .compare_exchange(0, sys::pid(), Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    #[cold]
    fn acquire_slow(&self, me: u32, deadline: Deadline) -> Acquire {
        // A "try" neither spins nor checks the owner's liveness (system calls): only callers
        // willing to wait pay for those.
        if deadline.expired() {
            return Acquire::TimedOut;
        }
        if self.spin(me) {
            return Acquire::Acquired;
        }
        let mut state = self.state.load(Ordering::Relaxed);
        let mut check = FIRST_OWNER_CHECK;
        let mut slept = false;
        loop {
            if state & OWNER == 0 {
                // Free: take it, keeping WAITERS set since others may still sleep.
                match self.state.compare_exchange(
                    state,
                    me | WAITERS,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return Acquire::Acquired,
                    Err(now) => {
                        state = now;
                        continue;
                    }
                }
            }
            if deadline.expired() {
                if let Some(taken) = self.take_from_dead(state, me) {
                    return taken;
                }
                if slept {
                    // A release may have woken us (clearing WAITERS) just as we gave up:
                    // pass that wake-up on to any other sleeper.
                    sys::futex_wake(&self.state, 1);
                }
                return Acquire::TimedOut;
            }
            if state & WAITERS == 0 {
                if let Err(now) = self.state.compare_exchange(
                    state,
                    state | WAITERS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    state = now;
                    continue;
                }
                state |= WAITERS;
            }
            slept = true;
            if sys::futex_wait(&self.state, state, deadline.or_within(check)) == Woke::TimedOut {
                if let Some(taken) = self.take_from_dead(state, me) {
                    return taken;
                }
                check = OWNER_CHECK;
            }
            state = self.state.load(Ordering::Relaxed);
        }
    }

    /// If the lock is still in `state` and its owner has died, takes it over.
    fn take_from_dead(&self, state: u32, me: u32) -> Option<Acquire> {
        let owner = state & OWNER;
        if owner == 0 || !sys::is_dead(owner) {
            return None;
        }
        self.state
            .compare_exchange(state, me | WAITERS, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| Acquire::OwnerDied)
    }

    /// Spins while the lock is busy, for about as long as recent spins needed (at most
    /// [`MAX_SPINS`]); takes it if it comes free.
    fn spin(&self, me: u32) -> bool {
        let estimate = self.spins.load(Ordering::Relaxed);
        let limit = (estimate.saturating_mul(2) + MIN_SPINS).min(MAX_SPINS);
        let mut spun = 0;
        let mut backoff = FIRST_BACKOFF;
        let started = sys::now();
        let taken = loop {
            if spun >= limit || (backoff == MAX_BACKOFF && sys::now() - started > MAX_SPIN_NS) {
                break false;
            }
            // Look at the word ever more rarely: each look pulls its cache line away from
            // an owner that is busy re-acquiring it.
            for _ in 0..backoff {
                std::hint::spin_loop();
            }
            spun += backoff;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            let state = self.state.load(Ordering::Relaxed);
            if state & OWNER == 0
                && self
                    .state
                    .compare_exchange(
                        state,
                        me | (state & WAITERS),
                        Ordering::Acquire,
                        Ordering::Relaxed,
                    )
                    .is_ok()
            {
                break true;
            }
        };
        // Move the estimate an eighth of the way toward what this spin took (all of its
        // budget if it failed, so a hand-off that just missed gets a longer spin next time).
        let next = (estimate as i64 + (spun as i64 - estimate as i64) / 8) as u32;
        self.spins.store(next, Ordering::Relaxed);
        taken
    }
}

/// Holds a [`RawLock`] (or [`crate::Lock`]) until dropped.
#[must_use = "the lock is released as soon as the guard is dropped"]
#[derive(Debug)]
pub struct LockGuard<'a> {
    lock: &'a RawLock,
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        let _ = self.lock.release();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn all_zero_is_unlocked_and_release_of_free_lock_fails() {
        let lock = RawLock::default();
        assert!(!lock.is_locked());
        assert!(matches!(lock.release(), Err(Error::NotHeld)));
        assert_eq!(lock.try_acquire(), Acquire::Acquired);
        assert_eq!(lock.owner_pid(), Some(std::process::id()));
        assert_eq!(lock.try_acquire(), Acquire::TimedOut);
        assert_eq!(
            lock.acquire_timeout(Duration::from_millis(20)),
            Acquire::TimedOut
        );
        lock.release().unwrap();
        assert!(!lock.is_locked());
    }

    #[test]
    fn another_thread_may_release() {
        let lock = Arc::new(RawLock::new());
        assert_eq!(lock.acquire(), Acquire::Acquired);
        let other = lock.clone();
        std::thread::spawn(move || other.release().unwrap())
            .join()
            .unwrap();
        assert_eq!(lock.try_acquire(), Acquire::Acquired);
    }

    #[test]
    fn threads_exclude_each_other() {
        struct Counter {
            lock: RawLock,
            n: std::cell::UnsafeCell<u64>,
        }
        // SAFETY: `n` is only touched under `lock`.
        unsafe impl Sync for Counter {}
        let c = Arc::new(Counter {
            lock: RawLock::new(),
            n: 0.into(),
        });
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        let _g = c.lock.lock().unwrap();
                        // SAFETY: the lock is held.
                        unsafe { *c.n.get() += 1 };
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // SAFETY: every thread has finished.
        assert_eq!(unsafe { *c.n.get() }, 80_000);
    }

    #[test]
    fn a_dead_owner_is_noticed() {
        let lock = RawLock::new();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        // Pretend the dead process held it, with a sleeper flagged.
        lock.state.store(dead | WAITERS, Ordering::Relaxed);
        let start = std::time::Instant::now();
        let guard = lock.lock().expect_err("owner died");
        assert!(start.elapsed() < Duration::from_secs(1));
        assert_eq!(lock.owner_pid(), Some(std::process::id()));
        drop(guard.into_guard());
        assert!(!lock.is_locked());
        // A try does not look (no system calls); a short timed wait does.
        lock.state.store(dead, Ordering::Relaxed);
        assert_eq!(lock.try_acquire(), Acquire::TimedOut);
        assert_eq!(
            lock.acquire_timeout(Duration::from_millis(1)),
            Acquire::OwnerDied
        );
    }
}
