//! The [`Pool`](mp_pool::Pool) of `mp-pool` across machines: its workers are MPI ranks, on
//! Open MPI through the `mpi` crate (rsmpi), as `mpi4py.util.pool.Pool` and
//! `mpi4py.futures.MPIPoolExecutor` are for Python's `multiprocessing.Pool`.
//!
//! ```no_run
//! use mp_mpi::MpiPool;
//!
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! fn main() -> Result<(), mp_mpi::Error> {
//!     // `mpirun -n 4 ./app`: rank 0 gets a pool of 3 workers; ranks 1 to 3 serve tasks
//!     // inside this call, and end the process when rank 0's pool ends.
//!     let pool = MpiPool::world()?;
//!     println!("{:?}", pool.map(square, 1..=5)?); // [1, 4, 9, 16, 25]
//!     Ok(())
//! }
//! ```
//!
//! - **Two ways to start**, as mpi4py offers. [`MpiPool::world`] under `mpirun -n N`
//!   (SPMD: every rank runs the same program; rank 0 gets the pool, the others serve it and
//!   never return from the call, so `main` needs no test of its rank). [`MpiPool::spawn`]
//!   when the program runs alone: it starts `n` workers of the same executable with
//!   `MPI_Comm_spawn`, and in them the same call serves.
//! - **The same API as `mp-pool`**: `map`, `map_chunked`, `imap`, `imap_unordered`,
//!   `starmap`, `apply`, `apply_async`, `map_async`, [`AsyncResult`], `close`, `join`,
//!   `terminate`, with `mp-pool`'s [`Error`] and [`StarFn`].
//! - **Targets are functions**, named by their entry in the executable's table of targets
//!   ([`mp_spawn::TargetId`]), checked against the executable's fingerprint: every host
//!   must run the same build (a worker running another refuses the task, and the task
//!   fails with that error). Tasks and results are [`Message`]s, chunked as in `mp-pool`;
//!   numbers travel as runs of their bytes.
//! - **A task that panics** fails with its message, and the pool goes on.
//! - **A rank that dies** (killed, `exit`, a crash) ends the job: MPI's default, which
//!   `mpirun` carries out by killing every rank and saying which one died, with a non-zero
//!   exit status. A pool cannot go on without a rank: MPI offers no way to replace one.
//!   It never hangs.
//! - **One pool per process**: MPI is initialized when the pool is made and finalized when
//!   it ends, and MPI cannot be initialized twice.
#![deny(missing_docs)]

mod engine;
mod result;
mod wire;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
};

use mp_codec::Message;
pub use mp_pool::{Error, Result, StarFn};
use mp_spawn::TargetId;

pub use crate::result::{AsyncResult, Imap};
use crate::{
    engine::{Chunk, Command, Role, Start},
    result::Stream,
};

/// A pool of MPI ranks running tasks: Python's `mpi4py.util.pool.Pool`, with the API of
/// [`mp_pool::Pool`].
///
/// Dropping it terminates it (see [`terminate`](MpiPool::terminate)); [`close`](MpiPool::close)
/// then [`join`](MpiPool::join) is the explicit drain. Either way MPI is finalized when it
/// ends, and the workers leave their own call.
pub struct MpiPool {
    commands: Mutex<Option<mpsc::Sender<Command>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    workers: usize,
    closed: AtomicBool,
}

impl std::fmt::Debug for MpiPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiPool")
            .field("workers", &self.workers)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl MpiPool {
    /// The pool of an `mpirun -n N` job: on rank 0, a pool of the N − 1 other ranks. On
    /// every other rank this call serves tasks until rank 0's pool ends, then ends the
    /// process (exit status 0) without returning. A spawned worker of
    /// [`MpiPool::spawn`] reaching this call serves too.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] with one rank (no `mpirun`, or `-n 1`);
    /// [`Error::Os`] if MPI cannot be initialized (it was already, by another pool).
    pub fn world() -> Result<MpiPool> {
        MpiPool::start(Start::World)
    }

    /// A pool of `n` workers started by `MPI_Comm_spawn` of this executable (with its
    /// arguments), for a program run alone, as `mpi4py.futures.MPIPoolExecutor` does. In
    /// the workers, this call (like [`MpiPool::world`]) serves tasks, then ends the process.
    ///
    /// Open MPI starts as many workers as the machine has free cores (slots); for more, let
    /// it oversubscribe: `OMPI_MCA_rmaps_base_oversubscribe=1` in the environment. As root,
    /// it also wants `OMPI_ALLOW_RUN_AS_ROOT=1` and `OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1`.
    /// A spawn MPI refuses aborts the process with MPI's own report (MPI's default error
    /// handler; the `mpi` crate offers no other).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for `n == 0`, or under `mpirun` with more than one rank
    /// (use [`MpiPool::world`]); [`Error::Os`] if MPI cannot be initialized.
    pub fn spawn(n: usize) -> Result<MpiPool> {
        if n == 0 {
            return Err(Error::InvalidArgument("a pool needs at least one worker"));
        }
        MpiPool::start(Start::Spawn(n))
    }

    fn start(how: Start) -> Result<MpiPool> {
        let (role, commands, thread) = engine::start(how)?;
        match role {
            Role::Worker => {
                let _ = thread.join();
                std::process::exit(0);
            }
            Role::Boss(workers) => Ok(MpiPool {
                commands: Mutex::new(Some(commands)),
                thread: Mutex::new(Some(thread)),
                workers,
                closed: AtomicBool::new(false),
            }),
        }
    }

    /// How many workers the pool has.
    pub fn processes(&self) -> usize {
        self.workers
    }

    fn send(&self, command: Command) -> Result<()> {
        let commands = self.commands.lock().unwrap_or_else(|e| e.into_inner());
        match commands.as_ref() {
            Some(tx) => tx.send(command).map_err(|_| Error::Terminated),
            None => Err(Error::Terminated),
        }
    }

    /// Sends `items` as chunks of `chunksize` for `f` to `sink`, numbered from 0; how many.
    fn submit<F, A, R>(
        &self,
        f: &F,
        items: Vec<A>,
        chunksize: usize,
        sink: &Arc<dyn engine::Sink>,
    ) -> Result<usize>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Message + 'static,
        R: Message + 'static,
    {
        let target = TargetId::of(f)?;
        let plain = wire::plain_types::<A, R>();
        let mut count = 0;
        for (i, chunk) in items.chunks(chunksize.max(1)).enumerate() {
            let task = wire::task(target, plain, chunk)?;
            self.send(Command::Chunk(Chunk::new(i, task, sink.clone())))?;
            count += 1;
        }
        Ok(count)
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Relaxed) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// CPython's default chunk size: about four chunks per worker.
    fn default_chunksize(&self, len: usize) -> usize {
        len.div_ceil(4 * self.workers).max(1)
    }

    /// Runs `f(args)` on a worker and waits for its value (Python's `apply`).
    ///
    /// # Errors
    /// As [`AsyncResult::get`] and [`MpiPool::apply_async`].
    pub fn apply<F, A, R>(&self, f: F, args: A) -> Result<R>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Message + 'static,
        R: Message + 'static,
    {
        self.apply_async(f, args)?.get()
    }

    /// Runs `f(args)` on a worker; the value comes later (Python's `apply_async`).
    ///
    /// # Errors
    /// [`Error::Closed`] after `close`, [`Error::Terminated`] after `terminate`,
    /// [`Error::Encode`] if `args` cannot be encoded, [`Error::Spawn`] if `f` is not in
    /// the executable.
    pub fn apply_async<F, A, R>(&self, f: F, args: A) -> Result<AsyncResult<R>>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Message + 'static,
        R: Message + 'static,
    {
        self.check_open()?;
        let plain = wire::plain_types::<A, R>();
        let (result, sink) = AsyncResult::<R>::new(1, move |replies: &[Vec<u8>]| {
            result::one::<R>(replies, plain)
        });
        self.submit(&f, vec![args], 1, &sink)?;
        Ok(result)
    }

    /// `f` over every item, in order, in chunks of CPython's default size: Python's `map`.
    /// The first chunk to fail fails the call.
    ///
    /// # Errors
    /// The first failure among the chunks (see [`Error`]), or [`MpiPool::apply_async`]'s.
    pub fn map<F, A, R, I>(&self, f: F, items: I) -> Result<Vec<R>>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Message + 'static,
        R: Message + 'static,
        I: IntoIterator<Item = A>,
    {
        self.map_async(f, items)?.get()
    }

    /// [`map`](MpiPool::map) in chunks of `chunksize` items.
    ///
    /// # Errors
    /// As [`map`](MpiPool::map); [`Error::InvalidArgument`] for a zero `chunksize`.
    pub fn map_chunked<F, A, R, I>(&self, f: F, items: I, chunksize: usize) -> Result<Vec<R>>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Message + 'static,
        R: Message + 'static,
        I: IntoIterator<Item = A>,
    {
        self.map_async_chunked(f, items, chunksize)?.get()
    }

    /// [`map`](MpiPool::map) whose values come later (Python's `map_async`).
    ///
    /// # Errors
    /// As [`apply_async`](MpiPool::apply_async).
    pub fn map_async<F, A, R, I>(&self, f: F, items: I) -> Result<AsyncResult<Vec<R>>>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Message + 'static,
        R: Message + 'static,
        I: IntoIterator<Item = A>,
    {
        let items: Vec<A> = items.into_iter().collect();
        let chunksize = self.default_chunksize(items.len());
        self.map_async_chunked(f, items, chunksize)
    }

    /// [`map_async`](MpiPool::map_async) in chunks of `chunksize` items.
    ///
    /// # Errors
    /// As [`map_async`](MpiPool::map_async); [`Error::InvalidArgument`] for a zero
    /// `chunksize`.
    pub fn map_async_chunked<F, A, R, I>(
        &self,
        f: F,
        items: I,
        chunksize: usize,
    ) -> Result<AsyncResult<Vec<R>>>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Message + 'static,
        R: Message + 'static,
        I: IntoIterator<Item = A>,
    {
        if chunksize == 0 {
            return Err(Error::InvalidArgument("chunksize must be at least 1"));
        }
        self.check_open()?;
        let items: Vec<A> = items.into_iter().collect();
        let plain = wire::plain_types::<A, R>();
        let sizes: Vec<usize> = items.chunks(chunksize).map(<[A]>::len).collect();
        let (result, sink) =
            AsyncResult::<Vec<R>>::new(sizes.len(), move |replies: &[Vec<u8>]| {
                let mut out = Vec::with_capacity(sizes.iter().sum());
                for (reply, &count) in replies.iter().zip(&sizes) {
                    wire::results::<R>(reply, plain, count, &mut out)?;
                }
                Ok(out)
            });
        self.submit(&f, items, chunksize, &sink)?;
        Ok(result)
    }

    /// `f(a, b, …)` over tuples of arguments, in order: Python's `starmap`.
    ///
    /// # Errors
    /// As [`map`](MpiPool::map).
    pub fn starmap<F, Args, I>(&self, f: F, items: I) -> Result<Vec<F::Output>>
    where
        F: StarFn<Args>,
        Args: Message + 'static,
        F::Output: Message + 'static,
        I: IntoIterator<Item = Args>,
    {
        self.map(move |args: Args| f.call(args), items)
    }

    /// `f` over `items`, its values as an iterator in order, the input consumed lazily with
    /// a bound on chunks in flight (four per worker), so an endless iterator works and
    /// memory stays flat: Python's `imap`. Chunks of one item; see
    /// [`imap_chunked`](MpiPool::imap_chunked).
    ///
    /// # Errors
    /// As [`apply_async`](MpiPool::apply_async); each item's failure comes out in its place.
    pub fn imap<F, A, R, I>(&self, f: F, items: I) -> Result<Imap<R, I::IntoIter>>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Message + 'static,
        R: Message + 'static,
        I: IntoIterator<Item = A>,
    {
        self.imap_chunked(f, items, 1)
    }

    /// [`imap`](MpiPool::imap) in chunks of `chunksize` items.
    ///
    /// # Errors
    /// As [`imap`](MpiPool::imap); [`Error::InvalidArgument`] for a zero `chunksize`.
    pub fn imap_chunked<F, A, R, I>(
        &self,
        f: F,
        items: I,
        chunksize: usize,
    ) -> Result<Imap<R, I::IntoIter>>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Message + 'static,
        R: Message + 'static,
        I: IntoIterator<Item = A>,
    {
        self.imap_with(f, items, chunksize, true)
    }

    /// `f` over `items`, its values as an iterator in the order they finish (Python's
    /// `imap_unordered`), the input consumed lazily as for [`imap`](MpiPool::imap).
    ///
    /// # Errors
    /// As [`imap`](MpiPool::imap).
    pub fn imap_unordered<F, A, R, I>(&self, f: F, items: I) -> Result<Imap<R, I::IntoIter>>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Message + 'static,
        R: Message + 'static,
        I: IntoIterator<Item = A>,
    {
        self.imap_unordered_chunked(f, items, 1)
    }

    /// [`imap_unordered`](MpiPool::imap_unordered) in chunks of `chunksize` items.
    ///
    /// # Errors
    /// As [`imap`](MpiPool::imap); [`Error::InvalidArgument`] for a zero `chunksize`.
    pub fn imap_unordered_chunked<F, A, R, I>(
        &self,
        f: F,
        items: I,
        chunksize: usize,
    ) -> Result<Imap<R, I::IntoIter>>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Message + 'static,
        R: Message + 'static,
        I: IntoIterator<Item = A>,
    {
        self.imap_with(f, items, chunksize, false)
    }

    fn imap_with<F, A, R, I>(
        &self,
        f: F,
        items: I,
        chunksize: usize,
        ordered: bool,
    ) -> Result<Imap<R, I::IntoIter>>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Message + 'static,
        R: Message + 'static,
        I: IntoIterator<Item = A>,
    {
        if chunksize == 0 {
            return Err(Error::InvalidArgument("chunksize must be at least 1"));
        }
        self.check_open()?;
        let target = TargetId::of(&f)?;
        let plain = wire::plain_types::<A, R>();
        let (stream, sink) = Stream::new();
        let commands = self
            .commands
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(Error::Terminated)?;
        let submit = Box::new(move |index: usize, chunk: &[A]| -> Result<()> {
            let task = wire::task(target, plain, chunk)?;
            commands
                .send(Command::Chunk(Chunk::new(index, task, sink.clone())))
                .map_err(|_| Error::Terminated)
        });
        Ok(Imap::new(
            items.into_iter(),
            chunksize,
            4 * self.workers,
            ordered,
            stream,
            submit,
            Box::new(move |reply: &[u8], count: usize, out: &mut Vec<R>| {
                wire::results::<R>(reply, plain, count, out)
            }),
        ))
    }

    /// Takes no more work (Python's `close`): what was given still runs; then
    /// [`join`](MpiPool::join).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }

    /// Ends the pool now (Python's `terminate`): every result not yet in fails with
    /// [`Error::Terminated`] at once. A worker cannot be stopped in the middle of a chunk
    /// (MPI has no way to stop one rank alone), so the pool's end waits for the chunks the
    /// workers were sent (one each when chunks take longer than a millisecond), then stops
    /// them and finalizes MPI.
    pub fn terminate(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.end(false);
    }

    /// Waits until every task given has finished, then stops the workers and finalizes
    /// MPI (Python's `join`, after `close`).
    ///
    /// # Errors
    /// [`Error::Running`] if the pool was neither closed nor terminated.
    pub fn join(&self) -> Result<()> {
        if !self.closed.load(Ordering::Relaxed) {
            return Err(Error::Running);
        }
        self.end(true);
        Ok(())
    }

    /// Tells the MPI thread to close (`drain`) or terminate, and waits for it to end.
    fn end(&self, drain: bool) {
        let Some(commands) = self
            .commands
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return; // ended already
        };
        let (done, finished) = mpsc::channel();
        let command = if drain {
            Command::Close(done)
        } else {
            Command::Terminate(done)
        };
        if commands.send(command).is_ok() {
            let _ = finished.recv();
        }
        drop(commands);
        if let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

impl Drop for MpiPool {
    fn drop(&mut self) {
        self.terminate();
    }
}
