use std::io;

/// Everything that can fail in `mp-pipe`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The peer closed its end (Python raises `EOFError`).
    #[error("connection closed by peer")]
    Eof,
    /// The operation needs the other direction of a one-way pipe.
    #[error("connection is {0}-only")]
    WrongDirection(&'static str),
    /// A message was longer than the limit asked for; the connection is no longer readable,
    /// as in CPython (`OSError: bad message length`).
    #[error("bad message length: {len} bytes, limit {max}")]
    BadMessageLength {
        /// What the peer announced.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// An earlier failure left a message half-read, so this connection can no longer be read.
    #[error("connection is no longer readable after an earlier error")]
    Unreadable,
    /// `recv_bytes_into`'s buffer was too small; the whole message is here (Python's
    /// `BufferTooShort`).
    #[error("buffer too short for a {}-byte message", .0.len())]
    BufferTooShort(Vec<u8>),
    /// Descriptors travel only over unix sockets (duplex pipes, unix listeners).
    #[error("file descriptors can only be sent over a unix socket, not a {0}")]
    FdsNeedUnixSocket(&'static str),
    /// The peer could not prove it knows the authkey, or we could not (Python's
    /// `AuthenticationError`).
    #[error("authentication failed: {0}")]
    Authentication(String),
    /// The other side did not finish the authentication handshake in time.
    #[error("authentication handshake timed out")]
    HandshakeTimeout,
    /// An address that is neither a unix path, an abstract name nor `host:port`.
    #[error("bad address {0:?}: {1}")]
    BadAddress(String, &'static str),
    /// Encoding or decoding a message failed; the connection stays usable.
    #[error(transparent)]
    Codec(mp_codec::Error),
    /// Binding a listener to an address, or connecting to one, failed: the call, the address
    /// and what the kernel said (e.g. `ECONNREFUSED`, `EADDRINUSE`).
    #[error("{op} to {address} failed: {error}")]
    Socket {
        /// `"bind"` or `"connect"`.
        op: &'static str,
        /// The address it was given.
        address: crate::Address,
        /// What the kernel said.
        error: io::Error,
    },
    /// A system call failed: which one, and what the kernel said (in the message, so the
    /// top line says it all; the `io::Error` is there to match on, not a `source()`).
    #[error("{0} failed: {1}")]
    Os(&'static str, io::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn socket(
        op: &'static str,
        address: &crate::Address,
    ) -> impl FnOnce(io::Error) -> Self {
        move |error| Error::Socket {
            op,
            address: address.clone(),
            error,
        }
    }

    pub(crate) fn os(op: &'static str, err: impl Into<io::Error>) -> Self {
        Error::Os(op, err.into())
    }

    /// The error number when a system call failed, e.g. `EPIPE` for a peer that has gone.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::Os(_, e) | Error::Socket { error: e, .. } => e.raw_os_error(),
            Error::Codec(e) => e.raw_os_error(),
            _ => None,
        }
    }

    /// Whether the peer has gone: end of file, or a write that found no reader (`EPIPE`,
    /// `ECONNRESET`).
    pub fn is_disconnect(&self) -> bool {
        matches!(self, Error::Eof)
            || matches!(
                self.raw_os_error(),
                Some(e) if e == rustix::io::Errno::PIPE.raw_os_error()
                    || e == rustix::io::Errno::CONNRESET.raw_os_error()
            )
    }
}

impl From<mp_codec::Error> for Error {
    fn from(err: mp_codec::Error) -> Self {
        match err {
            mp_codec::Error::Closed => Error::Eof,
            mp_codec::Error::TooLarge { len, max } => Error::BadMessageLength { len, max },
            other => Error::Codec(other),
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
