//! The system calls of `mp-shm`: POSIX shared memory by name (anonymous regions come from
//! `mp_sync::Region`).

use std::{
    io,
    os::fd::{AsFd, OwnedFd},
    ptr::NonNull,
};

use rustix::{
    fs::Mode,
    mm::{MapFlags, ProtFlags},
    shm::OFlags,
};

fn path(name: &str) -> String {
    format!("/{name}")
}

/// `O_NOFOLLOW`, which `shm::OFlags` does not name (glibc's `shm_open` adds it itself; the
/// raw-syscall path does not).
fn nofollow() -> OFlags {
    OFlags::from_bits_retain(rustix::fs::OFlags::NOFOLLOW.bits())
}

/// `shm_open(O_CREAT | O_EXCL | O_NOFOLLOW | O_RDWR, 0600)`. `O_EXCL` alone already fails
/// on a symbolic link with `EEXIST`, wherever it points; `O_NOFOLLOW` says so twice.
/// See [shm_open(3)](https://man7.org/linux/man-pages/man3/shm_open.3.html).
pub(crate) fn shm_create(name: &str) -> io::Result<OwnedFd> {
    Ok(rustix::shm::open(
        path(name),
        OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | nofollow(),
        Mode::from_raw_mode(0o600),
    )?)
}

/// `shm_open(O_RDWR | O_NOFOLLOW)`: a symbolic link under the name fails with `ELOOP`
/// instead of opening whatever it points to.
pub(crate) fn shm_open(name: &str) -> io::Result<OwnedFd> {
    Ok(rustix::shm::open(
        path(name),
        OFlags::RDWR | nofollow(),
        Mode::empty(),
    )?)
}

/// Whether `name` still names the file `fd` is open on (same device and inode; a
/// symbolic link under the name is not followed, so it never does).
pub(crate) fn names(fd: impl AsFd, name: &str) -> io::Result<bool> {
    let ours = rustix::fs::fstat(fd)?;
    // rustix's and glibc's shm_open both use /dev/shm on Linux
    let named = rustix::fs::statat(
        rustix::fs::CWD,
        format!("/dev/shm/{name}"),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )?;
    Ok((ours.st_dev, ours.st_ino) == (named.st_dev, named.st_ino))
}

/// `shm_unlink`.
pub(crate) fn shm_unlink(name: &str) -> io::Result<()> {
    Ok(rustix::shm::unlink(path(name))?)
}

pub(crate) fn resize(fd: impl AsFd, len: usize) -> io::Result<()> {
    Ok(rustix::fs::ftruncate(fd, len as u64)?)
}

/// The file's size now (`fstat`).
pub(crate) fn len(fd: impl AsFd) -> io::Result<usize> {
    let len = rustix::fs::fstat(fd)?.st_size;
    usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))
}

/// What `fstat` says the descriptor is, when it is not a regular file.
pub(crate) fn not_regular(fd: impl AsFd) -> io::Result<Option<&'static str>> {
    use rustix::fs::FileType;
    Ok(
        match FileType::from_raw_mode(rustix::fs::fstat(fd)?.st_mode) {
            FileType::RegularFile => None,
            FileType::Directory => Some("a directory"),
            FileType::Symlink => Some("a symbolic link"),
            FileType::Fifo => Some("a FIFO"),
            FileType::Socket => Some("a socket"),
            FileType::CharacterDevice | FileType::BlockDevice => Some("a device"),
            FileType::Unknown => Some("of an unknown file type"),
        },
    )
}

/// Fills `out` from the file at `offset` ([pread(2)](https://man7.org/linux/man-pages/man2/pread.2.html)),
/// stopping early only at the end of the file; returns how many bytes it read.
pub(crate) fn read_at(fd: impl AsFd, out: &mut [u8], offset: usize) -> io::Result<usize> {
    let mut done = 0;
    while done < out.len() {
        match rustix::io::pread(&fd, &mut out[done..], (offset + done) as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(done)
}

/// Writes all of `src` to the file at `offset` ([pwrite(2)](https://man7.org/linux/man-pages/man2/pwrite.2.html)).
pub(crate) fn write_at(fd: impl AsFd, src: &[u8], offset: usize) -> io::Result<()> {
    let mut done = 0;
    while done < src.len() {
        match rustix::io::pwrite(&fd, &src[done..], (offset + done) as u64) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Maps `len` bytes shared; an empty block maps nothing.
pub(crate) fn map(fd: impl AsFd, len: usize) -> io::Result<Option<NonNull<u8>>> {
    if len == 0 {
        return Ok(None);
    }
    // SAFETY: a fresh mapping at a kernel-chosen address overlaps no Rust object; the
    // caller unmaps it once with `unmap(ptr, len)`.
    let ptr = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED,
            fd,
            0,
        )?
    };
    Ok(NonNull::new(ptr.cast()))
}

/// # Safety
/// `ptr`/`len` come from one [`map`] call and the mapping is no longer used.
pub(crate) unsafe fn unmap(ptr: NonNull<u8>, len: usize) {
    // SAFETY: as the caller promises.
    let _ = unsafe { rustix::mm::munmap(ptr.as_ptr().cast(), len) };
}

/// `psm_` and 8 random hex digits, as Python's `_make_filename`. Without the OS's randomness
/// (never seen on Linux), the digits mix the clock, the pid and a counter instead.
pub(crate) fn random_name() -> String {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let mut bytes = [0u8; 4];
    let random = match rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty()) {
        Ok(4) => u32::from_le_bytes(bytes),
        _ => {
            let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
            let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            (now.tv_nsec as u32) ^ pid().rotate_left(16) ^ count.wrapping_mul(0x9e37_79b9)
        }
    };
    format!("psm_{random:08x}")
}

/// This process's pid (only drops ask, so no cache is needed).
pub(crate) fn pid() -> u32 {
    rustix::process::getpid().as_raw_nonzero().get() as u32
}
