use std::io;

/// Everything that can fail in `mp-shm`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An element index past the end (Python's `IndexError`).
    #[error("index {index} out of range for length {len}")]
    IndexOutOfRange {
        /// The index asked for.
        index: usize,
        /// The array's length.
        len: usize,
    },
    /// A slice `start..start + count` past the end.
    #[error("range {start}..{start}+{count} out of range for length {len}")]
    RangeOutOfRange {
        /// First element.
        start: usize,
        /// Number of elements.
        count: usize,
        /// The array's length.
        len: usize,
    },
    /// A shared memory name Python would not accept, or one with a NUL.
    #[error("bad shared memory name {0:?}: {1}")]
    BadName(String, &'static str),
    /// A size of zero, or one too large to map.
    #[error("bad size {0}: {1}")]
    BadSize(usize, &'static str),
    /// `SharedMemory::create` of a name that exists (Python's `FileExistsError`).
    #[error("shared memory {0:?} already exists")]
    AlreadyExists(String),
    /// `SharedMemory::open` of a name that does not exist (Python's `FileNotFoundError`).
    #[error("shared memory {0:?} not found")]
    NotFound(String),
    /// `SharedMemory::open` found something under the name that is not a shared memory
    /// segment: a symbolic link (never followed: whoever can write `/dev/shm` could point it
    /// at any file of ours), a directory, a FIFO, a socket or a device.
    #[error("shared memory {0:?} is not a segment: {1}")]
    NotASegment(String, &'static str),
    /// A `SharedMemory` read or write reaching past the end of a segment that another handle
    /// or process shrank (`ftruncate`) below this handle's mapping. Touching those pages
    /// would raise `SIGBUS`, so the access is refused: a write writes nothing, a read may
    /// have filled its buffer up to the segment's new end.
    #[error("{op} of shared memory {name:?} needs {needed} bytes, but it shrank to {len}")]
    Truncated {
        /// `"read"` or `"write"`.
        op: &'static str,
        /// The segment's name.
        name: String,
        /// The end of the range asked for (offset plus length).
        needed: usize,
        /// The segment's size now.
        len: usize,
    },
    /// Creating, attaching or locking the region failed (see the synchronization crate's `Error`, `synchronize::Error` through the umbrella).
    #[error(transparent)]
    Sync(#[from] mp_sync::Error),
    /// A system call failed: which one, and what the kernel said (in the message, so the
    /// top line says it all; the `io::Error` is there to match on, not a `source()`).
    #[error("{0} failed: {1}")]
    Os(&'static str, io::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

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
}
