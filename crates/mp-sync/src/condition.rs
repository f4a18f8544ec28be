//! `Condition`: an RLock plus a table of waiter slots, each naming its waiting process.

use std::{
    fmt,
    num::NonZeroU32,
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
    time::Duration,
};

use crate::{
    Acquire, Error, LockResult, RawRLock, Result, TryLockResult,
    lock::ident,
    rlock::RLockGuard,
    sys::{self, Deadline},
};

/// How many threads (of any processes) may wait on one condition at once.
pub(crate) const WAITER_SLOTS: usize = 64;
/// Set in a waiter's slot by `notify`; the waiter clears the slot when it sees it.
const NOTIFIED: u64 = 1 << 63;

/// Python's `multiprocessing.Condition` (over its default `RLock`), placeable in shared
/// memory (`#[repr(C)]`; all-zero is a fresh condition); [`crate::Condition`] is the handle
/// that allocates one.
///
/// A waiter takes a slot of its own (under the lock) holding its process's identity: pid,
/// namespace and start time, as a lock records its owner. `notify(n)` marks up to `n`
/// waiting slots notified and wakes those waiters; each marked waiter returns `true`, and
/// a waiter that registers later has another slot, so it can never take a wake-up meant
/// for an earlier one. What a dead waiter does to the others, and what it costs:
/// - `notify` never waits for the waiters it woke.
/// - Before marking a slot of another process, `notify` checks that the process lives (a
///   `pidfd_open` and a read of `/proc/PID/stat`, a few microseconds; free for threads of
///   the caller's own process) and frees the slot of a dead one instead: a wake-up is not
///   spent on a dead waiter. A waiter whose death cannot be proven (another pid namespace,
///   see [`RawLock`](crate::RawLock)) counts as alive.
/// - A dead waiter's slot is only its own, so its leftovers never make another wait return
///   "notified"; slots of dead waiters are reclaimed when the table runs full.
///
/// At most 64 threads can wait at once ([`Error::InvalidArgument`] beyond that); which of
/// several waiters a `notify(1)` picks is unspecified (as with CPython's semaphores).
///
/// ```
/// let cond = multiprocessing::synchronize::Condition::new()?;
/// let _guard = cond.lock().expect("nobody died");
/// assert!(!cond.wait_timeout(std::time::Duration::from_millis(1))?); // nobody notifies
/// cond.notify(1)?; // nobody waits: a no-op
/// # Ok::<(), multiprocessing::synchronize::Error>(())
/// ```
#[repr(C)]
pub struct RawCondition {
    lock: RawRLock,
    /// Bumped by every `notify` that marked a slot: the futex word waiters sleep on, each
    /// with the wake mask bit of its slot.
    seq: AtomicU32,
    _reserved: AtomicU32,
    /// 0: free; else a waiter's identity word ([`ident`]), with [`NOTIFIED`] once notified.
    slots: [AtomicU64; WAITER_SLOTS],
}

impl fmt::Debug for RawCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Condition")
            .field("lock", &self.lock)
            .field("waiting", &self.waiting())
            .finish()
    }
}

/// Why `lock` is not the caller's to wait or notify with.
fn not_owned(lock: &RawRLock) -> Error {
    if lock.owner_pid().is_some() {
        Error::NotOwner
    } else {
        Error::NotHeld
    }
}

/// The futex wake mask of slot `i`.
fn bit(i: usize) -> NonZeroU32 {
    NonZeroU32::new(1 << (i % 32)).expect("one bit set")
}

impl Default for RawCondition {
    fn default() -> Self {
        Self::new()
    }
}

impl RawCondition {
    /// A fresh condition with its own unlocked `RLock`.
    pub const fn new() -> Self {
        RawCondition {
            lock: RawRLock::new(),
            seq: AtomicU32::new(0),
            _reserved: AtomicU32::new(0),
            slots: [const { AtomicU64::new(0) }; WAITER_SLOTS],
        }
    }

    /// The condition's lock (acquire it before `wait` and `notify`).
    pub fn get_lock(&self) -> &RawRLock {
        &self.lock
    }

    /// Acquires the condition's lock (see [`RawRLock::acquire`]).
    pub fn acquire(&self) -> Acquire {
        self.lock.acquire()
    }

    /// Acquires the lock, giving up after `timeout`.
    pub fn acquire_timeout(&self, timeout: Duration) -> Acquire {
        self.lock.acquire_timeout(timeout)
    }

    /// Releases one level of the lock.
    ///
    /// # Errors
    /// As [`RawRLock::release`].
    pub fn release(&self) -> Result<()> {
        self.lock.release()
    }

    /// Guard form of [`acquire`](Self::acquire).
    pub fn lock(&self) -> LockResult<RLockGuard<'_>> {
        self.lock.lock()
    }

    /// Guard form of [`acquire_timeout`](Self::acquire_timeout).
    pub fn lock_timeout(&self, timeout: Duration) -> TryLockResult<RLockGuard<'_>> {
        self.lock.lock_timeout(timeout)
    }

    /// Releases the lock, sleeps until notified, re-acquires the lock.
    ///
    /// # Errors
    /// [`Error::NotHeld`]/[`Error::NotOwner`] if the caller does not hold the lock;
    /// [`Error::InvalidArgument`] if 64 threads already wait; [`Error::OwnerDied`] if, while
    /// re-acquiring, the lock had to be taken from a dead process (the caller holds it).
    pub fn wait(&self) -> Result<()> {
        self.wait_until(Deadline::NEVER).map(|_| ())
    }

    /// Like [`wait`](Self::wait), giving up after `timeout`; whether it was notified
    /// (Python's `wait(timeout)`). The lock is held again either way.
    ///
    /// # Errors
    /// As [`wait`](Self::wait).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool> {
        self.wait_until(Deadline::after(Some(timeout)))
    }

    /// Waits until `predicate()` holds or `timeout` (if any) passes; returns the predicate's
    /// last value (Python's `wait_for`). The lock must be held.
    ///
    /// # Errors
    /// As [`wait`](Self::wait).
    pub fn wait_for(
        &self,
        predicate: impl FnMut() -> bool,
        timeout: Option<Duration>,
    ) -> Result<bool> {
        self.wait_for_on(&self.lock, predicate, timeout)
    }

    /// [`wait_for`](Self::wait_for) with `lock` as the condition's lock.
    pub(crate) fn wait_for_on(
        &self,
        lock: &RawRLock,
        mut predicate: impl FnMut() -> bool,
        timeout: Option<Duration>,
    ) -> Result<bool> {
        let deadline = Deadline::after(timeout);
        loop {
            if predicate() {
                return Ok(true);
            }
            if deadline.expired() {
                return Ok(false);
            }
            self.wait_until_on(lock, deadline)?;
        }
    }

    /// Wakes up to `n` waiters, skipping (and freeing the slots of) waiters that died. The
    /// lock must be held. It never waits for the waiters it wakes.
    ///
    /// # Errors
    /// [`Error::NotHeld`]/[`Error::NotOwner`] if the caller does not hold the lock.
    pub fn notify(&self, n: u32) -> Result<()> {
        self.notify_on(&self.lock, n)
    }

    /// [`notify`](Self::notify) with `lock` as the condition's lock.
    pub(crate) fn notify_on(&self, lock: &RawRLock, n: u32) -> Result<()> {
        if !lock.is_owned() {
            return Err(not_owned(lock));
        }
        let mut left = n;
        let mut woken = 0u32;
        for (i, slot) in self.slots.iter().enumerate() {
            if left == 0 {
                break;
            }
            let word = slot.load(Ordering::Acquire);
            if word == 0 || word & NOTIFIED != 0 {
                continue;
            }
            if ident::is_gone(lock.raw(), word) {
                let _ = slot.compare_exchange(word, 0, Ordering::Relaxed, Ordering::Relaxed);
                continue;
            }
            // Fails only if the waiter withdrew (timed out) meanwhile: then it is not waiting.
            if slot
                .compare_exchange(word, word | NOTIFIED, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                left -= 1;
                woken |= bit(i).get();
            }
        }
        if let Some(bits) = NonZeroU32::new(woken) {
            self.seq.fetch_add(1, Ordering::SeqCst);
            sys::futex_wake_bits(&self.seq, bits);
        }
        Ok(())
    }

    /// Wakes every waiter. The lock must be held.
    ///
    /// # Errors
    /// As [`notify`](Self::notify).
    pub fn notify_all(&self) -> Result<()> {
        self.notify(u32::MAX)
    }

    /// How many slots hold a waiter not yet notified (a snapshot; dead waiters included
    /// until a `notify` or a full table finds them).
    fn waiting(&self) -> usize {
        self.slots
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .filter(|&w| w != 0 && w & NOTIFIED == 0)
            .count()
    }

    /// Takes a free slot for `mine`, freeing dead waiters' slots if none is free.
    fn register(&self, lock: &RawRLock, mine: u64) -> Result<usize> {
        for pass in 0..2 {
            for (i, slot) in self.slots.iter().enumerate() {
                if slot.load(Ordering::Relaxed) == 0
                    && slot
                        .compare_exchange(0, mine, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    return Ok(i);
                }
            }
            if pass == 0 {
                for slot in &self.slots {
                    let word = slot.load(Ordering::Relaxed);
                    if word != 0 && ident::is_gone(lock.raw(), word) {
                        let _ =
                            slot.compare_exchange(word, 0, Ordering::Relaxed, Ordering::Relaxed);
                    }
                }
            }
        }
        Err(Error::InvalidArgument(
            "more than 64 threads waiting on one condition",
        ))
    }

    fn wait_until(&self, deadline: Deadline) -> Result<bool> {
        self.wait_until_on(&self.lock, deadline)
    }

    /// Waits with `lock` as the condition's lock (held by the caller).
    pub(crate) fn wait_until_on(&self, lock: &RawRLock, deadline: Deadline) -> Result<bool> {
        if !lock.is_owned() {
            return Err(not_owned(lock));
        }
        // Register while holding the lock, so a notify after the release sees us.
        let mine = ident::mine(lock.raw());
        let slot = self.register(lock, mine)?;
        let seq = self.seq.load(Ordering::SeqCst);
        let count = match lock.release_all() {
            Ok(count) => count,
            Err(e) => {
                self.slots[slot].store(0, Ordering::Relaxed);
                return Err(e);
            }
        };
        let notified = self.sleep(slot, mine, seq, deadline);
        match lock.reacquire(count) {
            Acquire::OwnerDied => Err(Error::OwnerDied),
            _ => Ok(notified),
        }
    }

    /// Sleeps until slot `i` (ours, holding `mine`) is notified, then frees it; or withdraws
    /// it when the deadline passes.
    fn sleep(&self, i: usize, mine: u64, mut seq: u32, deadline: Deadline) -> bool {
        let slot = &self.slots[i];
        loop {
            let word = slot.load(Ordering::Acquire);
            if word == mine | NOTIFIED {
                slot.store(0, Ordering::Release);
                return true;
            }
            if word != mine {
                // Freed by someone who proved us dead: cannot happen while we run.
                return false;
            }
            if deadline.expired() {
                if slot
                    .compare_exchange(mine, 0, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
                {
                    return false;
                }
                continue; // notified just now
            }
            let _ = sys::futex_wait_bits(&self.seq, seq, deadline, bit(i));
            seq = self.seq.load(Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize},
    };

    use super::*;

    #[test]
    fn wait_and_notify_need_the_lock() {
        let cond = RawCondition::new();
        assert!(matches!(cond.notify(1), Err(Error::NotHeld)));
        assert!(matches!(
            cond.wait_timeout(Duration::ZERO),
            Err(Error::NotHeld)
        ));
        let _g = cond.lock().unwrap();
        assert!(!cond.wait_timeout(Duration::from_millis(5)).unwrap());
        assert!(cond.get_lock().is_owned());
    }

    #[test]
    fn notify_wakes_exactly_n() {
        let cond = Arc::new(RawCondition::new());
        let woken = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let (cond, woken, stop) = (cond.clone(), woken.clone(), stop.clone());
                std::thread::spawn(move || {
                    let _g = cond.lock().unwrap();
                    while !stop.load(Ordering::Relaxed) {
                        if cond.wait_timeout(Duration::from_secs(20)).unwrap() {
                            woken.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                })
            })
            .collect();
        // Wait until all three are registered.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while cond.waiting() != 3 {
            assert!(std::time::Instant::now() < deadline, "waiters never waited");
            std::thread::yield_now();
        }
        {
            let _g = cond.lock().unwrap();
            cond.notify(2).unwrap();
        }
        while woken.load(Ordering::SeqCst) < 2 {
            assert!(std::time::Instant::now() < deadline, "notify(2) woke fewer");
            std::thread::yield_now();
        }
        assert_eq!(cond.waiting(), 1, "one still waiting");
        assert_eq!(woken.load(Ordering::SeqCst), 2);
        {
            let _g = cond.lock().unwrap();
            cond.notify_all().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(woken.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn wait_for_returns_the_predicate() {
        let cond = RawCondition::new();
        let _g = cond.lock().unwrap();
        assert!(cond.wait_for(|| true, None).unwrap());
        assert!(
            !cond
                .wait_for(|| false, Some(Duration::from_millis(5)))
                .unwrap()
        );
    }

    #[test]
    fn a_notifier_that_waits_at_once_cannot_take_the_wake_up_it_gave() {
        let cond = Arc::new(RawCondition::new());
        let turn = Arc::new(AtomicUsize::new(0));
        let other = {
            let (cond, turn) = (cond.clone(), turn.clone());
            std::thread::spawn(move || {
                let _g = cond.lock().unwrap();
                turn.store(1, Ordering::SeqCst);
                // Wait for the main thread's notify (it is the only one), then answer it.
                let woke = cond.wait_timeout(Duration::from_secs(10)).unwrap();
                turn.store(3, Ordering::SeqCst);
                cond.notify(1).unwrap();
                woke
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let _g = cond.lock().unwrap();
            if turn.load(Ordering::SeqCst) == 1 && cond.waiting() == 1 {
                break;
            }
            drop(_g);
            assert!(
                std::time::Instant::now() < deadline,
                "the other thread never waited"
            );
            std::thread::yield_now();
        }
        let _g = cond.lock().unwrap();
        turn.store(2, Ordering::SeqCst);
        cond.notify(1).unwrap();
        // Wait at once: the token is the other thread's, not ours.
        let answered = cond
            .wait_for(
                || turn.load(Ordering::SeqCst) == 3,
                Some(Duration::from_secs(20)),
            )
            .unwrap();
        drop(_g);
        assert!(answered);
        assert!(
            other.join().unwrap(),
            "the notify went to the notifier's own wait"
        );
    }

    /// A condition with one waiter registered by a child process that was then killed.
    fn condition_with_a_dead_waiter() -> crate::Shared<RawCondition> {
        use crate::test_util::{fork, reap};
        let cond = crate::Shared::<RawCondition>::new().unwrap();
        let victim = fork(|| {
            let _ = cond.acquire();
            let _ = cond.wait_timeout(Duration::from_secs(60));
            1
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while cond.waiting() != 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "the victim never waited"
            );
            std::thread::yield_now();
        }
        // SAFETY: killing our own child.
        unsafe { libc::kill(victim, libc::SIGKILL) };
        assert_eq!(reap(victim), 128 + libc::SIGKILL);
        cond
    }

    #[test]
    fn a_dead_waiter_leaves_no_wake_up_behind_and_gets_none() {
        let cond = condition_with_a_dead_waiter();
        let _g = cond.lock().expect("the victim released it to wait");
        cond.notify(1).unwrap();
        assert_eq!(cond.waiting(), 0, "the dead waiter's slot is freed");
        assert!(
            !cond.wait_timeout(Duration::from_millis(20)).unwrap(),
            "a wait returned notified with nobody notifying"
        );
    }

    #[test]
    fn a_notify_skips_a_dead_waiter_for_a_live_one() {
        let cond = condition_with_a_dead_waiter();
        let live = {
            let cond = cond.clone();
            std::thread::spawn(move || {
                let _g = cond.lock().unwrap();
                cond.wait_timeout(Duration::from_secs(60)).unwrap()
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while cond.waiting() != 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "the thread never waited"
            );
            std::thread::yield_now();
        }
        {
            let _g = cond.lock().unwrap();
            cond.notify(1).unwrap();
        }
        assert!(live.join().unwrap(), "the live waiter got the wake-up");
    }
}
