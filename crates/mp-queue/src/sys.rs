//! The only `unsafe` of `mp-queue`: views of the shared ring's bytes, and copies in and out
//! of memory that other processes may write at any moment.
//!
//! # Safety
//! Every process that maps a queue's region can write any byte of it at any time, hostile or
//! buggy ones included. So nothing here forms a `&[u8]` or `&mut` into the ring: words are
//! read and written through atomics, and payload bytes are copied with relaxed atomic
//! loads and stores, word by word (or, for large copies on x86-64, `rep movsb`, whose byte
//! moves are atomic too: see [`bulk_copy`]). A race then tears a copy, which the codec rejects or
//! accepts as some value, but it is never undefined behaviour.

use std::{
    os::fd::{BorrowedFd, OwnedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
    time::Duration,
};

use crate::ring::CONTROL;

// The ring starts 8-aligned after the control block (see `Bytes::header`).
const _: () = assert!(CONTROL.is_multiple_of(8));
use rustix::{io::Errno, thread::futex};

/// `len` bytes of shared memory starting at an 8-aligned address, mapped for as long as the
/// value lives (its owner keeps the mapping).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bytes {
    base: NonNull<u8>,
    len: usize,
    /// The ring's size (the bytes past the control block, a power of two) less one.
    ring_mask: usize,
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
    ///
    /// # Panics
    /// Unless `len` is the control block ([`CONTROL`] bytes) and a ring of a power of two
    /// bytes, at least 8, after it: every view is one (so [`Bytes::head64`],
    /// [`Bytes::head32`] and [`Bytes::header`] need no check of their own).
    pub(crate) unsafe fn new(base: NonNull<u8>, len: usize) -> Bytes {
        debug_assert!((base.as_ptr() as usize).is_multiple_of(8));
        let ring = len.checked_sub(CONTROL);
        assert!(
            ring.is_some_and(|r| r >= 8 && r.is_power_of_two()),
            "a view that is not a control block and a ring"
        );
        Bytes {
            base,
            len,
            ring_mask: len - CONTROL - 1,
        }
    }

    /// The two 4-byte words of the 8-byte frame header at position `pos` of the ring (the
    /// bytes past the control block): `pos` modulo the ring's size, rounded down to 8.
    /// Always inside the view, with no check at run time.
    #[inline(always)]
    pub(crate) fn header(&self, pos: u64) -> &[AtomicU32; 2] {
        let offset = CONTROL + (pos as usize & self.ring_mask & !7);
        // SAFETY: `offset` is 8-aligned (`CONTROL` is, and so is the 8-aligned base), and
        // `offset + 8 <= CONTROL + ring_mask + 1 = len` (the ring's size is a power of two
        // of at least 8, checked by `new`; neither field changes), so both words are inside
        // the view; every access to shared words is atomic, and any bits are valid.
        unsafe { &*self.base.as_ptr().add(offset).cast::<[AtomicU32; 2]>() }
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

    /// The first `N` 8-byte words of the view, as an array, with no check at run time: a
    /// word at a constant index costs nothing but its access (the control block's). `N`
    /// words fit in the control block (checked at compile time).
    #[inline(always)]
    pub(crate) fn head64<const N: usize>(&self) -> &[AtomicU64; N] {
        const { assert!(N * 8 <= CONTROL) };
        // SAFETY: `N * 8 <= CONTROL` (checked at compile time) and `CONTROL <= self.len`
        // (checked by `new`; `len` never changes), so those bytes from the 8-aligned base are
        // inside the view; every access to shared words is atomic, any bits are valid
        // `AtomicU64`s, and an array of them has their alignment and no padding.
        unsafe { &*self.base.as_ptr().cast::<[AtomicU64; N]>() }
    }

    /// As [`Bytes::head64`], in 4-byte words.
    #[inline(always)]
    pub(crate) fn head32<const N: usize>(&self) -> &[AtomicU32; N] {
        const { assert!(N * 4 <= CONTROL) };
        // SAFETY: as in `head64`, for 4-byte words.
        unsafe { &*self.base.as_ptr().cast::<[AtomicU32; N]>() }
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
            // Into the spare capacity, with no zeroing pass first (for a large item that
            // pass costs as much as the copy).
            out.reserve(padded);
            let spare = &mut out.spare_capacity_mut()[..padded];
            #[cfg(target_arch = "x86_64")]
            if padded >= BULK {
                // SAFETY: `offset..offset + padded` is inside the view (asserted above),
                // mapped while it is used (`Bytes::new`); `spare` is `padded` bytes of
                // `out`'s own memory, disjoint from any mapping. Every byte of it is
                // written by the copy, so the length may be set.
                unsafe {
                    bulk_copy(
                        spare.as_mut_ptr().cast(),
                        self.base.as_ptr().add(offset),
                        padded,
                    );
                    out.set_len(padded);
                }
                out.truncate(len);
                return;
            }
            for (chunk, at) in spare.chunks_exact_mut(8).zip((offset..).step_by(8)) {
                let word = self.u64_at(at).load(Ordering::Relaxed).to_ne_bytes();
                for (slot, byte) in chunk.iter_mut().zip(word) {
                    slot.write(byte);
                }
            }
            // SAFETY: the first `padded` bytes of spare capacity (reserved above, and
            // `out` was empty) were all written by the loop: `padded` is a multiple of 8,
            // so its chunks of 8 cover them.
            unsafe { out.set_len(padded) };
        }
        out.truncate(len);
    }

    /// As [`Bytes::copy_out`], for at most [`SHORT`](crate::ring::SHORT) bytes, into the
    /// start of `out` (word by word: what follows `len` there is the rest of the last
    /// word).
    ///
    /// # Panics
    /// As [`Bytes::copy_out`], and if `len` is over `SHORT`.
    #[inline(always)]
    pub(crate) fn copy_out_short(
        &self,
        offset: usize,
        len: usize,
        out: &mut [u8; crate::ring::SHORT],
    ) {
        let padded = self.short_range(offset, len);
        for (chunk, word) in out[..padded]
            .chunks_exact_mut(8)
            .zip(self.short_words(offset))
        {
            chunk.copy_from_slice(&word.load(Ordering::Relaxed).to_ne_bytes());
        }
    }

    /// The [`SHORT`](crate::ring::SHORT) bytes' worth of words from `offset`, or as many of
    /// them as the view holds: the short copies take the first few (`short_range` checked
    /// that those are inside), with no check per word.
    #[inline(always)]
    fn short_words(&self, offset: usize) -> &[AtomicU64] {
        let words = (self.len.saturating_sub(offset) / 8).min(crate::ring::SHORT / 8);
        if !offset.is_multiple_of(8) || offset > self.len {
            return &[];
        }
        // SAFETY: `offset` is 8-aligned and at most `len`, and `words * 8 <= len - offset`,
        // so the words are inside the view (mapped while it is used: `new`); every access to
        // shared words is atomic, and any bits are valid `AtomicU64`s.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(offset).cast(), words) }
    }

    /// `len` rounded up to whole words, checked to be at most
    /// [`SHORT`](crate::ring::SHORT) and, from `offset` (8-aligned), inside the view.
    #[inline(always)]
    fn short_range(&self, offset: usize, len: usize) -> usize {
        let padded = len.next_multiple_of(8);
        assert!(
            padded <= crate::ring::SHORT
                && offset.is_multiple_of(8)
                && offset.checked_add(padded).is_some_and(|e| e <= self.len)
        );
        padded
    }

    /// As [`Bytes::copy_in`], for the first `len` bytes of `short`, which holds zeros after
    /// them: whole words of it are copied (the padding of the last word, zeros, too).
    ///
    /// # Panics
    /// As [`Bytes::copy_in`], and if `len` is over `SHORT`.
    #[inline(always)]
    pub(crate) fn copy_in_short(
        &self,
        offset: usize,
        short: &[u8; crate::ring::SHORT],
        len: usize,
    ) {
        let padded = self.short_range(offset, len);
        for (chunk, word) in short[..padded]
            .chunks_exact(8)
            .zip(self.short_words(offset))
        {
            word.store(
                u64::from_ne_bytes(chunk.try_into().expect("8 bytes")),
                Ordering::Relaxed,
            );
        }
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
        #[cfg(target_arch = "x86_64")]
        if src.len() >= BULK {
            let whole = src.len() - src.len() % 8;
            // SAFETY: `offset..offset + padded` is inside the view (asserted above) and
            // mapped while it is used (`Bytes::new`); `src` is the caller's own memory,
            // disjoint from any mapping; `whole <= src.len()`.
            unsafe { bulk_copy(self.base.as_ptr().add(offset), src.as_ptr(), whole) };
            words = src[whole..].chunks_exact(8);
            at += whole;
        }
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

/// Copies at or above this many bytes go by [`bulk_copy`].
#[cfg(target_arch = "x86_64")]
const BULK: usize = 512;

/// Copies `len` bytes from `src` to `dst` with `rep movsb`, which moves each byte as one
/// single-byte load and store: atomic at that size on x86-64, so this is a byte-wise relaxed
/// atomic copy (RFC 3301's `atomic_load_bytes`/`atomic_store_bytes`, what the word loops of
/// `copy_in` and `copy_out` are with 8-byte strides). A race with another process's write
/// tears the copy, as it would the loops', and is never undefined behaviour. With the
/// processor's fast string moves (ERMS/FSRM) it copies in cache-line strides: for a large
/// item two to three times the loops' speed.
///
/// # Safety
/// `src..src + len` is readable and `dst..dst + len` writable for the call, and neither is
/// memory the compiler assumes no one else touches while a reference to it is live (both
/// are a mapping shared with other processes, or memory the caller owns exclusively).
#[cfg(target_arch = "x86_64")]
unsafe fn bulk_copy(dst: *mut u8, src: *const u8, len: usize) {
    // SAFETY: the caller's contract; the direction flag is clear on entry to any Rust code
    // (the ABI), so the copy runs forward; `rcx`, `rsi`, `rdi` are declared clobbered.
    unsafe {
        std::arch::asm!(
            "rep movsb",
            inout("rcx") len => _,
            inout("rdi") dst => _,
            inout("rsi") src => _,
            options(nostack, preserves_flags),
        );
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
    /// The lock placed at `OFFSET` in the control block (checked at compile time to fit
    /// there, aligned: no check at run time).
    #[inline(always)]
    pub(crate) fn lock_at<const OFFSET: usize>(&self) -> &mp_sync::RawLock {
        const {
            let size = std::mem::size_of::<mp_sync::RawLock>();
            let align = std::mem::align_of::<mp_sync::RawLock>();
            assert!(OFFSET.is_multiple_of(align) && OFFSET + size <= CONTROL);
        };
        // SAFETY: in bounds (`OFFSET + size <= CONTROL`, checked at compile time, and
        // `CONTROL <= len`, by `new`) and aligned (checked at compile time; the base is
        // 8-aligned, more than `RawLock` needs); `RawLock` is `Placeable`: every bit pattern
        // is a valid lock, all-zero is unlocked, it holds no pointers, and all its mutation
        // is atomic, so a shared reference into memory other processes write is sound.
        unsafe { &*self.base.as_ptr().add(OFFSET).cast::<mp_sync::RawLock>() }
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

/// Sleeps until the doorbell or `peer` polls readable, or `timeout` passes; whether `peer`
/// hung up (see [`hung_up`]). Any return means "look again".
pub(crate) fn sleep_on_bell(
    bell: BorrowedFd<'_>,
    peer: Option<BorrowedFd<'_>>,
    timeout: Duration,
) -> bool {
    use rustix::event::{PollFd, PollFlags, poll};
    let spec = rustix::time::Timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    let mut fds = [
        PollFd::new(&bell, PollFlags::IN),
        PollFd::new(peer.as_ref().unwrap_or(&bell), PollFlags::IN),
    ];
    let n = if peer.is_some() { 2 } else { 1 };
    match poll(&mut fds[..n], Some(&spec)) {
        Ok(_) | Err(Errno::INTR) => {}
        // A descriptor gone bad: a short sleep keeps deadlines honest.
        Err(_) => std::thread::sleep(Duration::from_micros(100)),
    }
    n == 2 && !fds[1].revents().is_empty() && peer.is_some_and(hung_up)
}

/// Whether the stream socket `peer` has hung up: every descriptor of its other end closed,
/// by `close` or by the death of every process that held one. Nobody writes on it, so bytes
/// found there are garbage from a hostile holder, read and dropped (a bounded amount per
/// look: a writer that never stops only delays the answer to the next look).
pub(crate) fn hung_up(peer: BorrowedFd<'_>) -> bool {
    use rustix::net::{RecvFlags, recv};
    let mut buf = [0u8; 256];
    for _ in 0..16 {
        match recv(peer, &mut buf, RecvFlags::DONTWAIT) {
            Ok((0, _)) => return true,
            Ok(_) | Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => return false,
            // Reset, or not a socket at all: nothing will come from it.
            Err(_) => return true,
        }
    }
    false
}
