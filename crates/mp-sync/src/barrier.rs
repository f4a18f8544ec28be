//! `Barrier`: parties meet; a generation counter on a futex word releases them.

use std::{
    fmt,
    panic::{AssertUnwindSafe, catch_unwind, resume_unwind},
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
    time::Duration,
};

use crate::{
    Error, RawLock, Result,
    lock::ident,
    sys::{self, Deadline, Woke},
};

/// How many processes (or threads) may [`enroll`](RawBarrier::enroll) at once.
pub(crate) const ROSTER: usize = 32;
/// A waiter first looks for enrolled parties that died after this long, then this often.
const FIRST_PARTY_CHECK: Duration = Duration::from_millis(10);
const PARTY_CHECK: Duration = Duration::from_millis(100);

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
/// **A party that dies before arriving.** A process that [`enroll`](Self::enroll)s is
/// named in the barrier's roster (pid, namespace, start time, as a lock records its owner)
/// until its [`Enrollment`] drops. Waiters look at the roster after 10 ms and every 100 ms:
/// an enrolled party that has not arrived at the current pass and is provably gone breaks
/// the barrier, and every waiter gets [`Error::BrokenBarrier`] instead of waiting for ever.
/// What cannot be detected: a party that never enrolled (nothing tells it from a slow one),
/// one whose death cannot be proven from here (another pid namespace), one that dies
/// after arriving (its arrival counts; the pass completes without it), and, for a process
/// that enrolled several threads, a death after one of them arrived and before another did.
/// At most 32 enrollments at once.
///
/// ```
/// let barrier = multiprocessing::synchronize::Barrier::new(1)?;
/// assert_eq!(barrier.wait()?, 0); // one party: passes at once
/// barrier.abort();
/// assert!(barrier.wait().is_err());
/// barrier.reset();
/// assert_eq!(barrier.wait()?, 0);
/// # Ok::<(), multiprocessing::synchronize::Error>(())
/// ```
#[repr(C)]
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
    _reserved: AtomicU32,
    /// Default timeout for `wait`, in nanoseconds; 0 is none.
    timeout_ns: AtomicU64,
    /// Enrolled parties: 0 free, else an identity word ([`ident`]).
    roster: [AtomicU64; ROSTER],
    /// For each roster entry, one more than the generation it last arrived at.
    came: [AtomicU32; ROSTER],
}

/// A process's enrollment at a [`RawBarrier`]: while it lives, the barrier breaks if the
/// process dies before arriving at a pass. Dropping it withdraws (a normal exit should drop
/// it, or the others see a party that will never come).
#[derive(Debug)]
#[must_use = "the enrollment ends when dropped"]
pub struct Enrollment<'a> {
    barrier: &'a RawBarrier,
    entry: usize,
    word: u64,
}

impl Drop for Enrollment<'_> {
    fn drop(&mut self) {
        // A fork child holding a copy of the parent's enrollment must not withdraw it.
        if ident::mine(&self.barrier.lock) == self.word {
            let _ = self.barrier.roster[self.entry].compare_exchange(
                self.word,
                0,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }
}

impl Default for RawBarrier {
    fn default() -> Self {
        RawBarrier {
            lock: RawLock::new(),
            generation: AtomicU32::new(0),
            failed: AtomicU32::new(0),
            parties: AtomicU32::new(0),
            arrived: AtomicU32::new(0),
            broken: AtomicU32::new(0),
            _reserved: AtomicU32::new(0),
            timeout_ns: AtomicU64::new(0),
            roster: [const { AtomicU64::new(0) }; ROSTER],
            came: [const { AtomicU32::new(0) }; ROSTER],
        }
    }
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

    /// Enrolls the calling process (or thread) as a party: if it dies without arriving at a
    /// pass, the others' waits break the barrier rather than wait for ever. Enroll before
    /// anyone could wait for you; drop the [`Enrollment`] when leaving for good.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if 32 enrollments are held already.
    pub fn enroll(&self) -> Result<Enrollment<'_>> {
        let word = ident::mine(&self.lock);
        self.enter();
        let generation = self.generation.load(Ordering::Relaxed);
        let free = self.roster.iter().position(|e| {
            e.load(Ordering::Relaxed) == 0
                && e.compare_exchange(0, word, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
        });
        if let Some(entry) = free {
            // Not counted as arrived at the pass under way.
            self.came[entry].store(generation, Ordering::Relaxed);
        }
        self.leave();
        let entry = free.ok_or(Error::InvalidArgument(
            "more than 32 enrollments at one barrier",
        ))?;
        Ok(Enrollment {
            barrier: self,
            entry,
            word,
        })
    }

    /// Marks one of the caller's enrollments (if any) as arrived at `generation`. Called
    /// under the internal lock.
    fn mark_arrived(&self, generation: u32) {
        let word = ident::mine(&self.lock);
        let came = generation.wrapping_add(1);
        if let Some(i) = (0..ROSTER).find(|&i| {
            self.roster[i].load(Ordering::Relaxed) == word
                && self.came[i].load(Ordering::Relaxed) != came
        }) {
            self.came[i].store(came, Ordering::Relaxed);
        }
    }

    /// Whether an enrolled party that has not arrived at `generation` is provably gone.
    fn party_died(&self, generation: u32) -> bool {
        let came = generation.wrapping_add(1);
        (0..ROSTER).any(|i| {
            let word = self.roster[i].load(Ordering::Relaxed);
            word != 0
                && self.came[i].load(Ordering::Relaxed) != came
                && ident::is_gone(&self.lock, word)
        })
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
        self.mark_arrived(generation);
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
        let mut check = FIRST_PARTY_CHECK;
        loop {
            if self.generation.load(Ordering::Acquire) != generation {
                break;
            }
            let woke = sys::futex_wait(&self.generation, generation, deadline.or_within(check));
            if woke == Woke::TimedOut && !deadline.expired() {
                check = PARTY_CHECK;
                if self.generation.load(Ordering::Acquire) == generation
                    && self.party_died(generation)
                {
                    self.enter();
                    if self.generation.load(Ordering::Relaxed) == generation {
                        self.break_locked();
                    }
                    self.leave();
                }
                continue;
            }
            if woke == Woke::TimedOut && self.generation.load(Ordering::Acquire) == generation {
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

    #[test]
    fn an_enrolled_party_that_dies_before_arriving_breaks_the_barrier() {
        use crate::test_util::{fork, reap};
        let b = crate::Shared::<RawBarrier>::new().unwrap();
        b.init(3, None).unwrap();
        let party = fork(|| {
            let enrolled = b.enroll().is_ok();
            std::mem::forget(b.enroll()); // dies holding the enrollment
            i32::from(!enrolled)
        });
        assert_eq!(reap(party), 0);
        // Another party arrives and waits; then this one: neither may wait for ever.
        let other = {
            let b = b.clone();
            std::thread::spawn(move || b.wait_with(Some(Duration::from_secs(60)), None))
        };
        let got = b.wait_with(Some(Duration::from_secs(60)), None);
        assert!(matches!(got, Err(Error::BrokenBarrier)), "{got:?}");
        assert!(matches!(other.join().unwrap(), Err(Error::BrokenBarrier)));
        assert!(b.broken());
    }

    #[test]
    fn a_withdrawn_enrollment_does_not_break_the_barrier() {
        let b = barrier(2, None);
        let enrolled = b.enroll().unwrap();
        let other = {
            let b = b.clone();
            std::thread::spawn(move || {
                let _me = b.enroll().unwrap();
                b.wait_with(Some(Duration::from_secs(60)), None)
            })
        };
        drop(enrolled);
        assert!(b.wait_with(Some(Duration::from_secs(60)), None).is_ok());
        assert!(other.join().unwrap().is_ok());
        let _a = b.enroll().unwrap();
        assert!(
            b.roster
                .iter()
                .filter(|e| e.load(Ordering::Relaxed) != 0)
                .count()
                == 1
        );
    }
}
