//! `RLock`: a recursive lock owned by one thread of one process.

use std::{
    fmt,
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
    time::Duration,
};

use crate::{
    Acquire, Error, LockResult, RawLock, Result, TryLockResult,
    lock::{blocking_result, guard_result},
    sys::{self, Deadline},
};

/// Python's `multiprocessing.RLock`, placeable in shared memory (`#[repr(C)]`, all-zero is
/// unlocked); [`crate::RLock`] is the handle that allocates one.
///
/// The owning thread may acquire it again; it is free once released as often as acquired,
/// and only the owner may release it. Owner death is handled as for [`RawLock`]: the
/// recursion count is discarded and the new owner is told [`Acquire::OwnerDied`].
///
/// ```
/// let rlock = multiprocessing::synchronize::RLock::new()?;
/// let outer = rlock.lock().expect("nobody died");
/// let inner = rlock.lock().expect("re-entrant");
/// assert_eq!(rlock.count(), 2);
/// drop((inner, outer));
/// assert!(rlock.release().is_err()); // no longer held
/// # Ok::<(), multiprocessing::synchronize::Error>(())
/// ```
#[repr(C)]
#[derive(Default)]
pub struct RawRLock {
    lock: RawLock,
    count: AtomicU32,
    /// The owning thread: its process image's random nonce plus its thread token, so one
    /// load tells "mine" from anything else (another thread, another process, a dead owner).
    /// Not the pid: a process in another pid namespace, or one that reused a dead owner's
    /// pid, has the same pid and thread token as the owner and would take the lock as its
    /// own (two `&mut` to one `Value`).
    owner: AtomicU64,
}

/// The calling thread's identity as an `RLock` owner.
#[inline]
fn me() -> u64 {
    sys::nonce().wrapping_add(sys::thread_token())
}

impl fmt::Debug for RawRLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RLock")
            .field("owner", &self.lock.owner_pid())
            .field("count", &self.count.load(Ordering::Relaxed))
            .finish()
    }
}

impl RawRLock {
    /// An unlocked recursive lock.
    pub const fn new() -> Self {
        RawRLock {
            lock: RawLock::new(),
            count: AtomicU32::new(0),
            owner: AtomicU64::new(0),
        }
    }

    /// Blocks until the calling thread holds the lock (at once if it already does).
    pub fn acquire(&self) -> Acquire {
        self.acquire_until(Deadline::NEVER)
    }

    /// Takes the lock only if that needs no waiting.
    pub fn try_acquire(&self) -> Acquire {
        self.acquire_until(Deadline::now())
    }

    /// Blocks until held or `timeout` passes.
    pub fn acquire_timeout(&self, timeout: Duration) -> Acquire {
        self.acquire_until(Deadline::after(Some(timeout)))
    }

    /// Releases one level of ownership.
    ///
    /// # Errors
    /// [`Error::NotHeld`] if nobody holds it, [`Error::NotOwner`] if another thread or
    /// process does.
    pub fn release(&self) -> Result<()> {
        self.check_owner()?;
        let count = self.count.load(Ordering::Relaxed);
        if count > 1 {
            self.count.store(count - 1, Ordering::Relaxed);
            return Ok(());
        }
        self.count.store(0, Ordering::Relaxed);
        self.owner.store(0, Ordering::Relaxed);
        self.lock.release()
    }

    /// Blocks until held; the guard releases one level on drop.
    pub fn lock(&self) -> LockResult<RLockGuard<'_>> {
        blocking_result(self.acquire(), || RLockGuard {
            lock: self,
            _not_send: std::marker::PhantomData,
        })
    }

    /// The guard if that needs no waiting.
    pub fn try_lock(&self) -> TryLockResult<RLockGuard<'_>> {
        guard_result(self.try_acquire(), || RLockGuard {
            lock: self,
            _not_send: std::marker::PhantomData,
        })
    }

    /// The guard once held, or `WouldBlock` after `timeout`.
    pub fn lock_timeout(&self, timeout: Duration) -> TryLockResult<RLockGuard<'_>> {
        guard_result(self.acquire_timeout(timeout), || RLockGuard {
            lock: self,
            _not_send: std::marker::PhantomData,
        })
    }

    /// Whether the calling thread holds the lock.
    #[inline]
    pub fn is_owned(&self) -> bool {
        self.owner.load(Ordering::Relaxed) == me()
    }

    /// The pid of the process that holds the lock, if any (a snapshot).
    pub fn owner_pid(&self) -> Option<u32> {
        self.lock.owner_pid()
    }

    /// How many times the owner has acquired it (0 when free); a snapshot.
    pub fn count(&self) -> u32 {
        self.count.load(Ordering::Relaxed)
    }

    fn check_owner(&self) -> Result<()> {
        if self.is_owned() {
            Ok(())
        } else if self.lock.is_locked() {
            Err(Error::NotOwner)
        } else {
            Err(Error::NotHeld)
        }
    }

    #[inline]
    pub(crate) fn acquire_until(&self, deadline: Deadline) -> Acquire {
        if self.lock.try_fast() {
            self.owner.store(me(), Ordering::Relaxed);
            self.count.store(1, Ordering::Relaxed);
            return Acquire::Acquired;
        }
        if self.is_owned() {
            let count = self.count.load(Ordering::Relaxed);
            self.count.store(count + 1, Ordering::Relaxed);
            return Acquire::Acquired;
        }
        let how = self.lock.acquire_until(deadline);
        if how.is_held() {
            self.owner.store(me(), Ordering::Relaxed);
            self.count.store(1, Ordering::Relaxed);
        }
        how
    }

    /// The plain lock underneath (its namespace table names waiters of a condition).
    pub(crate) fn raw(&self) -> &RawLock {
        &self.lock
    }

    /// Releases every level at once (for `Condition::wait`); returns how many to restore.
    pub(crate) fn release_all(&self) -> Result<u32> {
        self.check_owner()?;
        let count = self.count.swap(0, Ordering::Relaxed);
        self.owner.store(0, Ordering::Relaxed);
        self.lock.release()?;
        Ok(count)
    }

    /// Re-takes the lock after [`release_all`](Self::release_all) with the saved count.
    pub(crate) fn reacquire(&self, count: u32) -> Acquire {
        let how = self.lock.acquire();
        self.owner.store(me(), Ordering::Relaxed);
        self.count.store(count.max(1), Ordering::Relaxed);
        how
    }
}

/// Holds one level of a [`RawRLock`] until dropped.
#[must_use = "the lock is released as soon as the guard is dropped"]
#[derive(Debug)]
pub struct RLockGuard<'a> {
    lock: &'a RawRLock,
    /// Only the owning thread can release an `RLock`: the guard stays on it.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for RLockGuard<'_> {
    fn drop(&mut self) {
        let _ = self.lock.release();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn only_the_owner_thread_may_release() {
        let rlock = Arc::new(RawRLock::new());
        assert!(matches!(rlock.release(), Err(Error::NotHeld)));
        assert_eq!(rlock.acquire(), Acquire::Acquired);
        assert_eq!(rlock.acquire(), Acquire::Acquired);
        let other = rlock.clone();
        std::thread::spawn(move || {
            assert!(matches!(other.release(), Err(Error::NotOwner)));
            assert_eq!(other.try_acquire(), Acquire::TimedOut);
        })
        .join()
        .unwrap();
        rlock.release().unwrap();
        assert!(rlock.is_owned());
        rlock.release().unwrap();
        assert!(!rlock.is_owned());
        let other = rlock.clone();
        std::thread::spawn(move || assert_eq!(other.try_acquire(), Acquire::Acquired))
            .join()
            .unwrap();
    }

    #[test]
    fn an_rlock_left_held_by_a_dead_process_is_taken_over_with_a_fresh_count() {
        let rlock = crate::Shared::<RawRLock>::new().unwrap();
        // SAFETY: the child only takes the lock twice and `_exit`s.
        match unsafe { libc::fork() } {
            0 => {
                let ok = rlock.acquire().is_held() && rlock.acquire().is_held();
                // SAFETY: ends the child at once, still holding the lock.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) }
            }
            -1 => panic!("fork failed"),
            pid => {
                // Wait with a deadline: a child stuck in the fork would otherwise hang the test.
                let pidfd = rustix::process::pidfd_open(
                    rustix::process::Pid::from_raw(pid).unwrap(),
                    rustix::process::PidfdFlags::empty(),
                )
                .unwrap();
                let mut fds = [rustix::event::PollFd::new(
                    &pidfd,
                    rustix::event::PollFlags::IN,
                )];
                let timeout = rustix::time::Timespec {
                    tv_sec: 20,
                    tv_nsec: 0,
                };
                let exited = rustix::event::poll(&mut fds, Some(&timeout)) == Ok(1);
                if !exited {
                    // SAFETY: killing our own child.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                let mut status = 0;
                // SAFETY: our child; a valid out-pointer.
                assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
                assert!(exited, "the forked child hung");
                assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
            }
        }
        assert!(rlock.owner_pid().is_some(), "the dead child still owns it");
        assert_eq!(
            rlock.acquire_timeout(Duration::from_secs(20)),
            Acquire::OwnerDied
        );
        assert_eq!(rlock.count(), 1);
        rlock.release().unwrap();
        assert!(matches!(rlock.release(), Err(Error::NotHeld)));
    }
}
