//! Where results land: [`AsyncResult`] collects a job's chunks, [`Imap`] streams them.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, mpsc},
    time::{Duration, Instant},
};

use mp_pool::{Error, Result};

use crate::engine::Sink;

/// Turns a job's replies, in chunk order, into its value (for `get`, and for each callback).
pub(crate) type Finish<T> = Arc<dyn Fn(&[Vec<u8>]) -> Result<T> + Send + Sync>;

type Callback = Box<dyn FnOnce(Result<&[Vec<u8>], &Error>) + Send>;

/// The value of [`apply_async`](crate::MpiPool::apply_async) or
/// [`map_async`](crate::MpiPool::map_async), to come: Python's `AsyncResult`.
///
/// ```no_run
/// fn cube(x: i64) -> i64 {
///     x * x * x
/// }
/// let pool = mp_mpi::MpiPool::world()?;
/// let later = pool.apply_async(cube, -3)?;
/// later.on_ready(|value| println!("{value:?}")); // on the pool's thread
/// assert_eq!(later.get()?, -27);
/// # Ok::<(), mp_mpi::Error>(())
/// ```
pub struct AsyncResult<T> {
    shared: Arc<Collect>,
    finish: Finish<T>,
    /// The value, once made by the caller (decoding happens on the caller's thread).
    value: Mutex<Option<Result<T>>>,
    taken: std::sync::atomic::AtomicBool,
    /// Once the value is made: whether it is one (not a failure).
    succeeded: OnceLock<bool>,
}

impl<T> std::fmt::Debug for AsyncResult<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncResult")
            .field("ready", &self.shared.lock().done())
            .finish()
    }
}

/// A job's replies as they come: what the pool's thread shares with the result.
pub(crate) struct Collect {
    inner: Mutex<Raw>,
    cond: Condvar,
}

struct Raw {
    replies: Vec<Option<Vec<u8>>>,
    left: usize,
    failed: Option<Error>,
    callbacks: Vec<Callback>,
    /// Callbacks are running: the result is not ready to waiters until they are done.
    calling: bool,
}

impl Raw {
    /// Every chunk in (or one failed).
    fn complete(&self) -> bool {
        self.left == 0 || self.failed.is_some()
    }

    /// Complete, and its callbacks run: what waiters wait for.
    fn done(&self) -> bool {
        self.complete() && !self.calling
    }

    /// The outcome, once done: every reply in chunk order, or the first failure.
    fn outcome(&self) -> Result<Vec<Vec<u8>>, Error> {
        match &self.failed {
            Some(err) => Err(err.clone()),
            None => Ok(self
                .replies
                .iter()
                .map(|r| r.clone().unwrap_or_default())
                .collect()),
        }
    }
}

impl Collect {
    fn lock(&self) -> MutexGuard<'_, Raw> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Sink for Collect {
    fn deliver(&self, index: usize, reply: Result<Vec<u8>, Error>) {
        let mut inner = self.lock();
        if inner.complete() {
            return;
        }
        match reply {
            Ok(bytes) => {
                if let Some(slot) = inner.replies.get_mut(index)
                    && slot.is_none()
                {
                    *slot = Some(bytes);
                    inner.left -= 1;
                }
            }
            Err(err) => inner.failed = Some(err),
        }
        if inner.complete() {
            // Callbacks first, then waiters (as Python's: `get` returns after them).
            let callbacks = std::mem::take(&mut inner.callbacks);
            if !callbacks.is_empty() {
                let outcome = inner.outcome();
                inner.calling = true;
                drop(inner);
                for callback in callbacks {
                    // A panicking callback must not take the pool's thread with it.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        callback(outcome.as_deref())
                    }));
                }
                inner = self.lock();
                inner.calling = false;
            }
            drop(inner);
            self.cond.notify_all();
        }
    }
}

/// A job of one chunk of one item (sent `plain` or not): its value.
pub(crate) fn one<R: mp_codec::Message + 'static>(replies: &[Vec<u8>], plain: bool) -> Result<R> {
    let mut out = Vec::with_capacity(1);
    let reply = replies.first().map(Vec::as_slice).unwrap_or_default();
    crate::wire::results::<R>(reply, plain, 1, &mut out)?;
    out.pop().ok_or(Error::InvalidArgument("no result"))
}

impl<T: 'static> AsyncResult<T> {
    /// A result of `chunks` chunks, made by `finish`; and the sink its chunks go to.
    pub(crate) fn new(
        chunks: usize,
        finish: impl Fn(&[Vec<u8>]) -> Result<T> + Send + Sync + 'static,
    ) -> (AsyncResult<T>, Arc<dyn Sink>) {
        let shared = Arc::new(Collect {
            inner: Mutex::new(Raw {
                replies: vec![None; chunks],
                left: chunks,
                failed: None,
                callbacks: Vec::new(),
                calling: false,
            }),
            cond: Condvar::new(),
        });
        let sink: Arc<dyn Sink> = shared.clone();
        let result = AsyncResult {
            shared,
            finish: Arc::new(finish),
            value: Mutex::new(None),
            taken: std::sync::atomic::AtomicBool::new(false),
            succeeded: OnceLock::new(),
        };
        (result, sink)
    }

    /// Whether the value (or the failure) is in.
    pub fn ready(&self) -> bool {
        self.shared.lock().done()
    }

    /// `None` until ready; then whether it succeeded (a value that fails to decode did not).
    pub fn successful(&self) -> Option<bool> {
        if !self.ready() {
            return None;
        }
        let mut value = self.value.lock().unwrap_or_else(|e| e.into_inner());
        self.settle(&mut value);
        self.succeeded.get().copied()
    }

    /// Makes the value, if not made yet (the caller has seen it ready).
    fn settle(&self, value: &mut Option<Result<T>>) {
        if value.is_none() && !self.taken.load(std::sync::atomic::Ordering::Relaxed) {
            let outcome = self.shared.lock().outcome();
            let made = outcome.and_then(|replies| (self.finish)(&replies));
            let _ = self.succeeded.set(made.is_ok());
            *value = Some(made);
        }
    }

    /// Waits until ready.
    pub fn wait(&self) {
        let mut inner = self.shared.lock();
        while !inner.done() {
            inner = self
                .shared
                .cond
                .wait(inner)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Waits until ready, at most `timeout`; whether it is.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let Some(deadline) = Instant::now().checked_add(timeout) else {
            self.wait();
            return true;
        };
        let mut inner = self.shared.lock();
        while !inner.done() {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            inner = self
                .shared
                .cond
                .wait_timeout(inner, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// Waits for the value.
    ///
    /// # Errors
    /// The task's failure: [`Error::Panicked`], [`Error::Encode`], [`Error::Decode`],
    /// [`Error::Spawn`] (a worker running another build), [`Error::Terminated`].
    pub fn get(self) -> Result<T> {
        self.wait();
        self.take()
    }

    /// Waits at most `timeout` for the value.
    ///
    /// # Errors
    /// [`Error::Timeout`] if it is not in by then (wait again later); else as
    /// [`get`](AsyncResult::get), and [`Error::InvalidArgument`] once the value was taken.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        if !self.wait_timeout(timeout) {
            return Err(Error::Timeout);
        }
        self.take()
    }

    fn take(&self) -> Result<T> {
        let mut value = self.value.lock().unwrap_or_else(|e| e.into_inner());
        self.settle(&mut value);
        match value.take() {
            Some(value) => {
                self.taken.store(true, std::sync::atomic::Ordering::Relaxed);
                value
            }
            None => Err(Error::InvalidArgument("the result was taken already")),
        }
    }

    /// Calls `callback` with the value (or the failure) once it is in: at once, on this
    /// thread, if it is; else on the pool's thread when it comes (Python's `callback` and
    /// `error_callback`). The value it is shown is decoded for it. Keep it short: the pool
    /// waits for it.
    pub fn on_ready(&self, callback: impl FnOnce(Result<&T, &Error>) + Send + 'static) {
        let finish = self.finish.clone();
        let call = move |outcome: Result<&[Vec<u8>], &Error>| match outcome {
            Ok(replies) => match finish(replies) {
                Ok(value) => callback(Ok(&value)),
                Err(err) => callback(Err(&err)),
            },
            Err(err) => callback(Err(err)),
        };
        let mut inner = self.shared.lock();
        if inner.complete() {
            let outcome = inner.outcome();
            drop(inner);
            call(outcome.as_deref());
        } else {
            inner.callbacks.push(Box::new(call));
        }
    }
}

/// The chunks of an `imap`, as they come: their index and reply.
pub(crate) struct Stream {
    rx: mpsc::Receiver<(usize, Result<Vec<u8>, Error>)>,
}

struct StreamSink {
    tx: mpsc::Sender<(usize, Result<Vec<u8>, Error>)>,
}

impl Sink for StreamSink {
    fn deliver(&self, index: usize, reply: Result<Vec<u8>, Error>) {
        let _ = self.tx.send((index, reply));
    }
}

impl Stream {
    pub(crate) fn new() -> (Stream, Arc<dyn Sink>) {
        let (tx, rx) = mpsc::channel();
        (Stream { rx }, Arc::new(StreamSink { tx }))
    }
}

type Submit<A> = Box<dyn FnMut(usize, &[A]) -> Result<()>>;
type DecodeChunk<R> = Box<dyn Fn(&[u8], usize, &mut Vec<R>) -> Result<()>>;

/// The values of [`imap`](crate::MpiPool::imap) or
/// [`imap_unordered`](crate::MpiPool::imap_unordered), as they come; each item's failure
/// in its place (a chunk fails whole).
pub struct Imap<R, I: Iterator> {
    items: I,
    chunksize: usize,
    bound: usize,
    ordered: bool,
    stream: Stream,
    submit: Submit<I::Item>,
    decode: DecodeChunk<R>,
    exhausted: bool,
    sent: usize,
    in_flight: usize,
    sizes: HashMap<usize, usize>,
    early: BTreeMap<usize, Result<Vec<u8>, Error>>,
    next_out: usize,
    ready: VecDeque<Result<R>>,
}

impl<R, I: Iterator> std::fmt::Debug for Imap<R, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Imap")
            .field("in_flight", &self.in_flight)
            .field("ordered", &self.ordered)
            .finish_non_exhaustive()
    }
}

impl<R, I: Iterator> Imap<R, I> {
    pub(crate) fn new(
        items: I,
        chunksize: usize,
        bound: usize,
        ordered: bool,
        stream: Stream,
        submit: Submit<I::Item>,
        decode: DecodeChunk<R>,
    ) -> Self {
        Imap {
            items,
            chunksize,
            bound: bound.max(1),
            ordered,
            stream,
            submit,
            decode,
            exhausted: false,
            sent: 0,
            in_flight: 0,
            sizes: HashMap::new(),
            early: BTreeMap::new(),
            next_out: 0,
            ready: VecDeque::new(),
        }
    }

    /// Sends chunks until `bound` are in flight or the input ends.
    fn top_up(&mut self) {
        // (Replies held back for order count against the bound: memory stays flat even
        // behind a slow first chunk.)
        while !self.exhausted && self.in_flight + self.early.len() < self.bound {
            let chunk: Vec<I::Item> = self.items.by_ref().take(self.chunksize).collect();
            if chunk.is_empty() {
                self.exhausted = true;
                break;
            }
            let index = self.sent;
            self.sent += 1;
            if let Err(err) = (self.submit)(index, &chunk) {
                // Not sent (the pool has ended): its items fail in their place, and nothing
                // more is taken from the input (which may be endless).
                self.sizes.insert(index, chunk.len());
                self.arrive(index, Err(err));
                self.exhausted = true;
                break;
            }
            self.sizes.insert(index, chunk.len());
            self.in_flight += 1;
        }
    }

    fn arrive(&mut self, index: usize, reply: Result<Vec<u8>, Error>) {
        if !self.ordered {
            self.expand(index, reply);
            return;
        }
        self.early.insert(index, reply);
        while let Some(reply) = self.early.remove(&self.next_out) {
            let index = self.next_out;
            self.next_out += 1;
            self.expand(index, reply);
        }
    }

    fn expand(&mut self, index: usize, reply: Result<Vec<u8>, Error>) {
        let count = self.sizes.remove(&index).unwrap_or(1);
        let mut values = Vec::with_capacity(count);
        match reply.and_then(|bytes| (self.decode)(&bytes, count, &mut values)) {
            Ok(()) => self.ready.extend(values.into_iter().map(Ok)),
            Err(err) => self.ready.extend((0..count).map(|_| Err(err.clone()))),
        }
    }
}

impl<R, I: Iterator> Iterator for Imap<R, I> {
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        loop {
            if let Some(value) = self.ready.pop_front() {
                return Some(value);
            }
            self.top_up();
            if let Some(value) = self.ready.pop_front() {
                return Some(value);
            }
            if self.in_flight == 0 {
                return None;
            }
            match self.stream.rx.recv() {
                Ok((index, reply)) => {
                    self.in_flight -= 1;
                    self.arrive(index, reply);
                }
                Err(_) => {
                    // The pool's thread is gone: nothing more comes.
                    self.in_flight = 0;
                    self.exhausted = true;
                    return Some(Err(Error::Terminated));
                }
            }
        }
    }
}
