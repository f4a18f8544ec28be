//! Every system call of `mp-sync`, and its only `unsafe`: futex waits and wakes on shared
//! (not `PRIVATE`) words, the monotonic clock, the cached pid, owner liveness, and the memfd
//! mappings behind [`Region`](crate::Region).

use std::{
    io,
    num::NonZeroU32,
    os::fd::{AsFd, OwnedFd},
    ptr::NonNull,
    sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    time::Duration,
};

use rustix::{
    event::{PollFd, PollFlags, poll},
    fs::{MemfdFlags, SealFlags},
    io::Errno,
    mm::{MapFlags, ProtFlags},
    process::{Pid, PidfdFlags},
    thread::futex,
    time::{ClockId, Timespec},
};

/// An absolute CLOCK_MONOTONIC instant to give up at, or never.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadline(Option<Timespec>);

const NANOS: i128 = 1_000_000_000;

fn to_nanos(t: Timespec) -> i128 {
    t.tv_sec as i128 * NANOS + t.tv_nsec as i128
}

fn from_nanos(n: i128) -> Timespec {
    Timespec {
        tv_sec: (n / NANOS) as _,
        tv_nsec: (n % NANOS) as _,
    }
}

/// CLOCK_MONOTONIC in nanoseconds (vDSO: no system call).
pub(crate) fn now() -> i128 {
    to_nanos(rustix::time::clock_gettime(ClockId::Monotonic))
}

impl Deadline {
    /// Never give up.
    pub(crate) const NEVER: Deadline = Deadline(None);

    /// `timeout` from now; `None` is never, and so is anything past a century.
    pub(crate) fn after(timeout: Option<Duration>) -> Deadline {
        const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
        match timeout {
            Some(d) if d <= CENTURY => Deadline(Some(from_nanos(now() + d.as_nanos() as i128))),
            _ => Deadline::NEVER,
        }
    }

    /// Already expired: a "try" that never waits.
    pub(crate) fn now() -> Deadline {
        Deadline(Some(from_nanos(now())))
    }

    /// Whether the deadline has passed.
    pub(crate) fn expired(self) -> bool {
        self.0.is_some_and(|t| now() >= to_nanos(t))
    }

    /// The earlier of this deadline and `d` from now.
    pub(crate) fn or_within(self, d: Duration) -> Deadline {
        let soon = now() + d.as_nanos() as i128;
        match self.0 {
            Some(t) if to_nanos(t) <= soon => self,
            _ => Deadline(Some(from_nanos(soon))),
        }
    }
}

/// How a futex wait ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Woke {
    /// Woken, interrupted, or the word no longer held the expected value: look again.
    Maybe,
    /// The deadline passed.
    TimedOut,
}

/// Sleeps while `*word == expected`, until woken or `deadline` (absolute, monotonic). The
/// word may live in memory shared with other processes, so the wait is not `PRIVATE`.
/// See [futex(2)](https://man7.org/linux/man-pages/man2/futex.2.html), `FUTEX_WAIT_BITSET`.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, deadline: Deadline) -> Woke {
    const ANY: NonZeroU32 = NonZeroU32::MAX;
    match futex::wait_bitset(
        word,
        futex::Flags::empty(),
        expected,
        deadline.0.as_ref(),
        ANY,
    ) {
        Err(Errno::TIMEDOUT) => Woke::TimedOut,
        Ok(()) | Err(Errno::AGAIN | Errno::INTR) => Woke::Maybe,
        // EFAULT/ENOSYS cannot happen for a mapped, aligned word on Linux ≥ 2.6.25; if one
        // ever did, falling back to a short sleep keeps callers' deadlines honest.
        Err(_) => {
            std::thread::sleep(Duration::from_micros(100));
            Woke::Maybe
        }
    }
}

/// Sleeps on `word` while `ready(word)` is false, until `take()` succeeds (true) or the
/// deadline passes (false). The sleeper counts itself in `sleepers` first, so a waker that
/// changes the word and then finds no sleepers may skip the wake-up system call.
pub(crate) fn sleep_until(
    word: &AtomicU32,
    sleepers: &AtomicU32,
    deadline: Deadline,
    ready: impl Fn(u32) -> bool,
    mut take: impl FnMut() -> bool,
) -> bool {
    loop {
        sleepers.fetch_add(1, Ordering::SeqCst);
        let now = word.load(Ordering::SeqCst);
        let woke = if ready(now) {
            Woke::Maybe
        } else {
            futex_wait(word, now, deadline)
        };
        sleepers.fetch_sub(1, Ordering::Relaxed);
        if take() {
            return true;
        }
        if woke == Woke::TimedOut || deadline.expired() {
            return false;
        }
    }
}

/// Wakes up to `n` waiters sleeping on `word`, in any process.
pub(crate) fn futex_wake(word: &AtomicU32, n: u32) {
    let _ = futex::wake(word, futex::Flags::empty(), n.min(i32::MAX as u32));
}

static PID: AtomicU32 = AtomicU32::new(0);

/// This process's id, without a system call after the first (`getpid` is not cached by libc;
/// a fork handler forgets the cached value in every child).
#[inline]
pub(crate) fn pid() -> u32 {
    match PID.load(Ordering::Relaxed) {
        0 => refresh_pid(),
        pid => pid,
    }
}

/// Forgets the cached pid in a fork child (a `pthread_atfork` child handler). It writes only
/// when there is something to forget: a write costs the child a copy-on-write page fault.
extern "C" fn forget_pid() {
    if PID.load(Ordering::Relaxed) != 0 {
        PID.store(0, Ordering::Relaxed);
    }
}

static AT_FORK_REGISTERED: AtomicBool = AtomicBool::new(false);

/// Registers [`forget_pid`] once, without ever blocking (a fork while another thread held a
/// `Once` would leave the child waiting forever).
extern "C" fn register_at_fork() {
    if !AT_FORK_REGISTERED.swap(true, Ordering::AcqRel) {
        // SAFETY: `forget_pid` is async-signal-safe (one relaxed store) and lives as long as
        // the program; registering a child handler has no other precondition.
        unsafe { libc::pthread_atfork(None, None, Some(forget_pid)) };
    }
}

/// Registers the fork handler before `main`, before any thread can fork.
#[used]
#[unsafe(link_section = ".init_array")]
static REGISTER_AT_FORK: extern "C" fn() = register_at_fork;

#[cold]
fn refresh_pid() -> u32 {
    // Referencing the constructor keeps its object file linked; calling the registration
    // again is a no-op once it ran.
    std::hint::black_box(&REGISTER_AT_FORK);
    register_at_fork();
    let pid = rustix::process::getpid().as_raw_nonzero().get() as u32;
    PID.store(pid, Ordering::Relaxed);
    pid
}

/// A number naming the calling thread, unique among the threads of this process image (a
/// forked child keeps its parent thread's token, but has another pid).
#[inline]
pub(crate) fn thread_token() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local!(static TOKEN: std::cell::Cell<u64> = const { std::cell::Cell::new(0) });
    TOKEN.with(|t| match t.get() {
        0 => {
            let token = NEXT.fetch_add(1, Ordering::Relaxed);
            t.set(token);
            token
        }
        token => token,
    })
}

/// Whether process `pid` has exited (a zombie counts as exited). Unknown answers count as
/// alive, so a lock is never taken from a live owner.
pub(crate) fn is_dead(pid: u32) -> bool {
    if pid == self::pid() {
        return false;
    }
    let Some(p) = Pid::from_raw(pid as i32) else {
        return true;
    };
    match rustix::process::pidfd_open(p, PidfdFlags::empty()) {
        Err(Errno::SRCH) => true,
        Err(_) => false,
        Ok(fd) => {
            let mut fds = [PollFd::new(&fd, PollFlags::IN)];
            let zero = Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            matches!(poll(&mut fds, Some(&zero)), Ok(1))
        }
    }
}

/// A fresh anonymous, zero-filled, sealed-size shared memory file of `len` bytes.
/// See [memfd_create(2)](https://man7.org/linux/man-pages/man2/memfd_create.2.html).
pub(crate) fn memfd(len: u64) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create("mp-shm", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    rustix::fs::ftruncate(&fd, len)?;
    // Nobody may shrink it under another process's mapping (SIGBUS) or grow it.
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
    Ok(fd)
}

/// Whether `fd` is sealed against shrinking, growing and further sealing, as [`memfd`]
/// leaves it.
pub(crate) fn is_sealed(fd: impl AsFd) -> bool {
    let wanted = SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL;
    rustix::fs::fcntl_get_seals(fd).is_ok_and(|seals| seals.contains(wanted))
}

/// The size of the file behind `fd`.
pub(crate) fn file_len(fd: impl AsFd) -> io::Result<u64> {
    Ok(rustix::fs::fstat(fd)?.st_size as u64)
}

/// Maps `len` bytes of `fd` shared, readable and writable.
/// See [mmap(2)](https://man7.org/linux/man-pages/man2/mmap.2.html).
pub(crate) fn map_shared(fd: impl AsFd, len: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: a fresh mapping at an address the kernel picks cannot overlap any Rust object;
    // the caller unmaps it exactly once with `unmap(ptr, len)`.
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
    Ok(NonNull::new(ptr.cast()).expect("mmap never returns null on success"))
}

/// Unmaps what [`map_shared`] mapped.
///
/// # Safety
/// `ptr` and `len` come from one `map_shared` call, and nothing uses the mapping afterwards.
pub(crate) unsafe fn unmap(ptr: NonNull<u8>, len: usize) {
    // SAFETY: the caller promises the mapping is ours and no longer used.
    let _ = unsafe { rustix::mm::munmap(ptr.as_ptr().cast(), len) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_is_cached_and_right() {
        assert_eq!(pid(), std::process::id());
        assert_eq!(pid(), std::process::id());
    }

    #[test]
    fn a_live_process_is_not_dead_and_a_reaped_one_is() {
        assert!(!is_dead(pid()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let id = child.id();
        child.wait().unwrap();
        assert!(is_dead(id));
    }

    #[test]
    fn the_fork_handler_was_registered_before_main() {
        assert!(AT_FORK_REGISTERED.load(Ordering::Relaxed));
    }

    #[test]
    fn absurd_timeouts_mean_never() {
        assert!(!Deadline::after(Some(Duration::MAX)).expired());
        assert!(Deadline::after(Some(Duration::MAX)).0.is_none());
        assert!(!Deadline::after(Some(Duration::from_secs(u64::MAX))).expired());
    }

    #[test]
    fn deadlines_expire() {
        assert!(Deadline::now().expired());
        assert!(!Deadline::NEVER.expired());
        assert!(!Deadline::after(Some(Duration::from_secs(60))).expired());
        let word = AtomicU32::new(1);
        let d = Deadline::after(Some(Duration::from_millis(5)));
        while futex_wait(&word, 1, d) != Woke::TimedOut {}
        assert!(d.expired());
    }
}
