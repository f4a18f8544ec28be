//! Forked children for unit tests: every wait has a deadline, nothing outlives its test.

use std::time::Duration;

use rustix::{
    event::{PollFd, PollFlags, poll},
    process::{Pid, PidfdFlags, pidfd_open},
    time::Timespec,
};

/// Forks a child that runs `body` and `_exit`s with its result. `body` must be
/// async-signal-safe enough for a fork child of a multi-threaded test binary: no locks
/// another thread could hold (our primitives and raw syscalls are fine; no allocation).
pub(crate) fn fork(body: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child runs only `body`, then `_exit`s without running destructors.
    match unsafe { libc::fork() } {
        0 => {
            let code = body();
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(code) }
        }
        -1 => panic!("fork failed"),
        pid => pid,
    }
}

/// Waits (at most 60 s, then kills) for child `pid`; its exit code, or 128 + signal.
pub(crate) fn reap(pid: i32) -> i32 {
    let pidfd = pidfd_open(Pid::from_raw(pid).unwrap(), PidfdFlags::empty()).unwrap();
    let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
    let timeout = Timespec::try_from(Duration::from_secs(60)).unwrap();
    let exited = poll(&mut fds, Some(&timeout)) == Ok(1);
    if !exited {
        // SAFETY: killing our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let mut status = 0;
    // SAFETY: our child; a valid out-pointer.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(exited, "a forked child hung");
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    }
}

/// Whether we may create pid namespaces and write `ns_last_pid`; if not, says why the
/// calling test is skipped.
pub(crate) fn root_or_skip(what: &str) -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        eprintln!("SKIPPED {what}: needs root (CI runs as root)");
    }
    root
}

/// Takes the pid `wanted` if it can: sets
/// `ns_last_pid` to `wanted - 1` and forks a child that waits for the returned pipe end to
/// close. Retries, since other processes fork too; `None` if the pid never came.
pub(crate) fn live_process_with_pid(wanted: i32) -> Option<(i32, std::os::fd::OwnedFd)> {
    for _ in 0..200 {
        let (read, write) = rustix::pipe::pipe().unwrap();
        std::fs::write("/proc/sys/kernel/ns_last_pid", format!("{}", wanted - 1)).ok()?;
        let write_fd = std::os::fd::AsRawFd::as_raw_fd(&write);
        let pid = fork(|| {
            // SAFETY: the child's copy of the write end; closing it lets EOF arrive.
            unsafe { libc::close(write_fd) };
            let mut byte = [0u8];
            let _ = rustix::io::read(&read, &mut byte);
            0
        });
        drop(read);
        if pid == wanted {
            return Some((pid, write));
        }
        drop(write);
        reap(pid);
    }
    None
}

/// Runs `body` on a thread of its own after moving that thread's future children into a
/// new pid namespace (`unshare(CLONE_NEWPID)`); the calling thread is untouched.
pub(crate) fn in_new_pid_namespace<R: Send>(body: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: affects only this thread's later children.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWPID) }, 0, "unshare");
            body()
        })
        .join()
        .unwrap()
    })
}
