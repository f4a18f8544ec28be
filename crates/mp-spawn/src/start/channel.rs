//! Result sockets for forked children, kept for reuse.
//!
//! A forked child sends its outcome on a unix socket and exits; the parent reads it after
//! reaping the child. Making a socket pair and closing it again per child costs about as
//! much as the rest of starting one (two sockets made, three descriptors closed, one of
//! them as the child exits), so a parent keeps the pairs of children it has joined and
//! hands them to the next. A pair is reused only when its last child's whole outcome was
//! read (or nothing at all was sent), so no byte our code sends for one child can reach
//! another's join. The child's end is close-on-exec, but a process the target forks by
//! other means than ours keeps a copy of it: whatever that process writes to the
//! descriptor itself (our code there sends nothing, see `current::forked_by_us`) could
//! reach a later child's join.
//!
//! Both ends are non-blocking: the child never waits for the parent (see
//! `entry::send_outcome`), and the parent reads only after the child has exited.

use std::{os::fd::OwnedFd, sync::Mutex};

use rustix::net::{AddressFamily, SocketFlags, SocketType, sockopt};

use crate::{Error, Result, entry};

/// A result socket pair.
#[derive(Debug)]
pub(crate) struct Channel {
    /// The parent's end.
    pub(crate) ours: OwnedFd,
    /// The child's end.
    pub(crate) theirs: OwnedFd,
    /// How many bytes the child may send inline (see `entry::inline_room`).
    pub(crate) room: usize,
    /// The process that made the pair: only it may reuse it. A forked child holds copies of
    /// its parent's pairs, which must never carry its own children's results.
    maker: u32,
}

/// The idle pairs, in place (no heap): the pool lives with the fork locks (see `held`), so
/// taking and giving back a pair writes to no page a fork would not write to anyway.
pub(crate) struct Pool {
    owner: u32,
    idle: [Option<Channel>; KEEP],
    len: usize,
}

impl Pool {
    pub(crate) const fn new() -> Self {
        Pool {
            owner: 0,
            idle: [const { None }; KEEP],
            len: 0,
        }
    }

    fn pop(&mut self) -> Option<Channel> {
        self.len = self.len.checked_sub(1)?;
        self.idle[self.len].take()
    }

    /// Keeps `channel` if there is room; otherwise it is closed.
    fn push(&mut self, channel: Channel) {
        if let Some(slot) = self.idle.get_mut(self.len) {
            *slot = Some(channel);
            self.len += 1;
        }
    }

    fn clear(&mut self) {
        while self.pop().is_some() {}
    }
}

static POOL: &Mutex<Pool> = &crate::held::HELD.pool;

/// Closes the idle channels kept for later children.
pub(crate) fn release_idle() {
    POOL.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// Pairs kept idle at most: enough for a pool of workers started again and again.
const KEEP: usize = 16;

/// Held across `fork` (see `start::fork`), so no child inherits it locked.
pub(crate) fn lock() -> std::sync::MutexGuard<'static, impl Sized> {
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A pair for the next child of this process (`me`): an idle one, or a new one.
pub(crate) fn take(me: u32) -> Result<Channel> {
    {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        if pool.owner != me {
            // A forked child: the idle pairs are its parent's. Close its copies.
            pool.clear();
            pool.owner = me;
        }
        if let Some(channel) = pool.pop() {
            return Ok(channel);
        }
    }
    let (ours, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .map_err(|e| Error::os("socketpair", e))?;
    let buffer = sockopt::socket_send_buffer_size(&theirs).unwrap_or(0);
    Ok(Channel {
        ours,
        theirs,
        room: entry::inline_room(buffer),
        maker: me,
    })
}

/// Returns a pair whose child has been reaped and whose outcome was read whole.
pub(crate) fn give_back(channel: Channel) {
    let me = std::process::id();
    if channel.maker != me {
        return;
    }
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if pool.owner == me {
        pool.push(channel);
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    fn made() -> Channel {
        let (ours, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        Channel {
            ours,
            theirs,
            room: 0,
            maker: std::process::id(),
        }
    }

    #[test]
    fn the_pool_keeps_at_most_its_size_and_gives_back_the_newest_first() {
        let mut pool = Pool::new();
        let fds: Vec<i32> = (0..KEEP + 1)
            .map(|_| {
                let channel = made();
                let fd = channel.ours.as_raw_fd();
                pool.push(channel); // the last one finds no room and is closed
                fd
            })
            .collect();
        assert_eq!(pool.len, KEEP);
        assert_eq!(pool.pop().unwrap().ours.as_raw_fd(), fds[KEEP - 1]);
        assert_eq!(pool.pop().unwrap().ours.as_raw_fd(), fds[KEEP - 2]);
        pool.clear();
        assert!(pool.pop().is_none());
        assert_eq!(pool.len, 0);
    }
}
