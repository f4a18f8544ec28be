use std::io;

/// Everything that can fail in `mp-sync`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `release` of a lock nobody holds (Python: `ValueError: semaphore or lock released too
    /// many times`) or a condition used without holding its lock (`RuntimeError`).
    #[error("cannot release or wait on an un-acquired lock")]
    NotHeld,
    /// An `RLock` (or a condition's lock) released by a thread that does not own it.
    #[error("cannot release a lock owned by another thread or process")]
    NotOwner,
    /// A `BoundedSemaphore` released more often than acquired (Python's `ValueError`).
    #[error("bounded semaphore released too many times")]
    TooManyReleases,
    /// A semaphore's value would pass [`MAX_SEMAPHORE_VALUE`](crate::MAX_SEMAPHORE_VALUE).
    #[error("semaphore value would exceed {}", crate::MAX_SEMAPHORE_VALUE)]
    Overflow,
    /// The process that held the lock died; the caller now holds it and should repair the
    /// state it protects (like `EOWNERDEAD`).
    #[error("the previous owner died holding the lock; the caller holds it now")]
    OwnerDied,
    /// The barrier was aborted, reset while waiting, or broken by a timeout, a panicking
    /// action, or an enrolled party that died before arriving (Python's
    /// `BrokenBarrierError`).
    #[error("the barrier is broken")]
    BrokenBarrier,
    /// This caller's wait at a barrier timed out; the barrier is broken for everyone.
    #[error("timed out waiting at the barrier; it is now broken")]
    BarrierTimeout,
    /// An argument out of range, e.g. a barrier for zero parties.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// A shared region's header does not describe what the caller expected to attach.
    #[error("shared region rejected: {0}")]
    BadRegion(String),
    /// A handle that cannot cross a process boundary, e.g. a barrier with an action.
    #[error("cannot send: {0}")]
    NotSendable(&'static str),
    /// A system call failed: which one, and what the kernel said (in the message, so the
    /// top line says it all; the `io::Error` is there to match on, not a `source()`).
    #[error("{0} failed: {1}")]
    Os(&'static str, io::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn os(op: &'static str, err: impl Into<io::Error>) -> Self {
        Error::Os(op, err.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_error_says_what_failed_and_why_on_its_top_line() {
        let err = Error::os("futex", std::io::Error::from_raw_os_error(22));
        assert_eq!(
            err.to_string(),
            "futex failed: Invalid argument (os error 22)"
        );
        // The cause is in the message, so it is not also a source a chain printer repeats.
        assert!(std::error::Error::source(&err).is_none());
    }
}
