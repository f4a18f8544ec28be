//! The system calls of this crate, through rustix's safe wrappers (no `unsafe` here).

use std::{os::fd::OwnedFd, time::Duration};

use rustix::{
    io::Errno,
    net::{AddressFamily, SocketFlags, SocketType, sockopt},
};

use crate::{Error, Result};

/// A connected pair of unix stream sockets, close-on-exec.
/// See [socketpair(2)](https://man7.org/linux/man-pages/man2/socketpair.2.html).
pub(crate) fn socketpair() -> Result<(OwnedFd, OwnedFd)> {
    rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| Error::os("socketpair", e))
}

/// A pipe (read end, write end), close-on-exec.
/// See [pipe2(2)](https://man7.org/linux/man-pages/man2/pipe2.2.html).
pub(crate) fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| Error::os("pipe2", e))
}

/// Sets (or with `None` clears) the send and receive timeouts of a socket, so a blocked
/// handshake read or write fails with `EAGAIN` instead of waiting forever.
/// See [socket(7)](https://man7.org/linux/man-pages/man7/socket.7.html) `SO_RCVTIMEO`.
pub(crate) fn set_io_timeout(fd: &OwnedFd, timeout: Option<Duration>) -> Result<()> {
    for kind in [sockopt::Timeout::Recv, sockopt::Timeout::Send] {
        sockopt::set_socket_timeout(fd, kind, timeout)
            .map_err(|e| Error::os("setsockopt(SO_RCVTIMEO)", e))?;
    }
    Ok(())
}

/// Fills `buf` with random bytes from the kernel.
/// See [getrandom(2)](https://man7.org/linux/man-pages/man2/getrandom.2.html).
pub(crate) fn random(buf: &mut [u8]) -> Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        match rustix::rand::getrandom(&mut buf[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(Error::os("getrandom", e)),
        }
    }
    Ok(())
}

/// Sets or clears `O_NONBLOCK`.
/// See [fcntl(2)](https://man7.org/linux/man-pages/man2/fcntl.2.html).
pub(crate) fn set_nonblocking(fd: &OwnedFd, nonblocking: bool) -> Result<()> {
    use rustix::fs::OFlags;
    let flags = rustix::fs::fcntl_getfl(fd).map_err(|e| Error::os("fcntl(F_GETFL)", e))?;
    let flags = if nonblocking {
        flags | OFlags::NONBLOCK
    } else {
        flags - OFlags::NONBLOCK
    };
    rustix::fs::fcntl_setfl(fd, flags).map_err(|e| Error::os("fcntl(F_SETFL)", e))
}
