//! Python's `multiprocessing.Pool` for Rust: worker processes that map a function over
//! many inputs, and never hang when one of them dies.
//!
//! ```
//! use mp_pool::Pool;
//!
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! let pool = Pool::new(3)?;
//! assert_eq!(pool.map(square, 1..=5)?, [1, 4, 9, 16, 25]);
//! let total: u64 = pool.imap_unordered(square, 1..=100u64)?.map(Result::unwrap).sum();
//! assert_eq!(total, 338_350);
//! # Ok::<(), mp_pool::Error>(())
//! ```
//!
//! - **Targets are functions, not pointers**: a function item or a closure without
//!   captures, as for `mp_spawn::Process::new`. A task names its target by its entry in a
//!   table built into the executable ([`mp_spawn::TargetId`]), so a worker started by any
//!   method (fork, spawn, forkserver) runs it, and no byte a task carries is ever called.
//! - **Each worker has its own inbox** (a shared-memory queue), and the pool sends it a task
//!   when it has room: one at a time for long tasks, so none waits behind another while a
//!   worker idles; a few dozen ahead for tasks of microseconds, so no worker waits for the
//!   pool. All workers reply on one queue. So the pool always knows what each worker holds:
//!   when a worker dies, the task it was running fails with [`Error::WorkerLost`], the ones
//!   it had not started go to the others, and a new worker takes its place.
//! - **Chunks** (`map`'s default size is CPython's, about four per worker) carry their
//!   items' encodings back to back, each with a one-byte header when it is small.
//! - **Results are decoded by the caller**, not the pool's threads, so a slow or failing
//!   decode touches no other job.
#![deny(missing_docs)]

mod cell;
mod error;
mod place;
mod pool;
mod result;
mod shared;
mod sys;
mod wire;
mod worker;

pub use crate::{
    error::{Error, ExitStatus, Result},
    pool::{Builder, Pool, StarFn},
    result::{AsyncResult, Imap},
};

/// Support for tests of this crate and of crates built on it. Not part of the API.
#[doc(hidden)]
pub mod __testing {
    /// In a task: dies by SIGKILL while holding the lock of the queue all workers reply on.
    pub fn die_holding_the_reply_lock() {
        crate::worker::die_holding_the_reply_lock();
    }

    /// Whether `pool`'s watcher sleeps with no deadline now (it has no task to time).
    pub fn watcher_untimed(pool: &crate::Pool) -> bool {
        pool.watcher_untimed()
    }

    /// How long a thread waiting in `apply` or `map` on `pool`, before its threads run,
    /// takes the replies itself (5 ms unless set): a test sets it long, so that what it
    /// checks does not depend on how busy the machine is.
    pub fn set_take_slice(pool: &crate::Pool, slice: std::time::Duration) {
        pool.set_take_slice(slice);
    }

    /// Whether `pool`'s reply thread and watcher have been started.
    pub fn threads_started(pool: &crate::Pool) -> bool {
        pool.threads_started()
    }
}
