use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use mp_codec::{Encode, Frame, Message, plain};
use mp_spawn::{StartMethod, TargetId};

use crate::{
    AsyncResult, Error, Imap, Result,
    result::{self, Order},
    shared::{Config, Shared, Task},
    wire::{ChunkWriter, Head, Msg},
};

/// Python's `multiprocessing.Pool`: worker processes that run a function over many inputs.
///
/// Targets are function items or closures without captures (`Fn(A) -> R`, zero-sized), as
/// for [`Process::new`](mp_spawn::Process::new); arguments and results are
/// [`Message`]s. What Python's pool cannot do, this one does:
///
/// - **A dead worker never hangs it.** A worker killed (SIGKILL, a segfault, the
///   out-of-memory killer) or exiting in the middle of a task fails that task alone, with
///   [`Error::WorkerLost`] (its pid and how it ended), as soon as its death is seen; it is
///   replaced, its other queued tasks go to the other workers, and the pool goes on. A
///   worker that dies between tasks fails none: a task still in its inbox never started.
///   (The pool's threads, which watch the workers and take their replies, start with its
///   second call at the latest: its first, if an `apply` or a `map`, takes its own replies
///   for up to a few milliseconds. A worker that dies between the first call and the
///   second is seen, reaped and replaced as the second begins.)
/// - **Every failure reaches the caller**: a panic (with its message), an argument or
///   result that cannot be encoded or decoded (with the type), a task past the pool's
///   [`task_timeout`](Builder::task_timeout), a failing initializer (the pool stops, rather
///   than respawn failing workers for ever).
/// - **Ctrl-C returns.** SIGINT while a thread waits on the pool kills and reaps the
///   workers and ends the wait with [`Error::Interrupted`].
/// - **`imap` is lazy**: it takes its input as results are consumed, with a bound on chunks
///   in flight, so an endless iterator works in flat memory.
/// - Workers may start processes of their own.
///
/// Dropping the pool terminates it (as leaving Python's `with Pool()` does): its workers
/// are killed and reaped, and results still outstanding fail with [`Error::Terminated`].
/// [`close`](Pool::close) then [`join`](Pool::join) is the explicit drain.
///
/// A pool belongs to the process that made it: a fork child of that process gets a copy of
/// the handle but not the pool's threads, so it must not use it (as in Python); make a pool
/// in the child instead.
///
/// ```
/// use multiprocessing::pool::Pool;
///
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// let pool = Pool::new(3)?;
/// assert_eq!(pool.map(square, 1..=5)?, [1, 4, 9, 16, 25]);
/// # Ok::<(), multiprocessing::pool::Error>(())
/// ```
pub struct Pool {
    shared: Arc<Shared>,
}

/// A pool not started yet: [`Pool::builder`], then [`build`](Builder::build).
#[must_use = "a Builder does nothing until built"]
pub struct Builder {
    processes: Option<usize>,
    init: Option<Result<(TargetId, Vec<u8>)>>,
    maxtasks: Option<usize>,
    method: Option<StartMethod>,
    task_timeout: Option<Duration>,
}

impl Builder {
    /// Worker processes (default: [`cpu_count`](mp_spawn::cpu_count)). Zero is an error.
    pub fn processes(mut self, processes: usize) -> Self {
        self.processes = Some(processes);
        self
    }

    /// Runs `initializer(args)` in each worker before its first task (Python's
    /// `initializer` and `initargs`). If it panics, the pool stops: every task fails with
    /// [`Error::Initializer`].
    ///
    /// ```
    /// fn greet(name: String) {
    ///     assert_eq!(name, "worker");
    /// }
    /// fn one(x: u8) -> u8 {
    ///     x + 1
    /// }
    /// let pool = multiprocessing::pool::Pool::builder().processes(1).initializer(greet, "worker".to_string()).build()?;
    /// assert_eq!(pool.apply(one, 1)?, 2);
    /// # Ok::<(), multiprocessing::pool::Error>(())
    /// ```
    pub fn initializer<F, A>(mut self, initializer: F, args: A) -> Self
    where
        F: Fn(A) + Copy + 'static,
        A: Message + 'static,
    {
        self.init = Some((|| {
            let id = TargetId::of(&initializer)?;
            let frame = Frame::encode(&args).map_err(Error::encode::<A>)?;
            if !frame.fds.is_empty() {
                return Err(Error::InvalidArgument(
                    "an initializer's argument cannot own file descriptors",
                ));
            }
            Ok((id, frame.bytes))
        })());
        self
    }

    /// Replaces a worker after it has run this many tasks (chunks), as Python's
    /// `maxtasksperchild` does. Zero is an error.
    pub fn maxtasksperchild(mut self, tasks: usize) -> Self {
        self.maxtasks = Some(tasks);
        self
    }

    /// The start method of the workers (default: the process's, see
    /// [`get_start_method`](mp_spawn::get_start_method)).
    pub fn method(mut self, method: StartMethod) -> Self {
        self.method = Some(method);
        self
    }

    /// A task (a chunk) running longer than this has its worker killed and replaced, and
    /// fails with [`Error::TaskTimeout`]. None by default. It counts from when the worker
    /// could start the task (when it answered the one before).
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.task_timeout = Some(timeout);
        self
    }

    /// Starts the workers.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for zero processes or zero `maxtasksperchild`; the
    /// initializer's errors; [`Error::Spawn`] if a worker cannot start.
    pub fn build(self) -> Result<Pool> {
        let processes = self.processes.unwrap_or_else(mp_spawn::cpu_count);
        if processes == 0 {
            return Err(Error::InvalidArgument("a pool needs at least one process"));
        }
        if self.maxtasks == Some(0) {
            return Err(Error::InvalidArgument(
                "maxtasksperchild must be at least 1",
            ));
        }
        let init = self.init.transpose()?;
        let shared = Shared::start(Config {
            processes,
            init,
            maxtasks: self.maxtasks,
            method: self.method,
            task_timeout: self.task_timeout,
        })?;
        Ok(Pool { shared })
    }
}

/// CPython's default chunk size for `map`: about four chunks per worker.
fn default_chunksize(len: usize, processes: usize) -> usize {
    len.div_ceil(4 * processes).max(1)
}

/// A chunk: its count of items, and their encodings.
pub(crate) type Chunk = (u32, Frame);

/// Whether chunks of `A` for a target returning `R` cross as runs of plain values (both
/// types plain numbers) rather than as items.
pub(crate) fn plain_run<A: 'static, R: 'static>() -> bool {
    plain::size_of::<A>().is_some() && plain::size_of::<R>().is_some()
}

/// Encodes up to `chunksize` items from `items` as one chunk (for a target returning `R`);
/// `None` when there are none left. On an item that cannot be encoded: the chunk of the
/// items before it (if any), then the error.
pub(crate) fn encode_chunk<A: Encode + 'static, R: 'static>(
    items: &mut impl Iterator<Item = A>,
    chunksize: usize,
) -> Option<Result<Chunk, (Option<Chunk>, Error)>> {
    let mut frame = Frame::new();
    if plain_run::<A, R>() {
        // Numbers: their bytes, back to back (no encoding can fail).
        let size = size_of::<A>();
        let mut count = 0u32;
        for item in items.take(chunksize) {
            if count == 0 {
                frame
                    .bytes
                    .reserve(chunksize.saturating_mul(size).min(64 << 20));
            }
            plain::put(&item, &mut frame.bytes);
            count += 1;
        }
        return (count > 0).then_some(Ok((count, frame)));
    }
    let mut writer = ChunkWriter::new(&mut frame);
    for item in items.take(chunksize) {
        if writer.count == 1 {
            // Room for the rest, at the size of the first (growing by doubling would copy
            // the chunk over and over).
            writer.reserve_like_first(chunksize);
        }
        if let Err(err) = writer.item(|f| item.encode(f).map(|()| false)) {
            let count = writer.count;
            let before = (count > 0).then_some((count, frame));
            return Some(Err((before, Error::encode::<A>(err))));
        }
    }
    let count = writer.count;
    (count > 0).then_some(Ok((count, frame)))
}

/// A task of `job`: chunk number `chunk` of `count` items, to run with `target`.
pub(crate) fn task<A: 'static, R: 'static>(
    job: u64,
    chunk: u32,
    count: u32,
    target: TargetId,
    frame: Frame,
) -> Task {
    Task {
        job,
        chunk,
        count,
        msg: Msg {
            head: Head::Task {
                job,
                chunk,
                target,
                plain: plain_run::<A, R>(),
            },
            payload: Arc::new(frame),
        },
    }
}

impl Pool {
    /// A pool of `processes` workers, started with the default start method.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for zero; [`Error::Spawn`] if a worker cannot start.
    pub fn new(processes: usize) -> Result<Pool> {
        Pool::builder().processes(processes).build()
    }

    /// A pool to configure: processes, initializer, `maxtasksperchild`, start method, task
    /// timeout.
    pub fn builder() -> Builder {
        Builder {
            processes: None,
            init: None,
            maxtasks: None,
            method: None,
            task_timeout: None,
        }
    }

    /// How many workers the pool keeps.
    pub fn processes(&self) -> usize {
        self.shared.config().processes
    }

    /// See [`crate::__testing::set_take_slice`].
    pub(crate) fn set_take_slice(&self, slice: Duration) {
        self.shared.set_take_slice(slice);
    }

    /// See [`crate::__testing::threads_started`].
    pub(crate) fn threads_started(&self) -> bool {
        self.shared.threads_started()
    }

    /// See [`crate::__testing::watcher_untimed`].
    pub(crate) fn watcher_untimed(&self) -> bool {
        self.shared
            .watcher_untimed
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The pids of the workers running now (they change as workers are replaced).
    pub fn pids(&self) -> Vec<u32> {
        self.shared.pids()
    }

    /// Runs a call that waits for results, counted as waiting from its start: a SIGINT
    /// while it submits interrupts it too.
    fn blocking<T>(&self, call: impl FnOnce() -> Result<T>) -> Result<T> {
        let _waiting = crate::sys::Waiting::new(&self.shared.waiting);
        call()
    }

    /// A blocking map: results decoded as they come, between chunks being encoded.
    fn map_blocking<F, A, R>(
        &self,
        f: &F,
        items: impl IntoIterator<Item = A>,
        chunksize: Option<usize>,
    ) -> Result<Vec<R>>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Message + 'static,
        R: Message + 'static,
    {
        let mut collector = None;
        let started =
            self.start_collecting(f, items, chunksize, true, Then::Collects(&mut collector))?;
        started.collect(collector.unwrap_or_else(|| result::Collector::new(0)))
    }

    /// Submits `f` over the chunks: the job's cell.
    fn start<F, A, R>(
        &self,
        f: &F,
        items: impl IntoIterator<Item = A>,
        chunksize: Option<usize>,
        fail_fast: bool,
    ) -> Result<AsyncResult<Vec<R>>>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Message + 'static,
        R: Message + 'static,
    {
        self.start_collecting(f, items, chunksize, fail_fast, Then::Returns)
    }

    /// [`start`](Self::start), with what its caller does `then`.
    fn start_collecting<F, A, R>(
        &self,
        f: &F,
        items: impl IntoIterator<Item = A>,
        chunksize: Option<usize>,
        fail_fast: bool,
        then: Then<'_, R>,
    ) -> Result<AsyncResult<Vec<R>>>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Message + 'static,
        R: Message + 'static,
    {
        if chunksize == Some(0) {
            return Err(Error::InvalidArgument("chunksize must be at least 1"));
        }
        let target = TargetId::of(f)?;
        let items = items.into_iter();
        match items.size_hint() {
            // An input that knows its length (most do) is encoded as it is read.
            (low, Some(high)) if low == high => {
                self.start_sized(target, items, low, chunksize, fail_fast, then)
            }
            _ => {
                let items: Vec<A> = items.collect();
                let len = items.len();
                self.start_sized(target, items.into_iter(), len, chunksize, fail_fast, then)
            }
        }
    }

    /// Encodes `len` items chunk by chunk, sending each as soon as it is made, so the
    /// workers start on the first while the rest are encoded. (A length that proves wrong
    /// only changes the chunks' sizes.)
    fn start_sized<A, R>(
        &self,
        target: TargetId,
        mut items: impl Iterator<Item = A>,
        len: usize,
        chunksize: Option<usize>,
        fail_fast: bool,
        then: Then<'_, R>,
    ) -> Result<AsyncResult<Vec<R>>>
    where
        A: Message + 'static,
        R: Message + 'static,
    {
        let waits_now = !matches!(then, Then::Returns);
        let mut collector = match then {
            Then::Collects(c) => Some(c.insert(result::Collector::new(len))),
            _ => None,
        };
        let chunksize = chunksize.unwrap_or_else(|| default_chunksize(len, self.processes()));
        let (job, cell) = {
            let mut state = self.shared.lock();
            self.shared.open_job(&mut state, fail_fast)?
        };
        // The pool's first blocking call may take its replies itself, while the pool's
        // threads have not started (`Shared::take_replies`): they are left unstarted, and
        // between chunks this thread takes what has come back (refilling the workers'
        // inboxes), so the workers run while the rest is encoded. Encoding that outlasts a
        // slice starts them after all.
        let mut deferred = (waits_now && self.shared.may_defer_threads()).then(Instant::now);
        let mut chunk = 0u32;
        loop {
            match encode_chunk::<A, R>(&mut items, chunksize) {
                None => break,
                Some(Ok((count, frame))) => {
                    cell.lock().outstanding += 1;
                    let mut state = self.shared.lock();
                    self.shared
                        .submit(&mut state, [task::<A, R>(job, chunk, count, target, frame)]);
                    drop(state);
                    match deferred {
                        Some(since)
                            if !self.shared.threads_started() && !self.shared.slice_over(since) =>
                        {
                            if chunk > 0 {
                                self.shared.take_ready_replies();
                            }
                        }
                        // Not deferred, or no longer: started now if nothing started them.
                        _ => {
                            deferred = None;
                            self.shared.ensure_threads();
                        }
                    }
                    chunk += 1;
                    // What came back meanwhile, decoded now rather than after the last chunk.
                    if let Some(collector) = collector.as_mut()
                        && let Err(err) = collector.step(&cell, false)
                    {
                        self.shared.forget_job(job);
                        return Err(err);
                    }
                }
                Some(Err((_, err))) => {
                    self.shared.forget_job(job);
                    return Err(err);
                }
            }
        }
        self.shared.seal(job, &cell);
        Ok(AsyncResult::new(
            self.shared.clone(),
            cell,
            result::finish_map::<R>,
        ))
    }

    /// Runs `f(args)` in a worker and waits for its value (Python's `apply`).
    ///
    /// # Errors
    /// Any of [`AsyncResult::get`]'s, and those of [`Pool::apply_async`].
    pub fn apply<F, A, R>(&self, f: F, args: A) -> Result<R>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Message + 'static,
        R: Message + 'static,
    {
        self.blocking(|| {
            self.start_collecting(&f, [args], Some(1), true, Then::Waits)?
                .map(result::finish_one::<R>)
                .get()
        })
    }

    /// Runs `f(args)` in a worker; the value comes later (Python's `apply_async`).
    ///
    /// ```
    /// fn cube(x: i64) -> i64 {
    ///     x * x * x
    /// }
    /// let pool = multiprocessing::pool::Pool::new(2)?;
    /// let later = pool.apply_async(cube, -3)?;
    /// assert_eq!(later.get()?, -27);
    /// # Ok::<(), multiprocessing::pool::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Closed`] after `close`; the pool's end error after `terminate`;
    /// [`Error::Encode`] if `args` cannot be encoded; [`Error::Spawn`] if `f` is not in the
    /// executable.
    pub fn apply_async<F, A, R>(&self, f: F, args: A) -> Result<AsyncResult<R>>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Message + 'static,
        R: Message + 'static,
    {
        let all = self.start(&f, [args], Some(1), true)?;
        Ok(all.map(result::finish_one::<R>))
    }

    /// `f` over every item, in order, in chunks of CPython's default size (about four per
    /// worker): Python's `map`. The first task to fail fails the call.
    ///
    /// # Errors
    /// The first failure among the tasks (see [`Error`]), or [`Pool::apply_async`]'s.
    pub fn map<F, A, R, I>(&self, f: F, items: I) -> Result<Vec<R>>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Message + 'static,
        R: Message + 'static,
        I: IntoIterator<Item = A>,
    {
        self.blocking(|| self.map_blocking(&f, items, None))
    }

    /// [`map`](Pool::map) in chunks of `chunksize` items.
    ///
    /// # Errors
    /// As [`map`](Pool::map); [`Error::InvalidArgument`] for a zero `chunksize`.
    pub fn map_chunked<F, A, R, I>(&self, f: F, items: I, chunksize: usize) -> Result<Vec<R>>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Message + 'static,
        R: Message + 'static,
        I: IntoIterator<Item = A>,
    {
        self.blocking(|| self.map_blocking(&f, items, Some(chunksize)))
    }

    /// [`map`](Pool::map) whose values come later: Python's `map_async`.
    ///
    /// # Errors
    /// As [`apply_async`](Pool::apply_async).
    pub fn map_async<F, A, R, I>(&self, f: F, items: I) -> Result<AsyncResult<Vec<R>>>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Message + 'static,
        R: Message + 'static,
        I: IntoIterator<Item = A>,
    {
        self.start(&f, items, None, true)
    }

    /// [`map_async`](Pool::map_async) in chunks of `chunksize` items.
    ///
    /// # Errors
    /// As [`map_chunked`](Pool::map_chunked).
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
        self.start(&f, items, Some(chunksize), true)
    }

    /// `f(a, b, …)` over tuples of arguments, in order: Python's `starmap`.
    ///
    /// ```
    /// fn power(base: u64, exp: u32) -> u64 {
    ///     base.pow(exp)
    /// }
    /// let pool = multiprocessing::pool::Pool::new(2)?;
    /// assert_eq!(pool.starmap(power, [(2, 10), (3, 3)])?, [1024, 27]);
    /// # Ok::<(), multiprocessing::pool::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`map`](Pool::map).
    pub fn starmap<F, Args, I>(&self, f: F, items: I) -> Result<Vec<F::Output>>
    where
        F: StarFn<Args>,
        Args: Message + 'static,
        F::Output: Message + 'static,
        I: IntoIterator<Item = Args>,
    {
        self.map(move |args: Args| f.call(args), items)
    }

    /// [`starmap`](Pool::starmap) whose values come later (Python's `starmap_async`).
    ///
    /// # Errors
    /// As [`map_async`](Pool::map_async).
    pub fn starmap_async<F, Args, I>(&self, f: F, items: I) -> Result<AsyncResult<Vec<F::Output>>>
    where
        F: StarFn<Args>,
        Args: Message + 'static,
        F::Output: Message + 'static,
        I: IntoIterator<Item = Args>,
    {
        self.map_async(move |args: Args| f.call(args), items)
    }

    /// `f` over the items one at a time, results in order, as they are consumed: Python's
    /// `imap`. The input is taken lazily (an endless iterator works), with a bound on the
    /// chunks in flight. Each item's result is its own: a failed item yields its error and
    /// the iteration goes on.
    ///
    /// ```
    /// fn double(x: u64) -> u64 {
    ///     2 * x
    /// }
    /// let pool = multiprocessing::pool::Pool::new(2)?;
    /// let firsts: Vec<u64> = pool.imap(double, 0..)?.take(4).collect::<Result<_, _>>()?;
    /// assert_eq!(firsts, [0, 2, 4, 6]);
    /// # Ok::<(), multiprocessing::pool::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`apply_async`](Pool::apply_async), for the call; each item then has its own.
    pub fn imap<F, A, R, I>(&self, f: F, items: I) -> Result<Imap<R, I::IntoIter>>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Message + 'static,
        R: Message + 'static,
        I: IntoIterator<Item = A>,
    {
        Imap::new(
            self.shared.clone(),
            &f,
            items.into_iter(),
            1,
            Order::Ordered,
        )
    }

    /// [`imap`](Pool::imap) in chunks of `chunksize` items.
    ///
    /// # Errors
    /// As [`imap`](Pool::imap); [`Error::InvalidArgument`] for a zero `chunksize`.
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
        Imap::new(
            self.shared.clone(),
            &f,
            items.into_iter(),
            chunksize,
            Order::Ordered,
        )
    }

    /// [`imap`](Pool::imap) with results in the order they finish (Python's
    /// `imap_unordered`); each chunk's items stay together, in order.
    ///
    /// # Errors
    /// As [`imap`](Pool::imap).
    pub fn imap_unordered<F, A, R, I>(&self, f: F, items: I) -> Result<Imap<R, I::IntoIter>>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Message + 'static,
        R: Message + 'static,
        I: IntoIterator<Item = A>,
    {
        Imap::new(
            self.shared.clone(),
            &f,
            items.into_iter(),
            1,
            Order::Unordered,
        )
    }

    /// [`imap_unordered`](Pool::imap_unordered) in chunks of `chunksize` items.
    ///
    /// # Errors
    /// As [`imap_chunked`](Pool::imap_chunked).
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
        Imap::new(
            self.shared.clone(),
            &f,
            items.into_iter(),
            chunksize,
            Order::Unordered,
        )
    }

    /// Takes no new work; work already submitted goes on (Python's `close`).
    pub fn close(&self) {
        self.shared.close();
    }

    /// Kills and reaps the workers now; outstanding results fail with
    /// [`Error::Terminated`] (Python's `terminate`).
    pub fn terminate(&self) {
        self.shared.end(Error::Terminated);
        self.shared.join_threads();
    }

    /// After [`close`](Pool::close): waits for every task submitted to finish, then for the
    /// workers to exit. After [`terminate`](Pool::terminate): returns at once.
    ///
    /// ```
    /// fn id(x: u8) -> u8 {
    ///     x
    /// }
    /// let pool = multiprocessing::pool::Pool::new(2)?;
    /// let later = pool.map_async(id, [1, 2, 3])?;
    /// pool.close();
    /// pool.join()?;
    /// assert_eq!(later.get()?, [1, 2, 3]);
    /// # Ok::<(), multiprocessing::pool::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Running`] if the pool was neither closed nor terminated (Python raises
    /// `ValueError`); [`Error::Interrupted`] on SIGINT.
    pub fn join(&self) -> Result<()> {
        self.shared.join()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.terminate();
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("processes", &self.processes())
            .field("pids", &self.pids())
            .finish()
    }
}

/// A function of several arguments that [`Pool::starmap`] can call with a tuple of them:
/// every zero-sized `Fn(A, B, …) -> R` that is `Copy`, for up to six arguments.
pub trait StarFn<Args>: Copy + 'static {
    /// What the function returns.
    type Output;
    /// Calls the function with the tuple's items as its arguments.
    fn call(self, args: Args) -> Self::Output;
}

macro_rules! star_fn {
    ($($a:ident),+) => {
        impl<Func, Out, $($a),+> StarFn<($($a,)+)> for Func
        where
            Func: Fn($($a),+) -> Out + Copy + 'static,
        {
            type Output = Out;
            #[allow(non_snake_case)]
            #[inline]
            fn call(self, ($($a,)+): ($($a,)+)) -> Out {
                self($($a),+)
            }
        }
    };
}

star_fn!(A);
star_fn!(A, B);
star_fn!(A, B, C);
star_fn!(A, B, C, D);
star_fn!(A, B, C, D, E);
star_fn!(A, B, C, D, E, G);

/// What the caller of [`Pool::start_collecting`] does once the job is sent.
enum Then<'a, R> {
    /// Returns its `AsyncResult` (an `*_async` call): the pool's threads take the replies.
    Returns,
    /// Waits for the result at once (`apply`), and may take the replies itself while the
    /// pool's threads have not started ([`Shared::take_replies`]): sending leaves them
    /// unstarted.
    Waits,
    /// As `Waits`, decoding what arrives between chunks into a collector made here (a
    /// blocking `map`'s).
    Collects(&'a mut Option<result::Collector<R>>),
}
