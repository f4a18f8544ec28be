//! `JoinableQueue<T>` and `SimpleQueue<T>`: a `Queue` with a count of unfinished tasks, and
//! a `Queue` with Python's smaller API.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use mp_codec::Message;
use serde::{Deserialize, Serialize};

use crate::{
    Error, PutError, Queue, Result,
    queue::Within,
    ring::{JOIN_SLEEPERS, JOINED, UNFINISHED},
    sys,
};

/// Python's `JoinableQueue`: a [`Queue`] that counts items put and not yet marked done with
/// [`task_done`](JoinableQueue::task_done), so that [`join`](JoinableQueue::join) can wait
/// for all of them.
///
/// A consumer that dies between its `get` and its `task_done` leaves that task unfinished
/// for ever (as in Python), and so does a producer killed inside a `put` (the item is
/// counted before it is published): at most one task per process killed. Use
/// [`join_timeout`](JoinableQueue::join_timeout) where that can happen.
///
/// ```
/// let q = multiprocessing::queues::JoinableQueue::<u32>::new()?;
/// q.put(1)?;
/// assert_eq!(q.get()?, 1);
/// q.task_done()?;
/// q.join();
/// assert!(q.task_done().is_err()); // one too many
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound(deserialize = "T: Message"))]
pub struct JoinableQueue<T> {
    queue: Queue<T>,
}

impl<T> Clone for JoinableQueue<T> {
    fn clone(&self) -> Self {
        JoinableQueue {
            queue: self.queue.clone(),
        }
    }
}

impl<T: Message> JoinableQueue<T> {
    /// An unbounded joinable queue.
    ///
    /// # Errors
    /// As [`Queue::new`].
    pub fn new() -> Result<Self> {
        Ok(JoinableQueue {
            queue: Queue::new()?,
        })
    }

    /// A joinable queue of at most `maxsize` items.
    ///
    /// # Errors
    /// As [`Queue::new`].
    pub fn with_maxsize(maxsize: usize) -> Result<Self> {
        Ok(JoinableQueue {
            queue: Queue::with_maxsize(maxsize)?,
        })
    }

    /// Over a queue nobody else holds yet ([`Builder::build_joinable`](crate::Builder)).
    pub(crate) fn over(queue: Queue<T>) -> Self {
        JoinableQueue { queue }
    }

    /// The queue underneath, for everything but `put`.
    pub fn queue(&self) -> &Queue<T> {
        &self.queue
    }

    fn put_until(&self, item: T, within: Within) -> Result<(), PutError<T>> {
        // Counted before the item can be seen (a consumer's task_done must find it
        // counted), and uncounted if the put fails.
        let unfinished = self.queue.word(UNFINISHED);
        unfinished.fetch_add(1, Ordering::SeqCst);
        match self.queue.put_frame(&item, within) {
            Ok(()) => Ok(()),
            Err(error) => {
                let _ = self.task_done();
                Err(PutError { error, item })
            }
        }
    }

    /// [`Queue::put`], counting one more unfinished task.
    ///
    /// # Errors
    /// As [`Queue::put`].
    pub fn put(&self, item: T) -> Result<(), PutError<T>> {
        self.put_until(item, Within::Forever)
    }

    /// [`Queue::try_put`], counting one more unfinished task.
    ///
    /// # Errors
    /// As [`Queue::try_put`].
    pub fn try_put(&self, item: T) -> Result<(), PutError<T>> {
        self.put_until(item, Within::Now)
    }

    /// [`Queue::put_timeout`], counting one more unfinished task.
    ///
    /// # Errors
    /// As [`Queue::put_timeout`].
    pub fn put_timeout(&self, item: T, timeout: Duration) -> Result<(), PutError<T>> {
        self.put_until(item, Within::Time(timeout))
    }

    /// [`Queue::get`].
    ///
    /// # Errors
    /// As [`Queue::get`].
    pub fn get(&self) -> Result<T> {
        self.queue.get()
    }

    /// [`Queue::try_get`].
    ///
    /// # Errors
    /// As [`Queue::try_get`].
    pub fn try_get(&self) -> Result<T> {
        self.queue.try_get()
    }

    /// [`Queue::get_timeout`].
    ///
    /// # Errors
    /// As [`Queue::get_timeout`].
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        self.queue.get_timeout(timeout)
    }

    /// Marks one task taken with `get` as done.
    ///
    /// # Errors
    /// [`Error::TooManyTaskDone`] if no task is unfinished (Python's `ValueError`).
    pub fn task_done(&self) -> Result<()> {
        let unfinished = self.queue.word(UNFINISHED);
        let before = unfinished
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .map_err(|_| Error::TooManyTaskDone)?;
        if before == 1 {
            let joined = self.queue.word32(JOINED);
            joined.fetch_add(1, Ordering::SeqCst);
            if self.queue.word32(JOIN_SLEEPERS).load(Ordering::SeqCst) > 0 {
                sys::futex_wake_all(joined);
            }
        }
        Ok(())
    }

    /// Tasks put and not yet marked done (a snapshot).
    pub fn unfinished(&self) -> u64 {
        self.queue.word(UNFINISHED).load(Ordering::SeqCst)
    }

    /// Waits until every task put has been marked done.
    pub fn join(&self) {
        let _ = self.join_until(None);
    }

    /// Waits at most `timeout` for every task to be marked done.
    ///
    /// # Errors
    /// [`Error::Unfinished`] with the count left when the timeout passes.
    pub fn join_timeout(&self, timeout: Duration) -> Result<()> {
        self.join_until(Instant::now().checked_add(timeout))
    }

    fn join_until(&self, deadline: Option<Instant>) -> Result<()> {
        let joined = self.queue.word32(JOINED);
        let sleepers = self.queue.word32(JOIN_SLEEPERS);
        loop {
            sleepers.fetch_add(1, Ordering::SeqCst);
            let seen = joined.load(Ordering::SeqCst);
            let left = self.unfinished();
            let now = Instant::now();
            let timeout = deadline.map(|d| d.saturating_duration_since(now));
            if left == 0 || timeout == Some(Duration::ZERO) {
                sleepers.fetch_sub(1, Ordering::SeqCst);
                return if left == 0 {
                    Ok(())
                } else {
                    Err(Error::Unfinished(left))
                };
            }
            sys::futex_wait(joined, seen, timeout);
            sleepers.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Python's `SimpleQueue`: an unbounded queue with just `put`, `get`, `empty` and `close`.
///
/// ```
/// let q = multiprocessing::queues::SimpleQueue::<(u8, String)>::new()?;
/// q.put((1, "one".into()))?;
/// assert!(!q.empty());
/// assert_eq!(q.get()?, (1, "one".to_string()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound(deserialize = "T: Message"))]
pub struct SimpleQueue<T> {
    queue: Queue<T>,
}

impl<T> Clone for SimpleQueue<T> {
    fn clone(&self) -> Self {
        SimpleQueue {
            queue: self.queue.clone(),
        }
    }
}

impl<T: Message> SimpleQueue<T> {
    /// A new simple queue.
    ///
    /// # Errors
    /// As [`Queue::new`].
    pub fn new() -> Result<Self> {
        Ok(SimpleQueue {
            queue: Queue::new()?,
        })
    }

    /// Over a queue nobody else holds yet ([`Builder::build_simple`](crate::Builder)).
    pub(crate) fn over(queue: Queue<T>) -> Self {
        SimpleQueue { queue }
    }

    /// Puts `item`, waiting for room in the ring if it is full.
    ///
    /// # Errors
    /// As [`Queue::put`].
    pub fn put(&self, item: T) -> Result<(), PutError<T>> {
        self.queue.put(item)
    }

    /// Takes the oldest item, waiting for one.
    ///
    /// # Errors
    /// As [`Queue::get`].
    pub fn get(&self) -> Result<T> {
        self.queue.get()
    }

    /// Whether no item could be taken right now.
    pub fn empty(&self) -> bool {
        self.queue.empty()
    }

    /// Closes this handle in this process (see [`Queue::close`]).
    pub fn close(&self) {
        self.queue.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_waits_for_every_task_done() {
        let q = JoinableQueue::<u32>::new().unwrap();
        for i in 0..3 {
            q.put(i).unwrap();
        }
        assert!(matches!(
            q.join_timeout(Duration::from_millis(10)),
            Err(Error::Unfinished(3))
        ));
        let worker = {
            let q = q.clone();
            std::thread::spawn(move || {
                for _ in 0..3 {
                    q.get().unwrap();
                    q.task_done().unwrap();
                }
            })
        };
        q.join_timeout(Duration::from_secs(30)).unwrap();
        worker.join().unwrap();
        assert!(matches!(q.task_done(), Err(Error::TooManyTaskDone)));
    }

    #[test]
    fn a_failed_put_counts_no_task() {
        let q = JoinableQueue::<u8>::with_maxsize(1).unwrap();
        q.put(1).unwrap();
        assert!(q.try_put(2).is_err());
        assert_eq!(q.unfinished(), 1);
    }
}
