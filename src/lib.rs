//! Python's `multiprocessing` for Rust: processes, pipes, queues, shared memory and pools that
//! never hang, leak or corrupt data when a process dies.
//!
//! This crate is the facade: it re-exports the workspace's small crates under Python's names
//! and converts their errors into one [`Error`]. Each crate is usable on its own too.
//!
//! ```
//! // Python's Pipe(): whole messages, any serde value or raw bytes, through shared memory.
//! let (parent, child) = multiprocessing::pipe(true)?;
//! parent.send(&("job", 7u32))?;
//! assert_eq!(child.recv::<(String, u32)>()?, ("job".to_string(), 7));
//!
//! use multiprocessing::codec::{Frame, Pod};
//!
//! // Everything that crosses a process boundary is a `Message`: serde types, POD values, bytes.
//! let frame = Frame::encode(&("squares", vec![1u32, 4, 9]))?;
//! let (name, xs): (String, Vec<u32>) = frame.decode()?;
//! assert_eq!((name.as_str(), xs.len()), ("squares", 3));
//! let Pod(block) = Frame::encode(&Pod([7u64; 4]))?.decode::<Pod<[u64; 4]>>()?;
//! assert_eq!(block, [7; 4]);
//!
//! // Python's Value, Array and Lock: shared memory any process can be handed.
//! let counter = multiprocessing::Value::new(0i32)?;
//! *counter.lock().expect("no holder died") += 1;
//! assert_eq!(counter.fetch_add(1), 1);
//! let lock = multiprocessing::Lock::new()?;
//! assert!(lock.acquire().is_held() && !lock.try_acquire().is_held());
//! # Ok::<(), multiprocessing::Error>(())
//! ```
//!
//! Every crate's error is reachable from here, so a program that depends on this crate alone
//! can match on what went wrong: [`process::Error`], [`connection::Error`],
//! [`synchronize::Error`], [`sharedctypes::Error`], [`queues::Error`], [`pool::Error`] and
//! [`codec::Error`], each
//! also wrapped in the umbrella [`Error`]. A child that panics, matched:
//!
//! ```
//! use multiprocessing::{Process, process};
//!
//! fn check(x: u32) -> u32 {
//!     assert!(x < 10, "{x} is too large");
//!     x
//! }
//!
//! let mut child = Process::new(check, 12).start()?;
//! match child.join() {
//!     Err(process::Error::Panicked { message, .. }) => assert!(message.contains("12 is too large")),
//!     other => panic!("expected a panic, got {other:?}"),
//! }
//! assert_eq!(child.exitcode(), Some(1));
//! # Ok::<(), multiprocessing::Error>(())
//! ```
//!
//! Errors say what failed and why in their own message (`{}`): a failed system call names
//! the call, the address or name it was given where there is one, and the kernel's reason, so
//! printing an error's top line is enough; nothing needs its `source()` chain walked.
//!
//! # From Python: the five programs of Python's docs
//!
//! Each program of the [`multiprocessing` docs' introduction][docs], and its Rust. The
//! differences are the same everywhere: a target is a function item (or a closure without
//! captures) taking one argument (a tuple for several) that is a [`Message`]; `start` and
//! `join` return `Result`s; and `join` hands back the target's return value.
//!
//! [docs]: https://docs.python.org/3/library/multiprocessing.html
//!
//! **1. A process** (`Process(target=count, args=(5,)).start(); p.join()`):
//!
//! ```
//! use multiprocessing::Process;
//!
//! fn count(n: u32) -> u32 {
//!     (0..n).inspect(|i| println!("{i}")).count() as u32
//! }
//!
//! let mut child = Process::new(count, 5).start()?;
//! assert_eq!(child.join()?, 5); // Python's join returns None; ours, the value
//! # Ok::<(), multiprocessing::Error>(())
//! ```
//!
//! **2. A queue** (five processes each `q.put(n * n)`; the parent gets them all):
//!
//! ```
//! use multiprocessing::{Process, Queue};
//!
//! fn square((q, n): (Queue<u64>, u64)) {
//!     q.put(n * n).expect("the queue is open");
//! }
//!
//! let q = Queue::<u64>::new()?;
//! let children = (1..=5)
//!     .map(|n| Process::new(square, (q.clone(), n)).start())
//!     .collect::<Result<Vec<_>, _>>()?;
//! let mut squares: Vec<u64> = (0..5).map(|_| q.get()).collect::<Result<_, _>>()?;
//! squares.sort(); // they arrive in any order, as in Python
//! assert_eq!(squares, [1, 4, 9, 16, 25]);
//! for mut child in children {
//!     child.join()?;
//! }
//! # Ok::<(), multiprocessing::Error>(())
//! ```
//!
//! **3. A pool** (`with Pool(3) as p: print(p.map(square, [1, 2, 3, 4, 5]))`):
//!
//! ```
//! use multiprocessing::Pool;
//!
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! let pool = Pool::new(3)?; // dropped at the end of the scope: terminated, as `with` does
//! assert_eq!(pool.map(square, [1, 2, 3, 4, 5])?, [1, 4, 9, 16, 25]);
//! # Ok::<(), multiprocessing::Error>(())
//! ```
//!
//! **4. Shared memory** (`Value('i', 0)`, incremented under its lock in a child):
//!
//! ```
//! use multiprocessing::{Process, Value};
//!
//! fn increment(counter: Value<i32>) {
//!     *counter.lock().expect("no holder died") += 1;
//! }
//!
//! let counter = Value::new(0i32)?;
//! Process::new(increment, counter.clone()).start()?.join()?;
//! assert_eq!(counter.get(), 1);
//! # Ok::<(), multiprocessing::Error>(())
//! ```
//!
//! **5. A pipe** (`parent_conn, child_conn = Pipe()`; the child sends, the parent receives):
//!
//! ```
//! use multiprocessing::{Connection, Process, pipe};
//!
//! fn greet(conn: Connection) {
//!     conn.send(&(42, "hello")).expect("the parent listens");
//! }
//!
//! let (parent, child) = pipe(true)?;
//! let mut p = Process::new(greet, child).start()?;
//! assert_eq!(parent.recv::<(i32, String)>()?, (42, "hello".to_string()));
//! p.join()?;
//! # Ok::<(), multiprocessing::Error>(())
//! ```
//!
//! # Python → Rust
//!
//! | Python | Rust (this crate) |
//! |---|---|
//! | `Process(target=f, args=a)`, `start`, `join(timeout)`, `is_alive`, `terminate`, `kill`, `exitcode`, `pid`, `name`, `daemon`, `sentinel` | [`Process`] (a builder; `join` returns the target's value) |
//! | `get_context`, `set_start_method`, `get_start_method` | [`get_context`], [`set_start_method`], [`get_start_method`], [`StartMethod`] |
//! | `Pipe(duplex)`, `Connection.send/recv/send_bytes/recv_bytes/recv_bytes_into/poll/close` | [`pipe`] → two [`Connection`]s (shared-memory rings; `connection::socket_pipe` for sockets) |
//! | `connection.Listener/Client/wait` | [`connection::Listener`], [`connection::Client`], [`connection::wait`] |
//! | `Queue`, `SimpleQueue`, `JoinableQueue` | [`Queue`], [`SimpleQueue`], [`JoinableQueue`] |
//! | `Value`, `Array`, `RawValue`, `RawArray` (`sharedctypes`) | [`Value`], [`Array`], [`RawValue`], [`RawArray`] |
//! | `shared_memory.SharedMemory` | [`SharedMemory`] |
//! | `Lock`, `RLock`, `Semaphore`, `BoundedSemaphore`, `Condition`, `Event`, `Barrier` | the same names |
//! | `Pool(processes, initializer, initargs, maxtasksperchild)`, `map`, `imap`, `imap_unordered`, `starmap`, `apply`, `apply_async`, `map_async`, `close`, `terminate`, `join` | [`Pool`] (a builder for the options), [`AsyncResult`] |
//! | `cpu_count`, `current_process`, `parent_process`, `active_children` | the same names |
//!
//! Modules carry Python's module names: [`connection`], [`pool`], [`process`], [`queues`],
//! [`sharedctypes`], [`shared_memory`], [`synchronize`] (and [`codec`], for what crosses).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

/// What crosses a process boundary: messages, frames and their descriptors (`mp-codec`).
pub mod codec {
    pub use mp_codec::*;
}

/// Python's `multiprocessing.connection`: connections, listeners, clients, `wait` (`mp-pipe`).
pub mod connection {
    pub use mp_pipe::{
        Address, Client, Connection, DEFAULT_HANDSHAKE_TIMEOUT, Error, Listener, Result, ToAddress,
        answer_challenge, deliver_challenge, pipe, socket_pipe, wait,
    };
}

/// Python's `multiprocessing.process` and contexts: `Process`, start methods (`mp-spawn`).
pub mod process {
    pub use mp_spawn::{
        Builder, CallError, ChildInfo, Context, CurrentProcess, Error, ParentProcess, Process,
        Result, StartMethod, Target, TargetId, active_children, cpu_count, current_process,
        get_all_start_methods, get_context, get_start_method, parent_process, set_start_method,
    };
}

/// Python's `multiprocessing.queues`: `Queue`, `SimpleQueue`, `JoinableQueue` (`mp-queue`).
pub mod queues {
    pub use mp_queue::{
        Builder, DEFAULT_CAPACITY, Error, JoinableQueue, PutError, Queue, Result, SimpleQueue,
        hung_up,
    };
}

/// Python's `multiprocessing.synchronize`: process-shared locks and friends (`mp-sync`).
///
/// Their errors are this module's [`Error`](synchronize::Error) (`mp_sync::Error`, as the
/// docs below call it), also wrapped in the umbrella's [`Error::Sync`]:
///
/// ```
/// use multiprocessing::{BoundedSemaphore, synchronize};
///
/// let sem = BoundedSemaphore::new(1)?;
/// assert!(matches!(sem.release(), Err(synchronize::Error::TooManyReleases)));
/// # Ok::<(), multiprocessing::Error>(())
/// ```
pub mod synchronize {
    pub use mp_sync::{
        Acquire, Barrier, BoundedSemaphore, Condition, Enrollment, Error, Event, Lock, LockGuard,
        LockResult, MAX_SEMAPHORE_VALUE, OwnerDied, Placeable, ProcessId, RLock, RLockGuard,
        RawBarrier, RawCondition, RawEvent, RawLock, RawRLock, RawSemaphore, Region, Result,
        Semaphore, Shared, Spec, TryLockError, TryLockResult,
    };
}

/// Python's `multiprocessing.sharedctypes`: typed values and arrays in shared memory
/// (`mp-shm`).
pub mod sharedctypes {
    pub use mp_shm::{
        Array, ArrayGuard, Error, Integer, Plain, RawArray, RawValue, Result, Value, ValueGuard,
    };
}

/// Python's `multiprocessing.shared_memory`: named blocks Python can open too (`mp-shm`).
pub mod shared_memory {
    pub use mp_shm::{Error, Result, SharedMemory};
}

/// Python's `multiprocessing.pool`: [`Pool`] and [`AsyncResult`]
/// (`mp-pool`).
pub mod pool {
    pub use mp_pool::{AsyncResult, Builder, Error, ExitStatus, Imap, Pool, Result, StarFn};
}

pub use mp_codec::{Decode, Encode, Message};
pub use mp_pipe::{Connection, pipe};
pub use mp_pool::{AsyncResult, Pool};
pub use mp_queue::{JoinableQueue, Queue, SimpleQueue};

/// The pool on MPI ranks, across machines (`mp-mpi`; with the `mpi` feature): what
/// `mpi4py.util.pool` is to Python's `multiprocessing.Pool`.
#[cfg(feature = "mpi")]
pub mod mpi {
    pub use mp_mpi::{AsyncResult, Error, Imap, MpiPool, Result, StarFn};
}
pub use mp_shm::{Array, RawArray, RawValue, SharedMemory, Value};
pub use mp_spawn::{
    Context, Process, StartMethod, active_children, cpu_count, current_process,
    get_all_start_methods, get_context, get_start_method, parent_process, set_start_method,
};
pub use mp_sync::{Barrier, BoundedSemaphore, Condition, Event, Lock, RLock, Semaphore};

/// The README's example runs as a doctest, so it cannot fall out of date.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// Everything that can fail in `multiprocessing`: one variant per crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Encoding, decoding or moving a message failed.
    #[error(transparent)]
    Codec(#[from] mp_codec::Error),
    /// A connection, listener or client failed (`EOFError`, `AuthenticationError`, …).
    #[error(transparent)]
    Pipe(#[from] mp_pipe::Error),
    /// Starting or joining a process failed, or its target panicked.
    #[error(transparent)]
    Process(#[from] mp_spawn::Error),
    /// A lock, semaphore, condition, event or barrier failed (e.g. `OwnerDied`,
    /// `BrokenBarrier`).
    #[error(transparent)]
    Sync(#[from] mp_sync::Error),
    /// A shared value, array or named block failed.
    #[error(transparent)]
    Shm(#[from] mp_shm::Error),
    /// A queue operation failed (`Empty`, `Full`, `Closed`, …).
    #[error(transparent)]
    Queue(#[from] mp_queue::Error),
    /// A pool's task, or the pool itself, failed (`Panicked`, `WorkerLost`, `Terminated`, …).
    #[error(transparent)]
    Pool(#[from] mp_pool::Error),
}

impl<T> From<mp_queue::PutError<T>> for Error {
    /// The error of a failed `put`; the item it handed back is dropped.
    fn from(e: mp_queue::PutError<T>) -> Error {
        Error::Queue(e.error)
    }
}

/// `Result` with the facade's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
