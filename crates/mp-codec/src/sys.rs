//! The one system call of this crate that needs `unsafe`: reading into a vector's spare
//! capacity, so a received payload is never zero-filled first.
//!
//! # Safety
//! The only `unsafe` is `Vec::set_len` after the kernel reported how many bytes it wrote.
#![allow(unsafe_code)]

use std::os::fd::BorrowedFd;

use rustix::io::Errno;

/// One `read(2)` of at most `limit - buf.len()` bytes into `buf`'s spare capacity, which the
/// caller has reserved; returns the number of bytes read (0 at end of file).
///
/// See [read(2)](https://man7.org/linux/man-pages/man2/read.2.html).
pub(crate) fn read_into_spare(
    fd: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
    limit: usize,
) -> Result<usize, Errno> {
    let len = buf.len();
    let room = (limit - len).min(buf.capacity() - len);
    let spare = &mut buf.spare_capacity_mut()[..room];
    let (filled, _) = rustix::io::read(fd, spare)?;
    let n = filled.len();
    // SAFETY: `read` initialised the first `n` bytes of the spare capacity (rustix returns them
    // as `filled`), and `len + n <= capacity` because `n <= room <= capacity - len`.
    unsafe { buf.set_len(len + n) };
    Ok(n)
}
