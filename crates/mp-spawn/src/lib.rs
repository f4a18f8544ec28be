//! Python's `Process` for Rust: run a function in another process and get its value back.
//!
//! A target is a `fn(A) -> R` (closures that capture nothing coerce) whose argument and result
//! are [`mp_codec::Message`]s. Three start methods, as in Python: `Fork` (libc's fork; the
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
#![deny(missing_docs, unsafe_code)]

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
    context::{Context, StartMethod, get_context, get_start_method, set_start_method},
    current::{
        ChildInfo, CurrentProcess, ParentProcess, active_children, cpu_count, current_process,
        parent_process,
    },
    error::{Error, Result},
    process::{Builder, Process},
};
