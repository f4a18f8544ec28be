//! Result sockets for forked children, kept for reuse.
//!
//! A forked child sends its outcome on a unix socket and exits; the parent reads it after
//! reaping the child. Making a socket pair and closing it again per child costs about as
//! much as the rest of starting one (two sockets made, three descriptors closed, one of
//! them as the child exits), so a parent keeps the pairs of children it has joined and
//! hands them to the next. A pair is reused only when its last child's whole outcome was
//! read (or nothing at all was sent), so no byte of one child can reach another's join.
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

pub(crate) struct Pool {
    owner: u32,
    idle: Vec<Channel>,
}

impl Pool {
    pub(crate) const fn new() -> Self {
        Pool {
            owner: 0,
            idle: Vec::new(),
        }
    }
}

static POOL: &Mutex<Pool> = &crate::held::HELD.pool;

/// Pairs kept idle at most: enough for a pool of workers started again and again.
const KEEP: usize = 16;

/// Held across `fork` (see `start::fork`), so no child inherits it locked.
pub(crate) fn lock() -> std::sync::MutexGuard<'static, impl Sized> {
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A pair for the next child: an idle one, or a new one.
pub(crate) fn take() -> Result<Channel> {
    let me = std::process::id();
    {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        if pool.owner != me {
            // A forked child: the idle pairs are its parent's. Close its copies.
            pool.idle.clear();
            pool.owner = me;
        }
        if let Some(channel) = pool.idle.pop() {
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
    if pool.owner == me && pool.idle.len() < KEEP {
        pool.idle.push(channel);
    }
}
