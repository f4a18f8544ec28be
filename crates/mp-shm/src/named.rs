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
/// unlink either, and neither does a drop after the name came to mean another segment
/// (someone unlinked ours and created theirs under the same name).
///
/// Sending a `SharedMemory` sends its name; the receiver opens it.
///
/// # Reads and writes go through the descriptor
///
/// [`read`](Self::read) and [`write`](Self::write) copy with `pread`/`pwrite` on the
/// segment's descriptor rather than through this process's mapping, for three reasons:
///
/// - **No data race.** Any process may write the block at any time. A plain copy through the
///   mapping races with a concurrent copy in another thread (ThreadSanitizer reports it), and
///   that is undefined behaviour in safe code. The kernel's copy is, to Rust, just another
///   process: no Rust code touches the shared bytes, so nothing can race. A concurrent
///   writer may still tear a copy at any byte, never more: every byte read is one some
///   write stored.
/// - **No `SIGBUS`.** Another process may `ftruncate` the segment below our mapping; touching
///   a page past its new end raises `SIGBUS` and kills the process. `pread` just stops at
///   the end of the file, so a read past it is [`Error::Truncated`]. A write checks the size
///   with `fstat` first and refuses likewise.
/// - **Cost.** A byte-wise atomic copy through the mapping (what `RawArray` does) plus the
///   `fstat` it would need to guard against truncation costs more than one `pread` from 4 KiB
///   up (on a 2-core VM: 1.2 µs against 0.34 µs for 4 KiB, 290 µs against 80 µs for 1 MiB),
///   and about the same below (260 ns against 300 ns for 8 bytes). A write pays an `fstat`
///   and a `pwrite`: 0.8 µs for 8 bytes, 80 µs for 1 MiB.
///
/// What is left: a truncation between a write's `fstat` and its `pwrite` makes the `pwrite`
/// extend the segment again to the end of the write (the gap reads as zeros). That is the
/// truncating process's race to lose, and it is never a fault or undefined behaviour here.
///
/// [`buf`](Self::buf) works in place, safely, on atomic bytes (Python's `.buf`); its one
/// hazard is a shrink by another process (`SIGBUS`). [`as_slice`](Self::as_slice),
/// [`as_mut_slice`](Self::as_mut_slice) and [`as_ptr`](Self::as_ptr) reach the mapping directly, as fast as memory goes: their
/// callers exclude concurrent writers and must also know that nobody shrinks the segment.
///
/// # Opening a name
///
/// [`open`](Self::open) never follows a symbolic link (`O_NOFOLLOW`: anyone who can write
/// `/dev/shm` could otherwise point our name at any file we may write) and refuses anything
/// but a regular file ([`Error::NotASegment`]). [`create`](Self::create) uses `O_EXCL`, which
/// fails on any existing entry, links included.
///
/// ```
/// use multiprocessing::shared_memory::SharedMemory;
///
/// let created = SharedMemory::new(16)?; // a fresh name, like Python's SharedMemory(create=True)
/// created.write(0, b"hello")?;
/// let opened = SharedMemory::open(created.name())?;
/// let mut buf = [0; 5];
/// opened.read(0, &mut buf)?;
/// assert_eq!(&buf, b"hello");
/// drop(opened); // still there
/// assert!(SharedMemory::open(created.name()).is_ok());
/// # Ok::<(), multiprocessing::sharedctypes::Error>(())
/// ```
pub struct SharedMemory {
    name: String,
    fd: OwnedFd,
    ptr: Option<NonNull<u8>>,
    size: usize,
    /// The pid that unlinks on drop: the creator's, unless persisted.
    unlinker: Option<u32>,
}

// SAFETY: the handle is a descriptor and a mapping of memory that other processes share
// anyway, so no thread of ours can do with it what another process could not. The safe
// methods never touch the mapped bytes (copies go through `pread`/`pwrite`); the pointer is
// only ever unmapped, in `drop`, which owns `self`; the slice views are `unsafe` and leave
// excluding other threads and processes to their callers.
unsafe impl Send for SharedMemory {}
// SAFETY: as for `Send`.
unsafe impl Sync for SharedMemory {}

impl SharedMemory {
    /// Creates `name` with `size` zero bytes.
    ///
    /// # Errors
    /// [`Error::BadName`], [`Error::BadSize`] for 0, [`Error::AlreadyExists`] (also for a
    /// symbolic link or any other entry under the name), [`Error::Os`].
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

    /// Opens an existing block, at the size `fstat` reports now.
    ///
    /// # Errors
    /// [`Error::BadName`], [`Error::NotFound`], [`Error::NotASegment`] for a symbolic link
    /// (not followed) or anything else that is not a regular file, [`Error::Os`].
    pub fn open(name: &str) -> Result<Self> {
        use rustix::io::Errno;
        check_name(name)?;
        let not_a_segment = |what| Error::NotASegment(name.to_string(), what);
        let fd = sys::shm_open(name).map_err(|e| {
            match e.raw_os_error().map(Errno::from_raw_os_error) {
                Some(Errno::NOENT) => Error::NotFound(name.to_string()),
                Some(Errno::LOOP) => not_a_segment("a symbolic link (not followed)"),
                // glibc's shm_open turns EISDIR into EINVAL; the name itself is checked already
                Some(Errno::ISDIR | Errno::INVAL) => not_a_segment("a directory"),
                Some(Errno::NXIO) => not_a_segment("a socket"),
                _ => Error::Os("shm_open", e),
            }
        })?;
        if let Some(what) = sys::not_regular(&fd).map_err(|e| Error::Os("fstat", e))? {
            return Err(not_a_segment(what));
        }
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

    /// Size in bytes, as mapped when this handle was made (another process may resize the
    /// segment later; [`read`](Self::read) and [`write`](Self::write) check).
    pub fn size(&self) -> usize {
        self.size
    }

    /// The first byte of this process's mapping (dangling for an empty block). Using it is
    /// `unsafe` and has the duties of [`as_slice`](Self::as_slice) and
    /// [`as_mut_slice`](Self::as_mut_slice).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.map_or(NonNull::dangling(), |p| p).as_ptr()
    }

    /// Copies bytes from `offset` into `out`, atomically byte by byte (a concurrent writer may
    /// tear the copy, never more). See [the type's docs](Self#reads-and-writes-go-through-the-descriptor)
    /// for how.
    ///
    /// # Errors
    /// [`Error::RangeOutOfRange`] past the end of [`size`](Self::size);
    /// [`Error::Truncated`] past the end of a segment another process shrank (then `out`
    /// may hold the bytes before that end); [`Error::Os`] if `pread` fails.
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        self.check(offset, out.len())?;
        let got = sys::read_at(&self.fd, out, offset).map_err(|e| Error::Os("pread", e))?;
        if got < out.len() {
            return Err(self.truncated("read", offset + out.len())?);
        }
        Ok(())
    }

    /// Copies `src` into the block at `offset` (concurrent readers may see it torn, at any
    /// byte).
    ///
    /// # Errors
    /// [`Error::RangeOutOfRange`] past the end of [`size`](Self::size);
    /// [`Error::Truncated`] past the end of a segment another process shrank (nothing is
    /// written then); [`Error::Os`] if `fstat` or `pwrite` fails (`ENOSPC` when `/dev/shm`
    /// is full).
    pub fn write(&self, offset: usize, src: &[u8]) -> Result<()> {
        self.check(offset, src.len())?;
        if src.is_empty() {
            return Ok(());
        }
        let needed = offset + src.len();
        let len = sys::len(&self.fd).map_err(|e| Error::Os("fstat", e))?;
        if len < needed {
            return Err(self.truncated("write", needed)?);
        }
        sys::write_at(&self.fd, src, offset).map_err(|e| Error::Os("pwrite", e))
    }

    /// The bytes as atomic bytes, for use in place (Python's `.buf`): safe, since other
    /// processes may write them at any time and atomics are made for that; loads and
    /// stores of single bytes are as fast as plain ones (`Relaxed`).
    ///
    /// The one hazard is the segment's: if another process shrinks it below
    /// [`size`](Self::size), touching a byte past the new end raises `SIGBUS`, which ends
    /// this process (as it ends a Python process using `.buf`). It is never a wrong value.
    /// Where that matters, use [`read`](Self::read) and [`write`](Self::write), which report
    /// [`Error::Truncated`] instead.
    ///
    /// ```
    /// use std::sync::atomic::Ordering;
    ///
    /// let block = multiprocessing::shared_memory::SharedMemory::new(4)?;
    /// let buf = block.buf();
    /// buf[0].store(7, Ordering::Relaxed);
    /// buf[1].fetch_add(2, Ordering::Relaxed);
    /// let mut out = [0; 2];
    /// block.read(0, &mut out)?;
    /// assert_eq!(out, [7, 2]);
    /// # Ok::<(), multiprocessing::sharedctypes::Error>(())
    /// ```
    pub fn buf(&self) -> &[std::sync::atomic::AtomicU8] {
        // SAFETY: the mapping is `size` bytes, readable and writable, from `as_ptr` (dangling
        // and aligned for an empty block) for as long as `self` lives (unmapped only in
        // `drop`). `AtomicU8` has `u8`'s size and alignment and any byte is a valid one;
        // every access through the slice is atomic, so writes by other threads or processes
        // cannot race with it. A shrink of the file by another process makes later accesses
        // past its end fault with SIGBUS (the process ends); it never yields a value.
        unsafe {
            std::slice::from_raw_parts(
                self.as_ptr().cast::<std::sync::atomic::AtomicU8>(),
                self.size,
            )
        }
    }

    /// The bytes as a slice.
    ///
    /// # Safety
    /// While the slice lives, no thread or process may write the block, nor shrink it below
    /// [`size`](Self::size) (touching a page past the end of the file raises `SIGBUS`).
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: mapped for `size` bytes; the caller excludes writers.
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.size) }
    }

    /// The bytes as a mutable slice.
    ///
    /// # Safety
    /// While the slice lives, no other thread or process may read or write the block, nor
    /// shrink it below [`size`](Self::size) (touching a page past the end of the file raises
    /// `SIGBUS`).
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

    /// The error for an access that needs `needed` bytes of a segment that shrank.
    fn truncated(&self, op: &'static str, needed: usize) -> Result<Error> {
        Ok(Error::Truncated {
            op,
            name: self.name.clone(),
            needed,
            len: sys::len(&self.fd).map_err(|e| Error::Os("fstat", e))?,
        })
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
    } else if name == "." || name == ".." {
        "names a directory"
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
        // Only if the name is still ours: after someone else unlinked it, it may name a new
        // segment of another creator. (A swap between the check and the unlink remains.)
        if self.unlinker == Some(sys::pid()) && sys::names(&self.fd, &self.name).unwrap_or(false) {
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

    #[test]
    fn the_atomic_view_is_the_segment_for_every_handle_and_adds_exactly() {
        use std::sync::atomic::Ordering;
        let block = SharedMemory::new(8).unwrap();
        let other = SharedMemory::open(block.name()).unwrap(); // a mapping of its own
        block.buf()[3].store(42, Ordering::Relaxed);
        assert_eq!(other.buf()[3].load(Ordering::Relaxed), 42);
        std::thread::scope(|s| {
            for view in [&block, &other] {
                s.spawn(move || {
                    for _ in 0..100 {
                        view.buf()[0].fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        let mut out = [0u8; 1];
        block.read(0, &mut out).unwrap();
        assert_eq!(out[0], 200);
        assert!(SharedMemory::new(1).unwrap().buf().len() == 1);
    }

    fn unique(tag: &str) -> String {
        format!("mp_shm_test_{tag}_{}", std::process::id())
    }

    /// A `/dev/shm` entry a test made by hand, removed when the test ends, pass or fail.
    struct Planted(std::path::PathBuf);

    impl Planted {
        fn new(tag: &str) -> (String, Self) {
            let name = unique(tag);
            let path = std::path::Path::new("/dev/shm").join(&name);
            (name, Planted(path))
        }
    }

    impl Drop for Planted {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0).or_else(|_| std::fs::remove_dir(&self.0));
        }
    }

    #[test]
    fn python_names_only() {
        for bad in ["", "/x", "a/b", "nul\0", ".", "..", &"x".repeat(255)] {
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
    fn creator_drop_leaves_a_new_segment_under_its_old_name_alone() {
        let name = unique("reused");
        let first = SharedMemory::create(&name, 8).unwrap();
        SharedMemory::open(&name).unwrap().unlink().unwrap();
        let second = SharedMemory::create(&name, 8).unwrap();
        drop(first);
        assert!(
            SharedMemory::open(&name).is_ok(),
            "the first creator's drop unlinked the second's segment"
        );
        drop(second);
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

    /// Run under ThreadSanitizer too (see the crate docs): a plain copy here is a data race.
    #[test]
    fn concurrent_read_and_write_tear_bytes_but_do_not_race() {
        const LEN: usize = 256;
        let shm = SharedMemory::new(LEN).unwrap();
        let start = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            s.spawn(|| {
                start.wait();
                for i in 0..2000 {
                    let fill = if i % 2 == 0 { 0xaa } else { 0x55 };
                    shm.write(0, &[fill; LEN]).unwrap();
                }
            });
            start.wait();
            let mut out = [0; LEN];
            for _ in 0..2000 {
                shm.read(0, &mut out).unwrap();
                // torn across bytes, perhaps, but every byte is one some write stored
                assert!(out.iter().all(|b| [0, 0xaa, 0x55].contains(b)), "{out:x?}");
            }
        });
    }

    #[test]
    fn access_to_a_segment_another_handle_shrank_is_an_error_not_sigbus() {
        const MIB: usize = 1 << 20;
        let shm = SharedMemory::new(MIB).unwrap();
        shm.write(0, b"kept").unwrap();
        let other = SharedMemory::open(shm.name()).unwrap();
        rustix::fs::ftruncate(&other, 64 * 1024).unwrap();

        let mut out = [0; 4];
        let err = shm.read(MIB / 2, &mut out).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Truncated {
                    op: "read",
                    len: 65536,
                    ..
                }
            ),
            "{err}"
        );
        let err = shm.write(MIB - 1, b"x").unwrap_err();
        assert!(matches!(err, Error::Truncated { op: "write", .. }), "{err}");
        shm.read(0, &mut out).unwrap(); // what is left still reads
        assert_eq!(&out, b"kept");
        assert_eq!(
            sys::len(&shm).unwrap(),
            64 * 1024,
            "a refused write regrew it"
        );

        rustix::fs::ftruncate(&other, 0).unwrap();
        assert!(matches!(
            shm.read(0, &mut out),
            Err(Error::Truncated { .. })
        ));
    }

    #[test]
    fn open_refuses_a_symlink_planted_under_the_name() {
        let target = SharedMemory::new(8).unwrap();
        let (name, link) = Planted::new("link");
        std::os::unix::fs::symlink(
            std::path::Path::new("/dev/shm").join(target.name()),
            &link.0,
        )
        .unwrap();
        let err = SharedMemory::open(&name).unwrap_err();
        assert!(matches!(err, Error::NotASegment(..)), "{err}");
        // O_EXCL never follows a link either: the name is taken
        assert!(matches!(
            SharedMemory::create(&name, 8),
            Err(Error::AlreadyExists(_))
        ));
    }

    #[test]
    fn open_refuses_what_is_not_a_regular_file() {
        let (fifo_name, fifo) = Planted::new("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo.0,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let err = SharedMemory::open(&fifo_name).unwrap_err();
        assert!(matches!(err, Error::NotASegment(..)), "{err}");

        let (dir_name, dir) = Planted::new("dir");
        std::fs::create_dir(&dir.0).unwrap();
        let err = SharedMemory::open(&dir_name).unwrap_err();
        assert!(matches!(err, Error::NotASegment(..)), "{err}");
    }
}
