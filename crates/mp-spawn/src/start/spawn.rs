//! `spawn`: a fresh exec of `/proc/self/exe`, which becomes the child in its constructor and
//! reads its bootstrap from the one descriptor it inherits.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use mp_codec::Frame;
use mp_pipe::Connection;

use super::{Results, Started, argv0, child_env, socketpair};
use crate::{Error, Result, entry, sys};

/// Starts `/proc/self/exe` with `socket` at `BOOT_FD` and `key` set; returns its pid.
/// `ours`, the other end of the pair this process made, gets `entry::PREAMBLE` first, so the
/// child finds it at once (see `entry::bootstrap_socket`).
pub(crate) fn exec_self(key: &str, ours: &OwnedFd, socket: OwnedFd) -> Result<u32> {
    if entry::entry_was_skipped() {
        return Err(Error::RecursiveSpawn);
    }
    // Reference the constructor from the spawn path so the linker always keeps it.
    std::hint::black_box(&sys::CONSTRUCTOR);
    // dup2 onto the same number would leave close-on-exec set: move it out of the way.
    let socket = if socket.as_raw_fd() == entry::BOOT_FD {
        rustix::io::fcntl_dupfd_cloexec(&socket, entry::BOOT_FD + 1)
            .map_err(|e| Error::os("fcntl(F_DUPFD_CLOEXEC)", e))?
    } else {
        socket
    };
    // Eight bytes into an empty socket's buffer: all at once, never blocking.
    rustix::net::send(ours, &entry::PREAMBLE, rustix::net::SendFlags::NOSIGNAL)
        .map_err(|e| Error::os("send", e))?;
    let env = child_env(key, &entry::env_value());
    let pid = sys::spawn_self(&[&argv0()], &env, socket.as_fd(), entry::BOOT_FD)
        .map_err(|e| Error::os("posix_spawn", e))?;
    Ok(pid as u32)
}

pub(crate) fn start(bootstrap: Frame) -> Result<Started> {
    let (ours, theirs) = socketpair()?;
    let pid = exec_self(entry::CHILD_ENV, &ours, theirs)?;
    let conn = Connection::from_unix_socket(ours);
    // If the child died before reading this, `join` reports how it ended.
    let _ = conn.send_frame(&bootstrap);
    Ok(Started {
        pid,
        pidfd: None,
        own: true,
        status: None,
        results: Results::Conn(conn),
    })
}
