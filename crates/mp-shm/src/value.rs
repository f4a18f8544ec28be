//! `Value<T>` (with its lock) and `RawValue<T>` (without).

use std::{
    cell::UnsafeCell,
    fmt,
    marker::PhantomData,
    ops::{Deref, DerefMut},
    ptr::NonNull,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
};

use mp_sync::{Acquire, LockResult, OwnerDied, RLock, RawRLock, Region, Spec};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Plain, Result, mem};

/// The payload of a `Value<T>` region.
#[repr(C)]
struct ValueCell<T> {
    lock: RawRLock,
    /// 1 while a `ValueGuard` lends out `&mut T` (set and cleared under the lock in use).
    lent: AtomicU32,
    /// 1 if a lock the user supplied guards the value instead of `lock` (set at creation):
    /// every handle must then carry that lock.
    supplied: AtomicU32,
    value: UnsafeCell<T>,
}

/// Python's `multiprocessing.Value`: one `T` in shared memory with its own lock.
///
/// `get` and `set` take the lock around one copy; [`lock`](Self::lock) holds it for a
/// read-modify-write through a guard that derefs to `&mut T`; `fetch_add` and friends do
/// one such update on integers. [`get_lock`](Self::get_lock) is Python's `get_lock()`: an
/// [`RawRLock`], so `get`/`set` still work while the caller holds it. If a process dies
/// holding the lock, the next taker gets it: [`lock`](Self::lock) reports that with
/// [`OwnerDied`]; `get`, `set` and `fetch_*` carry on.
///
/// The value is a `Message`: a child started with it as an argument, a fork, or a message
/// over a pipe all see the same memory.
///
/// ```
/// let counter = multiprocessing::sharedctypes::Value::new(0i32)?;
/// *counter.lock().expect("nobody died") += 1;
/// assert_eq!(counter.fetch_add(2), 1);
/// assert_eq!(counter.get(), 3);
/// # Ok::<(), multiprocessing::sharedctypes::Error>(())
/// ```
pub struct Value<T: Plain> {
    region: Arc<Region>,
    /// The lock the user supplied ([`Value::with_lock`]); `None`: the value's own.
    supplied: Option<RLock>,
    _type: PhantomData<T>,
}

impl<T: Plain> Value<T> {
    /// A new shared value, starting at `value`.
    ///
    /// # Errors
    /// If the region cannot be created.
    pub fn new(value: T) -> Result<Self> {
        Self::create(value, None)
    }

    /// A new shared value guarded by `lock` instead of a lock of its own (Python's
    /// `Value(typecode, value, lock=lock)`): several values may share one lock, and holding
    /// it is holding theirs.
    ///
    /// ```
    /// let lock = multiprocessing::synchronize::RLock::new()?;
    /// let (a, b) = (multiprocessing::sharedctypes::Value::with_lock(1u32, lock.clone())?, multiprocessing::sharedctypes::Value::with_lock(2u32, lock.clone())?);
    /// let _both = lock.lock().expect("nobody died"); // one acquire guards both
    /// a.set(a.get() + b.get());
    /// assert_eq!(a.get(), 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// If the region cannot be created.
    pub fn with_lock(value: T, lock: RLock) -> Result<Self> {
        Self::create(value, Some(lock))
    }

    fn create(value: T, supplied: Option<RLock>) -> Result<Self> {
        let region = Region::create(Spec::of::<ValueCell<T>>())?;
        let this = Value {
            region: Arc::new(region),
            supplied,
            _type: PhantomData,
        };
        let flag = u32::from(this.supplied.is_some());
        this.cell().supplied.store(flag, Ordering::Relaxed);
        // SAFETY: nobody else can see the fresh region yet.
        unsafe { mem::write(this.value_ptr(), value) };
        Ok(this)
    }

    /// The lock that guards the value: the supplied one, or its own.
    fn the_lock(&self) -> &RawRLock {
        match &self.supplied {
            Some(lock) => lock,
            None => &self.cell().lock,
        }
    }

    fn cell(&self) -> &ValueCell<T> {
        // SAFETY: the region holds a `ValueCell<T>` (spec checked on attach), aligned; its lock
        // and flag are atomics and the value is behind an `UnsafeCell`, so a shared reference
        // is sound while other processes use it.
        unsafe { self.region.payload().cast::<ValueCell<T>>().as_ref() }
    }

    fn value_ptr(&self) -> NonNull<T> {
        NonNull::new(self.cell().value.get()).expect("mapped memory is not null")
    }

    /// Python's `get_lock()`: the recursive lock that guards the value.
    pub fn get_lock(&self) -> &RawRLock {
        self.the_lock()
    }

    /// Holds the lock and lends `&mut T` until the guard drops.
    ///
    /// # Errors
    /// [`OwnerDied`] (holding the guard) if the lock was taken from a dead process.
    ///
    /// # Panics
    /// If this thread already holds a guard on this value (two `&mut T` would alias).
    pub fn lock(&self) -> LockResult<ValueGuard<'_, T>> {
        let died = self.enter();
        let cell = self.cell();
        if cell.lent.load(Ordering::Relaxed) != 0 {
            let _ = self.the_lock().release();
            panic!("Value::lock: this thread already holds a guard on this value");
        }
        cell.lent.store(1, Ordering::Relaxed);
        let guard = ValueGuard {
            value: self,
            _not_send: PhantomData,
        };
        if died {
            Err(OwnerDied::new(guard))
        } else {
            Ok(guard)
        }
    }

    /// A copy of the value, read under the lock.
    ///
    /// # Panics
    /// If this thread holds a guard on this value (use the guard instead).
    pub fn get(&self) -> T {
        self.with(|ptr| {
            // SAFETY: the lock is held and no guard lends the value out.
            unsafe { mem::read(ptr) }
        })
    }

    /// Replaces the value under the lock.
    ///
    /// # Panics
    /// If this thread holds a guard on this value.
    pub fn set(&self, value: T) {
        self.with(|ptr| {
            // SAFETY: the lock is held and no guard lends the value out.
            unsafe { mem::write(ptr, value) }
        })
    }

    /// Applies `f` under the lock; returns the old value.
    ///
    /// # Panics
    /// If this thread holds a guard on this value.
    pub fn fetch_update(&self, f: impl FnOnce(&T) -> T) -> T {
        self.with(|ptr| {
            // SAFETY: the lock is held and no guard lends the value out.
            let old = unsafe { mem::read(ptr) };
            let new = f(&old);
            // SAFETY: as above.
            unsafe { mem::write(ptr, new) };
            old
        })
    }

    fn with<R>(&self, f: impl FnOnce(NonNull<T>) -> R) -> R {
        self.enter();
        let cell = self.cell();
        if cell.lent.load(Ordering::Relaxed) != 0 {
            let _ = self.the_lock().release();
            panic!("Value: this thread holds a guard on this value; use the guard");
        }
        let result = f(self.value_ptr());
        let _ = self.the_lock().release();
        result
    }

    /// Acquires the lock; whether it was taken from a dead owner (whose guard, if any, is
    /// gone with it).
    fn enter(&self) -> bool {
        let died = self.the_lock().acquire() == Acquire::OwnerDied;
        if died {
            self.cell().lent.store(0, Ordering::Relaxed);
        }
        died
    }
}

/// Integer types get atomic-looking read-modify-writes (each under the value's lock).
pub trait Integer: Plain + Copy {
    #[doc(hidden)]
    fn wrapping_add_(self, other: Self) -> Self;
    #[doc(hidden)]
    fn wrapping_sub_(self, other: Self) -> Self;
    #[doc(hidden)]
    fn and_(self, other: Self) -> Self;
    #[doc(hidden)]
    fn or_(self, other: Self) -> Self;
    #[doc(hidden)]
    fn xor_(self, other: Self) -> Self;
    #[doc(hidden)]
    fn max_(self, other: Self) -> Self;
    #[doc(hidden)]
    fn min_(self, other: Self) -> Self;
}

macro_rules! integer {
    ($($t:ty)*) => {$(
        impl Integer for $t {
            fn wrapping_add_(self, o: Self) -> Self { self.wrapping_add(o) }
            fn wrapping_sub_(self, o: Self) -> Self { self.wrapping_sub(o) }
            fn and_(self, o: Self) -> Self { self & o }
            fn or_(self, o: Self) -> Self { self | o }
            fn xor_(self, o: Self) -> Self { self ^ o }
            fn max_(self, o: Self) -> Self { Ord::max(self, o) }
            fn min_(self, o: Self) -> Self { Ord::min(self, o) }
        }
    )*};
}

integer!(u8 u16 u32 u64 u128 usize i8 i16 i32 i64 i128 isize);

impl<T: Integer> Value<T> {
    /// Adds (wrapping) under the lock; returns the old value.
    pub fn fetch_add(&self, n: T) -> T {
        self.fetch_update(|v| v.wrapping_add_(n))
    }

    /// Subtracts (wrapping) under the lock; returns the old value.
    pub fn fetch_sub(&self, n: T) -> T {
        self.fetch_update(|v| v.wrapping_sub_(n))
    }

    /// Bitwise and under the lock; returns the old value.
    pub fn fetch_and(&self, n: T) -> T {
        self.fetch_update(|v| v.and_(n))
    }

    /// Bitwise or under the lock; returns the old value.
    pub fn fetch_or(&self, n: T) -> T {
        self.fetch_update(|v| v.or_(n))
    }

    /// Bitwise xor under the lock; returns the old value.
    pub fn fetch_xor(&self, n: T) -> T {
        self.fetch_update(|v| v.xor_(n))
    }

    /// Maximum under the lock; returns the old value.
    pub fn fetch_max(&self, n: T) -> T {
        self.fetch_update(|v| v.max_(n))
    }

    /// Minimum under the lock; returns the old value.
    pub fn fetch_min(&self, n: T) -> T {
        self.fetch_update(|v| v.min_(n))
    }
}

impl<T: Plain> std::os::fd::AsFd for Value<T> {
    /// The region's memfd (e.g. to `fstat` it).
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.region.as_fd()
    }
}

impl<T: Plain> Clone for Value<T> {
    fn clone(&self) -> Self {
        Value {
            region: self.region.clone(),
            supplied: self.supplied.clone(),
            _type: PhantomData,
        }
    }
}

impl<T: Plain + fmt::Debug> fmt::Debug for Value<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.the_lock().try_acquire() {
            Acquire::TimedOut => f.write_str("Value(<locked>)"),
            _ if self.cell().lent.load(Ordering::Relaxed) != 0 => {
                let _ = self.the_lock().release();
                f.write_str("Value(<lent to a guard>)")
            }
            _ => {
                // SAFETY: the lock is held and no guard lends the value out.
                let v = unsafe { mem::read(self.value_ptr()) };
                let _ = self.the_lock().release();
                write!(f, "Value({v:?})")
            }
        }
    }
}

impl<T: Plain> Serialize for Value<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        (&*self.region, &self.supplied).serialize(serializer)
    }
}

impl<'de, T: Plain> Deserialize<'de> for Value<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let (region, supplied) = <(Region, Option<RLock>)>::deserialize(deserializer)?;
        region
            .expect(Spec::of::<ValueCell<T>>())
            .map_err(mp_codec::fd::rejected)?;
        let value = Value {
            region: Arc::new(region),
            supplied,
            _type: PhantomData,
        };
        // A value guarded by a supplied lock must arrive with a lock, and one with its own
        // lock without: else two processes would guard it with different locks.
        let expects = value.cell().supplied.load(Ordering::Relaxed) != 0;
        if expects != value.supplied.is_some() {
            return Err(mp_codec::fd::rejected(
                "a Value's handle does not carry the lock its memory says guards it",
            ));
        }
        Ok(value)
    }
}

/// Holds a [`Value`]'s lock and lends its `T`; releases on drop. It stays on the thread
/// that took it (the lock is an `RLock`):
///
/// ```compile_fail
/// fn elsewhere<G: Send>(_: G) {}
/// let v = multiprocessing::sharedctypes::Value::new(0u8).unwrap();
/// elsewhere(v.lock().unwrap());
/// ```
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ValueGuard<'a, T: Plain> {
    value: &'a Value<T>,
    /// The lock is an `RLock`, released only by the thread that holds it: the guard stays.
    _not_send: PhantomData<*const ()>,
}

impl<T: Plain> Deref for ValueGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: this guard holds the lock and is the only lender (`lent`), so no other
        // thread or process touches the value until it drops.
        unsafe { self.value.value_ptr().as_ref() }
    }
}

impl<T: Plain> DerefMut for ValueGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as for `deref`, and `&mut self` makes this the only reference.
        unsafe { self.value.value_ptr().as_mut() }
    }
}

impl<T: Plain + fmt::Debug> fmt::Debug for ValueGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T: Plain> Drop for ValueGuard<'_, T> {
    fn drop(&mut self) {
        self.value.cell().lent.store(0, Ordering::Relaxed);
        let _ = self.value.the_lock().release();
    }
}

/// Python's `multiprocessing.RawValue`: one `T` in shared memory, no lock. Reads and writes
/// are single copies that a concurrent writer in another process may tear; synchronize with
/// your own lock, or use [`Value`].
///
/// ```
/// let flag = multiprocessing::sharedctypes::RawValue::new(0u8)?;
/// flag.set(1);
/// assert_eq!(flag.get(), 1);
/// # Ok::<(), multiprocessing::sharedctypes::Error>(())
/// ```
pub struct RawValue<T: Plain> {
    region: Arc<Region>,
    _type: PhantomData<T>,
}

/// The payload of a `RawValue<T>` region (its own type, so its fingerprint differs from a
/// `Value<T>`'s).
#[repr(C)]
struct RawCell<T>(UnsafeCell<T>);

impl<T: Plain> RawValue<T> {
    /// A new shared value, starting at `value`.
    ///
    /// # Errors
    /// If the region cannot be created.
    pub fn new(value: T) -> Result<Self> {
        let this = RawValue {
            region: Arc::new(Region::create(Spec::of::<RawCell<T>>())?),
            _type: PhantomData,
        };
        this.set(value);
        Ok(this)
    }

    /// Where the value lives in this process's mapping.
    pub fn as_ptr(&self) -> *mut T {
        self.region.payload().cast::<T>().as_ptr()
    }

    /// A copy of the value (a concurrent writer may tear it).
    pub fn get(&self) -> T {
        let mut value = T::new_zeroed();
        // SAFETY: the region holds `size_of::<T>()` mapped bytes.
        unsafe { mem::racy_copy_out(self.region.payload().as_ptr(), value.as_mut_bytes()) };
        value
    }

    /// Overwrites the value (a concurrent reader may see it half-written).
    pub fn set(&self, value: T) {
        // SAFETY: the region holds `size_of::<T>()` mapped, writable bytes.
        unsafe { mem::racy_copy_in(self.region.payload().as_ptr(), value.as_bytes()) }
    }
}

impl<T: Plain> std::os::fd::AsFd for RawValue<T> {
    /// The region's memfd (e.g. to `fstat` it).
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.region.as_fd()
    }
}

impl<T: Plain> Clone for RawValue<T> {
    fn clone(&self) -> Self {
        RawValue {
            region: self.region.clone(),
            _type: PhantomData,
        }
    }
}

impl<T: Plain + fmt::Debug> fmt::Debug for RawValue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RawValue({:?})", self.get())
    }
}

impl<T: Plain> Serialize for RawValue<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        self.region.serialize(serializer)
    }
}

impl<'de, T: Plain> Deserialize<'de> for RawValue<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let region = Region::deserialize(deserializer)?;
        region
            .expect(Spec::of::<RawCell<T>>())
            .map_err(mp_codec::fd::rejected)?;
        Ok(RawValue {
            region: Arc::new(region),
            _type: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_on_a_supplied_lock_are_guarded_by_it_and_carry_it_along() {
        let lock = RLock::new().unwrap();
        let (a, b) = (
            Value::with_lock(1u64, lock.clone()).unwrap(),
            Value::with_lock(2u64, lock.clone()).unwrap(),
        );
        let held = lock.lock().unwrap();
        // Another thread finds both values locked while this one holds the supplied lock.
        let (a2, b2) = (a.clone(), b.clone());
        let locked = std::thread::spawn(move || {
            let a = a2.get_lock().try_acquire() == Acquire::TimedOut;
            let b = b2.get_lock().try_acquire() == Acquire::TimedOut;
            a && b
        });
        assert!(locked.join().unwrap());
        *a.lock().unwrap() += *b.lock().unwrap(); // re-entrant: the same RLock
        drop(held);
        assert_eq!(a.get(), 3);
        // Sent elsewhere, the handle brings the lock.
        let copy: Value<u64> = mp_codec::Frame::encode(&a).unwrap().decode().unwrap();
        let _held = lock.lock().unwrap();
        assert!(copy.get_lock().is_owned());
        // A handle that leaves the lock behind (or adds one) is refused.
        let bare = mp_codec::Frame::encode(&(&*a.region, None::<RLock>)).unwrap();
        assert!(bare.decode::<Value<u64>>().is_err());
        let own = Value::new(0u64).unwrap();
        let extra = mp_codec::Frame::encode(&(&*own.region, Some(lock.clone()))).unwrap();
        assert!(extra.decode::<Value<u64>>().is_err());
    }

    #[test]
    fn get_set_and_fetch_ops() {
        let v = Value::new(5u32).unwrap();
        v.set(7);
        assert_eq!(v.get(), 7);
        assert_eq!(v.fetch_sub(2), 7);
        assert_eq!(v.fetch_max(9), 5);
        assert_eq!(v.fetch_min(3), 9);
        assert_eq!(v.fetch_or(4), 3);
        assert_eq!(v.fetch_and(6), 7);
        assert_eq!(v.fetch_xor(1), 6);
        assert_eq!(v.get(), 7);
        assert_eq!(Value::new(u8::MAX).unwrap().fetch_add(1), u8::MAX);
    }

    #[test]
    fn get_lock_is_reentrant_for_get_and_set() {
        let v = Value::new(1i64).unwrap();
        assert!(v.get_lock().acquire().is_held());
        v.set(v.get() + 1);
        v.get_lock().release().unwrap();
        assert_eq!(v.get(), 2);
        assert!(
            v.get_lock().release().is_err(),
            "released as often as acquired"
        );
    }

    #[test]
    #[should_panic(expected = "already holds a guard")]
    fn two_guards_on_one_thread_panic_rather_than_alias() {
        let v = Value::new(0u8).unwrap();
        let _a = v.lock().unwrap();
        let _b = v.lock();
    }

    #[test]
    fn a_value_travels_and_a_wrong_type_is_refused() {
        let v = Value::new(3u16).unwrap();
        let frame = mp_codec::Frame::encode(&v).unwrap();
        let w: Value<u16> = frame.decode().unwrap();
        w.set(4);
        assert_eq!(v.get(), 4);
        assert!(
            mp_codec::Frame::encode(&v)
                .unwrap()
                .decode::<Value<i16>>()
                .is_err()
        );
        assert!(
            mp_codec::Frame::encode(&v)
                .unwrap()
                .decode::<RawValue<u16>>()
                .is_err()
        );
    }

    #[test]
    fn raw_value_reads_and_writes() {
        let r = RawValue::new([1u32, 2]).unwrap();
        r.set([3, 4]);
        assert_eq!(r.get(), [3, 4]);
        assert_eq!(format!("{r:?}"), "RawValue([3, 4])");
    }

    /// Issue 13: a child in a new pid namespace saw the parent's pid as dead and took the
    /// lock of a `Value` whose guard (a `&mut u64`) the parent still held.
    #[test]
    fn a_child_in_another_pid_namespace_cannot_lock_a_value_whose_guard_is_held() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("SKIPPED pid namespace: needs root (CI runs as root)");
            return;
        }
        let value = Value::new(7u64).unwrap();
        let mut guard = value.lock().expect("nobody died");
        *guard += 1;
        let status = std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: moves only this thread's later children into a new pid namespace.
                assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWPID) }, 0);
                // SAFETY: the child only tries the lock (futex and /proc reads), then exits.
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    let how = value
                        .get_lock()
                        .acquire_timeout(std::time::Duration::from_millis(300));
                    // SAFETY: ends the child at once.
                    unsafe { libc::_exit(if how == Acquire::TimedOut { 0 } else { 1 }) }
                }
                assert!(pid > 0, "fork");
                let pidfd = rustix::process::pidfd_open(
                    rustix::process::Pid::from_raw(pid).unwrap(),
                    rustix::process::PidfdFlags::empty(),
                )
                .unwrap();
                let mut fds = [rustix::event::PollFd::new(
                    &pidfd,
                    rustix::event::PollFlags::IN,
                )];
                let limit = rustix::time::Timespec {
                    tv_sec: 60,
                    tv_nsec: 0,
                };
                if rustix::event::poll(&mut fds, Some(&limit)) != Ok(1) {
                    // SAFETY: killing our own child.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                let mut status = 0;
                // SAFETY: our child; a valid out-pointer.
                assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
                status
            })
            .join()
            .unwrap()
        });
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the child took the lock of a held guard (status {status:#x})"
        );
        assert_eq!(*guard, 8);
        drop(guard);
        assert_eq!(value.get(), 8);
    }
}
