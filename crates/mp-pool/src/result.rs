use std::{
    collections::{BTreeMap, VecDeque},
    marker::PhantomData,
    sync::Arc,
    time::{Duration, Instant},
};

use mp_codec::{Decode, Message};
use mp_spawn::TargetId;

use crate::{
    Error, Result,
    cell::{Arrival, Callback, Cell, Inner, decode_items},
    pool::{encode_chunk, task},
    shared::{MAX_DEPTH, Shared},
    sys::Waiting,
};

/// A value that a pool computes: Python's `AsyncResult`, from
/// [`apply_async`](crate::Pool::apply_async) and [`map_async`](crate::Pool::map_async).
///
/// ```
/// fn slow_square(x: u64) -> u64 {
///     x * x
/// }
/// let pool = multiprocessing::pool::Pool::new(2)?;
/// let later = pool.map_async(slow_square, 0..4)?;
/// later.wait();
/// assert!(later.ready());
/// assert_eq!(later.successful(), Some(true));
/// assert_eq!(later.get()?, [0, 1, 4, 9]);
/// # Ok::<(), multiprocessing::pool::Error>(())
/// ```
#[must_use = "an AsyncResult is how the value arrives"]
pub struct AsyncResult<T> {
    shared: Arc<Shared>,
    cell: Arc<Cell>,
    finish: fn(&Inner) -> Result<T>,
}

impl<T> std::fmt::Debug for AsyncResult<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncResult")
            .field("ready", &self.ready())
            .finish()
    }
}

impl<T> AsyncResult<T> {
    pub(crate) fn new(
        shared: Arc<Shared>,
        cell: Arc<Cell>,
        finish: fn(&Inner) -> Result<T>,
    ) -> Self {
        AsyncResult {
            shared,
            cell,
            finish,
        }
    }

    /// The same job, finished differently.
    pub(crate) fn map<U>(self, finish: fn(&Inner) -> Result<U>) -> AsyncResult<U> {
        AsyncResult {
            shared: self.shared,
            cell: self.cell,
            finish,
        }
    }

    /// Whether the value (or the error) is there.
    pub fn ready(&self) -> bool {
        self.cell.lock().done()
    }

    /// Whether the job succeeded; `None` while it is not ready (Python raises
    /// `ValueError`).
    pub fn successful(&self) -> Option<bool> {
        let inner = self.cell.lock();
        inner.done().then(|| {
            inner.error.is_none()
                && inner
                    .arrived
                    .iter()
                    .all(|a| a.outcome.is_ok() && a.failed.is_none())
        })
    }

    /// Waits until the value (or the error) is there.
    pub fn wait(&self) {
        self.wait_until(None);
    }

    /// Waits at most `timeout`; whether it is ready.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(Instant::now().checked_add(timeout))
    }

    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        let _waiting = Waiting::new(&self.shared.waiting);
        // Before the pool's threads run (a first `apply`), the reply may be taken here.
        self.shared
            .take_replies(|| self.cell.lock().done(), deadline);
        let inner = self.cell.lock();
        self.cell
            .wait_until(inner, deadline, u32::MAX, Inner::done)
            .1
    }

    /// Waits for the value.
    ///
    /// # Errors
    /// How the job failed: [`Error::Panicked`], [`Error::WorkerLost`],
    /// [`Error::TaskTimeout`], [`Error::Encode`]/[`Error::Decode`], [`Error::Terminated`],
    /// [`Error::Interrupted`], [`Error::Initializer`] (for a `map`, the first task to fail).
    pub fn get(self) -> Result<T> {
        self.wait();
        (self.finish)(&self.cell.lock())
    }

    /// Waits at most `timeout` for the value.
    ///
    /// # Errors
    /// [`Error::Timeout`] if it is not there yet (wait again later), or [`get`](Self::get)'s.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        if !self.wait_timeout(timeout) {
            return Err(Error::Timeout);
        }
        (self.finish)(&self.cell.lock())
    }

    /// Calls `callback` with the value (or the error) once it is there (Python's `callback`
    /// and `error_callback` in one): on the thread that takes the pool's replies, or at once
    /// on this thread if it is there already. That thread is the pool's reply thread, or,
    /// for the few milliseconds before that thread takes over, a thread of yours waiting in
    /// `apply` or `map` on a pool that had no threads yet. It may use the pool (submit more,
    /// take this result), but should be quick: the pool delivers no other result while it
    /// runs. A panic in it is reported and goes no further (CPython's result handler dies
    /// of an exception in a callback, and the pool hangs).
    ///
    /// ```
    /// use std::sync::mpsc;
    /// fn inc(x: u32) -> u32 {
    ///     x + 1
    /// }
    /// let pool = multiprocessing::pool::Pool::new(1)?;
    /// let (tx, rx) = mpsc::channel();
    /// pool.apply_async(inc, 41)?.on_ready(move |r| tx.send(*r.unwrap()).unwrap());
    /// assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(30)).unwrap(), 42);
    /// # Ok::<(), multiprocessing::pool::Error>(())
    /// ```
    pub fn on_ready(&self, callback: impl FnOnce(Result<&T, &Error>) + Send + 'static)
    where
        T: 'static,
    {
        let cell = self.cell.clone();
        let finish = self.finish;
        let run: Callback = Box::new(move || {
            let value = finish(&cell.lock());
            callback(value.as_ref());
        });
        let mut inner = self.cell.lock();
        if inner.done() {
            drop(inner);
            run();
        } else {
            inner.callbacks.push(run);
        }
    }
}

/// A blocking `map`'s values, decoded chunk by chunk as soon as each and those before it
/// have arrived: between the chunks being encoded, and while the workers run the rest.
pub(crate) struct Collector<R> {
    values: Vec<R>,
    /// The next chunk to decode.
    next: u32,
    /// Chunks that arrived before one ahead of them.
    parked: BTreeMap<u32, Arrival>,
}

impl<R: Decode + 'static> Collector<R> {
    pub(crate) fn new(len: usize) -> Self {
        Collector {
            values: Vec::with_capacity(len),
            next: 0,
            parked: BTreeMap::new(),
        }
    }

    /// Takes what has arrived (waiting for something first if `wait`) and decodes what is
    /// next in order. Whether the job is done; its first failure.
    pub(crate) fn step(&mut self, cell: &Cell, wait: bool) -> Result<bool> {
        let (batch, done) = {
            let mut inner = cell.lock();
            if wait {
                // Woken about eight times a job, not for every chunk.
                let batch = (inner.outstanding / 8).max(1);
                inner = cell
                    .wait_until(inner, None, batch, |i| !i.arrived.is_empty() || i.done())
                    .0;
            }
            if let Some(err) = &inner.error {
                return Err(err.clone());
            }
            (inner.arrived.drain(..).collect::<Vec<_>>(), inner.done())
        };
        self.parked.extend(batch.into_iter().map(|a| (a.chunk, a)));
        while let Some(arrival) = self.parked.remove(&self.next) {
            push_values(&arrival, &mut self.values)?;
            self.next += 1;
        }
        if done && !self.parked.is_empty() {
            return Err(Error::decode::<R>("a chunk of the map never arrived"));
        }
        Ok(done)
    }
}

impl<R: Decode + 'static> AsyncResult<Vec<R>> {
    /// A blocking `map`'s values, with what `collector` decoded already.
    pub(crate) fn collect(self, mut collector: Collector<R>) -> Result<Vec<R>> {
        let _waiting = Waiting::new(&self.shared.waiting);
        // Before the pool's threads run (a first `map`), the replies may be taken here.
        self.shared.take_replies(|| self.cell.lock().done(), None);
        while !collector.step(&self.cell, true)? {}
        Ok(collector.values)
    }
}

/// A `map`'s values, in order; the first failure (by completion) if any.
pub(crate) fn finish_map<R: Decode + 'static>(inner: &Inner) -> Result<Vec<R>> {
    if let Some(err) = &inner.error {
        return Err(err.clone());
    }
    let mut arrivals: Vec<&Arrival> = inner.arrived.iter().collect();
    arrivals.sort_unstable_by_key(|a| a.chunk);
    let total: usize = arrivals.iter().map(|a| a.count as usize).sum();
    let mut values = Vec::with_capacity(total);
    for arrival in arrivals {
        push_values(arrival, &mut values)?;
    }
    Ok(values)
}

/// Appends a chunk's values to `values`; its first failed item fails the map.
fn push_values<R: Decode + 'static>(arrival: &Arrival, values: &mut Vec<R>) -> Result<()> {
    let mut failed = None;
    values.reserve(arrival.count as usize);
    decode_items::<R>(arrival, &mut |item: Result<R>| match item {
        Ok(value) => values.push(value),
        Err(err) => {
            failed.get_or_insert(err);
        }
    });
    failed.map_or(Ok(()), Err)
}

/// An `apply`'s value.
pub(crate) fn finish_one<R: Decode + 'static>(inner: &Inner) -> Result<R> {
    finish_map::<R>(inner)?
        .pop()
        .ok_or_else(|| Error::decode::<R>("the worker's reply holds no result"))
}

/// Results in input order, or as they finish.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Order {
    Ordered,
    Unordered,
}

/// The results of [`imap`](crate::Pool::imap) and its kin, as they come: one `Result` per
/// input item. It takes input from its iterator only as results are consumed, keeping at
/// most a bounded number of chunks in flight. Dropping it drops the chunks not yet sent.
pub struct Imap<R, I> {
    shared: Arc<Shared>,
    cell: Arc<Cell>,
    job: u64,
    target: TargetId,
    /// `None` once exhausted.
    input: Option<I>,
    chunksize: usize,
    order: Order,
    /// Chunks made (the next chunk's number).
    sent: u32,
    /// Chunks handed out in full.
    yielded: u32,
    /// Most chunks made and not handed out.
    bound: u32,
    /// Arrivals taken from the cell, by chunk number.
    buffer: BTreeMap<u32, Arrival>,
    /// The current chunk's results not handed out yet.
    current: VecDeque<Result<R>>,
    /// The pool's error was handed out, or everything was.
    finished: bool,
    _results: PhantomData<fn() -> R>,
}

impl<R, I> std::fmt::Debug for Imap<R, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Imap")
            .field("sent", &self.sent)
            .field("yielded", &self.yielded)
            .finish_non_exhaustive()
    }
}

impl<R, I> Imap<R, I>
where
    R: Message,
{
    pub(crate) fn new<F, A>(
        shared: Arc<Shared>,
        f: &F,
        input: I,
        chunksize: usize,
        order: Order,
    ) -> Result<Self>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Message + 'static,
        R: 'static,
        I: Iterator<Item = A>,
    {
        if chunksize == 0 {
            return Err(Error::InvalidArgument("chunksize must be at least 1"));
        }
        let target = TargetId::of(f)?;
        let (job, cell) = {
            let mut state = shared.lock();
            shared.open_job(&mut state, false)?
        };
        let bound = (shared.config().processes * (MAX_DEPTH + 1)) as u32;
        Ok(Imap {
            shared,
            cell,
            job,
            target,
            input: Some(input),
            chunksize,
            order,
            sent: 0,
            yielded: 0,
            bound,
            buffer: BTreeMap::new(),
            current: VecDeque::new(),
            finished: false,
            _results: PhantomData,
        })
    }
}

impl<R, I, A> Imap<R, I>
where
    R: Message + 'static,
    I: Iterator<Item = A>,
    A: Message + 'static,
{
    /// Makes and sends chunks while fewer than the bound are out.
    fn top_up(&mut self) {
        let mut tasks = Vec::new();
        let mut local = Vec::new();
        while let Some(input) = &mut self.input {
            if self.sent - self.yielded >= self.bound {
                break;
            }
            match encode_chunk::<A, R>(input, self.chunksize) {
                None => self.input = None,
                Some(Ok((count, frame))) => {
                    tasks.push(task::<A, R>(self.job, self.sent, count, self.target, frame));
                    self.sent += 1;
                }
                Some(Err((before, err))) => {
                    if let Some((count, frame)) = before {
                        tasks.push(task::<A, R>(self.job, self.sent, count, self.target, frame));
                        self.sent += 1;
                    }
                    // The item that cannot be encoded fails alone, in its place.
                    local.push(Arrival {
                        chunk: self.sent,
                        count: 1,
                        outcome: Err(err),
                        failed: None,
                        plain: None,
                    });
                    self.sent += 1;
                }
            }
        }
        let sealed = self.input.is_none();
        if tasks.is_empty() && local.is_empty() && !sealed {
            return;
        }
        {
            let mut inner = self.cell.lock();
            inner.outstanding += tasks.len() as u32;
            inner.sealed = sealed;
            inner.arrived.extend(local);
        }
        if !tasks.is_empty() {
            let mut state = self.shared.lock();
            self.shared.submit(&mut state, tasks);
            drop(state);
            self.shared.ensure_threads();
        }
    }

    /// Moves what arrived into the buffer; waits for something if nothing is ready.
    /// `Err` with the pool's error once, `Ok(false)` at the end.
    fn fetch(&mut self) -> Result<bool> {
        let shared = self.shared.clone();
        let _waiting = Waiting::new(&shared.waiting);
        let cell = self.cell.clone();
        let mut inner = cell.lock();
        loop {
            for arrival in inner.arrived.drain(..) {
                self.buffer.insert(arrival.chunk, arrival);
            }
            let next = match self.order {
                Order::Ordered => self.buffer.remove(&self.yielded),
                Order::Unordered => self.buffer.pop_first().map(|(_, a)| a),
            };
            if let Some(arrival) = next {
                drop(inner);
                decode_items::<R>(&arrival, &mut |item| self.current.push_back(item));
                self.yielded += 1;
                return Ok(true);
            }
            if let Some(err) = &inner.error {
                return Err(err.clone());
            }
            if self.yielded == self.sent && self.input.is_none() {
                return Ok(false);
            }
            if self.yielded == self.sent {
                // Nothing out: make more (the lock is the cell's; top_up takes it again).
                drop(inner);
                self.top_up();
                inner = cell.lock();
                continue;
            }
            inner = cell
                .wait_until(inner, None, 1, |i| {
                    !i.arrived.is_empty() || i.error.is_some()
                })
                .0;
        }
    }
}

impl<R, I, A> Iterator for Imap<R, I>
where
    R: Message + 'static,
    I: Iterator<Item = A>,
    A: Message + 'static,
{
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        loop {
            if let Some(item) = self.current.pop_front() {
                return Some(item);
            }
            if self.finished {
                return None;
            }
            self.top_up();
            match self.fetch() {
                Ok(true) => {}
                Ok(false) => {
                    self.finished = true;
                    return None;
                }
                Err(err) => {
                    self.finished = true;
                    return Some(Err(err));
                }
            }
        }
    }
}

impl<R, I> Drop for Imap<R, I> {
    fn drop(&mut self) {
        self.shared.forget_job(self.job);
    }
}
