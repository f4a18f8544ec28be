//! The shared-memory side of a [`Connection`](crate::Connection) made by [`pipe`](crate::pipe):
//! one `mp-queue` ring of frames per direction, and a unix socket pair kept beside them as
//! the lifeline (nothing is written on it: its hang-up is how each end learns that every
//! holder of the other end has closed it or died).
//!
//! - **Busy:** a send copies the frame into the ring and a receive copies it out, meeting in
//!   shared memory; a receiver spins briefly before it sleeps, so a busy exchange makes no
//!   system call.
//! - **Idle:** a receiver that has spun for 20 µs sleeps in `poll` on the ring's doorbell (an
//!   eventfd a sender rings only when someone sleeps there) and on the lifeline, so a
//!   message or the peer's death wakes it at once. It also wakes now and then (every
//!   100 ms) to check the ring's health, which costs next to no CPU.
//! - **Peer gone:** a receiver whose peer hung up takes every message the peer finished
//!   sending, then gets end of file. A sender looks at the lifeline on its first send and
//!   then at most once per [`LOOK_EVERY`] (a socket's `EPIPE` comes at once; ours may come a
//!   few sends later, each of which is dropped with the ring, as bytes in a socket's buffer
//!   are when its reader exits), and whenever it waits for room.
//! - **Killed mid-send:** the frame was never published, so no reader sees a torn message.

use std::{
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use mp_codec::Frame;
use mp_queue::Queue;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Bytes of ring per direction. Pages are touched only as messages pass, and a ring whose
/// reader keeps up cycles through its first 64 KiB only (the queue restarts at the top of a
/// lap whenever it finds itself empty there), so small messages cost a few pages whatever
/// this is; it bounds how much one direction holds unread (like a socket's buffer, though
/// larger) and the largest message copied through it (half of it): larger ones travel in a
/// memfd of their own.
pub(crate) const RING_BYTES: usize = 4 << 20;

/// How often, at most, a sender looks whether its peer has gone.
pub(crate) const LOOK_EVERY: Duration = Duration::from_millis(1);

/// The item type of a pipe's rings: frames pass through them raw (`put_raw`/`get_raw`), so
/// this names the ring's kind in its region's fingerprint and is never encoded.
#[derive(Debug)]
pub(crate) struct Wire;

impl mp_codec::Encode for Wire {
    fn encode(&self, _: &mut Frame) -> mp_codec::Result<()> {
        Ok(())
    }
}

impl mp_codec::Decode for Wire {
    fn decode(_: &mut Frame) -> mp_codec::Result<Self> {
        Ok(Wire)
    }
}

/// One ring's handle.
pub(crate) type Channel = Queue<Wire>;

/// An end's rings: the one it reads (`rx`) and the one it writes (`tx`).
#[derive(Debug)]
pub(crate) struct Rings {
    pub(crate) rx: Option<Channel>,
    pub(crate) tx: Option<Channel>,
    /// When the sender last found the peer there, in nanoseconds since [`epoch`] (0: never
    /// looked).
    last_look: AtomicU64,
    /// What `as_fd` hands out for a readable end: an epoll set of the read ring's doorbell and
    /// the lifeline, made (and the doorbell armed) on first use.
    poller: OnceLock<Option<OwnedFd>>,
}

/// Makes a new ring of [`RING_BYTES`].
pub(crate) fn channel() -> Result<Channel> {
    Queue::<Wire>::builder()
        .capacity(RING_BYTES)
        .in_ring_limit(RING_BYTES / 2)
        .build()
        .map_err(queue_error)
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Rings {
    pub(crate) fn new(rx: Option<Channel>, tx: Option<Channel>) -> Rings {
        Rings {
            rx,
            tx,
            last_look: AtomicU64::new(0),
            poller: OnceLock::new(),
        }
    }

    /// Sends one frame into the write ring, waiting for room at most `timeout` (`None`: as
    /// long as it takes; then `WouldBlock`); `Err(EPIPE)` once the peer is seen gone.
    pub(crate) fn send(
        &self,
        life: &OwnedFd,
        bytes: &[u8],
        fds: &[OwnedFd],
        timeout: Option<Duration>,
    ) -> Result<()> {
        let tx = self.tx.as_ref().ok_or(Error::WrongDirection("read"))?;
        let now = epoch().elapsed().as_nanos() as u64 + 1;
        let last = self.last_look.load(Ordering::Relaxed);
        if last == 0 || now.saturating_sub(last) >= LOOK_EVERY.as_nanos() as u64 {
            self.last_look.store(now, Ordering::Relaxed);
            if mp_queue::hung_up(life.as_fd()) {
                return Err(broken_pipe());
            }
        }
        tx.put_raw(bytes, fds, timeout, Some(life.as_fd()))
            .map_err(|e| match e {
                mp_queue::Error::Disconnected => broken_pipe(),
                mp_queue::Error::Full => Error::Codec(mp_codec::Error::WouldBlock),
                other => queue_error(other),
            })
    }

    /// Receives one frame from the read ring, waiting at most `timeout` (`None`: for ever):
    /// `Eof` once the peer has gone and nothing it sent is left, `WouldBlock` on timeout.
    pub(crate) fn recv(
        &self,
        life: &OwnedFd,
        timeout: Option<Duration>,
        max_len: usize,
    ) -> Result<Frame> {
        let mut frame = Frame::new();
        self.recv_into(life, timeout, &mut frame, max_len)?;
        Ok(frame)
    }

    /// [`recv`](Rings::recv) into `frame`, reusing its buffer. A message over `max_len` is
    /// taken and refused (`BadMessageLength`).
    pub(crate) fn recv_into(
        &self,
        life: &OwnedFd,
        timeout: Option<Duration>,
        frame: &mut Frame,
        max_len: usize,
    ) -> Result<()> {
        let rx = self.rx.as_ref().ok_or(Error::WrongDirection("write"))?;
        let mut got = |timeout| rx.get_raw_into(frame, timeout, Some(life.as_fd()), max_len);
        let mut result = got(timeout);
        if matches!(result, Err(mp_queue::Error::Empty)) && mp_queue::hung_up(life.as_fd()) {
            // A timed wait (a nonblocking receive above all) may end before it looks at the
            // peer: one more look, then end of file, as a socket would say.
            result = match got(Some(Duration::ZERO)) {
                Err(mp_queue::Error::Empty) => Err(mp_queue::Error::Disconnected),
                other => other,
            };
        }
        result.map_err(|e| match e {
            mp_queue::Error::Disconnected => Error::Eof,
            mp_queue::Error::Empty => Error::Codec(mp_codec::Error::WouldBlock),
            mp_queue::Error::OverLimit { len, max } => Error::BadMessageLength { len, max },
            other => queue_error(other),
        })
    }

    /// After a wake by [`pollable`](Rings::pollable) that found nothing to take: makes the
    /// doorbell match the ring again (a late ring leaves it readable).
    pub(crate) fn resync(&self) {
        if let Some(rx) = &self.rx {
            rx.resync_doorbell();
        }
    }

    /// Whether a receive would not block now: a message is there, or the peer has gone.
    pub(crate) fn ready(&self, life: &OwnedFd) -> bool {
        self.rx.as_ref().is_some_and(|rx| !rx.empty()) || mp_queue::hung_up(life.as_fd())
    }

    /// The descriptor `wait` polls: for a readable end, an epoll set of the read ring's
    /// doorbell and the lifeline (readable when a message may be there, or at the peer's
    /// end); for a write-only end, or if the set cannot be made (no descriptors left), the
    /// lifeline, readable once the peer has gone.
    pub(crate) fn pollable<'a>(&'a self, life: &'a OwnedFd) -> BorrowedFd<'a> {
        let made = self.poller.get_or_init(|| {
            let rx = self.rx.as_ref()?;
            epoll_of(&[rx.as_fd(), life.as_fd()]).ok()
        });
        match made {
            Some(set) => set.as_fd(),
            None => life.as_fd(),
        }
    }
}

/// An epoll set polling readable when any of `fds` does.
fn epoll_of(fds: &[BorrowedFd<'_>]) -> rustix::io::Result<OwnedFd> {
    use rustix::event::epoll;
    let set = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    for (i, fd) in fds.iter().enumerate() {
        epoll::add(
            &set,
            fd,
            epoll::EventData::new_u64(i as u64),
            epoll::EventFlags::IN,
        )?;
    }
    Ok(set)
}

fn broken_pipe() -> Error {
    Error::os("send", rustix::io::Errno::PIPE)
}

fn queue_error(e: mp_queue::Error) -> Error {
    match e {
        mp_queue::Error::Codec(e) => Error::Codec(e),
        mp_queue::Error::Os(op, e) => Error::Os(op, e),
        other => Error::Os("shared-memory ring", std::io::Error::other(other)),
    }
}

/// What a ring end sends of itself: its rings (each a queue handle, checked by the queue on
/// arrival) and its lifeline.
#[derive(Serialize)]
pub(crate) struct PartsOut<'a> {
    pub(crate) rx: Option<&'a Channel>,
    pub(crate) tx: Option<&'a Channel>,
    #[serde(serialize_with = "mp_codec::fd::serialize")]
    pub(crate) life: &'a OwnedFd,
}

#[derive(Deserialize)]
pub(crate) struct PartsIn {
    pub(crate) rx: Option<Channel>,
    pub(crate) tx: Option<Channel>,
    #[serde(deserialize_with = "mp_codec::fd::deserialize")]
    pub(crate) life: OwnedFd,
}
