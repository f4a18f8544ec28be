use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::{Builder, Error, Process, Result};

/// How a child process is started (Python's start methods).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StartMethod {
    /// `fork()` this process: the child starts as a copy of the calling thread, with
    /// everything in memory. The fastest; but in a multi-threaded parent, locks held by other
    /// threads stay locked in the child, so prefer `Forkserver` there.
    Fork,
    /// Execute this program afresh (`/proc/self/exe`); the child receives its target and
    /// arguments over a socket and runs them before `main` would start. The slowest: each
    /// start pays for a whole exec, C library start-up included (about 1 ms on a virtual
    /// machine, where the loader's probing of the CPU traps to the hypervisor).
    Spawn,
    /// A single-threaded server, exec'd once per parent on first use, forks each child. Safe
    /// in multi-threaded parents and much faster than `Spawn`. The default, as in Python 3.14.
    /// The server keeps two children forked ahead of need (standbys waiting for their
    /// target), so a start sends one message and does not wait for a fork.
    Forkserver,
}

/// The method set with [`set_start_method`], and the process that set it: a forked child
/// inherits the memory, not the choice.
static CHOSEN: Mutex<Option<(u32, StartMethod)>> = Mutex::new(None);

/// The start method used when none is given: the one this process set with
/// [`set_start_method`]; else, in a child, the method it was started with (as in Python,
/// whose child sees its own); else `Forkserver`.
///
/// ```
/// use multiprocessing::process::{Process, StartMethod, get_start_method};
///
/// fn method(_: ()) -> StartMethod {
///     get_start_method()
/// }
/// let mut child = Process::new(method, ()).method(StartMethod::Spawn).start()?;
/// assert_eq!(child.join()?, StartMethod::Spawn);
/// # Ok::<(), multiprocessing::process::Error>(())
/// ```
pub fn get_start_method() -> StartMethod {
    let chosen = *CHOSEN.lock().unwrap_or_else(|e| e.into_inner());
    match chosen {
        Some((pid, method)) if pid == crate::current::pid() => method,
        _ => crate::current::start_method().unwrap_or(StartMethod::Forkserver),
    }
}

/// Every start method this platform offers, the default first (Python 3.14's
/// `get_all_start_methods()`).
///
/// ```
/// use multiprocessing::process::{StartMethod, get_all_start_methods};
///
/// assert_eq!(get_all_start_methods()[0], StartMethod::Forkserver);
/// assert!(get_all_start_methods().contains(&StartMethod::Fork));
/// ```
pub fn get_all_start_methods() -> [StartMethod; 3] {
    [
        StartMethod::Forkserver,
        StartMethod::Fork,
        StartMethod::Spawn,
    ]
}

/// Sets the default start method, once; a second call fails unless `force` is true. In a
/// child the method it was started with counts as set already, as in Python.
///
/// # Errors
/// [`Error::StartMethodAlreadySet`].
pub fn set_start_method(method: StartMethod, force: bool) -> Result<()> {
    let pid = crate::current::pid();
    let started_with = crate::current::start_method();
    let mut chosen = CHOSEN.lock().unwrap_or_else(|e| e.into_inner());
    let set_here = matches!(*chosen, Some((by, _)) if by == pid);
    if !force && (set_here || started_with.is_some()) {
        return Err(Error::StartMethodAlreadySet);
    }
    *chosen = Some((pid, method));
    Ok(())
}

/// A way of starting processes with one start method (Python's `get_context`).
///
/// ```
/// let ctx = multiprocessing::process::get_context(Some(multiprocessing::process::StartMethod::Spawn));
/// fn double(x: i32) -> i32 { x * 2 }
/// assert_eq!(ctx.process(double, 21).start()?.join()?, 42);
/// # Ok::<(), multiprocessing::process::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    method: StartMethod,
}

/// The context for `method`, or for the default start method.
pub fn get_context(method: Option<StartMethod>) -> Context {
    Context {
        method: method.unwrap_or_else(get_start_method),
    }
}

impl Context {
    /// This context's start method.
    pub fn start_method(&self) -> StartMethod {
        self.method
    }

    /// A process that will run `target(args)` with this context's start method; `target` as
    /// for [`Process::new`] (a fn item or a closure without captures).
    pub fn process<F, A, R>(&self, target: F, args: A) -> Builder<R>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: mp_codec::Message + 'static,
        R: mp_codec::Message + 'static,
    {
        Process::new(target, args).method(self.method)
    }
}
