//! `Event`: a flag on a futex word.

use std::{
    fmt,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use crate::sys::{self, Deadline, Woke};

/// Python's `multiprocessing.Event`, placeable in shared memory (`#[repr(C)]`; all-zero is
/// clear); [`crate::Event`] is the handle that allocates one.
///
/// ```
/// let event = mp_sync::Event::new()?;
/// assert!(!event.wait_timeout(std::time::Duration::from_millis(1)));
/// event.set();
/// assert!(event.is_set() && event.wait_timeout(std::time::Duration::ZERO));
/// # Ok::<(), mp_sync::Error>(())
/// ```
#[repr(C)]
#[derive(Default)]
pub struct RawEvent {
    flag: AtomicU32,
    sleepers: AtomicU32,
}

impl fmt::Debug for RawEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("is_set", &self.is_set())
            .finish()
    }
}

impl RawEvent {
    /// A clear event.
    pub const fn new() -> Self {
        RawEvent {
            flag: AtomicU32::new(0),
            sleepers: AtomicU32::new(0),
        }
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> bool {
        self.flag.load(Ordering::Acquire) != 0
    }

    /// Sets the flag and wakes every waiter.
    pub fn set(&self) {
        if self.flag.swap(1, Ordering::SeqCst) == 0 && self.sleepers.load(Ordering::SeqCst) != 0 {
            sys::futex_wake(&self.flag, u32::MAX);
        }
    }

    /// Clears the flag.
    pub fn clear(&self) {
        self.flag.store(0, Ordering::Release);
    }

    /// Blocks until the flag is set.
    pub fn wait(&self) {
        self.wait_until(Deadline::NEVER);
    }

    /// Blocks until the flag is set or `timeout` passes; whether it is set (Python's
    /// `wait(timeout)`).
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(Deadline::after(Some(timeout)))
    }

    fn wait_until(&self, deadline: Deadline) -> bool {
        for _ in 0..100 {
            if self.is_set() {
                return true;
            }
            std::hint::spin_loop();
        }
        loop {
            self.sleepers.fetch_add(1, Ordering::SeqCst);
            let woke = if self.flag.load(Ordering::SeqCst) == 0 {
                sys::futex_wait(&self.flag, 0, deadline)
            } else {
                Woke::Maybe
            };
            self.sleepers.fetch_sub(1, Ordering::Relaxed);
            if self.is_set() {
                return true;
            }
            if woke == Woke::TimedOut || deadline.expired() {
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn set_wakes_every_waiter_and_clear_resets() {
        let event = Arc::new(RawEvent::new());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let e = event.clone();
                std::thread::spawn(move || e.wait_timeout(Duration::from_secs(20)))
            })
            .collect();
        event.set();
        for w in waiters {
            assert!(w.join().unwrap());
        }
        event.clear();
        assert!(!event.is_set());
        assert!(!event.wait_timeout(Duration::from_millis(5)));
    }
}
