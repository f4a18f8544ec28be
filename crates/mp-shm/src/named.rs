//! `SharedMemory`: Python's `multiprocessing.shared_memory.SharedMemory`, by name.

use std::{
    fmt,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    ptr::NonNull,
};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Error, Result, sys};

/// The longest name: `NAME_MAX` (255) less the leading `/` that `shm_open` wants.
const MAX_NAME: usize = 254;

/// A named shared memory block, interchangeable with Python's `SharedMemory` (same names,
/// no header: a Python process can open what this creates, and the other way round).
///
/// Names follow Python: no leading `/` (it is added for `shm_open`), no `/` or NUL inside.
/// The segment is created with mode 0600. The process that created it unlinks it when its
/// handle drops, unless told to [`persist`](Self::persist); a process that only opened it
/// never unlinks it on drop (Python's gh-82300 is the bug not to copy), though anyone may
/// call [`unlink`](Self::unlink). A fork child's copy of the creator's handle does not
/// unlink either.
///
/// Sending a `SharedMemory` sends its name; the receiver opens it.
///
/// ```
/// use mp_shm::SharedMemory;
///
/// let created = SharedMemory::new(16)?; // a fresh name, like Python's SharedMemory(create=True)
/// created.write(0, b"hello")?;
/// let opened = SharedMemory::open(created.name())?;
/// let mut buf = [0; 5];
/// opened.read(0, &mut buf)?;
/// assert_eq!(&buf, b"hello");
/// drop(opened); // still there
/// assert!(SharedMemory::open(created.name()).is_ok());
/// # Ok::<(), mp_shm::Error>(())
/// ```
pub struct SharedMemory {
    name: String,
    fd: OwnedFd,
    ptr: Option<NonNull<u8>>,
    size: usize,
    /// The pid that unlinks on drop: the creator's, unless persisted.
    unlinker: Option<u32>,
}

// SAFETY: the handle is a descriptor and a mapping of memory shared with other processes
// anyway; byte access copies through raw pointers, and slices are `unsafe`.
unsafe impl Send for SharedMemory {}
// SAFETY: as for `Send`.
unsafe impl Sync for SharedMemory {}

impl SharedMemory {
    /// Creates `name` with `size` zero bytes.
    ///
    /// # Errors
    /// [`Error::BadName`], [`Error::BadSize`] for 0, [`Error::AlreadyExists`], [`Error::Os`].
    pub fn create(name: &str, size: usize) -> Result<Self> {
        check_name(name)?;
        if size == 0 {
            return Err(Error::BadSize(
                0,
                "a new shared memory block needs at least one byte",
            ));
        }
        let fd = sys::shm_create(name).map_err(|e| match e.raw_os_error() {
            Some(libc_eexist) if libc_eexist == rustix::io::Errno::EXIST.raw_os_error() => {
                Error::AlreadyExists(name.to_string())
            }
            _ => Error::Os("shm_open", e),
        })?;
        let unlink_on_error = |err| {
            let _ = sys::shm_unlink(name);
            err
        };
        sys::resize(&fd, size).map_err(|e| unlink_on_error(Error::Os("ftruncate", e)))?;
        let ptr = sys::map(&fd, size).map_err(|e| unlink_on_error(Error::Os("mmap", e)))?;
        Ok(SharedMemory {
            name: name.to_string(),
            fd,
            ptr,
            size,
            unlinker: Some(sys::pid()),
        })
    }

    /// Creates a block of `size` bytes under a fresh random name (`psm_` and 8 hex digits,
    /// as Python names them).
    ///
    /// # Errors
    /// As [`create`](Self::create).
    pub fn new(size: usize) -> Result<Self> {
        let mut tries = 0;
        loop {
            match SharedMemory::create(&sys::random_name(), size) {
                Err(Error::AlreadyExists(_)) if tries < 100 => tries += 1,
                other => return other,
            }
        }
    }

    /// Opens an existing block.
    ///
    /// # Errors
    /// [`Error::BadName`], [`Error::NotFound`], [`Error::Os`].
    pub fn open(name: &str) -> Result<Self> {
        check_name(name)?;
        let fd = sys::shm_open(name).map_err(|e| match e.raw_os_error() {
            Some(n) if n == rustix::io::Errno::NOENT.raw_os_error() => {
                Error::NotFound(name.to_string())
            }
            _ => Error::Os("shm_open", e),
        })?;
        let size = sys::len(&fd).map_err(|e| Error::Os("fstat", e))?;
        let ptr = sys::map(&fd, size).map_err(|e| Error::Os("mmap", e))?;
        Ok(SharedMemory {
            name: name.to_string(),
            fd,
            ptr,
            size,
            unlinker: None,
        })
    }

    /// The name, without the leading `/` (Python's `.name`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The first byte of this process's mapping (dangling for an empty block).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.map_or(NonNull::dangling(), |p| p).as_ptr()
    }

    /// Copies bytes from `offset` into `out`, atomically byte by byte (a concurrent writer may
    /// tear the copy, never more).
    ///
    /// # Errors
    /// [`Error::RangeOutOfRange`] past the end.
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        self.check(offset, out.len())?;
        // SAFETY: in range of the mapping; `out` is a distinct allocation; a concurrent
        // writer can only tear the copy.
        unsafe {
            std::ptr::copy_nonoverlapping(self.as_ptr().add(offset), out.as_mut_ptr(), out.len())
        };
        Ok(())
    }

    /// Copies `src` into the block at `offset`.
    ///
    /// # Errors
    /// [`Error::RangeOutOfRange`] past the end.
    pub fn write(&self, offset: usize, src: &[u8]) -> Result<()> {
        self.check(offset, src.len())?;
        // SAFETY: in range of the writable mapping; `src` is a distinct allocation.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.as_ptr().add(offset), src.len())
        };
        Ok(())
    }

    /// The bytes as a slice (Python's `.buf`).
    ///
    /// # Safety
    /// While the slice lives, no thread or process may write the block.
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: mapped for `size` bytes; the caller excludes writers.
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.size) }
    }

    /// The bytes as a mutable slice.
    ///
    /// # Safety
    /// While the slice lives, no other thread or process may read or write the block.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn as_mut_slice(&self) -> &mut [u8] {
        // SAFETY: mapped writable for `size` bytes; the caller guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.as_ptr(), self.size) }
    }

    /// Removes the name now (mappings stay valid until dropped); the drop will not try again.
    ///
    /// # Errors
    /// [`Error::NotFound`] if it is already gone.
    pub fn unlink(&mut self) -> Result<()> {
        self.unlinker = None;
        sys::shm_unlink(&self.name).map_err(|e| match e.raw_os_error() {
            Some(n) if n == rustix::io::Errno::NOENT.raw_os_error() => {
                Error::NotFound(self.name.clone())
            }
            _ => Error::Os("shm_unlink", e),
        })
    }

    /// Keeps the segment after this (creating) handle drops, for another program to open.
    pub fn persist(&mut self) {
        self.unlinker = None;
    }

    fn check(&self, start: usize, count: usize) -> Result<()> {
        if start.checked_add(count).is_none_or(|end| end > self.size) {
            return Err(Error::RangeOutOfRange {
                start,
                count,
                len: self.size,
            });
        }
        Ok(())
    }
}

fn check_name(name: &str) -> Result<()> {
    let why = if name.is_empty() {
        "empty"
    } else if name.contains('\0') {
        "contains a NUL byte"
    } else if name.starts_with('/') {
        "leading '/' (Python's names have none; it is added for shm_open)"
    } else if name.contains('/') {
        "contains '/'"
    } else if name.len() > MAX_NAME {
        "longer than 254 bytes"
    } else {
        return Ok(());
    };
    Err(Error::BadName(name.to_string(), why))
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        if let Some(ptr) = self.ptr {
            // SAFETY: our one mapping of `size` bytes; slices borrow `self`.
            unsafe { sys::unmap(ptr, self.size) };
        }
        if self.unlinker == Some(sys::pid()) {
            let _ = sys::shm_unlink(&self.name);
        }
    }
}

impl AsFd for SharedMemory {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl fmt::Debug for SharedMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SharedMemory({:?}, size={})", self.name, self.size)
    }
}

impl Serialize for SharedMemory {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        self.name.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SharedMemory {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        SharedMemory::open(&name).map_err(mp_codec::fd::rejected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unique(tag: &str) -> String {
        format!("mp_shm_test_{tag}_{}", std::process::id())
    }

    #[test]
    fn python_names_only() {
        for bad in ["", "/x", "a/b", "nul\0", &"x".repeat(255)] {
            assert!(matches!(
                SharedMemory::create(bad, 1),
                Err(Error::BadName(..))
            ));
            assert!(matches!(SharedMemory::open(bad), Err(Error::BadName(..))));
        }
        assert!(matches!(
            SharedMemory::create(&unique("zero"), 0),
            Err(Error::BadSize(..))
        ));
    }

    #[test]
    fn exists_not_found_and_unlink_on_creator_drop() {
        let name = unique("life");
        let created = SharedMemory::create(&name, 100).unwrap();
        assert!(matches!(
            SharedMemory::create(&name, 100),
            Err(Error::AlreadyExists(_))
        ));
        let opened = SharedMemory::open(&name).unwrap();
        assert_eq!(opened.size(), 100);
        drop(opened);
        assert!(std::path::Path::new("/dev/shm").join(&name).exists());
        let mode = std::fs::metadata(std::path::Path::new("/dev/shm").join(&name)).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
        drop(created);
        assert!(matches!(SharedMemory::open(&name), Err(Error::NotFound(_))));
    }

    #[test]
    fn persist_keeps_it_and_unlink_removes_it() {
        let name = unique("persist");
        let mut created = SharedMemory::create(&name, 8).unwrap();
        created.persist();
        drop(created);
        let mut opened = SharedMemory::open(&name).unwrap();
        opened.unlink().unwrap();
        assert!(matches!(opened.unlink(), Err(Error::NotFound(_))));
        assert!(matches!(SharedMemory::open(&name), Err(Error::NotFound(_))));
    }

    #[test]
    fn bytes_are_bounds_checked() {
        let shm = SharedMemory::new(4).unwrap();
        assert!(shm.name().starts_with("psm_"));
        assert!(shm.write(2, b"abc").is_err());
        shm.write(1, b"abc").unwrap();
        let mut out = [0; 4];
        shm.read(0, &mut out).unwrap();
        assert_eq!(&out, b"\0abc");
        let again: SharedMemory = mp_codec::Frame::encode(&shm).unwrap().decode().unwrap();
        assert_eq!(again.name(), shm.name());
    }
}
