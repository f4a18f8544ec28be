//! The only `unsafe` of `mp-queue`: views of the shared ring's bytes, and copies in and out
//! of memory that other processes may write at any moment.
//!
//! # Safety
//! Every process that maps a queue's region can write any byte of it at any time, hostile or
//! buggy ones included. So nothing here forms a `&[u8]` or `&mut` into the ring: words are
//! read and written through atomics, and payload bytes are copied with relaxed atomic
//! loads and stores, word by word. A race then tears a copy, which the codec rejects or
//! accepts as some value, but it is never undefined behaviour.

use std::{
    os::fd::{BorrowedFd, OwnedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
    time::Duration,
};

use rustix::{io::Errno, thread::futex};

/// `len` bytes of shared memory starting at an 8-aligned address, mapped for as long as the
/// value lives (its owner keeps the mapping).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bytes {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: a view of shared memory that is only ever accessed through atomics (see the module
// docs); it is as shareable between threads as between processes.
unsafe impl Send for Bytes {}
// SAFETY: as above.
unsafe impl Sync for Bytes {}

impl Bytes {
    /// A view of `len` bytes at `base`.
    ///
    /// # Safety
    /// `base` is 8-aligned and `len` bytes from it stay mapped, readable and writable while
    /// the view (or any copy of it) is used.
    pub(crate) unsafe fn new(base: NonNull<u8>, len: usize) -> Bytes {
        debug_assert!((base.as_ptr() as usize).is_multiple_of(8));
        Bytes { base, len }
    }

    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The 4-byte word at `offset`.
    ///
    /// # Panics
    /// If the word is not 4-aligned or not inside the view (a caller's bug, never a peer's
    /// bytes: offsets are checked before they get here).
    #[inline]
    pub(crate) fn u32_at(&self, offset: usize) -> &AtomicU32 {
        assert!(offset.is_multiple_of(4) && offset.checked_add(4).is_some_and(|e| e <= self.len));
        // SAFETY: in bounds and aligned (checked above; the base is 8-aligned); every access
        // to shared words is atomic, and any bits are a valid `AtomicU32`.
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(offset).cast()) }
    }

    /// The 8-byte word at `offset`.
    ///
    /// # Panics
    /// As [`Bytes::u32_at`].
    #[inline]
    pub(crate) fn u64_at(&self, offset: usize) -> &AtomicU64 {
        assert!(offset.is_multiple_of(8) && offset.checked_add(8).is_some_and(|e| e <= self.len));
        // SAFETY: as in `u32_at`.
        unsafe { AtomicU64::from_ptr(self.base.as_ptr().add(offset).cast()) }
    }

    /// Makes `out` the `len` bytes at `offset` (8-aligned), read a word at a time: the bytes
    /// up to the next multiple of 8 (a frame's padding) are read too, so they must be in the
    /// view.
    ///
    /// # Panics
    /// If the padded range is not inside the view, or `offset` is not 8-aligned.
    #[inline]
    pub(crate) fn copy_out(&self, offset: usize, len: usize, out: &mut Vec<u8>) {
        let padded = len.next_multiple_of(8);
        assert!(
            offset.is_multiple_of(8) && offset.checked_add(padded).is_some_and(|e| e <= self.len)
        );
        out.clear();
        if padded <= 64 {
            // A few words: appended, with no zeroing first.
            for at in (offset..offset + padded).step_by(8) {
                out.extend_from_slice(&self.u64_at(at).load(Ordering::Relaxed).to_ne_bytes());
            }
        } else {
            out.resize(padded, 0);
            for (chunk, at) in out.chunks_exact_mut(8).zip((offset..).step_by(8)) {
                chunk.copy_from_slice(&self.u64_at(at).load(Ordering::Relaxed).to_ne_bytes());
            }
        }
        out.truncate(len);
    }

    /// Copies `src` to `offset` (8-aligned) a word at a time, the last one padded with
    /// zeros: the bytes up to the next multiple of 8 are written too.
    ///
    /// # Panics
    /// As [`Bytes::copy_out`].
    #[inline]
    pub(crate) fn copy_in(&self, offset: usize, src: &[u8]) {
        let padded = src.len().next_multiple_of(8);
        assert!(
            offset.is_multiple_of(8) && offset.checked_add(padded).is_some_and(|e| e <= self.len)
        );
        let mut words = src.chunks_exact(8);
        let mut at = offset;
        for chunk in &mut words {
            let word = u64::from_ne_bytes(chunk.try_into().expect("8 bytes"));
            self.u64_at(at).store(word, Ordering::Relaxed);
            at += 8;
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            // Assembled by shifts: a copy of a few bytes would be a call to memcpy.
            let last = rest
                .iter()
                .rev()
                .fold(0u64, |word, &byte| word << 8 | u64::from(byte));
            let last = u64::from_ne_bytes(last.to_le_bytes());
            self.u64_at(at).store(last, Ordering::Relaxed);
        }
    }
}

/// Sleeps while `*word == expected`, for at most `timeout` (`None`: until woken). The word is
/// in memory shared with other processes, so the wait is not `PRIVATE`. Any return means
/// "look again". See [futex(2)](https://man7.org/linux/man-pages/man2/futex.2.html).
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let spec = timeout.map(|t| rustix::time::Timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(t.subsec_nanos()),
    });
    match futex::wait(word, futex::Flags::empty(), expected, spec.as_ref()) {
        Ok(()) | Err(Errno::AGAIN | Errno::INTR | Errno::TIMEDOUT) => {}
        // Cannot happen for a mapped, aligned word; a short sleep keeps deadlines honest.
        Err(_) => std::thread::sleep(Duration::from_micros(100)),
    }
}

/// Wakes every waiter sleeping on `word`, in any process.
pub(crate) fn futex_wake_all(word: &AtomicU32) {
    let _ = futex::wake(word, futex::Flags::empty(), i32::MAX as u32);
}

impl Bytes {
    /// The lock placed at `offset`.
    ///
    /// # Panics
    /// If it does not fit in the view or is misaligned (a caller's bug: offsets are constants).
    #[inline]
    pub(crate) fn lock_at(&self, offset: usize) -> &mp_sync::RawLock {
        let size = std::mem::size_of::<mp_sync::RawLock>();
        let align = std::mem::align_of::<mp_sync::RawLock>();
        assert!(
            offset.is_multiple_of(align) && offset.checked_add(size).is_some_and(|e| e <= self.len)
        );
        // SAFETY: in bounds and aligned (checked; the base is 8-aligned and so is every
        // offset used); `RawLock` is `Placeable`: every bit pattern is a valid lock, all-zero
        // is unlocked, it holds no pointers, and all its mutation is atomic, so a shared
        // reference into memory other processes write is sound.
        unsafe {
            self.base
                .as_ptr()
                .add(offset)
                .cast::<mp_sync::RawLock>()
                .as_ref()
        }
        .expect("non-null")
    }
}

/// Most descriptors one side-channel message carries: the item's memfd and the item's own.
pub(crate) const MAX_FDS: usize = 64;

/// A connected pair of unix `SOCK_SEQPACKET` sockets, close-on-exec: the queue's side
/// channel for descriptors (messages keep their boundaries, arrive in order, and a send is
/// all or nothing).
/// See [socketpair(2)](https://man7.org/linux/man-pages/man2/socketpair.2.html).
pub(crate) fn side_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};
    Ok(socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Whether `fd` is a unix `SOCK_SEQPACKET` socket (what a peer hands over as a side channel
/// is checked, not trusted).
pub(crate) fn is_side_socket(fd: BorrowedFd<'_>) -> bool {
    use rustix::net::{AddressFamily, SocketType, sockopt};
    sockopt::socket_type(fd).is_ok_and(|t| t == SocketType::SEQPACKET)
        && sockopt::socket_domain(fd).is_ok_and(|d| d == AddressFamily::UNIX)
}

/// Sends `bytes` with `fds` as one message, without waiting: `Ok(false)` when the socket
/// (or the kernel's budget of descriptors in flight) has no room now.
pub(crate) fn side_send(
    socket: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> std::io::Result<bool> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(std::io::Error::other(
            "too many descriptors for one message",
        ));
    }
    match sendmsg(
        socket,
        &[std::io::IoSlice::new(bytes)],
        &mut control,
        SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
    ) {
        Ok(n) if n == bytes.len() => Ok(true),
        Ok(_) => Err(std::io::Error::other(
            "a side-channel message went out short",
        )),
        Err(Errno::AGAIN | Errno::NOBUFS | Errno::TOOMANYREFS) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Looks at the next message's first `N` bytes without taking it (and without taking its
/// descriptors); `None` if no message is waiting.
pub(crate) fn side_peek<const N: usize>(
    socket: BorrowedFd<'_>,
) -> std::io::Result<Option<([u8; N], usize)>> {
    use rustix::net::{RecvFlags, recv};
    let mut buf = [0u8; N];
    match recv(
        socket,
        &mut buf,
        RecvFlags::PEEK | RecvFlags::DONTWAIT | RecvFlags::TRUNC,
    ) {
        Ok((_, len)) => Ok(Some((buf, len))),
        Err(Errno::AGAIN) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A message taken from the side channel: its first `N` bytes, its whole length, and the
/// descriptors that came with it.
pub(crate) type Received<const N: usize> = ([u8; N], usize, Vec<OwnedFd>);

/// Takes the next message: its first `N` bytes, its whole length, and the descriptors that
/// came with it (all closed on drop; any cut short by the kernel are reported as an error
/// after closing the rest).
pub(crate) fn side_recv<const N: usize>(
    socket: BorrowedFd<'_>,
) -> std::io::Result<Option<Received<N>>> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, recvmsg};
    let mut buf = [0u8; N];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = match recvmsg(
        socket,
        &mut [std::io::IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC | RecvFlags::TRUNC,
    ) {
        Ok(msg) => msg,
        Err(Errno::AGAIN) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if msg.flags.contains(ReturnFlags::CTRUNC) {
        return Err(std::io::Error::other(
            "descriptors of a side-channel message were cut short",
        ));
    }
    Ok(Some((buf, msg.bytes, fds)))
}

/// A non-blocking eventfd: the queue's doorbell.
/// See [eventfd(2)](https://man7.org/linux/man-pages/man2/eventfd.2.html).
pub(crate) fn doorbell() -> std::io::Result<OwnedFd> {
    use rustix::event::{EventfdFlags, eventfd};
    Ok(eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?)
}

/// Whether `fd` is an eventfd (checked on what a peer hands over, so that ringing it never
/// writes into anything else).
pub(crate) fn is_doorbell(fd: BorrowedFd<'_>) -> bool {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .is_ok_and(|target| target.as_os_str() == "anon_inode:[eventfd]")
}

/// Makes the doorbell readable.
pub(crate) fn ring(bell: BorrowedFd<'_>) {
    let _ = rustix::io::write(bell, &1u64.to_ne_bytes());
}

/// Makes the doorbell unreadable (until rung again).
pub(crate) fn silence(bell: BorrowedFd<'_>) {
    let mut count = [0u8; 8];
    let _ = rustix::io::read(bell, &mut count);
}
