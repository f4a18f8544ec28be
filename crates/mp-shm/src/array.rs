//! `Array<T>` (with its lock) and `RawArray<T>` (without).

use std::{
    fmt,
    marker::PhantomData,
    mem::{align_of, size_of},
    ops::{Deref, DerefMut},
    ptr::NonNull,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
};

use mp_sync::{Acquire, LockResult, OwnerDied, RLock, RawRLock, Region, Spec};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zerocopy::IntoBytes;

use crate::{Error, Plain, Result, mem};

/// What precedes the elements of an `Array<T>` region.
#[repr(C)]
struct ArrayHead {
    lock: RawRLock,
    /// 1 while an `ArrayGuard` lends out `&mut [T]` (set and cleared under the lock in use).
    lent: AtomicU32,
    /// 1 if a lock the user supplied guards the elements instead of `lock` (set at
    /// creation): every handle must then carry that lock.
    supplied: AtomicU32,
}

/// Names the layout in the fingerprint: `Array<T>` and `RawArray<T>` regions differ.
struct Locked<T>(PhantomData<T>);
struct Unlocked<T>(PhantomData<T>);

/// Where the elements start: after the head, if any, aligned for `T`.
const fn elements_offset<T>(locked: bool) -> usize {
    if locked {
        size_of::<ArrayHead>().next_multiple_of(align_of::<T>())
    } else {
        0
    }
}

fn spec<T>(len: usize, locked: bool) -> Result<Spec> {
    let bytes = len
        .checked_mul(size_of::<T>())
        .and_then(|b| b.checked_add(elements_offset::<T>(locked)))
        .ok_or(Error::BadSize(len, "array too large"))?;
    let (fingerprint, align) = if locked {
        (
            Spec::fingerprint_of::<Locked<T>>(),
            align_of::<T>().max(align_of::<ArrayHead>()),
        )
    } else {
        (Spec::fingerprint_of::<Unlocked<T>>(), align_of::<T>())
    };
    Ok(Spec {
        fingerprint,
        size: bytes,
        align,
        len,
    })
}

/// The elements of an array region, shared by `Array` and `RawArray`.
struct Elements<T> {
    region: Arc<Region>,
    locked: bool,
    /// The lock the user supplied ([`Array::with_lock`]); `None`: the array's own, if any.
    supplied: Option<RLock>,
    _type: PhantomData<T>,
}

impl<T: Plain> Elements<T> {
    fn create(len: usize, locked: bool, supplied: Option<RLock>) -> Result<Self> {
        let elements = Elements {
            region: Arc::new(Region::create(spec::<T>(len, locked)?)?),
            locked,
            supplied,
            _type: PhantomData,
        };
        if locked {
            let flag = u32::from(elements.supplied.is_some());
            elements.head().supplied.store(flag, Ordering::Relaxed);
        }
        Ok(elements)
    }

    fn attach(region: Region, locked: bool, supplied: Option<RLock>) -> Result<Self> {
        let len = region.spec().len;
        region.expect(spec::<T>(len, locked)?)?;
        let elements = Elements {
            region: Arc::new(region),
            locked,
            supplied,
            _type: PhantomData,
        };
        // An array guarded by a supplied lock must arrive with a lock, and one with its own
        // lock (or none) without: else two processes would guard it with different locks.
        let expects = locked && elements.head().supplied.load(Ordering::Relaxed) != 0;
        if expects != elements.supplied.is_some() {
            return Err(Error::Sync(mp_sync::Error::BadRegion(
                "an array's handle does not carry the lock its memory says guards it".into(),
            )));
        }
        Ok(elements)
    }

    /// The lock that guards a locked array: the supplied one, or its own.
    fn the_lock(&self) -> &RawRLock {
        match &self.supplied {
            Some(lock) => lock,
            None => &self.head().lock,
        }
    }

    fn len(&self) -> usize {
        self.region.spec().len
    }

    fn ptr(&self) -> NonNull<T> {
        // SAFETY: the offset lies within the payload (checked spec); it is aligned for `T`.
        unsafe {
            self.region
                .payload()
                .add(elements_offset::<T>(self.locked))
                .cast()
        }
    }

    fn head(&self) -> &ArrayHead {
        debug_assert!(self.locked);
        // SAFETY: a locked array's payload starts with an `ArrayHead` (atomics only).
        unsafe { self.region.payload().cast::<ArrayHead>().as_ref() }
    }

    fn check(&self, start: usize, count: usize) -> Result<()> {
        let len = self.len();
        if start.checked_add(count).is_none_or(|end| end > len) {
            return Err(Error::RangeOutOfRange { start, count, len });
        }
        Ok(())
    }

    /// # Safety
    /// The caller excludes concurrent writers, or accepts torn copies.
    unsafe fn read_into(&self, start: usize, out: &mut [T]) -> Result<()> {
        self.check(start, out.len())?;
        // SAFETY: in range (checked); the caller handles concurrency.
        unsafe { mem::copy_out(self.ptr().add(start), out) };
        Ok(())
    }

    /// # Safety
    /// As [`read_into`](Self::read_into).
    unsafe fn write_from(&self, start: usize, src: &[T]) -> Result<()> {
        self.check(start, src.len())?;
        // SAFETY: in range (checked); the caller handles concurrency.
        unsafe { mem::copy_in(self.ptr().add(start), src) };
        Ok(())
    }

    /// # Safety
    /// As [`read_into`](Self::read_into).
    unsafe fn to_vec(&self) -> Vec<T> {
        // SAFETY: the whole array is mapped; the caller handles concurrency.
        unsafe { mem::to_vec(self.ptr(), self.len()) }
    }
}

impl<T> Clone for Elements<T> {
    fn clone(&self) -> Self {
        Elements {
            region: self.region.clone(),
            locked: self.locked,
            supplied: self.supplied.clone(),
            _type: PhantomData,
        }
    }
}

/// Python's `multiprocessing.Array`: `len` elements of `T` in shared memory, zero-filled on
/// creation, with a lock. Element and slice reads and writes take the lock around the copy;
/// [`lock`](Self::lock) lends the whole `&mut [T]` for in-place work at full speed. Owner
/// death is handled as for [`Value`](crate::Value).
///
/// ```
/// let squares = multiprocessing::sharedctypes::Array::<u64>::new(4)?;
/// squares.lock().expect("nobody died").iter_mut().enumerate().for_each(|(i, x)| *x = (i * i) as u64);
/// assert_eq!(squares.get(3), Some(9));
/// squares.set(0, 100)?;
/// assert_eq!(squares.to_vec(), [100, 1, 4, 9]);
/// # Ok::<(), multiprocessing::sharedctypes::Error>(())
/// ```
pub struct Array<T: Plain> {
    elements: Elements<T>,
}

impl<T: Plain> Array<T> {
    /// `len` zeroed elements.
    ///
    /// # Errors
    /// If the size overflows or the region cannot be created.
    pub fn new(len: usize) -> Result<Self> {
        Ok(Array {
            elements: Elements::create(len, true, None)?,
        })
    }

    /// `len` zeroed elements guarded by `lock` instead of a lock of their own (Python's
    /// `Array(typecode, size, lock=lock)`).
    ///
    /// ```
    /// let lock = multiprocessing::synchronize::RLock::new()?;
    /// let xs = multiprocessing::sharedctypes::Array::<u8>::with_lock(4, lock.clone())?;
    /// let _held = lock.lock().expect("nobody died");
    /// assert!(xs.get_lock().is_owned()); // the same lock
    /// xs.set(0, 7)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn with_lock(len: usize, lock: RLock) -> Result<Self> {
        Ok(Array {
            elements: Elements::create(len, true, Some(lock))?,
        })
    }

    /// A copy of `values`.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn from_slice(values: &[T]) -> Result<Self> {
        let array = Array::new(values.len())?;
        array.write_from(0, values)?;
        Ok(array)
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.elements.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Python's `get_lock()`: the recursive lock guarding the elements.
    pub fn get_lock(&self) -> &RawRLock {
        self.elements.the_lock()
    }

    /// Holds the lock and lends `&mut [T]` until the guard drops.
    ///
    /// # Errors
    /// [`OwnerDied`] (holding the guard) if the lock was taken from a dead process.
    ///
    /// # Panics
    /// If this thread already holds a guard on this array.
    pub fn lock(&self) -> LockResult<ArrayGuard<'_, T>> {
        let died = self.enter();
        let head = self.elements.head();
        if head.lent.load(Ordering::Relaxed) != 0 {
            let _ = self.elements.the_lock().release();
            panic!("Array::lock: this thread already holds a guard on this array");
        }
        head.lent.store(1, Ordering::Relaxed);
        let guard = ArrayGuard {
            array: self,
            _not_send: PhantomData,
        };
        if died {
            Err(OwnerDied::new(guard))
        } else {
            Ok(guard)
        }
    }

    /// Element `index`, or `None` past the end.
    ///
    /// # Panics
    /// If this thread holds a guard on this array.
    pub fn get(&self, index: usize) -> Option<T> {
        (index < self.len()).then(|| {
            self.with(|e| {
                // SAFETY: in range; the lock is held and no guard lends the elements out.
                unsafe { mem::read(e.ptr().add(index)) }
            })
        })
    }

    /// Sets element `index`.
    ///
    /// # Errors
    /// [`Error::IndexOutOfRange`] past the end.
    ///
    /// # Panics
    /// If this thread holds a guard on this array.
    pub fn set(&self, index: usize, value: T) -> Result<()> {
        let len = self.len();
        if index >= len {
            return Err(Error::IndexOutOfRange { index, len });
        }
        self.with(|e| {
            // SAFETY: in range; the lock is held and no guard lends the elements out.
            unsafe { mem::write(e.ptr().add(index), value) }
        });
        Ok(())
    }

    /// Copies `out.len()` elements from `start` into `out`.
    ///
    /// # Errors
    /// [`Error::RangeOutOfRange`] past the end; `out` is untouched then.
    ///
    /// # Panics
    /// If this thread holds a guard on this array.
    pub fn read_into(&self, start: usize, out: &mut [T]) -> Result<()> {
        // SAFETY: the lock is held and no guard lends the elements out.
        self.with(|e| unsafe { e.read_into(start, out) })
    }

    /// Copies `src` into the elements from `start`.
    ///
    /// # Errors
    /// [`Error::RangeOutOfRange`] past the end; nothing is written then.
    ///
    /// # Panics
    /// If this thread holds a guard on this array.
    pub fn write_from(&self, start: usize, src: &[T]) -> Result<()> {
        // SAFETY: the lock is held and no guard lends the elements out.
        self.with(|e| unsafe { e.write_from(start, src) })
    }

    /// A copy of every element.
    ///
    /// # Panics
    /// If this thread holds a guard on this array.
    pub fn to_vec(&self) -> Vec<T> {
        // SAFETY: the lock is held and no guard lends the elements out.
        self.with(|e| unsafe { e.to_vec() })
    }

    fn with<R>(&self, f: impl FnOnce(&Elements<T>) -> R) -> R {
        self.enter();
        let head = self.elements.head();
        if head.lent.load(Ordering::Relaxed) != 0 {
            let _ = self.elements.the_lock().release();
            panic!("Array: this thread holds a guard on this array; use the guard");
        }
        let result = f(&self.elements);
        let _ = self.elements.the_lock().release();
        result
    }

    fn enter(&self) -> bool {
        let head = self.elements.head();
        let died = self.elements.the_lock().acquire() == Acquire::OwnerDied;
        if died {
            head.lent.store(0, Ordering::Relaxed);
        }
        died
    }
}

/// Holds an [`Array`]'s lock and lends its elements; releases on drop.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ArrayGuard<'a, T: Plain> {
    array: &'a Array<T>,
    /// The lock is an `RLock`, released only by the thread that holds it: the guard stays.
    _not_send: PhantomData<*const ()>,
}

impl<T: Plain> Deref for ArrayGuard<'_, T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        let e = &self.array.elements;
        // SAFETY: this guard holds the lock and is the only lender (`lent`), so no other
        // thread or process touches the elements until it drops; `len` elements are mapped.
        unsafe { std::slice::from_raw_parts(e.ptr().as_ptr(), e.len()) }
    }
}

impl<T: Plain> DerefMut for ArrayGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        let e = &self.array.elements;
        // SAFETY: as for `deref`, and `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(e.ptr().as_ptr(), e.len()) }
    }
}

impl<T: Plain> Drop for ArrayGuard<'_, T> {
    fn drop(&mut self) {
        let head = self.array.elements.head();
        head.lent.store(0, Ordering::Relaxed);
        let _ = self.array.elements.the_lock().release();
    }
}

/// Python's `multiprocessing.RawArray`: `len` zeroed elements of `T` in shared memory, no
/// lock. Copies in and out are atomic byte by byte, so racing threads or processes tear them
/// but never cause undefined behaviour; that makes them slow (about a nanosecond a byte).
/// For speed, synchronize yourself and use the `unsafe` [`as_slice`](Self::as_slice) and
/// [`as_mut_slice`](Self::as_mut_slice), or use [`Array`] and its guard.
///
/// ```
/// let a = multiprocessing::sharedctypes::RawArray::<f64>::from_slice(&[1.0, 2.0])?;
/// a.set(1, 3.5)?;
/// assert_eq!(a.to_vec(), [1.0, 3.5]);
/// # Ok::<(), multiprocessing::sharedctypes::Error>(())
/// ```
pub struct RawArray<T: Plain> {
    elements: Elements<T>,
}

impl<T: Plain> RawArray<T> {
    /// `len` zeroed elements.
    ///
    /// # Errors
    /// If the size overflows or the region cannot be created.
    pub fn new(len: usize) -> Result<Self> {
        Ok(RawArray {
            elements: Elements::create(len, false, None)?,
        })
    }

    /// A copy of `values`.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn from_slice(values: &[T]) -> Result<Self> {
        let array = RawArray::new(values.len())?;
        array.write_from(0, values)?;
        Ok(array)
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.elements.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `index`, or `None` past the end (a concurrent writer may tear it).
    pub fn get(&self, index: usize) -> Option<T> {
        let mut value = T::new_zeroed();
        self.read_into(index, std::slice::from_mut(&mut value))
            .ok()?;
        Some(value)
    }

    /// Sets element `index`.
    ///
    /// # Errors
    /// [`Error::IndexOutOfRange`] past the end.
    pub fn set(&self, index: usize, value: T) -> Result<()> {
        let len = self.len();
        if index >= len {
            return Err(Error::IndexOutOfRange { index, len });
        }
        self.write_from(index, std::slice::from_ref(&value))
    }

    /// Copies `out.len()` elements from `start` into `out` (torn by concurrent writers).
    ///
    /// # Errors
    /// [`Error::RangeOutOfRange`] past the end.
    pub fn read_into(&self, start: usize, out: &mut [T]) -> Result<()> {
        self.elements.check(start, out.len())?;
        // SAFETY: in range (checked), mapped.
        unsafe {
            mem::racy_copy_out(
                self.elements.ptr().add(start).as_ptr().cast(),
                out.as_mut_bytes(),
            )
        };
        Ok(())
    }

    /// Copies `src` into the elements from `start` (concurrent readers may see it torn).
    ///
    /// # Errors
    /// [`Error::RangeOutOfRange`] past the end.
    pub fn write_from(&self, start: usize, src: &[T]) -> Result<()> {
        self.elements.check(start, src.len())?;
        // SAFETY: in range (checked), mapped and writable.
        unsafe {
            mem::racy_copy_in(
                self.elements.ptr().add(start).as_ptr().cast(),
                src.as_bytes(),
            )
        };
        Ok(())
    }

    /// A copy of every element (torn by concurrent writers).
    pub fn to_vec(&self) -> Vec<T> {
        let mut out: Vec<T> = (0..self.len()).map(|_| T::new_zeroed()).collect();
        self.read_into(0, &mut out)
            .expect("the whole array is in range");
        out
    }

    /// Where the elements live in this process's mapping.
    pub fn as_ptr(&self) -> *mut T {
        self.elements.ptr().as_ptr()
    }

    /// The elements as a slice.
    ///
    /// # Safety
    /// While the slice lives, no thread or process may write the elements.
    pub unsafe fn as_slice(&self) -> &[T] {
        // SAFETY: mapped and aligned; the caller excludes writers.
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.len()) }
    }

    /// The elements as a mutable slice.
    ///
    /// # Safety
    /// While the slice lives, no other thread or process may read or write the elements.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn as_mut_slice(&self) -> &mut [T] {
        // SAFETY: mapped and aligned; the caller guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.as_ptr(), self.len()) }
    }
}

/// What `Array` and `RawArray` share beyond their elements: the region's memfd, cheap
/// clones of the handle, a short `Debug`, and crossing processes as the region (checked
/// against the element type and whether a lock comes first).
macro_rules! region_handle {
    ($name:ident, locked: $locked:expr) => {
        impl<T: Plain> std::os::fd::AsFd for $name<T> {
            /// The region's memfd (e.g. to `fstat` it).
            fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
                self.elements.region.as_fd()
            }
        }

        impl<T: Plain> Clone for $name<T> {
            fn clone(&self) -> Self {
                $name {
                    elements: self.elements.clone(),
                }
            }
        }

        impl<T: Plain> fmt::Debug for $name<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let name = stringify!($name);
                write!(
                    f,
                    "{name}<{}>(len {})",
                    std::any::type_name::<T>(),
                    self.len()
                )
            }
        }

        impl<T: Plain> Serialize for $name<T> {
            fn serialize<S: Serializer>(
                &self,
                serializer: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                (&*self.elements.region, &self.elements.supplied).serialize(serializer)
            }
        }

        impl<'de, T: Plain> Deserialize<'de> for $name<T> {
            fn deserialize<D: Deserializer<'de>>(
                deserializer: D,
            ) -> std::result::Result<Self, D::Error> {
                let (region, supplied) = <(Region, Option<RLock>)>::deserialize(deserializer)?;
                Ok($name {
                    elements: Elements::attach(region, $locked, supplied)
                        .map_err(mp_codec::fd::rejected)?,
                })
            }
        }
    };
}

region_handle!(Array, locked: true);
region_handle!(RawArray, locked: false);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_array_on_a_supplied_lock_is_guarded_by_it_and_carries_it_along() {
        let lock = RLock::new().unwrap();
        let xs = Array::<u32>::with_lock(3, lock.clone()).unwrap();
        let held = lock.lock().unwrap();
        let other = xs.clone();
        let locked =
            std::thread::spawn(move || other.get_lock().try_acquire() == Acquire::TimedOut);
        assert!(locked.join().unwrap());
        xs.set(1, 5).unwrap(); // re-entrant: the same RLock
        drop(held);
        let copy: Array<u32> = mp_codec::Frame::encode(&xs).unwrap().decode().unwrap();
        assert_eq!(copy.to_vec(), [0, 5, 0]);
        let _held = lock.lock().unwrap();
        assert!(copy.get_lock().is_owned());
        let bare = mp_codec::Frame::encode(&(&*xs.elements.region, None::<RLock>)).unwrap();
        assert!(bare.decode::<Array<u32>>().is_err());
    }

    #[test]
    fn zero_filled_with_checked_indices() {
        let a = Array::<i32>::new(3).unwrap();
        assert_eq!(a.to_vec(), [0, 0, 0]);
        assert!(matches!(
            a.set(3, 1),
            Err(Error::IndexOutOfRange { index: 3, len: 3 })
        ));
        assert_eq!(a.get(3), None);
        let mut out = [0; 2];
        assert!(a.read_into(2, &mut out).is_err());
        assert!(a.write_from(usize::MAX, &[1]).is_err());
        assert!(Array::<u64>::new(usize::MAX / 4).is_err());
        assert!(Array::<u8>::new(0).unwrap().is_empty());
    }

    #[test]
    fn an_array_travels_with_its_length_and_type() {
        let a = Array::from_slice(&[1u8, 2, 3]).unwrap();
        let b: Array<u8> = mp_codec::Frame::encode(&a).unwrap().decode().unwrap();
        b.set(0, 9).unwrap();
        assert_eq!(a.to_vec(), [9, 2, 3]);
        let frame = mp_codec::Frame::encode(&a).unwrap();
        assert!(frame.decode::<RawArray<u8>>().is_err());
        let raw = RawArray::from_slice(&[1u16]).unwrap();
        let frame = mp_codec::Frame::encode(&raw).unwrap();
        assert!(frame.decode::<Array<u16>>().is_err());
    }
}
