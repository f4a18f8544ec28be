//! `Barrier`: parties meet; a generation counter on a futex word releases them.

use std::{
    fmt,
    panic::{AssertUnwindSafe, catch_unwind, resume_unwind},
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
    time::Duration,
};

use crate::{
    Error, RawLock, Result,
    sys::{self, Deadline, Woke},
};

/// Python's `multiprocessing.Barrier`, placeable in shared memory (`#[repr(C)]`);
/// [`crate::Barrier`] is the handle that allocates one (and carries the action).
///
/// Each pass releases everyone once `parties` callers have arrived; `wait` returns a unique
/// index in `0..parties` per pass (the last to arrive gets `parties - 1`, runs the action,
/// and releases the others). A timeout, [`abort`](Self::abort), a panicking action, or
/// [`reset`](Self::reset) while some wait breaks the pass: its waiters get
/// [`Error::BrokenBarrier`] (or [`Error::BarrierTimeout`]), and later waits fail until
/// `reset`.
///
/// ```
/// let barrier = mp_sync::Barrier::new(1)?;
/// assert_eq!(barrier.wait()?, 0); // one party: passes at once
/// barrier.abort();
/// assert!(barrier.wait().is_err());
/// barrier.reset();
/// assert_eq!(barrier.wait()?, 0);
/// # Ok::<(), mp_sync::Error>(())
/// ```
#[repr(C)]
#[derive(Default)]
pub struct RawBarrier {
    lock: RawLock,
    /// Bumped when a pass completes, breaks or is reset: the futex word waiters sleep on.
    generation: AtomicU32,
    /// One more than the generation that broke or was reset most recently (breaking is rare,
    /// so a slow waiter of a completed pass is not mistaken for one of a broken pass).
    failed: AtomicU32,
    parties: AtomicU32,
    arrived: AtomicU32,
    broken: AtomicU32,
    /// Default timeout for `wait`, in nanoseconds; 0 is none.
    timeout_ns: AtomicU64,
}

impl fmt::Debug for RawBarrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Barrier")
            .field("parties", &self.parties())
            .field("n_waiting", &self.n_waiting())
            .field("broken", &self.broken())
            .finish()
    }
}

impl RawBarrier {
    /// Sets the number of parties and the default timeout in place, for a zeroed region,
    /// before any process waits on it.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for zero parties.
    pub fn init(&self, parties: u32, timeout: Option<Duration>) -> Result<()> {
        if parties == 0 {
            return Err(Error::InvalidArgument("a barrier needs at least one party"));
        }
        self.parties.store(parties, Ordering::Relaxed);
        let ns = timeout.map_or(0, |d| d.as_nanos().clamp(1, u64::MAX as u128) as u64);
        self.timeout_ns.store(ns, Ordering::Relaxed);
        Ok(())
    }

    /// How many must arrive for a pass.
    pub fn parties(&self) -> u32 {
        self.parties.load(Ordering::Relaxed)
    }

    /// How many are waiting in the current pass (a snapshot).
    pub fn n_waiting(&self) -> u32 {
        self.arrived.load(Ordering::Relaxed)
    }

    /// Whether the barrier is broken.
    pub fn broken(&self) -> bool {
        self.broken.load(Ordering::Acquire) != 0
    }

    /// The default timeout given at creation.
    pub fn timeout(&self) -> Option<Duration> {
        match self.timeout_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    /// Waits for the pass with the default timeout, running `action` if the caller is last.
    ///
    /// # Errors
    /// [`Error::BrokenBarrier`], [`Error::BarrierTimeout`], [`Error::InvalidArgument`] for an
    /// uninitialized barrier.
    ///
    /// # Panics
    /// If `action` panics: the barrier is broken first, then the panic resumes in the caller.
    pub fn wait_with(&self, timeout: Option<Duration>, action: Option<&dyn Fn()>) -> Result<u32> {
        let parties = self.parties();
        if parties == 0 {
            return Err(Error::InvalidArgument("barrier has no parties"));
        }
        let deadline = Deadline::after(timeout.or(self.timeout()));
        self.enter();
        if self.broken() {
            self.leave();
            return Err(Error::BrokenBarrier);
        }
        let generation = self.generation.load(Ordering::Relaxed);
        let index = self.arrived.load(Ordering::Relaxed);
        if index + 1 >= parties {
            if let Some(action) = action
                && let Err(panic) = catch_unwind(AssertUnwindSafe(action))
            {
                self.break_locked();
                self.leave();
                resume_unwind(panic);
            }
            self.arrived.store(0, Ordering::Relaxed);
            self.generation
                .store(generation.wrapping_add(1), Ordering::Release);
            self.leave();
            sys::futex_wake(&self.generation, u32::MAX);
            return Ok(index);
        }
        self.arrived.store(index + 1, Ordering::Relaxed);
        self.leave();
        loop {
            if self.generation.load(Ordering::Acquire) != generation {
                break;
            }
            if sys::futex_wait(&self.generation, generation, deadline) == Woke::TimedOut
                && self.generation.load(Ordering::Acquire) == generation
            {
                self.enter();
                let still = self.generation.load(Ordering::Relaxed) == generation;
                if still {
                    self.break_locked();
                }
                self.leave();
                if still {
                    return Err(Error::BarrierTimeout);
                }
                break;
            }
        }
        if self.failed.load(Ordering::Acquire) != generation.wrapping_add(1) {
            Ok(index)
        } else {
            Err(Error::BrokenBarrier)
        }
    }

    /// Breaks the barrier: current and future waiters get [`Error::BrokenBarrier`] until
    /// [`reset`](Self::reset).
    pub fn abort(&self) {
        self.enter();
        self.break_locked();
        self.leave();
    }

    /// Returns the barrier to its empty, unbroken state; current waiters get
    /// [`Error::BrokenBarrier`].
    pub fn reset(&self) {
        self.enter();
        let generation = self.generation.load(Ordering::Relaxed);
        if self.arrived.load(Ordering::Relaxed) != 0 {
            self.failed
                .store(generation.wrapping_add(1), Ordering::Release);
            self.generation
                .store(generation.wrapping_add(1), Ordering::Release);
            sys::futex_wake(&self.generation, u32::MAX);
        }
        self.arrived.store(0, Ordering::Relaxed);
        self.broken.store(0, Ordering::Release);
        self.leave();
    }

    fn break_locked(&self) {
        self.broken.store(1, Ordering::Release);
        self.arrived.store(0, Ordering::Relaxed);
        let generation = self.generation.load(Ordering::Relaxed);
        self.failed
            .store(generation.wrapping_add(1), Ordering::Release);
        self.generation
            .store(generation.wrapping_add(1), Ordering::Release);
        sys::futex_wake(&self.generation, u32::MAX);
    }

    /// Takes the internal lock; one taken from a dead process means a pass was left
    /// half-updated, so the barrier breaks.
    fn enter(&self) {
        if self.lock.acquire() == crate::Acquire::OwnerDied {
            self.break_locked();
        }
    }

    fn leave(&self) {
        let _ = self.lock.release();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use super::*;

    fn barrier(parties: u32, timeout: Option<Duration>) -> Arc<RawBarrier> {
        let b = Arc::new(RawBarrier::default());
        b.init(parties, timeout).unwrap();
        b
    }

    #[test]
    fn each_pass_hands_out_unique_indices_and_runs_the_action_once() {
        let b = barrier(3, None);
        let runs = Arc::new(AtomicUsize::new(0));
        for _pass in 0..3 {
            let threads: Vec<_> = (0..3)
                .map(|_| {
                    let (b, runs) = (b.clone(), runs.clone());
                    std::thread::spawn(move || {
                        let action = || {
                            runs.fetch_add(1, Ordering::SeqCst);
                        };
                        b.wait_with(Some(Duration::from_secs(20)), Some(&action))
                            .unwrap()
                    })
                })
                .collect();
            let mut indices: Vec<u32> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            indices.sort();
            assert_eq!(indices, [0, 1, 2]);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_timeout_breaks_the_barrier_until_reset() {
        let b = barrier(2, Some(Duration::from_millis(10)));
        assert!(matches!(
            b.wait_with(None, None),
            Err(Error::BarrierTimeout)
        ));
        assert!(b.broken());
        assert!(matches!(b.wait_with(None, None), Err(Error::BrokenBarrier)));
        b.reset();
        assert!(!b.broken());
        assert_eq!(b.n_waiting(), 0);
    }

    #[test]
    fn abort_and_reset_release_waiters_with_broken() {
        for reset in [false, true] {
            let b = barrier(2, None);
            let other = b.clone();
            let t =
                std::thread::spawn(move || other.wait_with(Some(Duration::from_secs(20)), None));
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while b.n_waiting() != 1 {
                assert!(std::time::Instant::now() < deadline);
                std::thread::yield_now();
            }
            if reset {
                b.reset();
            } else {
                b.abort();
            }
            assert!(matches!(t.join().unwrap(), Err(Error::BrokenBarrier)));
            assert_eq!(b.broken(), !reset);
        }
    }

    #[test]
    fn a_panicking_action_breaks_the_barrier() {
        let b = barrier(1, None);
        let panicked = catch_unwind(AssertUnwindSafe(|| {
            b.wait_with(None, Some(&|| panic!("action failed")))
        }));
        assert!(panicked.is_err());
        assert!(b.broken());
        assert!(RawBarrier::default().wait_with(None, None).is_err());
    }

    #[test]
    fn more_callers_than_parties_pass_in_groups() {
        let b = barrier(2, None);
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || b.wait_with(Some(Duration::from_secs(20)), None))
            })
            .collect();
        for t in threads {
            assert!(t.join().unwrap().is_ok());
        }
        assert!(!b.broken());
    }
}
