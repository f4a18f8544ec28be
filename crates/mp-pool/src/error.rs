use std::{fmt, sync::Arc, time::Duration};

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it (`SIGKILL` is 9, `SIGSEGV` 11).
    Signal(i32),
}

impl ExitStatus {
    /// From Python's `exitcode`: the negated signal number for a signal.
    pub(crate) fn from_exitcode(code: i32) -> Self {
        if code < 0 {
            ExitStatus::Signal(-code)
        } else {
            ExitStatus::Code(code)
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitStatus::Code(code) => write!(f, "exit code {code}"),
            ExitStatus::Signal(signal) => {
                let name = match signal {
                    libc::SIGKILL => "SIGKILL",
                    libc::SIGSEGV => "SIGSEGV",
                    libc::SIGTERM => "SIGTERM",
                    libc::SIGABRT => "SIGABRT",
                    libc::SIGBUS => "SIGBUS",
                    libc::SIGINT => "SIGINT",
                    libc::SIGILL => "SIGILL",
                    libc::SIGFPE => "SIGFPE",
                    _ => return write!(f, "killed by signal {signal}"),
                };
                write!(f, "killed by signal {signal}, {name}")
            }
        }
    }
}

/// Everything that can fail in `mp-pool`. It is `Clone`: one failure (a terminated pool)
/// reaches every result waiting on it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The task panicked; the message is the panic's.
    #[error("task panicked: {message}")]
    Panicked {
        /// The panic message.
        message: String,
    },
    /// The worker running the task died before it replied: killed by a signal, or it
    /// exited (`exit(123)`, an abort, the out-of-memory killer). The pool replaced it.
    #[error("worker process {pid} was lost ({status}) while it held the task")]
    WorkerLost {
        /// The worker's pid.
        pid: u32,
        /// How it ended.
        status: ExitStatus,
    },
    /// The task ran past the pool's task timeout: its worker was killed and replaced.
    #[error("task timed out after {after:?}; its worker process {pid} was killed")]
    TaskTimeout {
        /// The worker's pid.
        pid: u32,
        /// The timeout it passed.
        after: Duration,
    },
    /// An argument (in the parent) or a result (in the worker) could not be encoded.
    #[error("cannot encode a {type_name}: {reason}")]
    Encode {
        /// The type.
        type_name: String,
        /// What the codec said.
        reason: String,
    },
    /// An argument (in the worker) or a result (in the parent) could not be decoded.
    #[error("cannot decode a {type_name}: {reason}")]
    Decode {
        /// The type.
        type_name: String,
        /// What the codec said.
        reason: String,
    },
    /// The pool was terminated (by `terminate`, or by dropping it) before the task finished.
    #[error("pool terminated")]
    Terminated,
    /// The pool was closed: it takes no new work.
    #[error("pool is closed: it takes no new work")]
    Closed,
    /// SIGINT (Ctrl-C) came while this process waited on the pool: the pool was terminated
    /// (its workers killed and reaped) and the wait returned.
    #[error("interrupted by SIGINT: the pool was terminated")]
    Interrupted,
    /// No result before the timeout; the task goes on, and the result can be waited for
    /// again.
    #[error("timed out waiting for the result")]
    Timeout,
    /// A worker's initializer failed: the pool stops (rather than start workers that fail
    /// the same way for ever, as Python's does) and fails every task.
    #[error("pool initializer failed in worker process {pid}: {message}")]
    Initializer {
        /// The worker's pid.
        pid: u32,
        /// The panic message, or why it could not run.
        message: String,
    },
    /// `join` before `close` or `terminate` (Python's `ValueError: Pool is still running`).
    #[error("pool is still running: close or terminate it before join")]
    Running,
    /// A bad argument: what was wrong with it.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// A worker could not be started (or a target is not in the executable).
    #[error(transparent)]
    Spawn(Arc<mp_spawn::Error>),
    /// A queue between the pool and its workers failed.
    #[error(transparent)]
    Queue(Arc<mp_queue::Error>),
    /// A system call failed: which one, and what the kernel said.
    #[error("{0} failed: {1}")]
    Os(&'static str, Arc<std::io::Error>),
}

impl From<mp_spawn::Error> for Error {
    fn from(err: mp_spawn::Error) -> Self {
        Error::Spawn(Arc::new(err))
    }
}

impl From<mp_queue::Error> for Error {
    fn from(err: mp_queue::Error) -> Self {
        Error::Queue(Arc::new(err))
    }
}

impl<T> From<mp_queue::PutError<T>> for Error {
    fn from(err: mp_queue::PutError<T>) -> Self {
        Error::Queue(Arc::new(err.into()))
    }
}

impl From<mp_spawn::CallError> for Error {
    fn from(err: mp_spawn::CallError) -> Self {
        use mp_spawn::CallError as C;
        match err {
            C::Panicked(message) => Error::Panicked { message },
            C::Decode { type_name, reason } => Error::Decode { type_name, reason },
            C::Encode { type_name, reason } => Error::Encode { type_name, reason },
            other => Error::Decode {
                type_name: "the task".into(),
                reason: other.to_string(),
            },
        }
    }
}

impl Error {
    pub(crate) fn os(op: &'static str, err: impl Into<std::io::Error>) -> Self {
        Error::Os(op, Arc::new(err.into()))
    }

    pub(crate) fn decode<T>(reason: impl fmt::Display) -> Self {
        Error::Decode {
            type_name: std::any::type_name::<T>().into(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn encode<T>(reason: impl fmt::Display) -> Self {
        Error::Encode {
            type_name: std::any::type_name::<T>().into(),
            reason: reason.to_string(),
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_worker_says_how_it_ended() {
        let err = Error::WorkerLost {
            pid: 42,
            status: ExitStatus::Signal(9),
        };
        assert_eq!(
            err.to_string(),
            "worker process 42 was lost (killed by signal 9, SIGKILL) while it held the task"
        );
        let err = Error::WorkerLost {
            pid: 42,
            status: ExitStatus::from_exitcode(123),
        };
        assert!(err.to_string().contains("exit code 123"), "{err}");
    }
}
