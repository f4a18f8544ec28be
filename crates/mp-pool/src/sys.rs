//! Signals: the pool's Ctrl-C handling, and the workers' indifference to it.
//!
//! While a thread waits on a pool, SIGINT ends that wait with `Error::Interrupted` (as
//! Python raises `KeyboardInterrupt` in the waiting thread), after the pool has killed and
//! reaped its workers. At any other moment SIGINT does what it did before the first pool
//! was made: the handler we install hands it to the previous disposition (the default
//! ends the process, as if we had never been there).
//!
//! The handler only reads an atomic and writes eight bytes to an eventfd that is never
//! closed: both async-signal-safe. A thread of ours, blocked reading that eventfd, does the
//! rest with locks and allocations, outside the handler.

use std::{
    os::fd::{AsFd, OwnedFd},
    sync::{
        Mutex, OnceLock, Weak,
        atomic::{AtomicI32, AtomicUsize, Ordering},
    },
};

/// Threads of this process now waiting on some pool.
pub(crate) static WAITERS: AtomicUsize = AtomicUsize::new(0);

/// The eventfd the handler writes to; -1 until installed.
static BELL: AtomicI32 = AtomicI32::new(-1);

/// The disposition SIGINT had before ours.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

/// Pools that want to hear of SIGINT (those with waiters are interrupted).
pub(crate) static POOLS: Mutex<Vec<Weak<crate::shared::Shared>>> = Mutex::new(Vec::new());

/// Makes SIGINT ignored in this process (a worker).
pub(crate) fn ignore_sigint() {
    // SAFETY: installs SIG_IGN, a disposition with no handler code to be unsafe; the
    // sigaction struct is zeroed (no flags, empty mask) apart from the handler.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = libc::SIG_IGN;
        libc::sigaction(libc::SIGINT, &action, std::ptr::null_mut());
    }
}

/// Installs the handler and starts the thread that acts on it, once per process.
pub(crate) fn watch_sigint() -> std::io::Result<()> {
    static ONCE: OnceLock<std::io::Result<()>> = OnceLock::new();
    ONCE.get_or_init(install)
        .as_ref()
        .map(|_| ())
        .map_err(|e| std::io::Error::new(e.kind(), e.to_string()))
}

fn install() -> std::io::Result<()> {
    let bell: OwnedFd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC)?;
    let listener = bell.try_clone()?;
    std::thread::Builder::new()
        .name("mp-pool-sigint".into())
        .spawn(move || listen(listener))?;
    use std::os::fd::IntoRawFd;
    // Never closed: the handler may write to it at any moment for the life of the process.
    BELL.store(bell.into_raw_fd(), Ordering::SeqCst);
    // SAFETY: `previous` is an out-parameter; `on_sigint` is an `extern "C" fn(c_int)` that
    // only does async-signal-safe work (see the module docs); SA_RESTART keeps other
    // threads' system calls from failing with EINTR.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        let mut previous: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGINT, &action, &mut previous) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let _ = PREVIOUS.set(previous);
    }
    Ok(())
}

extern "C" fn on_sigint(signal: libc::c_int) {
    let bell = BELL.load(Ordering::SeqCst);
    if WAITERS.load(Ordering::SeqCst) > 0 && bell >= 0 {
        let one = 1u64.to_ne_bytes();
        // SAFETY: `bell` is an eventfd never closed (see `install`); `write` is
        // async-signal-safe and reads 8 bytes from `one`, which lives on this stack.
        unsafe { libc::write(bell, one.as_ptr().cast(), 8) };
        return;
    }
    // Nobody waits on a pool: SIGINT means what it meant before us.
    let Some(previous) = PREVIOUS.get() else {
        return;
    };
    match previous.sa_sigaction {
        libc::SIG_IGN => {}
        libc::SIG_DFL => {
            // SAFETY: restores the default disposition and raises the signal again; it is
            // blocked while this handler runs, so it is delivered (and ends the process) as
            // the handler returns. Both calls are async-signal-safe.
            unsafe {
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                libc::raise(libc::SIGINT);
            }
        }
        handler if previous.sa_flags & libc::SA_SIGINFO == 0 => {
            // SAFETY: the previous disposition was a plain handler, `fn(c_int)`, installed
            // by this process for SIGINT: called as the kernel would have called it.
            let handler: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
            handler(signal);
        }
        handler => {
            // SAFETY: the previous disposition was an SA_SIGINFO handler; it receives a
            // zeroed siginfo (no sender known) and no context, which such handlers must
            // accept from `raise`-like callers.
            unsafe {
                let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    std::mem::transmute(handler);
                let mut info: libc::siginfo_t = std::mem::zeroed();
                handler(signal, &mut info, std::ptr::null_mut());
            }
        }
    }
}

/// The thread that acts on SIGINT: interrupts every pool someone waits on.
fn listen(bell: OwnedFd) {
    let mut buf = [0u8; 8];
    loop {
        match rustix::io::read(bell.as_fd(), &mut buf) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return,
        }
        let pools: Vec<_> = {
            let mut pools = POOLS.lock().unwrap_or_else(|e| e.into_inner());
            pools.retain(|p| p.strong_count() > 0);
            pools.iter().filter_map(Weak::upgrade).collect()
        };
        for pool in pools {
            if pool.waiting.load(Ordering::SeqCst) > 0 {
                pool.end(crate::Error::Interrupted);
            }
        }
    }
}

/// Counts a thread as waiting on `pool` while it lives.
pub(crate) struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    pub(crate) fn new(pool: &'a AtomicUsize) -> Self {
        pool.fetch_add(1, Ordering::SeqCst);
        WAITERS.fetch_add(1, Ordering::SeqCst);
        Waiting(pool)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        WAITERS.fetch_sub(1, Ordering::SeqCst);
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
