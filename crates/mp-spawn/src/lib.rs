//! Python's `Process` for Rust: run a function in another process and get its value back.
//!
//! A target is a function item or a closure without captures, `Fn(A) -> R`, whose argument
//! and result are [`mp_codec::Message`]s (a closure with captures runs under fork, with
//! [`Process::fork`]). Three start methods, as in Python: `Fork` (libc's fork; the
//! fastest), `Spawn` (a fresh exec of this executable) and `Forkserver` (the default: a
//! single-threaded server, exec'd once, forks each child — safe in multi-threaded parents; it
//! keeps two children forked ahead, so a start is one message to a process already waiting).
//! An exec'd child becomes a worker before `main` runs, so no `init()` call is needed anywhere,
//! and spawning works from `cargo test` binaries, examples and benches alike.
//!
//! ```
//! use mp_spawn::{Process, StartMethod};
//!
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! for method in [StartMethod::Fork, StartMethod::Spawn, StartMethod::Forkserver] {
//!     let mut child = Process::new(square, 12).method(method).start()?;
//!     assert_eq!(child.join()?, 144);
//!     assert_eq!(child.exitcode(), Some(0));
//! }
//! # Ok::<(), mp_spawn::Error>(())
//! ```
//!
//! Children never outlive their parent: they are killed when it dies, even by `SIGKILL`;
//! daemonic children are killed when it exits, and the others are joined, as in Python. No
//! zombie is left behind by `join`, by dropping a `Process`, or at exit.
//!
//! As in Python, a child's stdin is `/dev/null` under every start method (stdout and stderr
//! are the parent's): a child cannot take input meant for the parent, nor keep the parent's
//! stdin pipe open (the forkserver would otherwise hold it for all its children). Hand a
//! child its input over a pipe or a queue. A child's [`get_start_method`] is the method it
//! was started with, and the default for the children it starts, as in Python.
//!
//! # What an exec'd child will run, and who can make it run anything
//!
//! An exec'd child (spawn, and the forkserver) learns what to run from a bootstrap message
//! on an inherited socket named by a private environment variable. Anyone who can start the
//! program can set that variable and write those bytes, so:
//!
//! - **No byte sequence chooses an address.** [`Process::new`] takes only zero-sized
//!   targets (function items, closures without captures; a function pointer does not
//!   compile), and each target type it is used with puts the address of its trampoline in
//!   a table the linker builds into the executable (a section, `mp_spawn_targets`). The
//!   bootstrap names an entry (the trampoline's offset from a fixed function) and the hash
//!   of the target's, argument's and result's type names; the child calls the table's own
//!   pointer, and the trampoline makes the target from its type. The worst a forged
//!   bootstrap can do is start one of the program's own targets with arguments of its
//!   choosing. A fingerprint of the executable file and a checksum catch a bootstrap made by
//!   another build, or corrupted, with a clear error. *Trade-off*: a target chosen at run
//!   time (a `fn` pointer) cannot be started by spawn or forkserver; start it under fork,
//!   `Process::fork(move || f(x))`.
//! - **Never with privileges the invoker lacks.** Under `AT_SECURE` (setuid, setgid, file
//!   capabilities) or with real and effective ids that differ, the program ignores the
//!   variable and runs as usual.
//! - **Only a socket our parent made.** The socket's peer (`SO_PEERCRED`) must be the
//!   parent the variable names, under our uid, and our kernel parent: spawn and the
//!   forkserver are exec'd by the process that made the pair (the forkserver's children are
//!   forked from it, and never look at the variable). This is no authentication of the
//!   bytes: a process of the same user can make a pair, fork and exec the program; it gains
//!   what the first point leaves, as the same user. If the named parent made the socket but
//!   is no longer our parent, it died as it started us: the child ends with code 1.
//! - **A stale variable costs nothing.** The parent writes an 8-byte preamble before it
//!   starts the child, so the child never waits: a variable naming a closed descriptor, a
//!   pipe, another process's socket or a silent one is removed, and `main` runs as usual.
#![deny(missing_docs, unsafe_code)]

mod call;
mod context;
mod current;
mod entry;
mod error;
mod held;
mod process;
mod registry;
mod start;
mod sys;

pub use crate::{
    call::{CallError, Target, TargetId},
    context::{
        Context, StartMethod, get_all_start_methods, get_context, get_start_method,
        set_start_method,
    },
    current::{
        ChildInfo, CurrentProcess, ParentProcess, active_children, cpu_count, current_process,
        parent_process,
    },
    error::{Error, Result},
    process::{Builder, Process},
};

/// The pid of this process's forkserver, if it has one running (for a harness that accounts
/// for every process it started: the server is ours and outlives each child).
#[doc(hidden)]
pub fn __forkserver_pid() -> Option<u32> {
    start::forkserver::pid()
}

/// Closes what this process keeps for its next children (idle result channels, the
/// forkserver and its standbys): for a harness that checks that a run left no descriptor
/// open. Everything is made again on the next use.
#[doc(hidden)]
pub fn __release_caches() {
    start::channel::release_idle();
    start::forkserver::stop();
}
