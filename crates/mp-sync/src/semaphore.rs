//! `Semaphore` and `BoundedSemaphore`: a counter on a futex word.

use std::{
    fmt,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use crate::{
    Error, Result,
    sys::{self, Deadline},
};

/// The largest value a semaphore can hold (Linux's `SEM_VALUE_MAX`).
pub const MAX_SEMAPHORE_VALUE: u32 = i32::MAX as u32;

const SPINS: u32 = 200;

/// Python's `multiprocessing.Semaphore` and `BoundedSemaphore`, placeable in shared memory
/// (`#[repr(C)]`; all-zero is an unbounded semaphore at 0). [`crate::Semaphore`] and
/// [`crate::BoundedSemaphore`] are the handles that allocate one.
///
/// ```
/// let sem = multiprocessing::synchronize::Semaphore::new(2)?;
/// assert!(sem.try_acquire() && sem.try_acquire());
/// assert!(!sem.try_acquire());
/// sem.release()?;
/// assert_eq!(sem.get_value(), 1);
/// # Ok::<(), multiprocessing::synchronize::Error>(())
/// ```
#[repr(C)]
#[derive(Default)]
pub struct RawSemaphore {
    value: AtomicU32,
    sleepers: AtomicU32,
    /// 0: unbounded; otherwise the bound plus one.
    bound: AtomicU32,
}

impl fmt::Debug for RawSemaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Semaphore")
            .field("value", &self.get_value())
            .field("bound", &self.bound())
            .finish()
    }
}

impl RawSemaphore {
    /// A semaphore at `value`; with `bounded`, releasing above `value` is an error.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `value` exceeds [`MAX_SEMAPHORE_VALUE`].
    pub fn new(value: u32, bounded: bool) -> Result<Self> {
        if value > MAX_SEMAPHORE_VALUE {
            return Err(Error::InvalidArgument(
                "semaphore value above SEM_VALUE_MAX",
            ));
        }
        Ok(RawSemaphore {
            value: AtomicU32::new(value),
            sleepers: AtomicU32::new(0),
            bound: AtomicU32::new(if bounded { value + 1 } else { 0 }),
        })
    }

    /// Sets value and bound in place (for a zeroed region).
    pub(crate) fn init(&self, value: u32, bounded: bool) -> Result<()> {
        let fresh = RawSemaphore::new(value, bounded)?;
        self.value
            .store(fresh.value.into_inner(), Ordering::Relaxed);
        self.bound
            .store(fresh.bound.into_inner(), Ordering::Relaxed);
        Ok(())
    }

    /// The current value (Python's `get_value()`); a snapshot.
    pub fn get_value(&self) -> u32 {
        self.value.load(Ordering::Relaxed)
    }

    /// The bound of a bounded semaphore.
    pub fn bound(&self) -> Option<u32> {
        self.bound.load(Ordering::Relaxed).checked_sub(1)
    }

    /// Blocks until the value is positive, then decrements it.
    pub fn acquire(&self) {
        self.acquire_until(Deadline::NEVER);
    }

    /// Decrements the value if it is positive now; whether it did.
    pub fn try_acquire(&self) -> bool {
        self.try_take()
    }

    /// Like [`acquire`](Self::acquire), giving up after `timeout`; whether it decremented.
    pub fn acquire_timeout(&self, timeout: Duration) -> bool {
        self.acquire_until(Deadline::after(Some(timeout)))
    }

    /// Increments the value, waking one waiter.
    ///
    /// # Errors
    /// `TooManyReleases` past a bounded semaphore's bound, `Overflow` past
    /// [`MAX_SEMAPHORE_VALUE`]; the value is unchanged then. Both are variants of this
    /// crate's error, [`Error`](crate::Error) (re-exported by the umbrella crate as
    /// `multiprocessing::synchronize::Error`, and wrapped in its `Error::Sync`).
    pub fn release(&self) -> Result<()> {
        self.release_n(1)
    }

    /// Increments the value by `n`, waking up to `n` waiters.
    ///
    /// # Errors
    /// As [`release`](Self::release).
    pub fn release_n(&self, n: u32) -> Result<()> {
        let limit = self.bound().unwrap_or(MAX_SEMAPHORE_VALUE);
        let mut value = self.value.load(Ordering::Relaxed);
        loop {
            let next =
                value
                    .checked_add(n)
                    .filter(|&v| v <= limit)
                    .ok_or(if self.bound().is_some() {
                        Error::TooManyReleases
                    } else {
                        Error::Overflow
                    })?;
            match self
                .value
                .compare_exchange_weak(value, next, Ordering::SeqCst, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => value = now,
            }
        }
        if self.sleepers.load(Ordering::SeqCst) != 0 {
            sys::futex_wake(&self.value, n);
        }
        Ok(())
    }

    fn try_take(&self) -> bool {
        let mut value = self.value.load(Ordering::Relaxed);
        while value > 0 {
            match self.value.compare_exchange_weak(
                value,
                value - 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => value = now,
            }
        }
        false
    }

    pub(crate) fn acquire_until(&self, deadline: Deadline) -> bool {
        if self.try_take() {
            return true;
        }
        for _ in 0..SPINS {
            std::hint::spin_loop();
            if self.value.load(Ordering::Relaxed) != 0 && self.try_take() {
                return true;
            }
        }
        sys::sleep_until(
            &self.value,
            &self.sleepers,
            deadline,
            |value| value != 0,
            || self.try_take(),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn bounded_semaphore_refuses_over_release() {
        let sem = RawSemaphore::new(1, true).unwrap();
        assert!(matches!(sem.release(), Err(Error::TooManyReleases)));
        assert!(sem.try_acquire());
        assert!(!sem.try_acquire());
        assert!(!sem.acquire_timeout(Duration::from_millis(10)));
        sem.release().unwrap();
        assert_eq!(sem.get_value(), 1);
    }

    #[test]
    fn unbounded_semaphore_counts_up_to_the_maximum() {
        let sem = RawSemaphore::default();
        assert_eq!(sem.bound(), None);
        sem.release_n(3).unwrap();
        assert_eq!(sem.get_value(), 3);
        assert!(matches!(
            sem.release_n(MAX_SEMAPHORE_VALUE),
            Err(Error::Overflow)
        ));
        assert_eq!(sem.get_value(), 3);
        assert!(RawSemaphore::new(MAX_SEMAPHORE_VALUE + 1, false).is_err());
    }

    #[test]
    fn release_wakes_a_sleeper() {
        let sem = Arc::new(RawSemaphore::default());
        let other = sem.clone();
        let t = std::thread::spawn(move || other.acquire_timeout(Duration::from_secs(20)));
        sem.release().unwrap();
        assert!(t.join().unwrap());
        assert_eq!(sem.get_value(), 0);
    }
}
