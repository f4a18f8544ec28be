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

    /// Already expired: a "try" that never waits. It is the clock's zero (boot), which every
    /// reading of the clock has passed, so a "try" that succeeds at once reads no clock (a
    /// reading costs about as much as taking a free lock).
    pub(crate) const fn now() -> Deadline {
        Deadline(Some(Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        }))
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

/// This process's identity as a lock owner, read once per process image (a fork handler
/// forgets it in every child): its pid, its start time, the namespaces that give those two
/// numbers their meaning, and a random nonce naming this process image.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Me {
    /// `getpid()`: the pid in our own pid namespace.
    pub(crate) pid: u32,
    /// Field 22 of `/proc/self/stat` (clock ticks since boot, as our time namespace sees
    /// it) plus one; 0 if it could not be read.
    pub(crate) start: u64,
    /// [`ns_id`]: our pid namespace's inode in the high half, our time namespace's in the
    /// low half; 0 if unknown.
    pub(crate) ns: u64,
    /// Whether the `/proc` we see belongs to our own pid namespace, so `/proc/PID` names
    /// the process that our `PID` names (checked with the `NSpid` line of
    /// `/proc/self/status`, which lists one pid per namespace from the mount's down to ours).
    pub(crate) proc_ok: bool,
    /// The pid and 32 random bits, fresh in every process image (an `RLock` owner token).
    pub(crate) nonce: u64,
}

static PID: AtomicU32 = AtomicU32::new(0);
static START: AtomicU64 = AtomicU64::new(0);
static NS: AtomicU64 = AtomicU64::new(0);
static PROC_OK: AtomicBool = AtomicBool::new(false);
static NONCE: AtomicU64 = AtomicU64::new(0);

/// This process image's random nonce ([`Me::nonce`]).
#[inline]
pub(crate) fn nonce() -> u64 {
    match PID.load(Ordering::Acquire) {
        0 => refresh().nonce,
        _ => NONCE.load(Ordering::Relaxed),
    }
}

/// This process's [`Me`], without a system call after the first.
#[inline]
pub(crate) fn me() -> Me {
    match PID.load(Ordering::Acquire) {
        0 => refresh(),
        pid => Me {
            pid,
            start: START.load(Ordering::Relaxed),
            ns: NS.load(Ordering::Relaxed),
            proc_ok: PROC_OK.load(Ordering::Relaxed),
            nonce: NONCE.load(Ordering::Relaxed),
        },
    }
}

/// This process's pid and the low 32 bits of its start time plus one, as
/// [`crate::ProcessId`]'s second word: two loads after the first call.
#[inline]
pub(crate) fn pid_start() -> u64 {
    match PID.load(Ordering::Acquire) {
        0 => {
            let me = refresh();
            u64::from(me.pid) << 32 | (me.start & 0xffff_ffff)
        }
        pid => u64::from(pid) << 32 | (START.load(Ordering::Relaxed) & 0xffff_ffff),
    }
}

/// The pid of the process this one was forked from, when that process had read its identity
/// (see [`inherited`]); 0 otherwise.
static FORKED_FROM: AtomicU32 = AtomicU32::new(0);

/// Forgets the cached identity in a fork child (a `pthread_atfork` child handler), keeping
/// the parent's pid aside for [`inherited`]. It writes only when there is something to
/// forget: a write costs the child a copy-on-write page fault (both words share a page).
extern "C" fn forget_pid() {
    let parent = PID.load(Ordering::Relaxed);
    if parent != 0 {
        FORKED_FROM.store(parent, Ordering::Relaxed);
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

/// Reads this process's identity and caches it. Allocation-free and lock-free: a fork child
/// of a multi-threaded parent may run it. Threads racing here compute and store the same
/// values; `PID` is stored last (release), so whoever sees it sees the rest.
#[cold]
fn refresh() -> Me {
    // Referencing the constructor keeps its object file linked; calling the registration
    // again is a no-op once it ran.
    std::hint::black_box(&REGISTER_AT_FORK);
    register_at_fork();
    let pid = rustix::process::getpid().as_raw_nonzero().get() as u32;
    let mut buf = [0u8; 4096];
    let start = read_proc(c"/proc/self/stat", &mut buf)
        .and_then(start_time)
        .map_or(0, |t| t + 1);
    let (ns, proc_ok) = inherited().unwrap_or_else(|| {
        let proc_ok = read_proc(c"/proc/self/status", &mut buf).is_some_and(|s| nspid_is(s, pid));
        (ns_id(), proc_ok)
    });
    let nonce = image_nonce(&NONCE, pid, start);
    START.store(start, Ordering::Relaxed);
    NS.store(ns, Ordering::Relaxed);
    PROC_OK.store(proc_ok, Ordering::Relaxed);
    PID.store(pid, Ordering::Release);
    Me {
        pid,
        start,
        ns,
        proc_ok,
        nonce,
    }
}

/// In a fork child whose parent had read its identity: the parent's namespaces and its
/// answer about `/proc` ([`Me::ns`], [`Me::proc_ok`]), when they are provably ours too, so
/// that a child (a pool's worker, say) is ready sooner: one `stat` instead of reading
/// `/proc/self/status` and two `stat`s (about 20 µs of a fresh child's start here).
///
/// The proof. A fork child lives in its parent's pid namespace, or, if the parent had
/// moved its future children (`unshare(CLONE_NEWPID)`), in a new one below it, where the
/// parent is not visible: `getppid()` is then 0. So `getppid()` equal to the pid the
/// parent had as its own means the same pid namespace. (A parent that died meanwhile leaves
/// the child another parent, with another pid: we read everything.) The child has its
/// parent's mount namespace, so the same `/proc`, and in the same pid namespace that
/// `/proc` answers for the child as it did for the parent. The time namespace may differ
/// (`unshare(CLONE_NEWTIME)` also moves only future children): its inode is read again and
/// must be the parent's.
fn inherited() -> Option<(u64, bool)> {
    let parent = FORKED_FROM.load(Ordering::Relaxed);
    let ns = NS.load(Ordering::Relaxed);
    if parent == 0 || ns == 0 {
        return None;
    }
    let seen = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get() as u32);
    if seen != parent {
        return None;
    }
    let time_ino = time_ns_inode(None)?;
    (u64::from(time_ino) == ns & u64::from(u32::MAX)).then(|| (ns, PROC_OK.load(Ordering::Relaxed)))
}

/// This process image's nonce: the pid in the high half, 32 random bits (mixed with the
/// start time) in the low half. Threads that race here to make it agree on one (the first
/// stored for this pid wins): a nonce that changed under a thread would make it a stranger
/// to the `RLock` it holds. A fork child, whose inherited nonce names its parent's pid,
/// makes its own.
fn image_nonce(cell: &AtomicU64, pid: u32, start: u64) -> u64 {
    let mut current = cell.load(Ordering::Acquire);
    loop {
        if current >> 32 == u64::from(pid) {
            return current;
        }
        let mut random = [0u8; 4];
        let _ = rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty());
        // Mixed with the start time, so a failed getrandom still differs per process image.
        let low = (u32::from_ne_bytes(random) ^ (start as u32).rotate_left(13)) | 1;
        let fresh = u64::from(pid) << 32 | u64::from(low);
        match cell.compare_exchange(current, fresh, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return fresh,
            Err(now) => current = now,
        }
    }
}

/// Reads a (small) `/proc` file whole into `buf`; `None` if it cannot, or if it does not fit.
fn read_proc<'a>(path: &std::ffi::CStr, buf: &'a mut [u8]) -> Option<&'a [u8]> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).ok()?;
    let mut len = 0;
    loop {
        match rustix::io::read(&fd, &mut buf[len..]) {
            Ok(0) => return Some(&buf[..len]),
            Ok(n) => {
                len += n;
                if len == buf.len() {
                    return None;
                }
            }
            Err(Errno::INTR) => {}
            Err(_) => return None,
        }
    }
}

/// Field 22 (`starttime`) of a `/proc/PID/stat` line. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted from the last `)`.
fn start_time(stat: &[u8]) -> Option<u64> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let field = stat[close + 1..]
        .split(|&b| b == b' ')
        .filter(|f| !f.is_empty())
        .nth(22 - 3)?;
    parse_u64(field)
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))?
    })
}

/// Whether the `NSpid:` line of a `/proc/self/status` lists exactly one pid, `pid`: then
/// the `/proc` we read is mounted for our own pid namespace.
fn nspid_is(status: &[u8], pid: u32) -> bool {
    let Some(line) = status
        .split(|&b| b == b'\n')
        .find_map(|l| l.strip_prefix(b"NSpid:"))
    else {
        return false;
    };
    let mut pids = line
        .split(|&b| b == b'\t' || b == b' ')
        .filter(|f| !f.is_empty());
    pids.next().and_then(parse_u64) == Some(u64::from(pid)) && pids.next().is_none()
}

/// Our pid namespace's inode (high half) and our time namespace's (low half; 0 on a kernel
/// without time namespaces), or 0 if unknown. Namespace inodes are `unsigned int` in the
/// kernel and unique among live namespaces; every namespace file lives on the one `nsfs`
/// device of the running kernel, which all processes sharing memory with us run on, so the
/// inodes alone name the namespaces (`st_dev` is checked to be that one device).
fn ns_id() -> u64 {
    let Ok(pid_ns) = rustix::fs::stat(c"/proc/self/ns/pid") else {
        return 0;
    };
    match (
        u32::try_from(pid_ns.st_ino),
        time_ns_inode(Some(pid_ns.st_dev)),
    ) {
        (Ok(p), Some(t)) if p != 0 => (u64::from(p) << 32) | u64::from(t),
        _ => 0,
    }
}

/// Our time namespace's inode, 0 on a kernel without time namespaces; `None` if unknown.
/// With `nsfs`, the namespace file must be on that device (see [`ns_id`]).
fn time_ns_inode(nsfs: Option<u64>) -> Option<u32> {
    match rustix::fs::stat(c"/proc/self/ns/time") {
        Ok(time_ns) if nsfs.is_none_or(|dev| time_ns.st_dev == dev) => {
            u32::try_from(time_ns.st_ino).ok()
        }
        Err(Errno::NOENT) => Some(0),
        _ => None,
    }
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

/// Whether the process recorded as (`pid`, `start`) has exited (a zombie counts as exited),
/// where `pid` is a pid in *our* pid namespace and `start` is its [`Me::start`] masked with
/// `mask`, or 0 if it was not recorded. The caller has checked that the process recorded
/// its pid in our pid and time namespaces. Any answer we cannot prove is "alive": a lock is
/// never taken from a live owner.
///
/// The proof, case by case (two live processes never share a pid in one namespace, and a
/// pid stays taken until its process is reaped):
/// - `pid` is ours: a recorded start that is not ours belonged to an earlier holder of our
///   pid, who is gone; an unrecorded one may be us (another thread between winning a lock
///   and recording), so alive.
/// - `pidfd_open` finds no process (`ESRCH`) or no thread group (`EINVAL`) with that id: no
///   live process has that pid, so neither has the recorded one.
/// - The pidfd's process X has exited: it is a zombie; if it was the recorded process, that
///   one is dead; if not, the recorded process had left the pid before X took it.
/// - X is still running after we read `/proc/pid/stat` (our `/proc`, see [`Me::proc_ok`]):
///   X held `pid` throughout, so the file was X's. A start time other than the recorded
///   one means X is not the recorded process, which therefore is gone. `ENOENT`/`ESRCH`
///   from the file means X was reaped after we opened it, so gone too.
/// - Otherwise (no start recorded, a `/proc` of another namespace, `hidepid`, …): alive.
pub(crate) fn is_gone(pid: u32, start: u64, mask: u64) -> bool {
    let me = me();
    if pid == me.pid {
        return start != 0 && start != me.start & mask;
    }
    let Some(p) = Pid::from_raw(pid as i32) else {
        return false;
    };
    let fd = match rustix::process::pidfd_open(p, PidfdFlags::empty()) {
        Err(Errno::SRCH | Errno::INVAL) => return true,
        Err(_) => return false,
        Ok(fd) => fd,
    };
    let exited = |fd: &OwnedFd| {
        let mut fds = [PollFd::new(fd, PollFlags::IN)];
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        matches!(poll(&mut fds, Some(&zero)), Ok(1))
    };
    if start == 0 || !me.proc_ok {
        return exited(&fd);
    }
    let mut path = *b"/proc/0000000000/stat\0";
    let digits = format_pid(pid, &mut path[6..16]);
    path.copy_within(16.., 6 + digits);
    let path = std::ffi::CStr::from_bytes_until_nul(&path).expect("nul-terminated");
    let mut buf = [0u8; 1024];
    let seen = {
        use rustix::fs::{Mode, OFlags};
        match rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()) {
            Err(Errno::NOENT | Errno::SRCH) => return true,
            Err(_) => None,
            Ok(file) => match rustix::io::read(&file, &mut buf) {
                Err(Errno::SRCH | Errno::NOENT) => return true,
                Err(_) => None,
                Ok(n) => start_time(&buf[..n]),
            },
        }
    };
    if exited(&fd) {
        return true;
    }
    seen.is_some_and(|t| (t + 1) & mask != start)
}

/// Writes `pid` in decimal at the start of `out`; returns the number of digits.
fn format_pid(mut pid: u32, out: &mut [u8]) -> usize {
    let mut digits = [0u8; 10];
    let mut n = 0;
    loop {
        digits[n] = b'0' + (pid % 10) as u8;
        n += 1;
        pid /= 10;
        if pid == 0 {
            break;
        }
    }
    for (i, d) in digits[..n].iter().rev().enumerate() {
        out[i] = *d;
    }
    n
}

/// Sleeps while `*word == expected`, until woken with a mask that shares a bit with `bits`
/// or until `deadline`. See [`futex_wait`].
pub(crate) fn futex_wait_bits(
    word: &AtomicU32,
    expected: u32,
    deadline: Deadline,
    bits: NonZeroU32,
) -> Woke {
    match futex::wait_bitset(
        word,
        futex::Flags::empty(),
        expected,
        deadline.0.as_ref(),
        bits,
    ) {
        Err(Errno::TIMEDOUT) => Woke::TimedOut,
        Ok(()) | Err(Errno::AGAIN | Errno::INTR) => Woke::Maybe,
        Err(_) => {
            std::thread::sleep(Duration::from_micros(100));
            Woke::Maybe
        }
    }
}

/// Wakes every waiter on `word` whose wait mask shares a bit with `bits`, in any process.
pub(crate) fn futex_wake_bits(word: &AtomicU32, bits: NonZeroU32) {
    let _ = futex::wake_bitset(word, futex::Flags::empty(), i32::MAX as u32, bits);
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
    fn threads_racing_to_make_the_nonce_agree_on_one() {
        // Regression: each racer used to keep the nonce it made itself, so a thread could
        // take an RLock under one nonce and find another cached afterwards: a stranger to
        // its own lock, it waited for itself for ever.
        for round in 0u32..50 {
            let cell = AtomicU64::new(u64::from(round) << 32); // another pid's nonce
            let barrier = std::sync::Barrier::new(8);
            let seen: Vec<u64> = std::thread::scope(|s| {
                let racers: Vec<_> = (0..8)
                    .map(|_| {
                        s.spawn(|| {
                            barrier.wait();
                            image_nonce(&cell, 4242, 7)
                        })
                    })
                    .collect();
                racers.into_iter().map(|r| r.join().unwrap()).collect()
            });
            assert!(seen.iter().all(|&n| n == seen[0]), "{seen:x?}");
            assert_eq!(seen[0] >> 32, 4242);
            assert_eq!(cell.load(Ordering::Relaxed), seen[0]);
        }
    }

    #[test]
    fn pid_is_cached_and_right() {
        assert_eq!(me().pid, std::process::id());
        assert_eq!(me().pid, std::process::id());
    }

    #[test]
    fn a_live_process_is_not_gone_and_a_reaped_one_is() {
        let me = me();
        assert!(me.start != 0 && me.ns != 0 && me.proc_ok, "{me:?}");
        assert!(!is_gone(me.pid, me.start, u64::MAX));
        assert!(!is_gone(me.pid, 0, u64::MAX));
        assert!(
            is_gone(me.pid, me.start + 1, u64::MAX),
            "a pid we took over"
        );
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let id = child.id();
        let mut buf = [0u8; 1024];
        let mut path = format!("/proc/{id}/stat").into_bytes();
        path.push(0);
        let path = std::ffi::CStr::from_bytes_with_nul(&path).unwrap();
        let start = start_time(read_proc(path, &mut buf).unwrap()).unwrap() + 1;
        assert!(!is_gone(id, start, u64::MAX));
        assert!(!is_gone(id, 0, u64::MAX));
        assert!(
            is_gone(id, start + 1, u64::MAX),
            "another process with that pid"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(is_gone(id, start, u64::MAX));
        assert!(is_gone(id, 0, u64::MAX));
    }

    #[test]
    fn stat_and_status_lines_parse() {
        let stat = b"42 (a) b (c) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 777 20 21\n";
        assert_eq!(start_time(stat), Some(777));
        assert_eq!(start_time(b"42 (x) S 1"), None);
        assert!(nspid_is(b"Name:\tx\nNSpid:\t42\nX: 1\n", 42));
        assert!(!nspid_is(b"NSpid:\t42\t1\n", 42));
        assert!(!nspid_is(b"NSpid:\t41\n", 42));
        assert!(!nspid_is(b"Pid:\t42\n", 42));
        let mut out = [0u8; 10];
        assert_eq!(format_pid(4_194_303, &mut out), 7);
        assert_eq!(&out[..7], b"4194303");
    }

    #[test]
    fn a_fork_child_inherits_its_parents_namespaces_only_when_they_are_its_own() {
        use crate::test_util::{fork, in_new_pid_namespace, reap, root_or_skip};
        let parent = me();
        assert!(parent.ns != 0 && parent.proc_ok, "{parent:?}");
        // Same namespaces: taken from the parent, and what reading them would give.
        let code = reap(fork(|| {
            let child = me();
            let mut buf = [0u8; 4096];
            let read_ok =
                read_proc(c"/proc/self/status", &mut buf).is_some_and(|s| nspid_is(s, child.pid));
            let inherited = FORKED_FROM.load(Ordering::Relaxed) == parent.pid;
            match (
                child.pid != parent.pid,
                inherited,
                child.ns == ns_id(),
                child.proc_ok == read_ok,
            ) {
                (true, true, true, true) => 0,
                (false, ..) => 1,
                (_, false, ..) => 2,
                (_, _, false, _) => 3,
                _ => 4,
            }
        }));
        assert_eq!(code, 0, "1: same pid, 2: not inherited, 3: ns, 4: proc_ok");
        if !root_or_skip("pid namespace") {
            return;
        }
        // A child in a new pid namespace sees its parent as pid 0: it reads its own.
        let code = in_new_pid_namespace(|| {
            reap(fork(|| {
                let child = me();
                match (child.ns == ns_id(), child.ns != parent.ns, child.proc_ok) {
                    (true, true, false) => 0,
                    (false, ..) => 1,
                    (_, false, _) => 2,
                    _ => 3,
                }
            }))
        });
        assert_eq!(
            code, 0,
            "1: ns misread, 2: the parent's ns kept, 3: proc_ok kept"
        );
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
        assert!(Deadline::now().or_within(Duration::from_secs(60)).expired());
        assert_eq!(
            futex_wait(&AtomicU32::new(1), 1, Deadline::now()),
            Woke::TimedOut
        );
        assert!(!Deadline::NEVER.expired());
        assert!(!Deadline::after(Some(Duration::from_secs(60))).expired());
        let word = AtomicU32::new(1);
        let d = Deadline::after(Some(Duration::from_millis(5)));
        while futex_wait(&word, 1, d) != Woke::TimedOut {}
        assert!(d.expired());
    }
}
