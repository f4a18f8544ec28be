//! `Condition`: an RLock plus a futex word counting waiters and wake-up tokens.

use std::{
    fmt,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use crate::{
    Acquire, Error, LockResult, RawRLock, Result, TryLockResult,
    rlock::RLockGuard,
    sys::{self, Deadline, Woke},
};

/// Low half: waiters registered and not yet woken. High half: wake-ups granted by `notify`
/// and not yet taken.
const WAITER: u32 = 1;
const TOKEN: u32 = 1 << 16;
const HALF: u32 = 0xffff;

/// Python's `multiprocessing.Condition` (over its default `RLock`), placeable in shared
/// memory (`#[repr(C)]`; all-zero is a fresh condition); [`crate::Condition`] is the handle
/// that allocates one.
///
/// `notify(n)` wakes at most `n` of the processes waiting at that moment: it turns waiters
/// into wake-up tokens, each returning waiter takes one, and (as CPython's does) the
/// notifier keeps the lock until its tokens are taken, so a waiter that registers later
/// cannot take a wake-up meant for an earlier one.
///
/// ```
/// let cond = mp_sync::Condition::new()?;
/// let _guard = cond.lock().expect("nobody died");
/// assert!(!cond.wait_timeout(std::time::Duration::from_millis(1))?); // nobody notifies
/// cond.notify(1)?; // nobody waits: a no-op
/// # Ok::<(), mp_sync::Error>(())
/// ```
#[repr(C)]
#[derive(Default)]
pub struct RawCondition {
    lock: RawRLock,
    word: AtomicU32,
    /// Counts wake-up tokens taken; a notifier sleeps on it until its tokens are gone.
    taken: AtomicU32,
}

/// How long `notify` waits for the waiters it woke to take their tokens: long enough for any
/// live process, short enough that a waiter that died while registered costs one pause, not
/// a hang.
const NOTIFY_BOUND: Duration = Duration::from_secs(1);

impl fmt::Debug for RawCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = self.word.load(Ordering::Relaxed);
        f.debug_struct("Condition")
            .field("lock", &self.lock)
            .field("waiting", &(word & HALF))
            .finish()
    }
}

impl RawCondition {
    /// A fresh condition with its own unlocked `RLock`.
    pub const fn new() -> Self {
        RawCondition {
            lock: RawRLock::new(),
            word: AtomicU32::new(0),
            taken: AtomicU32::new(0),
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
    /// [`Error::OwnerDied`] if, while re-acquiring, the lock had to be taken from a dead
    /// process (the caller holds it).
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
            self.wait_until(deadline)?;
        }
    }

    /// Wakes up to `n` waiters. The lock must be held.
    ///
    /// # Errors
    /// [`Error::NotHeld`]/[`Error::NotOwner`] if the caller does not hold the lock.
    pub fn notify(&self, n: u32) -> Result<()> {
        if !self.lock.is_owned() {
            return Err(self.not_owned());
        }
        let taken_before = self.taken.load(Ordering::Acquire);
        let mut word = self.word.load(Ordering::Relaxed);
        let woken = loop {
            let k = n.min(word & HALF).min(HALF - (word >> 16));
            if k == 0 {
                return Ok(());
            }
            match self.word.compare_exchange_weak(
                word,
                word - k * WAITER + k * TOKEN,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => break k,
                Err(now) => word = now,
            }
        };
        sys::futex_wake(&self.word, woken);
        // Hold the lock until the woken have taken their tokens (later waiters need the lock
        // to register, so they cannot take them instead).
        let deadline = Deadline::after(Some(NOTIFY_BOUND));
        loop {
            let taken = self.taken.load(Ordering::Acquire);
            if taken.wrapping_sub(taken_before) >= woken
                || sys::futex_wait(&self.taken, taken, deadline) == Woke::TimedOut
            {
                return Ok(());
            }
        }
    }

    /// Wakes every waiter. The lock must be held.
    ///
    /// # Errors
    /// As [`notify`](Self::notify).
    pub fn notify_all(&self) -> Result<()> {
        self.notify(u32::MAX)
    }

    fn not_owned(&self) -> Error {
        if self.lock.owner_pid().is_some() {
            Error::NotOwner
        } else {
            Error::NotHeld
        }
    }

    fn wait_until(&self, deadline: Deadline) -> Result<bool> {
        if !self.lock.is_owned() {
            return Err(self.not_owned());
        }
        // Register while holding the lock, so a notify after the release sees us.
        if self.word.fetch_add(WAITER, Ordering::Relaxed) & HALF == HALF {
            self.word.fetch_sub(WAITER, Ordering::Relaxed);
            return Err(Error::InvalidArgument(
                "more than 65535 waiters on one condition",
            ));
        }
        let count = self.lock.release_all()?;
        let notified = self.sleep(deadline);
        match self.lock.reacquire(count) {
            Acquire::OwnerDied => Err(Error::OwnerDied),
            _ => Ok(notified),
        }
    }

    /// Takes a wake-up token, or withdraws the registration when the deadline passes.
    fn sleep(&self, deadline: Deadline) -> bool {
        let mut word = self.word.load(Ordering::Acquire);
        loop {
            if word >> 16 != 0 {
                match self.word.compare_exchange_weak(
                    word,
                    word - TOKEN,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        self.taken.fetch_add(1, Ordering::Release);
                        sys::futex_wake(&self.taken, 1);
                        return true;
                    }
                    Err(now) => word = now,
                }
                continue;
            }
            if deadline.expired() {
                // No token: our registration is still counted among the waiters.
                match self.word.compare_exchange_weak(
                    word,
                    word - WAITER,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return false,
                    Err(now) => word = now,
                }
                continue;
            }
            let _: Woke = sys::futex_wait(&self.word, word, deadline);
            word = self.word.load(Ordering::Acquire);
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
        while cond.word.load(Ordering::SeqCst) & HALF != 3 {
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
        assert_eq!(cond.word.load(Ordering::SeqCst), 1, "one still waiting");
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
            if turn.load(Ordering::SeqCst) == 1 && cond.word.load(Ordering::SeqCst) & HALF == 1 {
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
}
