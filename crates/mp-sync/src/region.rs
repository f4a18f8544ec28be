//! Anonymous shared memory: a memfd mapped `MAP_SHARED`, starting with a checked header.
//!
//! Both `mp-sync` (a standalone `Lock::new()` needs somewhere to live) and `mp-shm` (values,
//! arrays) need this, so it lives here, the lower crate, and `mp-shm` builds on it.

use std::{
    any::type_name,
    fmt,
    marker::PhantomData,
    mem::{align_of, size_of},
    ops::Deref,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    ptr::NonNull,
    sync::Arc,
};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Error, Result, sys};

const MAGIC: u64 = u64::from_le_bytes(*b"mp-shm\0\x01");
/// 2: lock owners carry their namespace and start time; condition and barrier tables.
const VERSION: u32 = 2;
/// Bytes before the payload (more if the payload's alignment asks for it).
const HEADER_LEN: usize = 64;
const MAX_ALIGN: usize = 4096;

#[repr(C)]
struct Header {
    magic: u64,
    version: u32,
    _reserved: u32,
    fingerprint: u64,
    size: u64,
    align: u64,
    len: u64,
}

const _: () = assert!(size_of::<Header>() <= HEADER_LEN);

/// What a region holds, written into its header at creation and checked on attach: a type
/// fingerprint, the payload's size and alignment in bytes, and an element count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spec {
    /// A hash naming the payload's type (see [`Spec::fingerprint_of`]).
    pub fingerprint: u64,
    /// Payload bytes.
    pub size: usize,
    /// Payload alignment (a power of two, at most 4096).
    pub align: usize,
    /// Elements in the payload (1 for a single value).
    pub len: usize,
}

impl Spec {
    /// The spec of one `T`.
    pub fn of<T>() -> Spec {
        Spec {
            fingerprint: Spec::fingerprint_of::<T>(),
            size: size_of::<T>(),
            align: align_of::<T>(),
            len: 1,
        }
    }

    /// FNV-1a over `T`'s type name, size and alignment: the same in every process running
    /// the same program, different for different types (with overwhelming likelihood).
    pub fn fingerprint_of<T>() -> u64 {
        let mut hash = 0xcbf2_9ce4_8422_2325_u64;
        let name = type_name::<T>().bytes();
        let layout = (size_of::<T>() as u64)
            .to_le_bytes()
            .into_iter()
            .chain((align_of::<T>() as u64).to_le_bytes());
        for byte in name.chain(layout) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        hash
    }

    fn offset(&self) -> usize {
        HEADER_LEN.max(self.align)
    }
}

/// A shared memory region: an anonymous memfd, zero-filled, sealed against resizing, mapped
/// `MAP_SHARED`, with a header describing its payload. Nothing names it in the filesystem,
/// so nothing can leak: it is gone once the last process that maps it or holds its
/// descriptor exits, however it exits.
///
/// A `Region` is a `Message`: sending one passes its descriptor (SCM_RIGHTS), and the
/// receiver maps it and checks the header. Fork children inherit the mapping.
///
/// ```
/// use multiprocessing::synchronize::{Region, Spec};
///
/// let region = Region::create(Spec::of::<u64>())?;
/// assert_eq!(region.spec(), Spec::of::<u64>());
/// let frame = multiprocessing::codec::Frame::encode(&region)?; // what a pipe would carry
/// let again: Region = frame.decode()?;
/// again.expect(Spec::of::<u64>())?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Region {
    fd: OwnedFd,
    ptr: NonNull<u8>,
    map_len: usize,
    spec: Spec,
}

// SAFETY: a `Region` is a descriptor and a mapping; the mapping is shared with other
// processes anyway, and every access to the payload is synchronized by its users (atomics,
// locks) or is `unsafe` with that obligation.
unsafe impl Send for Region {}
// SAFETY: as for `Send`; `&Region` gives only raw pointers and the header's copy.
unsafe impl Sync for Region {}

impl Region {
    /// A new zero-filled region for a payload described by `spec`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an alignment that is not a power of two up to 4096 or
    /// a size that overflows; [`Error::Os`] if the memfd or the mapping fails.
    pub fn create(spec: Spec) -> Result<Region> {
        if !spec.align.is_power_of_two() || spec.align > MAX_ALIGN {
            return Err(Error::InvalidArgument(
                "alignment must be a power of two ≤ 4096",
            ));
        }
        let total = spec
            .offset()
            .checked_add(spec.size)
            .filter(|&t| t <= isize::MAX as usize)
            .ok_or(Error::InvalidArgument("region too large"))?;
        let fd = sys::memfd(total as u64).map_err(|e| Error::os("memfd_create", e))?;
        let ptr = sys::map_shared(&fd, total).map_err(|e| Error::os("mmap", e))?;
        let header = Header {
            magic: MAGIC,
            version: VERSION,
            _reserved: 0,
            fingerprint: spec.fingerprint,
            size: spec.size as u64,
            align: spec.align as u64,
            len: spec.len as u64,
        };
        // SAFETY: the mapping is `total ≥ HEADER_LEN` bytes, page-aligned, and nobody else
        // can see it yet.
        unsafe { ptr.cast::<Header>().write(header) };
        Ok(Region {
            fd,
            ptr,
            map_len: total,
            spec,
        })
    }

    /// Maps the region behind `fd` and checks its header (magic, version, layout, length).
    /// Check the payload type with [`expect`](Self::expect).
    ///
    /// # Errors
    /// [`Error::BadRegion`] if `fd` is not a region or is inconsistent; [`Error::Os`].
    pub fn attach(fd: OwnedFd) -> Result<Region> {
        // Only a file nobody can resize is safe to hand out references into: a shrink under
        // our mapping would turn reads into SIGBUS.
        if !sys::is_sealed(&fd) {
            return Err(Error::BadRegion(
                "not sealed against resizing (not made by Region::create)".into(),
            ));
        }
        let len = sys::file_len(&fd).map_err(|e| Error::os("fstat", e))?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l >= HEADER_LEN)
            .ok_or_else(|| Error::BadRegion(format!("{len} bytes is too short for a header")))?;
        let ptr = sys::map_shared(&fd, len).map_err(|e| Error::os("mmap", e))?;
        let mut region = Region {
            fd,
            ptr,
            map_len: len,
            spec: Spec {
                fingerprint: 0,
                size: 0,
                align: 1,
                len: 0,
            },
        };
        // SAFETY: the mapping holds at least `HEADER_LEN` bytes, page-aligned. Volatile: a
        // hostile sender could still be writing it; any bytes are a valid `Header`.
        let header = unsafe { region.ptr.cast::<Header>().read_volatile() };
        if header.magic != MAGIC || header.version != VERSION {
            return Err(Error::BadRegion(format!(
                "not an mp-shm region of version {VERSION} (magic {:#x}, version {})",
                header.magic, header.version
            )));
        }
        let spec = Spec {
            fingerprint: header.fingerprint,
            size: usize::try_from(header.size).unwrap_or(usize::MAX),
            align: usize::try_from(header.align).unwrap_or(usize::MAX),
            len: usize::try_from(header.len).unwrap_or(usize::MAX),
        };
        if !spec.align.is_power_of_two()
            || spec.align > MAX_ALIGN
            || spec
                .offset()
                .checked_add(spec.size)
                .is_none_or(|end| end > len)
        {
            return Err(Error::BadRegion(format!(
                "header {spec:?} does not fit a {len}-byte file"
            )));
        }
        region.spec = spec;
        Ok(region)
    }

    /// Checks that the payload is what `expected` describes.
    ///
    /// # Errors
    /// [`Error::BadRegion`] naming both specs.
    pub fn expect(&self, expected: Spec) -> Result<()> {
        if self.spec == expected {
            Ok(())
        } else {
            Err(Error::BadRegion(format!(
                "holds {:?}, expected {expected:?}",
                self.spec
            )))
        }
    }

    /// What the header says the payload is.
    pub fn spec(&self) -> Spec {
        self.spec
    }

    /// The payload's first byte, aligned to `spec().align`; `spec().size` bytes are mapped.
    pub fn payload(&self) -> NonNull<u8> {
        // SAFETY: `offset() + size ≤ map_len` was checked at creation or attach.
        unsafe { self.ptr.add(self.spec.offset()) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`map_len` come from our one `map_shared`; references into the
        // payload borrow `self`, so none outlives this.
        unsafe { sys::unmap(self.ptr, self.map_len) };
    }
}

impl AsFd for Region {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Region")
            .field("spec", &self.spec)
            .field("mapped", &self.map_len)
            .finish()
    }
}

impl Serialize for Region {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        mp_codec::fd::serialize(&self.fd, serializer)
    }
}

impl<'de> Deserialize<'de> for Region {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let fd = mp_codec::fd::deserialize(deserializer)?;
        Region::attach(fd).map_err(mp_codec::fd::rejected)
    }
}

/// A type that may live in a shared region and be used from several processes at once.
///
/// # Safety
/// Implementors promise that every bit pattern is a valid value (any process mapping the
/// region can write any bytes) and all-zero bytes its initial state; that the type holds no
/// pointers, references or process-local handles; that every mutation through `&Self` is
/// synchronized across processes (atomics, or data guarded by such a type); and that nothing
/// depends on its `Drop` running (a region never drops its payload).
pub unsafe trait Placeable: Send + Sync {}

// SAFETY: each is `#[repr(C)]` atomics only, all-zero is its initial state, no Drop.
unsafe impl Placeable for crate::RawLock {}
// SAFETY: as above.
unsafe impl Placeable for crate::RawRLock {}
// SAFETY: as above.
unsafe impl Placeable for crate::RawSemaphore {}
// SAFETY: as above.
unsafe impl Placeable for crate::RawCondition {}
// SAFETY: as above.
unsafe impl Placeable for crate::RawEvent {}
// SAFETY: as above.
unsafe impl Placeable for crate::RawBarrier {}
// SAFETY: atomics are valid at zero and synchronize themselves.
unsafe impl Placeable for std::sync::atomic::AtomicU32 {}
// SAFETY: as above.
unsafe impl Placeable for std::sync::atomic::AtomicU64 {}
// SAFETY: as above.
unsafe impl Placeable for std::sync::atomic::AtomicI64 {}
// SAFETY: as above.
unsafe impl Placeable for std::sync::atomic::AtomicUsize {}

/// One `T` in its own shared region: create it zeroed, clone the handle for threads, send it
/// to another process (or let a fork inherit it); every copy refers to the same `T`.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// let counter = multiprocessing::synchronize::Shared::<AtomicU64>::new()?;
/// counter.fetch_add(2, Ordering::Relaxed);
/// let frame = multiprocessing::codec::Frame::encode(&counter)?;
/// let same: multiprocessing::synchronize::Shared<AtomicU64> = frame.decode()?;
/// assert_eq!(same.load(Ordering::Relaxed), 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Shared<T: Placeable> {
    region: Arc<Region>,
    _type: PhantomData<T>,
}

impl<T: Placeable> Shared<T> {
    /// A new zeroed `T` in a new region.
    ///
    /// # Errors
    /// As [`Region::create`].
    pub fn new() -> Result<Self> {
        Ok(Shared {
            region: Arc::new(Region::create(Spec::of::<T>())?),
            _type: PhantomData,
        })
    }

    /// Attaches a region that must hold a `T`.
    ///
    /// # Errors
    /// [`Error::BadRegion`] if it holds something else.
    pub fn from_region(region: Region) -> Result<Self> {
        region.expect(Spec::of::<T>())?;
        Ok(Shared {
            region: Arc::new(region),
            _type: PhantomData,
        })
    }

    /// The region behind the handle.
    pub fn region(&self) -> &Region {
        &self.region
    }
}

impl<T: Placeable> Deref for Shared<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: the region holds a `T` (checked spec), aligned, zero-initialized or written
        // by its users through `&T` only; `Placeable` makes shared `&T` across processes sound.
        unsafe { self.region.payload().cast::<T>().as_ref() }
    }
}

impl<T: Placeable> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared {
            region: self.region.clone(),
            _type: PhantomData,
        }
    }
}

impl<T: Placeable + fmt::Debug> fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T: Placeable> Serialize for Shared<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        self.region.serialize(serializer)
    }
}

impl<'de, T: Placeable> Deserialize<'de> for Shared<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let region = Region::deserialize(deserializer)?;
        Shared::from_region(region).map_err(mp_codec::fd::rejected)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn a_region_of_another_type_is_rejected() {
        let region = Region::create(Spec::of::<AtomicU32>()).unwrap();
        let frame = mp_codec::Frame::encode(&region).unwrap();
        let err = frame.decode::<Shared<crate::RawLock>>().unwrap_err();
        assert!(err.to_string().contains("expected"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_a_region_is_rejected() {
        let fd = sys::memfd(4096).unwrap();
        assert!(matches!(Region::attach(fd), Err(Error::BadRegion(_))));
        let fd = sys::memfd(8).unwrap();
        assert!(matches!(Region::attach(fd), Err(Error::BadRegion(_))));
        // A region's bytes in a file that could shrink under the mapping.
        let region = Region::create(Spec::of::<u64>()).unwrap();
        let unsealed = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&unsealed, 4096).unwrap();
        // SAFETY: reading the header bytes of our own fresh region.
        let header = unsafe { std::slice::from_raw_parts(region.ptr.as_ptr(), HEADER_LEN) };
        rustix::io::pwrite(&unsealed, header, 0).unwrap();
        let err = Region::attach(unsealed).unwrap_err();
        assert!(err.to_string().contains("sealed"), "{err}");
    }

    #[test]
    fn writes_through_one_mapping_show_in_another() {
        let a = Shared::<AtomicU32>::new().unwrap();
        let b: Shared<AtomicU32> = mp_codec::Frame::encode(&a).unwrap().decode().unwrap();
        a.store(7, Ordering::Relaxed);
        assert_eq!(b.load(Ordering::Relaxed), 7);
        assert_ne!(a.region().payload(), b.region().payload(), "two mappings");
    }

    #[test]
    fn bad_alignment_is_an_error() {
        let spec = Spec {
            align: 3,
            ..Spec::of::<u8>()
        };
        assert!(Region::create(spec).is_err());
    }
}
