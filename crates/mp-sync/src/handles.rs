//! The handles Python programs use: each primitive in its own shared region, a `Message`
//! that a fork inherits and a pipe or queue carries to any process.

use std::{fmt, ops::Deref, sync::Arc, time::Duration};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{
    Error, RawBarrier, RawCondition, RawEvent, RawLock, RawRLock, RawSemaphore, Result, Shared,
};

macro_rules! handle {
    ($(#[$doc:meta])* $name:ident($raw:ty)) => {
        $(#[$doc])*
        #[derive(Clone, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Shared<$raw>);

        impl Deref for $name {
            type Target = $raw;

            fn deref(&self) -> &$raw {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl $name {
            /// The shared region behind this handle.
            pub fn shared(&self) -> &Shared<$raw> {
                &self.0
            }
        }
    };
}

handle! {
    /// Python's `multiprocessing.Lock`: a [`RawLock`] in its own shared region.
    ///
    /// Clone it for threads; pass it to a child process as an argument or over a pipe (it is
    /// a `Message`), or let a fork inherit it. See [`RawLock`] for the methods.
    ///
    /// ```
    /// let lock = multiprocessing::synchronize::Lock::new()?;
    /// let copy: multiprocessing::synchronize::Lock = multiprocessing::codec::Frame::encode(&lock)?.decode()?; // as a child gets it
    /// let guard = lock.lock().expect("nobody died");
    /// assert!(!copy.try_acquire().is_held());
    /// drop(guard);
    /// assert!(copy.try_acquire().is_held());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    Lock(RawLock)
}

impl Lock {
    /// A new unlocked lock in its own shared region.
    ///
    /// # Errors
    /// [`Error::Os`] if the region cannot be created.
    pub fn new() -> Result<Self> {
        Ok(Lock(Shared::new()?))
    }
}

handle! {
    /// Python's `multiprocessing.RLock`: a [`RawRLock`] in its own shared region.
    ///
    /// ```
    /// let rlock = multiprocessing::synchronize::RLock::new()?;
    /// assert!(rlock.acquire().is_held() && rlock.acquire().is_held());
    /// rlock.release()?;
    /// rlock.release()?;
    /// # Ok::<(), multiprocessing::synchronize::Error>(())
    /// ```
    RLock(RawRLock)
}

impl RLock {
    /// A new unlocked recursive lock.
    ///
    /// # Errors
    /// [`Error::Os`] if the region cannot be created.
    pub fn new() -> Result<Self> {
        Ok(RLock(Shared::new()?))
    }
}

handle! {
    /// Python's `multiprocessing.Semaphore`: a [`RawSemaphore`] in its own shared region.
    ///
    /// ```
    /// let sem = multiprocessing::synchronize::Semaphore::new(1)?;
    /// sem.acquire();
    /// assert!(!sem.acquire_timeout(std::time::Duration::from_millis(1)));
    /// sem.release()?;
    /// # Ok::<(), multiprocessing::synchronize::Error>(())
    /// ```
    Semaphore(RawSemaphore)
}

impl Semaphore {
    /// A semaphore starting at `value`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] above [`MAX_SEMAPHORE_VALUE`](crate::MAX_SEMAPHORE_VALUE);
    /// [`Error::Os`].
    pub fn new(value: u32) -> Result<Self> {
        let shared = Shared::<RawSemaphore>::new()?;
        shared.init(value, false)?;
        Ok(Semaphore(shared))
    }
}

handle! {
    /// Python's `multiprocessing.BoundedSemaphore`: releasing above the initial value fails
    /// with `TooManyReleases`, a variant of this crate's error,
    /// [`Error`](crate::Error) (re-exported by the umbrella crate as
    /// `multiprocessing::synchronize::Error`, and wrapped in its `Error::Sync`).
    ///
    /// ```
    /// let sem = multiprocessing::synchronize::BoundedSemaphore::new(1)?;
    /// assert!(matches!(sem.release(), Err(multiprocessing::synchronize::Error::TooManyReleases)));
    /// assert!(sem.try_acquire());
    /// sem.release()?;
    /// # Ok::<(), multiprocessing::synchronize::Error>(())
    /// ```
    BoundedSemaphore(RawSemaphore)
}

impl BoundedSemaphore {
    /// A bounded semaphore starting at (and bounded by) `value`.
    ///
    /// # Errors
    /// As [`Semaphore::new`].
    pub fn new(value: u32) -> Result<Self> {
        let shared = Shared::<RawSemaphore>::new()?;
        shared.init(value, true)?;
        Ok(BoundedSemaphore(shared))
    }
}

/// Python's `multiprocessing.Condition`: a [`RawCondition`] in its own shared region, over
/// its own `RLock` ([`Condition::new`]) or one you supply ([`Condition::with_lock`], Python's
/// `Condition(lock)`), which several conditions may share.
///
/// ```
/// let cond = multiprocessing::synchronize::Condition::new()?;
/// let _held = cond.lock().expect("nobody died");
/// assert!(cond.wait_for(|| true, None)?);
/// # Ok::<(), multiprocessing::synchronize::Error>(())
/// ```
///
/// Two conditions on one lock, as a bounded buffer uses them:
///
/// ```
/// use multiprocessing::synchronize::{Condition, RLock};
///
/// let lock = RLock::new()?;
/// let (not_empty, not_full) = (Condition::with_lock(lock.clone())?, Condition::with_lock(lock.clone())?);
/// let _held = not_empty.lock().expect("nobody died");
/// assert!(not_full.get_lock().is_owned()); // the same lock
/// not_full.notify(1)?;
/// assert!(!not_empty.wait_timeout(std::time::Duration::from_millis(1))?);
/// # Ok::<(), multiprocessing::synchronize::Error>(())
/// ```
#[derive(Clone, Serialize, Deserialize)]
pub struct Condition {
    cond: Shared<RawCondition>,
    /// The lock supplied by the user; `None`: the condition's own.
    lock: Option<RLock>,
}

impl fmt::Debug for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.lock {
            None => fmt::Debug::fmt(&*self.cond, f),
            Some(lock) => f
                .debug_struct("Condition")
                .field("lock", &**lock)
                .finish_non_exhaustive(),
        }
    }
}

impl Condition {
    /// A new condition with its own `RLock`.
    ///
    /// # Errors
    /// [`Error::Os`] if the region cannot be created.
    pub fn new() -> Result<Self> {
        Ok(Condition {
            cond: Shared::new()?,
            lock: None,
        })
    }

    /// A new condition over `lock` (Python's `Condition(lock)`): holding `lock` is holding
    /// the condition, and `wait` releases and re-takes it.
    ///
    /// # Errors
    /// [`Error::Os`] if the region cannot be created.
    pub fn with_lock(lock: RLock) -> Result<Self> {
        Ok(Condition {
            cond: Shared::new()?,
            lock: Some(lock),
        })
    }

    /// The shared region behind this handle.
    pub fn shared(&self) -> &Shared<RawCondition> {
        &self.cond
    }

    /// The condition's lock (acquire it before `wait` and `notify`).
    pub fn get_lock(&self) -> &RawRLock {
        match &self.lock {
            Some(lock) => lock,
            None => self.cond.get_lock(),
        }
    }

    /// Acquires the condition's lock (see [`RawRLock::acquire`]).
    pub fn acquire(&self) -> crate::Acquire {
        self.get_lock().acquire()
    }

    /// Acquires the lock, giving up after `timeout`.
    pub fn acquire_timeout(&self, timeout: Duration) -> crate::Acquire {
        self.get_lock().acquire_timeout(timeout)
    }

    /// Releases one level of the lock.
    ///
    /// # Errors
    /// As [`RawRLock::release`].
    pub fn release(&self) -> Result<()> {
        self.get_lock().release()
    }

    /// Guard form of [`acquire`](Self::acquire).
    pub fn lock(&self) -> crate::LockResult<crate::RLockGuard<'_>> {
        self.get_lock().lock()
    }

    /// Guard form of [`acquire_timeout`](Self::acquire_timeout).
    pub fn lock_timeout(&self, timeout: Duration) -> crate::TryLockResult<crate::RLockGuard<'_>> {
        self.get_lock().lock_timeout(timeout)
    }

    /// Releases the lock, sleeps until notified, re-acquires the lock (see
    /// [`RawCondition::wait`]).
    ///
    /// # Errors
    /// As [`RawCondition::wait`].
    pub fn wait(&self) -> Result<()> {
        self.cond
            .wait_until_on(self.get_lock(), crate::sys::Deadline::NEVER)
            .map(|_| ())
    }

    /// Like [`wait`](Self::wait), giving up after `timeout`; whether it was notified.
    ///
    /// # Errors
    /// As [`RawCondition::wait`].
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool> {
        self.cond
            .wait_until_on(self.get_lock(), crate::sys::Deadline::after(Some(timeout)))
    }

    /// Waits until `predicate()` holds or `timeout` (if any) passes (Python's `wait_for`).
    ///
    /// # Errors
    /// As [`RawCondition::wait`].
    pub fn wait_for(
        &self,
        predicate: impl FnMut() -> bool,
        timeout: Option<Duration>,
    ) -> Result<bool> {
        self.cond.wait_for_on(self.get_lock(), predicate, timeout)
    }

    /// Wakes up to `n` waiters (see [`RawCondition::notify`]). The lock must be held.
    ///
    /// # Errors
    /// As [`RawCondition::notify`].
    pub fn notify(&self, n: u32) -> Result<()> {
        self.cond.notify_on(self.get_lock(), n)
    }

    /// Wakes every waiter. The lock must be held.
    ///
    /// # Errors
    /// As [`RawCondition::notify`].
    pub fn notify_all(&self) -> Result<()> {
        self.notify(u32::MAX)
    }
}

handle! {
    /// Python's `multiprocessing.Event`: a [`RawEvent`] in its own shared region.
    ///
    /// ```
    /// let event = multiprocessing::synchronize::Event::new()?;
    /// event.set();
    /// event.wait();
    /// # Ok::<(), multiprocessing::synchronize::Error>(())
    /// ```
    Event(RawEvent)
}

impl Event {
    /// A new, clear event.
    ///
    /// # Errors
    /// [`Error::Os`] if the region cannot be created.
    pub fn new() -> Result<Self> {
        Ok(Event(Shared::new()?))
    }
}

/// Python's `multiprocessing.Barrier`: a [`RawBarrier`] in its own shared region, plus the
/// action this process runs when it is the last to arrive.
///
/// The action is a closure of this process, so a barrier with an action crosses process
/// boundaries only by fork; sending one over a pipe is [`Error::NotSendable`] (a receiver
/// can attach its own with [`with_action`](Self::with_action)).
///
/// ```
/// let barrier = multiprocessing::synchronize::Barrier::new(1)?.with_action(|| println!("all here"));
/// assert_eq!(barrier.wait()?, 0);
/// # Ok::<(), multiprocessing::synchronize::Error>(())
/// ```
#[derive(Clone)]
pub struct Barrier {
    shared: Shared<RawBarrier>,
    action: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl Barrier {
    /// A barrier for `parties` callers, no default timeout.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for zero parties; [`Error::Os`].
    pub fn new(parties: u32) -> Result<Self> {
        Barrier::with_timeout(parties, None)
    }

    /// A barrier whose `wait` gives up after `timeout` unless told otherwise.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn with_timeout(parties: u32, timeout: Option<Duration>) -> Result<Self> {
        let shared = Shared::<RawBarrier>::new()?;
        shared.init(parties, timeout)?;
        Ok(Barrier {
            shared,
            action: None,
        })
    }

    /// Runs `action` in whichever process (holding this handle) arrives last, once per pass,
    /// before the others are released.
    pub fn with_action(mut self, action: impl Fn() + Send + Sync + 'static) -> Self {
        self.action = Some(Arc::new(action));
        self
    }

    /// Waits for all parties (with the default timeout); a unique index in `0..parties`.
    ///
    /// # Errors
    /// [`Error::BrokenBarrier`], or [`Error::BarrierTimeout`] for the caller whose wait timed
    /// out (which breaks the barrier).
    ///
    /// # Panics
    /// If the action panics (the barrier is broken first).
    pub fn wait(&self) -> Result<u32> {
        self.shared
            .wait_with(None, self.action.as_deref().map(|a| a as &dyn Fn()))
    }

    /// Like [`wait`](Self::wait) with this call's own timeout.
    ///
    /// # Errors
    /// As [`wait`](Self::wait).
    ///
    /// # Panics
    /// As [`wait`](Self::wait).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<u32> {
        self.shared.wait_with(
            Some(timeout),
            self.action.as_deref().map(|a| a as &dyn Fn()),
        )
    }
}

impl Deref for Barrier {
    type Target = RawBarrier;

    fn deref(&self) -> &RawBarrier {
        &self.shared
    }
}

impl fmt::Debug for Barrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.shared, f)
    }
}

impl Serialize for Barrier {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        if self.action.is_some() {
            return Err(mp_codec::fd::refused(Error::NotSendable(
                "a barrier's action is a closure of this process; fork to share it",
            )));
        }
        self.shared.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Barrier {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        Ok(Barrier {
            shared: Shared::deserialize(deserializer)?,
            action: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_condition_over_a_supplied_lock_waits_and_notifies_with_it() {
        let lock = RLock::new().unwrap();
        let cond = Condition::with_lock(lock.clone()).unwrap();
        assert!(matches!(cond.notify(1), Err(Error::NotHeld)));
        // Held through the lock itself: the condition's lock is held.
        let held = lock.lock().unwrap();
        cond.notify(1).unwrap();
        // Its own lock is not the one in use.
        assert!(!cond.shared().get_lock().is_owned());
        drop(held);
        // A waiter releases the supplied lock (or the notifier could not take it).
        let (waiter_cond, ready) = (cond.clone(), Event::new().unwrap());
        let ready_w = ready.clone();
        let waiter = std::thread::spawn(move || {
            let _g = waiter_cond.lock().unwrap();
            ready_w.set();
            waiter_cond.wait_timeout(Duration::from_secs(30)).unwrap()
        });
        assert!(ready.wait_timeout(Duration::from_secs(30)));
        let _g = lock.lock().unwrap(); // only once the waiter released it
        cond.notify(1).unwrap();
        drop(_g);
        assert!(waiter.join().unwrap(), "the waiter was not notified");
    }

    #[test]
    fn a_condition_sent_elsewhere_keeps_its_supplied_lock() {
        let lock = RLock::new().unwrap();
        let cond = Condition::with_lock(lock.clone()).unwrap();
        let copy: Condition = mp_codec::Frame::encode(&cond).unwrap().decode().unwrap();
        let _held = lock.lock().unwrap();
        assert!(copy.get_lock().is_owned());
        copy.notify_all().unwrap();
        let own: Condition = mp_codec::Frame::encode(&Condition::new().unwrap())
            .unwrap()
            .decode()
            .unwrap();
        assert!(!own.get_lock().is_owned());
    }

    #[test]
    fn a_barrier_with_an_action_says_why_it_cannot_be_sent() {
        let barrier = Barrier::new(2).unwrap().with_action(|| {});
        let err = mp_codec::Frame::encode(&barrier).unwrap_err();
        assert!(err.to_string().contains("action"), "{err}");
        let plain = Barrier::new(2).unwrap();
        let copy: Barrier = mp_codec::Frame::encode(&plain).unwrap().decode().unwrap();
        assert_eq!(copy.parties(), 2);
    }
}
