//! Every system call of this crate that needs `unsafe`, and the table of targets an
//! exec'd child may run.
//!
//! # Safety
//! - `fork`: the child of a multi-threaded parent has one thread; until it exits it runs only
//!   the target the caller chose (documented on the fork APIs).
//! - `posix_spawn`: all strings and arrays outlive the call; the child is a new image.
//! - signal handlers call only async-signal-safe functions (`getppid`, `kill`, `getpid`).
//! - no function address is ever made from bytes: an exec'd child calls only entries of
//!   the table of targets the linker built into this executable (`targets`), and makes
//!   only zero-sized targets out of nothing (`copy_of_zero_sized`).
#![allow(unsafe_code)]

use std::{
    ffi::{CStr, CString, c_char, c_int},
    io,
    os::fd::{AsRawFd, BorrowedFd},
    ptr,
    sync::atomic::{AtomicI32, Ordering},
};

/// The process id of a child we started.
pub(crate) type RawPid = i32;

/// `fork(2)`: `Ok(None)` in the child, `Ok(Some(pid))` in the parent.
/// See [fork(2)](https://man7.org/linux/man-pages/man2/fork.2.html).
#[inline]
pub(crate) fn fork() -> io::Result<Option<RawPid>> {
    // SAFETY: fork has no memory-safety preconditions of its own; the child only runs the
    // code its caller chose and then `exit_now`s (see the module's `# Safety`).
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        pid => Ok(Some(pid)),
    }
}

/// `_exit(2)`: ends the process now, running no destructors and no `atexit` handlers.
#[inline]
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` is always safe to call; it does not return.
    unsafe { libc::_exit(code) }
}

/// Starts `/proc/self/exe` again with `env` (each `KEY=VALUE`) and arguments `args` (the
/// first is `argv[0]`), with `keep`
/// duplicated onto descriptor `as_fd` in the child (clearing its close-on-exec flag), every
/// descriptor above it closed, and an empty signal mask: the child gets exactly stdio and
/// this one. Uses `posix_spawn`, which glibc implements with a
/// `CLONE_VFORK` clone: no copy of the parent's page tables.
/// See [posix_spawn(3)](https://man7.org/linux/man-pages/man3/posix_spawn.3.html).
/// Points a forked child's stdin at `/dev/null`, as Python does for every child (an
/// `openat` and a `dup2`, both async-signal-safe). Best effort, as Python's: a process without
/// `/dev/null` keeps the stdin it had.
pub(crate) fn null_stdin() {
    if let Ok(null) = rustix::fs::open(
        c"/dev/null",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    ) {
        let _ = rustix::stdio::dup2_stdin(&null);
    }
}

pub(crate) fn spawn_self(
    args: &[&CStr],
    env: &[CString],
    keep: BorrowedFd<'_>,
    as_fd: c_int,
) -> io::Result<RawPid> {
    const EXE: &CStr = c"/proc/self/exe";
    let mut argv: Vec<*mut c_char> = args.iter().map(|a| a.as_ptr().cast_mut()).collect();
    argv.push(ptr::null_mut());
    let mut envp: Vec<*mut c_char> = env.iter().map(|e| e.as_ptr().cast_mut()).collect();
    envp.push(ptr::null_mut());
    let mut pid: libc::pid_t = 0;
    // SAFETY: every pointer handed to libc points into `argv`, `envp`, `env`, `args` or the
    // local attribute objects, all alive until after `posix_spawn` returns; the attribute
    // objects are initialized before use and destroyed exactly once.
    unsafe {
        let mut actions = std::mem::MaybeUninit::<libc::posix_spawn_file_actions_t>::uninit();
        let mut attr = std::mem::MaybeUninit::<libc::posix_spawnattr_t>::uninit();
        check(libc::posix_spawn_file_actions_init(actions.as_mut_ptr()))?;
        if let Err(e) = check(libc::posix_spawnattr_init(attr.as_mut_ptr())) {
            libc::posix_spawn_file_actions_destroy(actions.as_mut_ptr());
            return Err(e);
        }
        let result = (|| {
            check(libc::posix_spawn_file_actions_adddup2(
                actions.as_mut_ptr(),
                keep.as_raw_fd(),
                as_fd,
            ))?;
            // Stdin is /dev/null, as in Python: a child must not take the parent's input
            // (nor a forkserver hold the parent's stdin pipe open for its children).
            check(libc::posix_spawn_file_actions_addopen(
                actions.as_mut_ptr(),
                libc::STDIN_FILENO,
                c"/dev/null".as_ptr(),
                libc::O_RDONLY,
                0,
            ))?;
            // Descriptors this process inherited without close-on-exec (a jobserver's, a
            // shell's) must not reach the child either.
            check(libc::posix_spawn_file_actions_addclosefrom_np(
                actions.as_mut_ptr(),
                as_fd + 1,
            ))?;
            let mut empty = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
            libc::sigemptyset(empty.as_mut_ptr());
            check(libc::posix_spawnattr_setsigmask(
                attr.as_mut_ptr(),
                empty.as_ptr(),
            ))?;
            check(libc::posix_spawnattr_setflags(
                attr.as_mut_ptr(),
                libc::POSIX_SPAWN_SETSIGMASK as libc::c_short,
            ))?;
            check(libc::posix_spawn(
                &mut pid,
                EXE.as_ptr(),
                actions.as_ptr(),
                attr.as_ptr(),
                argv.as_ptr(),
                envp.as_ptr(),
            ))
        })();
        libc::posix_spawnattr_destroy(attr.as_mut_ptr());
        libc::posix_spawn_file_actions_destroy(actions.as_mut_ptr());
        result?;
    }
    Ok(pid)
}

fn check(rc: c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// The parent this process must not outlive; 0 before [`die_with_parent`].
static EXPECTED_PARENT: AtomicI32 = AtomicI32::new(0);

/// The signal the kernel sends when our parent thread dies (`PR_SET_PDEATHSIG`). Not
/// `SIGKILL` itself: the kernel also sends it when only the *thread* that started us exits,
/// so the handler checks that the parent *process* is gone before killing us.
fn parent_death_signal() -> c_int {
    libc::SIGRTMAX() - 2
}

extern "C" fn on_parent_death(_: c_int) {
    // SAFETY: getppid, getpid and kill are async-signal-safe and have no preconditions.
    unsafe {
        if libc::getppid() != EXPECTED_PARENT.load(Ordering::Relaxed) {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// Arranges for this process to be killed when its parent process dies, even by `SIGKILL`:
/// `PR_SET_PDEATHSIG` with a handler that tells a dead parent thread from a dead parent
/// process. Kills us now if the parent is already gone.
/// See [PR_SET_PDEATHSIG](https://man7.org/linux/man-pages/man2/PR_SET_PDEATHSIG.2const.html).
pub(crate) fn die_with_parent(parent: RawPid) -> io::Result<()> {
    EXPECTED_PARENT.store(parent, Ordering::Relaxed);
    // SAFETY: the handler is an `extern "C" fn(c_int)` that only calls async-signal-safe
    // functions; `action` is fully initialized (zeroed, then its fields set).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_parent_death as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(parent_death_signal(), &action, ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        // A forked child inherits its thread's signal mask: a blocked death signal would stay
        // pending and the child would outlive its parent.
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, parent_death_signal());
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, ptr::null_mut());
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            parent_death_signal() as libc::c_ulong,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    on_parent_death(0);
    Ok(())
}

/// As [`die_with_parent`], for a child forked by its parent's *main* thread, which cannot
/// end before its process does (returning from `main` exits): the kernel's `SIGKILL` needs
/// no handler to check, and no signal mask can block it. Two system calls, made inline.
#[inline]
pub(crate) fn die_with_parent_main_thread(parent: RawPid) -> io::Result<()> {
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
    if rustix::process::getppid().map(|p| p.as_raw_nonzero().get()) != Some(parent) {
        // The parent died before the death signal was armed: die as if it had been.
        rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL)?;
    }
    Ok(())
}

/// Whether the calling thread is the main thread of its process, whose pid is `me`.
pub(crate) fn on_main_thread(me: u32) -> bool {
    rustix::thread::gettid().as_raw_nonzero().get() as u32 == me
}

/// Ignores `SIGPIPE`, as Rust's runtime does before `main` (a child entered from the
/// constructor never reaches that code).
pub(crate) fn ignore_sigpipe() {
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Registers `handler` to run at normal process exit.
/// See [atexit(3)](https://man7.org/linux/man-pages/man3/atexit.3.html).
pub(crate) fn at_exit(handler: extern "C" fn()) {
    // SAFETY: `handler` is a plain function valid for the whole life of the process.
    unsafe {
        libc::atexit(handler);
    }
}

unsafe extern "C" {
    /// Registers `func(arg)` to run at exit, or when `__cxa_finalize(dso)` is called (the
    /// Itanium C++ ABI's registration of destructors). glibc calls `func` with the exit
    /// status as a second argument (0 from `__cxa_finalize`).
    fn __cxa_atexit(
        func: extern "C" fn(*mut libc::c_void, c_int),
        arg: *mut libc::c_void,
        dso: *mut libc::c_void,
    ) -> c_int;
    /// Runs and removes the exit handlers registered with `dso`.
    fn __cxa_finalize(dso: *mut libc::c_void);
}

/// The exit guard, as armed by a process (its pid is `armed_by`) just before each fork, so that it is the newest of that process's exit handlers in the
/// child's copy of them. Handlers run newest first: a fork child of ours that calls `exit`
/// runs the handlers it registered itself, then comes to the guard its parent armed, and
/// ends there (see [`leave_at_exit`]). The guard does nothing in the process that armed it,
/// nor in a child forked by other means than ours.
extern "C" fn exit_guard(armed_by: *mut libc::c_void, status: c_int) {
    let me = crate::current::pid();
    if armed_by as usize == me as usize || !crate::current::forked_by_us(me) {
        return;
    }
    leave_at_exit(status)
}

/// Ends a fork child whose target called `exit`, before any exit handler inherited from
/// its parent runs: its own children dealt with, stdout flushed, its parent told that the
/// target called `exit` (see `entry::EXITED`), `_exit` with the status given to `exit`.
fn leave_at_exit(status: c_int) -> ! {
    crate::registry::finish_children();
    let _ = std::io::Write::flush(&mut std::io::stdout());
    if let Some(socket) = forked_outlet()
        && crate::entry::claim_outcome()
    {
        crate::entry::send_empty(socket, crate::entry::EXITED);
    }
    exit_now(status)
}

/// In a forked child, its result socket (see `current::set_forked_outlet`).
pub(crate) fn forked_outlet() -> Option<BorrowedFd<'static>> {
    let outlet = crate::held::HELD.forked_outlet.load(Ordering::Relaxed);
    // SAFETY: a forked child's result socket, recorded as it started; it stays open until
    // the child ends (`start::fork` never drops it before `_exit`), and only our own code,
    // which never closes it, is given it.
    (outlet >= 0).then(|| unsafe { BorrowedFd::borrow_raw(outlet) })
}

/// Makes the exit guard the newest exit handler of this process, before a fork (see
/// [`exit_guard`]). Called with the fork's locks held (see `start::fork`), so two threads'
/// forks never interleave their armings. The one armed before by
/// this process is taken out first (each process registers its guard under a handle of its
/// own, which no library's can equal: theirs are addresses, ours odd), so re-arming takes
/// no new slot unless a handler was registered since the last fork; the guards inherited
/// from our own parents stay, each where it was when we were forked.
///
/// The parent arms, not the child: a child that registered a handler would write (and so
/// copy) two pages of the C library's, where the parent's writes, made while no child of
/// the last fork is alive, cost no copy.
///
/// `me` is this process's pid.
pub(crate) fn arm_exit_guard(me: u32) -> io::Result<()> {
    let me = me as usize;
    let handle = ((me << 1) | 1) as *mut libc::c_void;
    // SAFETY: `handle` is only a key that names this process's registrations; finalizing
    // it runs just the guard registered under it, which returns at once here (see
    // `exit_guard`). The guard is a plain function valid for the life of the process.
    let registered = unsafe {
        __cxa_finalize(handle);
        __cxa_atexit(exit_guard, me as *mut libc::c_void, handle)
    };
    if registered == 0 {
        Ok(())
    } else {
        Err(io::Error::other(
            "__cxa_atexit failed to register the exit guard",
        ))
    }
}

unsafe extern "C" {
    /// glibc's flag (2.32 and later; this crate needs 2.34 for `posix_spawn`'s closefrom).
    static __libc_single_threaded: c_char;
}

/// Whether this process has only ever had one thread: glibc's `__libc_single_threaded`.
/// Only a thread's creation clears the flag, and the thread that creates the second thread
/// clears it first, so whichever thread reads it, a process with more than one thread reads
/// "no". (A fork child of a process that has had threads reads "no" too, though it has one.)
/// See [__libc_single_threaded(3)](https://man7.org/linux/man-pages/man3/__libc_single_threaded.3.html).
pub(crate) fn single_threaded() -> bool {
    // SAFETY: glibc's `char __libc_single_threaded` lives as long as the process; glibc
    // writes it only as a thread is created (see above), and it is read here as an atomic
    // byte.
    let flag = unsafe {
        std::sync::atomic::AtomicU8::from_ptr(
            ptr::addr_of!(__libc_single_threaded).cast_mut().cast(),
        )
    };
    flag.load(Ordering::Relaxed) != 0
}

/// Removes `key` from the environment. Called only from the constructor (`entry::on_load`),
/// before `main` has started any thread.
pub(crate) fn remove_env_before_main(key: &str) {
    // SAFETY: no other thread exists yet to read or write the environment concurrently.
    unsafe { std::env::remove_var(key) }
}

/// A table of functions the linker builds into the executable: `$read()` returns its
/// entries, `$register::<F, A, R>()` adds `$entry::<F, A, R>`. Entries live in the section
/// `$section`, between the linker's `__start_`/`__stop_` symbols for it. An entry is a
/// function pointer, or null (the entry `$read` emits so that the section always exists);
/// `Option<$ty>` has exactly that layout.
///
/// The section is `"awR"`: writable for the loader's relocations (absolute addresses in a
/// position-independent executable), and retained (`SHF_GNU_RETAIN`): `--gc-sections` does
/// not count the `__start_` symbols as references.
macro_rules! table {
    (
        $(#[$doc:meta])*
        $read:ident, $register:ident: $section:literal, $start:ident, $stop:ident,
        $ty:ty, $($entry:tt)+
    ) => {
        $(#[$doc])*
        pub(crate) fn $read() -> &'static [Option<$ty>] {
            unsafe extern "C" {
                static $start: [u8; 0];
                static $stop: [u8; 0];
            }
            // SAFETY: no instructions: the block only places a null entry in the section, so
            // that it and its bounds exist in every executable that links this function.
            unsafe {
                std::arch::asm!(
                    concat!(".pushsection ", $section, ",\"awR\",%progbits"),
                    ".balign 8",
                    ".quad 0",
                    ".popsection",
                    options(nomem, nostack, preserves_flags),
                );
            }
            let start = (&raw const $start).cast::<Option<$ty>>();
            let stop = (&raw const $stop).cast::<Option<$ty>>();
            let len = (stop as usize - start as usize) / size_of::<Option<$ty>>();
            // SAFETY: the linker defines the `__start_`/`__stop_` symbols as the bounds of
            // the section, which holds only what this crate's `asm!` blocks put there (the
            // name is ours): 8-byte-aligned 8-byte words, each null or the address of an
            // instance of the table's entry function, which the loader relocated before any
            // constructor ran. Both kinds are valid `Option<fn>` values (null is `None`).
            // Nothing writes to the section after the loader: no code of ours, and it is
            // named by no other symbol. So the words form a shared slice valid for the life
            // of the process.
            unsafe { std::slice::from_raw_parts(start, len) }
        }

        /// Adds the entry for `F, A, R` to the table (see the reader). It emits at compile
        /// time, once per instance of the generic function it is inlined into; running it
        /// does nothing.
        #[inline(always)]
        pub(crate) fn $register<F, A, R>()
        where
            F: Fn(A) -> R + Copy + 'static,
            A: mp_codec::Decode + 'static,
            R: mp_codec::Encode + 'static,
        {
            // SAFETY: no instructions: the block only adds the entry's address, a word, to
            // our own section (see the reader for what may be there).
            unsafe {
                std::arch::asm!(
                    concat!(".pushsection ", $section, ",\"awR\",%progbits"),
                    ".balign 8",
                    ".quad {t}",
                    ".popsection",
                    t = sym $($entry)+::<F, A, R>,
                    options(nomem, nostack, preserves_flags),
                );
            }
        }
    };
}

table! {
    /// The table of targets: one entry per target type this executable can run in an
    /// exec'd child (`Process::new`), a `crate::entry::trampoline` instance each.
    targets, register_target: "mp_spawn_targets", __start_mp_spawn_targets,
    __stop_mp_spawn_targets, crate::entry::Trampoline, crate::entry::trampoline
}

table! {
    /// The table of callable targets ([`crate::TargetId`]): a `crate::call::call_entry`
    /// instance each.
    calls, register_call: "mp_spawn_calls", __start_mp_spawn_calls, __stop_mp_spawn_calls,
    crate::call::CallFn, crate::call::call_entry
}

/// A copy of the zero-sized target `F` of a trampoline, in an exec'd child.
///
/// `F` is `Copy` and zero-sized (checked at compile time here and in `Process::new`): it
/// has no bytes, so every value of it is the same value, and copying one is what its own
/// `Copy` allows anywhere. In an honest start the parent held one, and this is that copy,
/// as `let g = f;` would make it. A forged bootstrap (made by a process of the same user,
/// see `entry::judge_peer`) may select any entry of the table, including one whose `F` the
/// program never actually made at run time (an entry exists wherever `Process::new::<F>` is
/// compiled). What `F` can be bounds what that gives: a fn item or a capture-free closure
/// (one value, nothing to forge), or a closure whose captures are all zero-sized and `Copy`
/// (the bound `Fn + Copy + 'static`; nobody else can implement `Fn` on stable Rust), whose
/// captured values are then conjured too: `Process::new`'s docs tell users not to capture a
/// zero-sized token with a meaning beyond its type.
pub(crate) fn copy_of_zero_sized<F: Copy>() -> F {
    const { assert!(size_of::<F>() == 0) };
    // SAFETY: `F` has no bytes, so the all-zero `F` (zero bytes) is every value `F` has,
    // as soon as it has any at all. It has (see above): the parent held one. Should `F`
    // nevertheless be uninhabited (a closure that captures a value of an empty type, in code
    // that never runs), `zeroed` checks that at run time and aborts the child ("attempted to
    // instantiate uninhabited type", a panic that does not unwind) rather than make one.
    unsafe { std::mem::zeroed::<F>() }
}

/// Ignores SIGINT (`true`), or gives it its default action back (`false`).
pub(crate) fn ignore_sigint(ignore: bool) {
    let disposition = if ignore { libc::SIG_IGN } else { libc::SIG_DFL };
    // SAFETY: SIG_IGN and SIG_DFL run no code of ours; `signal` is async-signal-safe, so a
    // forked child of a multi-threaded process may call it.
    unsafe { libc::signal(libc::SIGINT, disposition) };
}

/// Who this process runs as, for `entry::may_act_as_child`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Credentials {
    /// `getauxval(AT_SECURE)`: the kernel (or a security module) started this process with
    /// privileges its invoker does not have (setuid, setgid, file capabilities).
    pub(crate) secure: bool,
    pub(crate) uid: u32,
    pub(crate) euid: u32,
    pub(crate) gid: u32,
    pub(crate) egid: u32,
}

/// This process's [`Credentials`].
/// See [getauxval(3)](https://man7.org/linux/man-pages/man3/getauxval.3.html).
pub(crate) fn credentials() -> Credentials {
    use rustix::process::{getegid, geteuid, getgid, getuid};
    // SAFETY: getauxval reads the auxiliary vector the kernel gave this process; it has no
    // preconditions and returns 0 for a type it does not know.
    let secure = unsafe { libc::getauxval(libc::AT_SECURE) } != 0;
    Credentials {
        secure,
        uid: getuid().as_raw(),
        euid: geteuid().as_raw(),
        gid: getgid().as_raw(),
        egid: getegid().as_raw(),
    }
}

/// The descriptor a private variable names (`entry::BOOT_FD`), borrowed for a look before
/// the constructor decides whether to take it: `None` if it is not open. Called only from
/// the constructor (`entry::on_load`), before `main` has started any thread.
pub(crate) fn inherited_fd(fd: c_int) -> Option<BorrowedFd<'static>> {
    // SAFETY: F_GETFD on any number is harmless; it tells whether `fd` is open.
    if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return None;
    }
    // SAFETY: `fd` is open; before `main` only the constructor's code runs, on one thread,
    // and it closes the descriptor only by taking it (`take_inherited_fd`) after its last
    // use of this borrow. Another process cannot close a descriptor of ours.
    Some(unsafe { BorrowedFd::borrow_raw(fd) })
}

/// Takes ownership of the bootstrap descriptor our parent placed at `entry::BOOT_FD`, once
/// the constructor has checked it (`entry::bootstrap_socket`).
pub(crate) fn take_inherited_fd(fd: BorrowedFd<'static>) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` is open (see `inherited_fd`), and nothing in this process owns it: the
    // parent placed it there for this process alone, no code before the constructor knows
    // of it, and the constructor takes it once.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd.as_raw_fd()) }
}

/// Whether two code addresses lie in the same loaded object (the executable, or one shared
/// library): offsets between them only mean something in another process if they do.
/// See [dladdr(3)](https://man7.org/linux/man-pages/man3/dladdr.3.html).
pub(crate) fn same_object(a: usize, b: usize) -> bool {
    let base = |address: usize| {
        // SAFETY: dladdr only reads the loader's tables; `info` is a plain out-parameter.
        unsafe {
            let mut info: libc::Dl_info = std::mem::zeroed();
            (libc::dladdr(address as *const libc::c_void, &mut info) != 0).then_some(info.dli_fbase)
        }
    };
    // Where the loader cannot tell (a static binary), everything is one object.
    match (base(a), base(b)) {
        (Some(x), Some(y)) => x == y,
        _ => true,
    }
}

/// The descriptor limits before [`raise_fd_limit`] raised them, for [`restore_fd_limit`]
/// (the soft one 0 if they were left as they were). Atomics, which a forked child reads
/// without writing.
static ORIGINAL_FD_SOFT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static ORIGINAL_FD_HARD: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Raises the soft limit on open descriptors (the forkserver holds three per live child) to
/// the hard limit, at most 1 << 20.
pub(crate) fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit take a plain struct by pointer.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        let original = (limit.rlim_cur, limit.rlim_max);
        let raised = limit.rlim_max.min(1 << 20);
        if limit.rlim_cur < raised {
            limit.rlim_cur = raised;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                ORIGINAL_FD_HARD.store(original.1, Ordering::Relaxed);
                ORIGINAL_FD_SOFT.store(original.0, Ordering::Relaxed);
            }
        }
    }
}

/// Puts back the descriptor limits [`raise_fd_limit`] found (in a forkserver's child,
/// which should see the limits of the program that asked for it): one system call, from
/// what the server kept, or none if it raised nothing.
pub(crate) fn restore_fd_limit() {
    let soft = ORIGINAL_FD_SOFT.load(Ordering::Relaxed);
    if soft == 0 {
        return;
    }
    let hard = ORIGINAL_FD_HARD.load(Ordering::Relaxed);
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit takes a plain struct by pointer.
    unsafe {
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
}

/// One descriptor for [`poll`]: a raw `pollfd` asking for readability. Made from a borrowed
/// descriptor, so it names one that was open then; a set of them is rebuilt in place each
/// round (the forkserver's, which must not allocate), which borrowed `PollFd`s cannot be.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub(crate) struct PollFd(libc::pollfd);

impl PollFd {
    pub(crate) fn readable(fd: BorrowedFd<'_>) -> Self {
        PollFd(libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
    }

    /// Readable, at its end, or in error after [`poll`].
    pub(crate) fn ready(&self) -> bool {
        self.0.revents != 0
    }
}

/// `poll(2)` without a timeout. The descriptors must still be open: the caller builds the
/// set from descriptors it holds and polls before closing any.
/// See [poll(2)](https://man7.org/linux/man-pages/man2/poll.2.html).
pub(crate) fn poll(fds: &mut [PollFd]) -> io::Result<()> {
    // SAFETY: `PollFd` is `repr(transparent)` over `libc::pollfd`, so the slice is
    // `fds.len()` valid, exclusive `pollfd`s for the kernel to fill in.
    let n = unsafe { libc::poll(fds.as_mut_ptr().cast(), fds.len() as libc::nfds_t, -1) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Kills and reaps a child we could not keep track of (no pidfd could be opened for it).
pub(crate) fn kill_and_reap(pid: RawPid) {
    // SAFETY: `pid` is our own unreaped child, so the number cannot have been reused.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
    }
}

/// The distance from `anchor` to `function` (a function's address): how a target is named
/// in a bootstrap, and part of the executable's fingerprint.
pub(crate) fn offset_of(anchor: usize, function: usize) -> u64 {
    function.wrapping_sub(anchor) as u64
}

/// Runs before `main` in every process of this executable (an `.init_array` entry), so an
/// exec'd child or forkserver becomes one before the program's own code starts.
#[used]
#[unsafe(link_section = ".init_array")]
pub(crate) static CONSTRUCTOR: extern "C" fn(c_int, *const *const c_char, *const *const c_char) =
    constructor;

extern "C" fn constructor(_: c_int, _: *const *const c_char, _: *const *const c_char) {
    crate::entry::on_load();
}
