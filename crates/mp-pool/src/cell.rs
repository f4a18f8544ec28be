//! Where a job's results arrive, and are waited for.

use std::{
    collections::VecDeque,
    sync::{Arc, Condvar, Mutex, MutexGuard},
    time::Instant,
};

use mp_codec::{Decode, Frame};
use mp_spawn::CallError;

use crate::{
    Error, Result,
    wire::{ChunkReader, Item},
};

/// One chunk's outcome.
pub(crate) struct Arrival {
    pub(crate) chunk: u32,
    /// Items in the chunk.
    pub(crate) count: u32,
    /// The worker's results, or why the whole chunk failed (its worker was lost, say).
    pub(crate) outcome: Result<Arc<Frame>>,
    /// The first item that failed, and why.
    pub(crate) failed: Option<(u32, CallError)>,
}

/// Run once the job is done, by the thread that finished it, with no lock held: it may
/// take the result, or give the pool more work.
pub(crate) type Callback = Box<dyn FnOnce() + Send>;

pub(crate) struct Inner {
    /// A failed item fails the whole job (map, apply), rather than only itself (imap).
    pub(crate) fail_fast: bool,
    pub(crate) arrived: VecDeque<Arrival>,
    /// Chunks sent and not arrived.
    pub(crate) outstanding: u32,
    /// No more chunks will be sent.
    pub(crate) sealed: bool,
    /// Why the job failed as a whole (fail-fast, or the pool ended).
    pub(crate) error: Option<Error>,
    pub(crate) callbacks: Vec<Callback>,
    /// Threads waiting on the cell now.
    waiters: u32,
    /// Arrivals that wake them before the job is done (the least any of them asked for):
    /// waking a thread costs a system call here and a few microseconds there, so a waiter
    /// that takes results in batches is woken once a batch.
    wake_after: u32,
}

impl Inner {
    pub(crate) fn done(&self) -> bool {
        self.error.is_some() || (self.sealed && self.outstanding == 0)
    }
}

/// A job's results: filled by the pool's reply thread, read by the job's owner.
pub(crate) struct Cell {
    inner: Mutex<Inner>,
    changed: Condvar,
}

impl Cell {
    /// A job's cell, before any chunk is sent.
    pub(crate) fn new(fail_fast: bool) -> Arc<Self> {
        Arc::new(Cell {
            inner: Mutex::new(Inner {
                fail_fast,
                arrived: VecDeque::new(),
                outstanding: 0,
                sealed: false,
                error: None,
                callbacks: Vec::new(),
                waiters: 0,
                wake_after: 1,
            }),
            changed: Condvar::new(),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes the waiters, if any (after a change made under [`Cell::lock`], still held).
    pub(crate) fn notify(&self, inner: &Inner) {
        if inner.waiters > 0 {
            self.changed.notify_all();
        }
    }

    /// Records a chunk's outcome: whether the job is now done (and so off the pool's
    /// books), and the callbacks to run.
    pub(crate) fn arrive(&self, arrival: Arrival) -> (bool, Vec<Callback>) {
        let mut inner = self.lock();
        inner.outstanding = inner.outstanding.saturating_sub(1);
        if inner.fail_fast && inner.error.is_none() {
            match (&arrival.outcome, &arrival.failed) {
                (Err(err), _) => inner.error = Some(err.clone()),
                (Ok(_), Some((_, why))) => inner.error = Some(why.clone().into()),
                _ => {}
            }
        }
        inner.arrived.push_back(arrival);
        self.finish(inner)
    }

    /// Fails the job as a whole (unless it is done already); the callbacks to run.
    pub(crate) fn fail(&self, error: Error) -> Vec<Callback> {
        let mut inner = self.lock();
        if inner.done() {
            return Vec::new();
        }
        inner.error = Some(error);
        self.finish(inner).1
    }

    /// Wakes the waiters; hands back the callbacks to run (outside the lock) once done.
    fn finish(&self, mut inner: MutexGuard<'_, Inner>) -> (bool, Vec<Callback>) {
        if inner.waiters > 0 && (inner.done() || inner.arrived.len() >= inner.wake_after as usize) {
            self.changed.notify_all();
        }
        if !inner.done() {
            return (false, Vec::new());
        }
        (true, std::mem::take(&mut inner.callbacks))
    }

    /// Waits until `ready` holds of the cell, or until `deadline`; `false` on the deadline.
    /// Until the job is done, only `wake_after` arrivals (or a failure) wake the waiter to
    /// look again (`u32::MAX`: only the end).
    pub(crate) fn wait_until<'a>(
        &'a self,
        mut inner: MutexGuard<'a, Inner>,
        deadline: Option<Instant>,
        wake_after: u32,
        ready: impl Fn(&Inner) -> bool,
    ) -> (MutexGuard<'a, Inner>, bool) {
        loop {
            if ready(&inner) {
                return (inner, true);
            }
            inner.wake_after = match inner.waiters {
                0 => wake_after.max(1),
                _ => inner.wake_after.min(wake_after.max(1)),
            };
            inner.waiters += 1;
            let waited = self.wait_once(inner, deadline);
            inner = waited.0;
            inner.waiters -= 1;
            if !waited.1 {
                let ready = ready(&inner);
                return (inner, ready);
            }
        }
    }

    /// One wait on the condition variable; `false` once `deadline` has passed.
    fn wait_once<'a>(
        &'a self,
        inner: MutexGuard<'a, Inner>,
        deadline: Option<Instant>,
    ) -> (MutexGuard<'a, Inner>, bool) {
        {
            match deadline {
                None => (
                    self.changed.wait(inner).unwrap_or_else(|e| e.into_inner()),
                    true,
                ),
                Some(at) => {
                    let left = at.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return (inner, false);
                    }
                    let inner = self
                        .changed
                        .wait_timeout(inner, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                    (inner, true)
                }
            }
        }
    }
}

/// Decodes a chunk's arrival into one result per item, handed to `out` in order.
pub(crate) fn decode_items<R: Decode>(arrival: &Arrival, out: &mut impl FnMut(Result<R>)) {
    let payload = match &arrival.outcome {
        Ok(payload) => payload,
        Err(err) => {
            (0..arrival.count).for_each(|_| out(Err(err.clone())));
            return;
        }
    };
    let mut reader = ChunkReader::new(&payload.bytes, payload.fds.len());
    let mut fds = payload.fds.iter();
    let mut scratch = Frame::new();
    let mut seen = 0u32;
    while seen < arrival.count {
        let item = match reader.next_item() {
            Ok(Some(item)) => item,
            _ => break,
        };
        if item.fds == 0 && !item.err {
            // The common case, kept inline: a plain value, decoded where it lies.
            out(R::decode_bytes(item.bytes).map_err(Error::decode::<R>));
        } else {
            out(decode_item::<R>(&item, &mut fds, &mut scratch));
        }
        seen += 1;
    }
    // Items the worker never got to (it could not read its chunk, or not send its results).
    let why: Error = match &arrival.failed {
        Some((_, why)) => why.clone().into(),
        None => {
            Error::decode::<R>("the worker's reply holds fewer results than its task had items")
        }
    };
    (seen..arrival.count).for_each(|_| out(Err(why.clone())));
}

/// An item that owns descriptors, or is an error.
#[inline(never)]
fn decode_item<'a, R: Decode>(
    item: &Item<'_>,
    fds: &mut impl Iterator<Item = &'a std::os::fd::OwnedFd>,
    scratch: &mut Frame,
) -> Result<R> {
    scratch.clear();
    scratch.bytes.extend_from_slice(item.bytes);
    for fd in fds.take(item.fds) {
        scratch
            .fds
            .push(fd.try_clone().map_err(|e| Error::os("dup", e))?);
    }
    if item.err {
        let why = CallError::decode(scratch).map_err(Error::decode::<CallError>)?;
        return Err(why.into());
    }
    R::decode(scratch).map_err(Error::decode::<R>)
}
