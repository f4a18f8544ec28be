//! `fork`: the child is a copy of the calling thread and runs the job straight from memory.
//!
//! Every page the child touches costs it a fault (a copy for data, a mapping for code), and
//! every descriptor made and closed costs a system call, so the child's path is kept short:
//! its result socket comes from a pool (`channel`), the parent opens no pidfd (it waits with
//! `waitid` on the pid of its own unreaped child), and the child frees nothing before it
//! `_exit`s.
//!
//! The parent, for its part, writes as little as it can between the fork and the child's
//! end: a page it writes while the child still shares it is copied, where the same write
//! after the child's end only makes the page writable again (about 1.5 µs against 0.4 µs
//! here). So it frees nothing of ours then (the job's box is freed before the fork, the
//! child's identity is kept by its `Process`; what the job's arguments own is dropped
//! with them, after the fork), and the child's registry entry is made before the fork: only
//! the pid is left to write, beside the registry's lock, on a page the parent writes
//! anyway. The exit guard (`sys::arm_exit_guard`) is armed by the parent too, before the
//! fork, sparing the child two pages of the C library's.
//!
//! The child takes no lock that another thread of its parent may hold: fork copies a lock
//! as it is, held by a thread that does not exist in the child. That is why the guard is
//! armed in the parent even when it has other threads (issue 13): registering it in the
//! child took glibc's exit-handler lock, and a child forked while another thread was in
//! `__cxa_atexit` or `__cxa_finalize` hung there for ever. The price, in a parent with
//! other threads: a handler another thread registers in the instant between the arming
//! and the fork is newer than the guard, and runs in a child whose target calls `exit`.
//! Nothing can close that instant from outside glibc (the guard cannot be ordered after
//! handlers not yet registered, and the child can neither read the list of handlers nor
//! register without the lock); a child that hangs for ever is the worse outcome.

use super::{Results, Started, channel};
use crate::{Error, Process, Result, StartMethod, current, entry, process::Job, registry, sys};

pub(crate) fn start<R: mp_codec::Encode + 'static, J: Job<R>>(
    job: Box<J>,
    name: String,
    identity: Vec<u32>,
    daemon: bool,
    parent: u32,
) -> Result<Process<R>> {
    // Out of its box, which is freed here, at the end of this block (a box moved out of is
    // freed at the end of its scope): before the fork, not after it.
    let job: J = {
        let boxed = job;
        *boxed
    };
    let channel = channel::take(parent)?;
    entry::install_panic_hook();
    // The executable's fingerprint, which the child checks on every target it is handed
    // (a pool worker's first task): computed once here, inherited, instead of a `stat` of
    // `/proc/self/exe` in every child.
    let _ = entry::fingerprint();
    let main_thread = sys::on_main_thread(parent);
    // Everything the child needs is allocated here, before the fork.
    let mut me = current::prepare_child(
        name,
        identity,
        daemon,
        (parent, current::name()),
        StartMethod::Fork,
    );
    me.forked = true;
    // The child gets a copy of every lock as it is at this instant. Hold ours (and stdio's)
    // across the fork, so none of them is held by a thread that does not exist there. And
    // flush stdout first, as Python does: a child exiting with a copy of unwritten output
    // would write it out a second time. In a process that has only ever had one thread, no
    // other thread can hold stdio's locks or write to stdout between the flush and the
    // fork, so they are let go before it: the parent then leaves their pages alone while
    // the child runs.
    let stdout = std::io::stdout();
    let threads = !sys::single_threaded();
    let (forked, serial) = {
        let mut stdout_lock = stdout.lock();
        let _ = std::io::Write::flush(&mut stdout_lock);
        let _stdout = threads.then_some(stdout_lock);
        let _stderr = threads.then(|| std::io::stderr().lock());
        let _server = super::forkserver::lock();
        let _channels = channel::lock();
        let _me = current::lock();
        let children = registry::reserve(&me.name, daemon, true, None, parent);
        if let Err(e) = sys::arm_exit_guard(parent) {
            return Err(Error::os("__cxa_atexit", e));
        }
        match sys::fork() {
            Ok(Some(pid)) => (Ok(Some(pid)), children.started(pid as u32)),
            Ok(None) => {
                children.leave();
                (Ok(None), 0)
            }
            Err(e) => (Err(e), 0),
        }
    };
    match forked.map_err(|e| Error::os("fork", e))? {
        None => {
            // The child. Only the job's own code runs from here, then `_exit`; nothing is
            // dropped (freeing would write to the allocator's pages, each write a copy).
            let armed = if main_thread {
                sys::die_with_parent_main_thread(parent as i32)
            } else {
                sys::die_with_parent(parent as i32)
            };
            if armed.is_err() {
                entry::finish(entry::START_FAILED);
            }
            sys::null_stdin();
            current::install(me);
            let socket = std::os::fd::AsFd::as_fd(&channel.theirs);
            current::set_forked_outlet(socket);
            let outlet = entry::Outlet::ready(socket, channel.room)
                .flushing(&stdout)
                .status_says_returned();
            let code = entry::run_target(outlet, move || job.run());
            entry::finish_flushing(code, &stdout)
        }
        Some(pid) => {
            // The child's identity is kept by its `Process`, not freed while the child runs.
            let current::Me { name, identity, .. } = me;
            let started = Started {
                pid: pid as u32,
                pidfd: None,
                own: true,
                status: None,
                results: Results::Pooled {
                    channel,
                    bootstrapped: false,
                },
            };
            Ok(Process::made(
                started,
                name,
                identity,
                None,
                serial,
                daemon,
                StartMethod::Fork,
            ))
        }
    }
}
