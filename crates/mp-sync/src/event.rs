//! `Event`: a flag on a futex word.

use std::{
    fmt,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use crate::sys::{self, Deadline};

/// Python's `multiprocessing.Event`, placeable in shared memory (`#[repr(C)]`; all-zero is
/// clear); [`crate::Event`] is the handle that allocates one.
///
/// ```
/// let event = multiprocessing::synchronize::Event::new()?;
/// assert!(!event.wait_timeout(std::time::Duration::from_millis(1)));
/// event.set();
/// assert!(event.is_set() && event.wait_timeout(std::time::Duration::ZERO));
/// # Ok::<(), multiprocessing::synchronize::Error>(())
/// ```
#[repr(C)]
#[derive(Default)]
pub struct RawEvent {
    /// Bit 0: the flag. The rest counts `set`s, so a set quickly undone by a clear still
    /// changes the word and wakes every waiter.
    word: AtomicU32,
    sleepers: AtomicU32,
}

const FLAG: u32 = 1;
const SET: u32 = 2;

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
            word: AtomicU32::new(0),
            sleepers: AtomicU32::new(0),
        }
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> bool {
        self.word.load(Ordering::Acquire) & FLAG != 0
    }

    /// Sets the flag and wakes every waiter.
    pub fn set(&self) {
        let mut word = self.word.load(Ordering::Relaxed);
        loop {
            if word & FLAG != 0 {
                return;
            }
            match self.word.compare_exchange_weak(
                word,
                word.wrapping_add(SET) | FLAG,
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => word = now,
            }
        }
        if self.sleepers.load(Ordering::SeqCst) != 0 {
            sys::futex_wake(&self.word, u32::MAX);
        }
    }

    /// Clears the flag.
    pub fn clear(&self) {
        self.word.fetch_and(!FLAG, Ordering::Release);
    }

    /// Blocks until the flag is set.
    pub fn wait(&self) {
        self.wait_until(Deadline::NEVER);
    }

    /// Blocks until the flag is set or `timeout` passes; whether it was set — also when a
    /// `set` happened during the wait and a `clear` came before this waiter ran (as Python's
    /// `threading.Event`; `multiprocessing`'s would say `false` then).
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(Deadline::after(Some(timeout)))
    }

    fn wait_until(&self, deadline: Deadline) -> bool {
        let start = self.word.load(Ordering::Acquire);
        if start & FLAG != 0 {
            return true;
        }
        let was_set = |word: u32| word & FLAG != 0 || (word ^ start) & !FLAG != 0;
        for _ in 0..100 {
            std::hint::spin_loop();
            if was_set(self.word.load(Ordering::Acquire)) {
                return true;
            }
        }
        sys::sleep_until(&self.word, &self.sleepers, deadline, was_set, || {
            was_set(self.word.load(Ordering::Acquire))
        })
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

    #[test]
    fn a_set_undone_at_once_still_wakes_the_waiters() {
        let event = Arc::new(RawEvent::new());
        let waiter = {
            let e = event.clone();
            std::thread::spawn(move || e.wait_timeout(Duration::from_secs(20)))
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while event.sleepers.load(Ordering::SeqCst) == 0 {
            assert!(std::time::Instant::now() < deadline, "never slept");
            std::thread::yield_now();
        }
        event.set();
        event.clear();
        assert!(waiter.join().unwrap(), "the pulse was missed");
        assert!(!event.is_set());
    }
}
