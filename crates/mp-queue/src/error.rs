use std::fmt;

/// Everything that can fail in `mp-queue`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No item came before the timeout, or none was there for a `try_get` (Python's
    /// `queue.Empty`).
    #[error("queue is empty")]
    Empty,
    /// No room came before the timeout, or none was there for a `try_put` (Python's
    /// `queue.Full`).
    #[error("queue is full")]
    Full,
    /// This handle was closed with `close` (Python raises `ValueError: Queue is closed`).
    #[error("queue is closed")]
    Closed,
    /// The item's encoding is larger than the queue's ring can hold.
    #[error(
        "an item of {len} bytes does not fit in a queue ring of {capacity} bytes (make the ring larger with Builder::capacity)"
    )]
    TooLarge {
        /// Bytes of the item's encoding.
        len: usize,
        /// Bytes of the ring.
        capacity: usize,
    },
    /// The item owns file descriptors; a queue carries bytes only (send such values over a
    /// `Connection`).
    #[error(
        "an item that owns {0} file descriptor(s) cannot go through a queue; send it over a pipe"
    )]
    CarriesDescriptors(usize),
    /// The item could not be encoded, or what was taken could not be decoded as the queue's
    /// item type: that one item is lost, and the queue goes on.
    #[error("queue item: {0}")]
    Codec(mp_codec::Error),
    /// Another process wrote bytes into the queue's memory that do not describe frames:
    /// the items in flight were dropped and the queue goes on.
    #[error("queue memory was corrupted by another process ({0}); items in flight were dropped")]
    Corrupted(String),
    /// The item was taken from us while we were putting it, or a big item's bytes never
    /// arrived (only another process writing into the queue's memory can do either).
    #[error("queue item was lost in transit")]
    Lost,
    /// The peer a [`Queue::get_raw`](crate::Queue::get_raw) or
    /// [`Queue::put_raw`](crate::Queue::put_raw) watched has hung up: nothing was there to
    /// take, or no room came before it went.
    #[error("the process at the other end has gone")]
    Disconnected,
    /// An item over the limit a [`Queue::get_raw_into`](crate::Queue::get_raw_into) set:
    /// taken and dropped.
    #[error("an item of {len} bytes is over the taker's limit of {max}")]
    OverLimit {
        /// The item's length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// `task_done` called more times than items were put (Python's `ValueError`).
    #[error("task_done() called too many times")]
    TooManyTaskDone,
    /// A `join` on a `JoinableQueue` timed out with tasks unfinished.
    #[error("{0} task(s) still unfinished")]
    Unfinished(u64),
    /// A system call failed: which one, and what the kernel said (in the message, so the
    /// top line says it all; the `io::Error` is there to match on, not a `source()`).
    #[error("{0} failed: {1}")]
    Os(&'static str, std::io::Error),
    /// A bad argument: what was wrong with it.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// A region was not a queue of this item type, or creating one failed.
    #[error(transparent)]
    Region(#[from] mp_sync::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A failed `put`, with the item handed back: nothing is lost.
pub struct PutError<T> {
    /// What went wrong: [`Error::Full`] after a timeout, [`Error::Closed`], …
    pub error: Error,
    /// The item, as given to `put`.
    pub item: T,
}

impl<T> PutError<T> {
    /// The item handed back.
    pub fn into_inner(self) -> T {
        self.item
    }
}

impl<T> fmt::Debug for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PutError")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<T> fmt::Display for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "put failed: {}", self.error)
    }
}

impl<T> std::error::Error for PutError<T> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// The codec's error is in the message, so it is not also a `source()` to print twice.
impl From<mp_codec::Error> for Error {
    fn from(e: mp_codec::Error) -> Error {
        Error::Codec(e)
    }
}

impl<T> From<PutError<T>> for Error {
    fn from(e: PutError<T>) -> Error {
        e.error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_error_says_what_failed_and_why_on_its_top_line() {
        let err = Error::Os("futex", std::io::Error::from_raw_os_error(22));
        assert_eq!(
            err.to_string(),
            "futex failed: Invalid argument (os error 22)"
        );
        // The cause is in the message, so it is not also a source a chain printer repeats.
        assert!(std::error::Error::source(&err).is_none());
    }

    #[test]
    fn an_item_that_does_not_decode_says_why_once() {
        let err = Error::from(mp_codec::Error::Closed);
        assert_eq!(err.to_string(), "queue item: connection closed by peer");
        assert!(std::error::Error::source(&err).is_none());
    }
}
