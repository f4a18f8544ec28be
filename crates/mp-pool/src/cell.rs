//! Where a job's results arrive, and are waited for.

use std::{
    collections::VecDeque,
    sync::{Arc, Condvar, Mutex, MutexGuard},
    time::Instant,
};

use mp_codec::{Decode, Frame, plain};
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
    /// Set when the results are a run of plain values: every item that failed, in order.
    pub(crate) plain: Option<Vec<(u32, CallError)>>,
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

/// A job's results: filled by whoever takes the pool's replies (its reply thread, or a
/// caller waiting before that thread runs), read by the job's owner.
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
pub(crate) fn decode_items<R: Decode + 'static>(
    arrival: &Arrival,
    out: &mut impl FnMut(Result<R>),
) {
    let payload = match &arrival.outcome {
        Ok(payload) => payload,
        Err(err) => {
            (0..arrival.count).for_each(|_| out(Err(err.clone())));
            return;
        }
    };
    if let Some(errors) = &arrival.plain {
        return decode_plain(arrival, &payload.bytes, errors, out);
    }
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
    fail_the_rest(arrival, seen, out);
}

/// Fails the items from `seen` on, which the worker never got to (it could not read its
/// chunk, or not send its results).
fn fail_the_rest<R: Decode>(arrival: &Arrival, seen: u32, out: &mut impl FnMut(Result<R>)) {
    let why: Error = match &arrival.failed {
        Some((_, why)) => why.clone().into(),
        None => {
            Error::decode::<R>("the worker's reply holds fewer results than its task had items")
        }
    };
    (seen..arrival.count).for_each(|_| out(Err(why.clone())));
}

/// [`decode_items`] for a run of plain results: each value read from its bytes, and each
/// item named in `errors` failed with its error instead.
fn decode_plain<R: Decode + 'static>(
    arrival: &Arrival,
    bytes: &[u8],
    errors: &[(u32, CallError)],
    out: &mut impl FnMut(Result<R>),
) {
    let Some(size) = plain::size_of::<R>() else {
        let why = Error::decode::<R>("the worker's results are plain values, and it is not one");
        (0..arrival.count).for_each(|_| out(Err(why.clone())));
        return;
    };
    let mut errors = errors.iter().peekable();
    let mut seen = 0u32;
    for value in bytes.chunks_exact(size).take(arrival.count as usize) {
        // (The worker names them in order; one out of order is skipped, never a panic.)
        while errors.next_if(|(at, _)| *at < seen).is_some() {}
        match errors.next_if(|(at, _)| *at == seen) {
            Some((_, why)) => out(Err(why.clone().into())),
            None => out(plain::take::<R>(value).ok_or_else(|| {
                Error::decode::<R>("a plain value's bytes are not one of its type")
            })),
        }
        seen += 1;
    }
    fail_the_rest(arrival, seen, out);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn arrival(values: &[u32], count: u32, errors: Vec<(u32, CallError)>) -> Arrival {
        let mut frame = Frame::new();
        for v in values {
            plain::put(v, &mut frame.bytes);
        }
        Arrival {
            chunk: 0,
            count,
            outcome: Ok(Arc::new(frame)),
            failed: errors.first().cloned(),
            plain: Some(errors),
        }
    }

    fn decoded<R: Decode + 'static>(arrival: &Arrival) -> Vec<std::result::Result<R, String>> {
        let mut out = Vec::new();
        decode_items::<R>(arrival, &mut |r| out.push(r.map_err(|e| e.to_string())));
        out
    }

    fn boom(at: u32) -> (u32, CallError) {
        (at, CallError::Panicked(format!("boom {at}")))
    }

    #[test]
    fn plain_results_keep_each_failure_in_its_place() {
        let got = decoded::<u32>(&arrival(&[7, 0, 9, 0], 4, vec![boom(1), boom(3)]));
        assert_eq!(
            got,
            [
                Ok(7),
                Err("task panicked: boom 1".into()),
                Ok(9),
                Err("task panicked: boom 3".into())
            ]
        );
    }

    #[test]
    fn hostile_plain_results_give_values_or_errors_and_exactly_count_of_them() {
        // Failures out of order, repeated, or past the end; too few and too many bytes.
        let cases = [
            arrival(&[1, 2, 3], 3, vec![boom(2), boom(0), boom(2), boom(90)]),
            arrival(&[1], 3, vec![]),
            arrival(&[1, 2, 3, 4, 5], 2, vec![]),
            arrival(&[], 2, vec![boom(0)]),
        ];
        for case in &cases {
            assert_eq!(decoded::<u32>(case).len(), case.count as usize);
        }
        assert_eq!(
            decoded::<u32>(&cases[1])[1..]
                .iter()
                .filter(|r| r.is_err())
                .count(),
            2
        );
        // Results said to be plain for a type that is not: every item fails.
        let strings = decoded::<String>(&cases[2]);
        assert_eq!(strings.len(), 2);
        assert!(strings.iter().all(|r| r.is_err()));
        // The bytes of a smaller type: too few for a u64 each.
        let wide = decoded::<u64>(&arrival(&[1, 2, 3], 3, vec![]));
        assert_eq!(wide.iter().filter(|r| r.is_ok()).count(), 1);
        assert_eq!(wide.len(), 3);
    }
}
