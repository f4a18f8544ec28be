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

/// What kind of descriptor `fd` is, as far as a connection cares: its file type, its access
/// mode, and for a socket its type and address family.
/// See [fstat(2)](https://man7.org/linux/man-pages/man2/fstat.2.html),
/// [fcntl(2)](https://man7.org/linux/man-pages/man2/fcntl.2.html) `F_GETFL` and
/// [socket(7)](https://man7.org/linux/man-pages/man7/socket.7.html) `SO_TYPE`, `SO_DOMAIN`.
pub(crate) fn describe(fd: &OwnedFd) -> Result<Description> {
    use rustix::fs::{FileType, OFlags};
    let stat = rustix::fs::fstat(fd).map_err(|e| Error::os("fstat", e))?;
    let flags = rustix::fs::fcntl_getfl(fd).map_err(|e| Error::os("fcntl(F_GETFL)", e))?;
    let access = flags & OFlags::RWMODE;
    let file_type = FileType::from_raw_mode(stat.st_mode);
    let socket = if file_type == FileType::Socket {
        let kind = sockopt::socket_type(fd).map_err(|e| Error::os("getsockopt(SO_TYPE)", e))?;
        let family =
            sockopt::socket_domain(fd).map_err(|e| Error::os("getsockopt(SO_DOMAIN)", e))?;
        Some((kind, family))
    } else {
        None
    };
    Ok(Description {
        file_type,
        readable: access == OFlags::RDONLY || access == OFlags::RDWR,
        writable: access == OFlags::WRONLY || access == OFlags::RDWR,
        socket,
    })
}

/// What [`describe`] found.
pub(crate) struct Description {
    pub(crate) file_type: rustix::fs::FileType,
    pub(crate) readable: bool,
    pub(crate) writable: bool,
    /// For a socket: its type (`SO_TYPE`) and address family (`SO_DOMAIN`).
    pub(crate) socket: Option<(SocketType, AddressFamily)>,
}
