use std::io;

/// Everything that can fail in `mp-spawn`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The target panicked; the message is the panic's.
    #[error("process {name} panicked: {message}")]
    Panicked {
        /// The process's name.
        name: String,
        /// The panic message.
        message: String,
    },
    /// The process exited without returning a value (`exit(N)`, or it was never reached).
    #[error("process {name} exited with code {code} without returning a value")]
    Exited {
        /// The process's name.
        name: String,
        /// The exit code.
        code: i32,
    },
    /// The process was killed by a signal (its `exitcode` is the negated signal number).
    #[error("process {name} was killed by signal {signal}")]
    Killed {
        /// The process's name.
        name: String,
        /// The signal number.
        signal: i32,
    },
    /// The child could not begin running the target: a corrupted or mismatched bootstrap
    /// message, one that names no target of the executable's table or one of other types,
    /// arguments that did not decode, or a different executable.
    #[error("process {name} could not start: {message}")]
    StartFailed {
        /// The process's name.
        name: String,
        /// What went wrong, as the child saw it.
        message: String,
    },
    /// The process's value was already taken by an earlier `join`.
    #[error("process {0} was already joined")]
    AlreadyJoined(String),
    /// A closure that captures can only run in a forked child.
    #[error("closures can only be started with the fork start method")]
    ForkOnly,
    /// `set_start_method` was already called (pass `force` to change it).
    #[error("the start method has already been set")]
    StartMethodAlreadySet,
    /// The target (or this crate) lives in a shared library, not in the executable, or the
    /// executable's table of targets lacks it: an exec'd child could not find it. Use the
    /// fork start method.
    #[error("the target is not in the executable (a shared library?): use the fork start method")]
    NotInExecutable,
    /// A [`TargetId`](crate::TargetId) that names no target of this executable: made by
    /// another build, corrupted, or forged.
    #[error("unknown target: {0}")]
    UnknownTarget(String),
    /// This process was started as a child but its entry point did not run (the constructor
    /// was not linked); refusing to start more processes rather than recursing.
    #[error("child entry did not run in this process; refusing to spawn recursively")]
    RecursiveSpawn,
    /// Sending the bootstrap or receiving the result failed.
    #[error(transparent)]
    Pipe(#[from] mp_pipe::Error),
    /// Encoding the arguments or decoding the result failed.
    #[error(transparent)]
    Codec(#[from] mp_codec::Error),
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
