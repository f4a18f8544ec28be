//! `Lock`: a mutex on one futex word holding the owner's pid and pid namespace, with the
//! owner's start time beside it; any process may release it.

use std::{
    fmt,
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
    time::Duration,
};

use crate::{
    Error, Result,
    sys::{self, Deadline, Woke},
};

/// Set in the state word while some process may be asleep on it.
const WAITERS: u32 = 1 << 31;
/// The owner's pid, in its own pid namespace (`pid_max` is at most 2²², so a pid is below).
const PID: u32 = (1 << 22) - 1;
/// Which entry of [`RawLock::namespaces`] names the owner's pid and time namespaces, plus
/// one; 0 if unknown (its pid can then not be interpreted by anyone).
const NS: u32 = 0b11 << NS_SHIFT;
const NS_SHIFT: u32 = 22;
/// Counts take-overs from dead owners (wrapping; kept across releases), so a taker that
/// stalls between judging an owner dead and its compare-and-swap cannot take the lock from
/// a later owner that happens to have the same pid and namespace.
const GEN: u32 = 0x7f << GEN_SHIFT;
const GEN_SHIFT: u32 = 24;
/// How many pid namespaces one lock can tell apart (the width of [`NS`]).
const NAMESPACES: usize = 3;
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
/// Any thread of any process may release it (as in Python). It records who acquired it: the
/// pid, the pid and time namespaces (an index into a small table in the lock), and the
/// process's start time; if that process dies holding it, a waiter takes it over within
/// about 100 ms and is told so with [`Acquire::OwnerDied`] / [`OwnerDied`]. Only a waiter in
/// the owner's own namespaces, with a `/proc` of its own namespace, judges the owner; any
/// other keeps waiting (its timeouts still hold), because a pid from another namespace
/// means nothing to it. Up to three namespaces per lock are told apart; owners from a
/// fourth are never judged. A pid reused by a live process does not hide a dead owner
/// (the start time differs), except within the owner's own 10 ms clock tick. Uncontended
/// acquire and release are one atomic instruction each; a busy lock is spun on briefly
/// (adaptively) before sleeping on the futex.
///
/// ```
/// let lock = multiprocessing::synchronize::Lock::new()?;
/// {
///     let _guard = lock.lock().expect("nobody died");
///     assert!(!lock.try_acquire().is_held());
/// }
/// assert_eq!(lock.acquire(), multiprocessing::synchronize::Acquire::Acquired);
/// lock.release()?;
/// assert!(lock.release().is_err()); // not held any more
/// # Ok::<(), multiprocessing::synchronize::Error>(())
/// ```
#[repr(C)]
#[derive(Default)]
pub struct RawLock {
    /// `PID | NS | GEN | WAITERS`; the futex word. Free when its `PID` bits are 0.
    state: AtomicU32,
    spins: AtomicU32,
    /// The owner's start time plus one ([`sys::Me::start`]); 0 while not recorded (between
    /// winning the lock and writing it, or after a release began).
    record: AtomicU64,
    /// The identities ([`sys::Me::ns`]) of the namespaces of processes that used the lock,
    /// each written once (0 to its value) and never changed; `NS` in `state` indexes it.
    namespaces: [AtomicU64; NAMESPACES],
}

/// What the calling process writes when it takes a lock: its `state` bits and `record`.
#[derive(Clone, Copy)]
pub(crate) struct Owner {
    state: u32,
    start: u64,
}

/// A process's identity in one word, for the waiter and party tables of conditions and
/// barriers: bit 63 is free for the caller, then the namespace entry (2 bits) and pid (22
/// bits) of a lock's state word, then the low 39 bits of the start time plus one (0: not
/// known; 2³⁹ clock ticks are 174 years).
pub(crate) mod ident {
    use super::{NS, NS_SHIFT, Owner, PID, RawLock};

    const START: u64 = (1 << 39) - 1;
    const SHIFT: u32 = 39;

    /// The calling process's identity word for `lock`'s namespace table; never 0.
    pub(crate) fn mine(lock: &RawLock) -> u64 {
        let me: Owner = lock.owner();
        (u64::from(me.state & (PID | NS)) << SHIFT) | (me.start & START)
    }

    /// Whether the process named by `word` (bit 63 ignored) is provably gone.
    pub(crate) fn is_gone(lock: &RawLock, word: u64) -> bool {
        let bits = (word >> SHIFT) as u32;
        lock.is_gone(bits & PID, (bits & NS) >> NS_SHIFT, word & START, START)
    }
}

impl fmt::Debug for RawLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lock")
            .field("owner", &self.owner_pid())
            .finish()
    }
}

impl RawLock {
    /// An unlocked lock, to place inside a shared `#[repr(C)]` struct.
    pub const fn new() -> Self {
        RawLock {
            state: AtomicU32::new(0),
            spins: AtomicU32::new(0),
            record: AtomicU64::new(0),
            namespaces: [const { AtomicU64::new(0) }; NAMESPACES],
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
        let now = self.state.load(Ordering::Relaxed);
        if now & PID == 0 {
            return Err(Error::NotHeld);
        }
        // Unrecord first: whoever sees the next owner's state sees this 0 or that owner's
        // own record, never ours (the swap is a release, the next owner's CAS continues its
        // release sequence).
        self.record.store(0, Ordering::Relaxed);
        let state = self.state.swap(now & GEN, Ordering::Release);
        if state & PID == 0 {
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

    /// Whether a waiter has gone to sleep on the lock since it was last released (a
    /// snapshot: the flag stays set from a waiter's sleep until the next release; a waiter
    /// still spinning, or about to sleep, is not seen). mp-queue's sides do not bias
    /// themselves to a thread while it is set.
    ///
    /// ```
    /// let lock = multiprocessing::synchronize::Lock::new()?;
    /// assert!(!lock.has_waiters());
    /// # Ok::<(), multiprocessing::synchronize::Error>(())
    /// ```
    pub fn has_waiters(&self) -> bool {
        self.state.load(Ordering::Relaxed) & WAITERS != 0
    }

    /// Whether some thread or process holds the lock right now (a snapshot).
    pub fn is_locked(&self) -> bool {
        self.state.load(Ordering::Relaxed) & PID != 0
    }

    /// The pid of the process that holds the lock, if any (a snapshot), as that process
    /// sees it (in its own pid namespace).
    pub fn owner_pid(&self) -> Option<u32> {
        Some(self.state.load(Ordering::Relaxed) & PID).filter(|&p| p != 0)
    }

    #[inline]
    pub(crate) fn acquire_until(&self, deadline: Deadline) -> Acquire {
        let me = self.owner();
        if self.try_fast_as(me) {
            return Acquire::Acquired;
        }
        self.acquire_slow(me, deadline)
    }

    /// What this process writes into this lock when it takes it.
    #[inline]
    pub(crate) fn owner(&self) -> Owner {
        let me = sys::me();
        Owner {
            state: (me.pid & PID) | (self.ns_index(me.ns) << NS_SHIFT),
            start: me.start,
        }
    }

    /// The entry of [`namespaces`](Self::namespaces) holding `ns`, plus one, adding it if
    /// there is room; 0 for an unknown namespace or a full table.
    #[inline]
    pub(crate) fn ns_index(&self, ns: u64) -> u32 {
        if ns == 0 {
            return 0;
        }
        for (i, entry) in self.namespaces.iter().enumerate() {
            let seen = match entry.load(Ordering::Relaxed) {
                0 => match entry.compare_exchange(0, ns, Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => ns,
                    Err(now) => now,
                },
                seen => seen,
            };
            if seen == ns {
                return i as u32 + 1;
            }
        }
        0
    }

    /// Whether the process recorded with `pid`, namespace entry `ns_index` and (masked)
    /// start time `start` (0: not recorded) is provably gone, as seen from this process. A
    /// process in another pid or time namespace than ours, or in none we know, is never
    /// judged: its pid means nothing here.
    pub(crate) fn is_gone(&self, pid: u32, ns_index: u32, start: u64, mask: u64) -> bool {
        let me = sys::me();
        let Some(entry) = (ns_index as usize)
            .checked_sub(1)
            .and_then(|i| self.namespaces.get(i))
        else {
            return false;
        };
        me.ns != 0 && entry.load(Ordering::Relaxed) == me.ns && sys::is_gone(pid, start, mask)
    }

    /// Takes the lock if it is free, with one compare-and-swap.
    #[inline]
    pub(crate) fn try_fast(&self) -> bool {
        self.try_fast_as(self.owner())
    }

    #[inline]
    fn try_fast_as(&self, me: Owner) -> bool {
        match self
            .state
            .compare_exchange(0, me.state, Ordering::Acquire, Ordering::Relaxed)
        {
            Ok(_) => {
                self.record.store(me.start, Ordering::Relaxed);
                true
            }
            // Free, but with a take-over count (or a sleeper flag) kept in the word.
            Err(now) if now & PID == 0 => self.take_free(now, me, 0).is_ok(),
            Err(_) => false,
        }
    }

    /// Takes a free lock whose word reads `state`, setting `extra` too.
    #[inline]
    fn take_free(&self, state: u32, me: Owner, extra: u32) -> std::result::Result<(), u32> {
        debug_assert_eq!(state & PID, 0);
        let next = me.state | (state & (GEN | WAITERS)) | extra;
        self.state
            .compare_exchange(state, next, Ordering::Acquire, Ordering::Relaxed)?;
        self.record.store(me.start, Ordering::Relaxed);
        Ok(())
    }

    #[cold]
    fn acquire_slow(&self, me: Owner, deadline: Deadline) -> Acquire {
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
            if state & PID == 0 {
                // Free: take it, keeping WAITERS set since others may still sleep.
                match self.take_free(state, me, WAITERS) {
                    Ok(()) => return Acquire::Acquired,
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

    /// If the lock is still held as in `state` and its owner is provably gone, takes it over.
    ///
    /// Why a live owner is never taken from, and a dead one is found:
    /// - `state` names the owner by pid *and* namespace entry, and [`RawLock::is_gone`]
    ///   judges only owners of our own pid and time namespaces: any other pid is
    ///   uninterpretable here (a waiter in a child pid namespace sees no process with the
    ///   parent's pids), so it is left alone; timeouts still work.
    /// - The record is the owner's start time, or 0. It is never another ownership's: a
    ///   release clears it before freeing the word, a taker clears it (compare-and-swap,
    ///   which also elects one taker) before installing itself, and both are ordered before
    ///   the state change that whoever reads the new owner synchronizes with. We read the
    ///   state, then the record, judge, then read both again: unchanged means the record
    ///   was this owner's when we judged.
    /// - With a record, pid reuse cannot fool us: a live process with that pid and another
    ///   start time means the owner is gone ([`sys::is_gone`]).
    /// - Without one (the owner died between its compare-and-swap and its record store, or
    ///   while releasing), only proof without a start time counts: no process has the pid,
    ///   or it is a zombie. If the pid was already reused by a live process, we keep
    ///   waiting until that one exits: the one case left undetected (a window of two
    ///   stores), and it waits, never lets two hold the lock.
    /// - The new state bumps `GEN`, so a taker that stalled after judging cannot
    ///   compare-and-swap over a later owner with the same pid and namespace (unless 128
    ///   take-overs happen meanwhile).
    fn take_from_dead(&self, state: u32, me: Owner) -> Option<Acquire> {
        let same = |now: u32| (now ^ state) & !WAITERS == 0;
        let pid = state & PID;
        if pid == 0 || !same(self.state.load(Ordering::Acquire)) {
            return None;
        }
        let record = self.record.load(Ordering::Acquire);
        if !self.is_gone(pid, (state & NS) >> NS_SHIFT, record, u64::MAX)
            || self.record.load(Ordering::Acquire) != record
            || !same(self.state.load(Ordering::Acquire))
        {
            return None;
        }
        if record != 0
            && self
                .record
                .compare_exchange(record, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return None;
        }
        let next = me.state | WAITERS | (state.wrapping_add(1 << GEN_SHIFT) & GEN);
        let mut now = state;
        loop {
            match self
                .state
                .compare_exchange(now, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(seen) if same(seen) => now = seen,
                Err(_) => return None,
            }
        }
        self.record.store(me.start, Ordering::Relaxed);
        Some(Acquire::OwnerDied)
    }

    /// Spins while the lock is busy, for about as long as recent spins needed (at most
    /// [`MAX_SPINS`]); takes it if it comes free.
    fn spin(&self, me: Owner) -> bool {
        let estimate = self.spins.load(Ordering::Relaxed);
        // (Saturating: the estimate is in shared memory, and may hold anything.)
        let limit = estimate
            .saturating_mul(2)
            .saturating_add(MIN_SPINS)
            .min(MAX_SPINS);
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
            if state & PID == 0 && self.take_free(state, me, 0).is_ok() {
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
    fn any_spin_estimate_in_the_shared_word_is_survived() {
        // The estimate lives in shared memory: another process may have written anything.
        let lock = RawLock::new();
        assert_eq!(lock.acquire(), Acquire::Acquired);
        for estimate in [u32::MAX, u32::MAX / 2 + 1, MAX_SPINS] {
            lock.spins.store(estimate, Ordering::Relaxed);
            assert_eq!(
                lock.acquire_timeout(Duration::from_millis(1)),
                Acquire::TimedOut
            );
            assert!(lock.spins.load(Ordering::Relaxed) <= estimate);
        }
        lock.release().unwrap();
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
        // Pretend the dead process held it (unrecorded), with a sleeper flagged.
        let ns = lock.owner().state & NS;
        lock.state.store(dead | ns | WAITERS, Ordering::Relaxed);
        let start = std::time::Instant::now();
        let guard = lock.lock().expect_err("owner died");
        assert!(start.elapsed() < Duration::from_secs(1));
        assert_eq!(lock.owner_pid(), Some(std::process::id()));
        drop(guard.into_guard());
        assert!(!lock.is_locked());
        // A try does not look (no system calls); a short timed wait does.
        lock.state.store(dead | ns, Ordering::Relaxed);
        assert_eq!(lock.try_acquire(), Acquire::TimedOut);
        assert_eq!(
            lock.acquire_timeout(Duration::from_millis(1)),
            Acquire::OwnerDied
        );
    }

    #[test]
    fn a_lock_taken_from_a_dead_owner_is_free_again_after_release() {
        let lock = RawLock::new();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let ns = lock.owner().state & NS;
        lock.state.store(dead | ns, Ordering::Relaxed);
        assert_eq!(
            lock.acquire_timeout(Duration::from_secs(20)),
            Acquire::OwnerDied
        );
        lock.release().unwrap();
        assert!(!lock.is_locked());
        assert_eq!(lock.try_acquire(), Acquire::Acquired, "the count is kept");
        lock.release().unwrap();
    }

    #[test]
    fn a_dead_owners_pid_taken_by_a_live_process_is_still_a_dead_owner() {
        use crate::test_util::{fork, live_process_with_pid, reap, root_or_skip};
        if !root_or_skip("pid reuse") {
            return;
        }
        let lock = crate::Shared::<RawLock>::new().unwrap();
        let owner = fork(|| i32::from(lock.try_acquire() != Acquire::Acquired));
        assert_eq!(
            reap(owner),
            0,
            "the owner took the lock and exited holding it"
        );
        // Start times count clock ticks (10 ms): a process started in the owner's tick is
        // indistinguishable from it (the documented limit), so let the tick pass.
        let owner_start = lock.record.load(Ordering::Relaxed) - 1;
        let tick = || {
            let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
            (t.tv_sec as u64 * 100) + (t.tv_nsec as u64 / 10_000_000)
        };
        while tick() <= owner_start + 1 {
            std::thread::yield_now();
        }
        let Some((reuser, alive)) = live_process_with_pid(owner) else {
            eprintln!("SKIPPED pid reuse: pid {owner} never came back");
            return;
        };
        let how = lock.acquire_timeout(Duration::from_secs(5));
        drop(alive);
        assert_eq!(reap(reuser), 0);
        assert_eq!(
            how,
            Acquire::OwnerDied,
            "pid {owner} lives again, but not the owner"
        );
    }

    #[test]
    fn a_waiter_in_a_child_pid_namespace_never_takes_a_live_owners_lock() {
        use crate::test_util::{fork, in_new_pid_namespace, reap, root_or_skip};
        if !root_or_skip("pid namespace") {
            return;
        }
        let lock = crate::Shared::<RawLock>::new().unwrap();
        assert_eq!(lock.acquire(), Acquire::Acquired);
        let code = in_new_pid_namespace(|| {
            reap(fork(|| {
                match lock.acquire_timeout(Duration::from_millis(300)) {
                    Acquire::TimedOut => 0,
                    Acquire::OwnerDied => 2,
                    Acquire::Acquired => 3,
                }
            }))
        });
        assert_eq!(
            code, 0,
            "the child (2: OwnerDied, 3: Acquired) took a held lock"
        );
        lock.release().unwrap();
        // The lock still works for both afterwards, and a dead owner in the child namespace
        // is not judged from here either (its pid means nothing to us): we time out.
        let code = in_new_pid_namespace(|| reap(fork(|| i32::from(!lock.acquire().is_held()))));
        assert_eq!(code, 0);
        assert_eq!(
            lock.acquire_timeout(Duration::from_millis(200)),
            Acquire::TimedOut
        );
    }
}
