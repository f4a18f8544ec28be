use std::io;

/// Everything that can fail in `mp-codec`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes are not an encoding of the expected type.
    #[error("malformed message: {0}")]
    Malformed(Box<dyn std::error::Error + Send + Sync + 'static>),
    /// The value could not be encoded (a `Serialize` impl failed).
    #[error("cannot encode message: {0}")]
    Encode(Box<dyn std::error::Error + Send + Sync + 'static>),
    /// A fixed-size value arrived with the wrong number of bytes.
    #[error("expected a {expected}-byte message, got {}", bytes(*found))]
    WrongSize {
        /// The size of the type being decoded.
        expected: usize,
        /// The size of the frame.
        found: usize,
    },
    /// The message decoded but bytes were left over: it was not of the expected type.
    #[error("message is not a {expected}: {} left over after decoding one", bytes(*left))]
    TrailingBytes {
        /// The type being decoded (its `std::any::type_name`).
        expected: &'static str,
        /// How many bytes were left.
        left: usize,
    },
    /// The message nests deeper than [`MAX_DEPTH`](crate::MAX_DEPTH) levels (sequences, maps,
    /// structs, enum variants, options, newtypes), which could exhaust the decoding thread's
    /// stack; decoding stopped there.
    #[error("message nests deeper than {0} levels")]
    TooDeep(usize),
    /// The message refers to a file descriptor that its frame does not carry (or refers to it
    /// twice).
    #[error("message refers to fd #{0}, which its frame does not carry")]
    MissingFd(u32),
    /// A frame's length prefix exceeds the configured maximum; nothing was allocated for it.
    #[error("message of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The length the peer announced (or the sender tried to send).
        len: u64,
        /// The configured maximum.
        max: u64,
    },
    /// A frame may carry at most [`wire::MAX_FDS`](crate::wire::MAX_FDS) descriptors.
    #[error("a message can carry at most {max} file descriptors, this one has {count}")]
    TooManyFds {
        /// How many descriptors the frame holds.
        count: usize,
        /// The limit of one `SCM_RIGHTS` message.
        max: usize,
    },
    /// The kernel dropped some of the descriptors sent with a frame (`MSG_CTRUNC`).
    #[error("file descriptors sent with the message were truncated by the kernel")]
    FdsTruncated,
    /// The descriptor is non-blocking and no message has begun to arrive; nothing was read.
    #[error("no message is ready")]
    WouldBlock,
    /// The peer closed its end before a new message began (Python raises `EOFError`).
    #[error("connection closed by peer")]
    Closed,
    /// The peer closed its end in the middle of a message.
    #[error("connection closed after {got} of {expected} bytes of a message")]
    Truncated {
        /// Bytes of the frame (header and payload) that were expected.
        expected: u64,
        /// Bytes that arrived before end of file.
        got: u64,
    },
    /// A system call failed: which one, and what the kernel said (in the message, so the
    /// top line says it all; the `io::Error` is there to match on, not a `source()`).
    #[error("{0} failed: {1}")]
    Os(&'static str, io::Error),
}

/// `n` bytes, in words: `1 byte`, `5 bytes`.
fn bytes(n: usize) -> String {
    if n == 1 {
        "1 byte".into()
    } else {
        format!("{n} bytes")
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn os(op: &'static str, errno: impl Into<io::Error>) -> Self {
        Error::Os(op, errno.into())
    }

    /// The error number when a system call failed, e.g. `EPIPE` after the peer closed.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::Os(_, e) => e.raw_os_error(),
            Error::WouldBlock => Some(rustix::io::Errno::AGAIN.raw_os_error()),
            _ => None,
        }
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
