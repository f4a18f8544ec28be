use std::{
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd},
    sync::{
        Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use mp_codec::{Decode, Encode, Frame, wire};
use serde::{Deserialize, Serialize};

use crate::{Error, Result, ring, sys};

/// What carries a connection's bytes; decides whether descriptors can travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(test, derive(Serialize))]
pub(crate) enum Transport {
    /// A unix stream socket: duplex, carries descriptors.
    Unix,
    /// A TCP socket: duplex, bytes only.
    Tcp,
    /// One end of a `pipe2`: one direction, bytes only.
    Pipe,
    /// Shared-memory rings between our own processes (see [`pipe`]): carries descriptors.
    Ring,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Unix => "unix socket",
            Transport::Tcp => "TCP socket",
            Transport::Pipe => "pipe",
            Transport::Ring => "shared-memory ring",
        }
    }
}

/// Returns the two ends of a new pipe, as Python's `multiprocessing.Pipe(duplex)`, for our
/// own processes: messages go through shared memory.
///
/// Each direction is a ring of frames in shared memory (the ring of `mp-queue`, see its
/// docs), with a unix socket pair beside them whose hang-up tells each end that the other
/// has gone. A busy exchange makes no system call: a receiver spins for a moment before it
/// sleeps, and is woken only if it sleeps. A round trip of a small message takes under a
/// microsecond where a socket's takes tens (each side wakes a sleeping CPU). Duplex
/// (`true`): both ends send and receive; simplex (`false`): the first end only receives,
/// the second only sends. Messages may carry file descriptors either way.
///
/// The ends behave as [`socket_pipe`]'s do: whole messages, EOF once every holder of the
/// other end has closed it or died (after the messages it finished sending), a send to an
/// end that has gone fails with `EPIPE` (within a millisecond of the going: see
/// [`Connection::send`]), [`wait`](crate::wait) and [`Connection::poll`] work on them, and
/// an end is a [`Message`](mp_codec::Message): a child gets it as an argument under every
/// start method. A process killed in the middle of a send leaves nothing half-sent.
///
/// What it costs: each end holds nine descriptors (the socket's one holds one), and
/// its rings are 4 MiB of shared memory each, of which a pipe of small messages touches a
/// few pages. A peer that is not ours (a CPython process, say) needs [`socket_pipe`],
/// which speaks CPython's wire format.
///
/// ```
/// let (reader, writer) = multiprocessing::connection::pipe(false)?;
/// writer.send(&(1, "one"))?;
/// assert_eq!(reader.recv::<(i32, String)>()?, (1, "one".to_string()));
/// assert!(reader.send(&0).is_err()); // read-only end
/// drop(writer);
/// assert!(matches!(reader.recv_bytes(), Err(multiprocessing::connection::Error::Eof)));
/// # Ok::<(), multiprocessing::connection::Error>(())
/// ```
///
/// # Errors
/// [`Error::Os`] when the kernel is out of descriptors or memory.
pub fn pipe(duplex: bool) -> Result<(Connection, Connection)> {
    let (life_a, life_b) = sys::socketpair()?;
    let ab = ring::channel()?;
    if duplex {
        let ba = ring::channel()?;
        Ok((
            Connection::over_rings(life_a, Some(ba.clone()), Some(ab.clone())),
            Connection::over_rings(life_b, Some(ab), Some(ba)),
        ))
    } else {
        Ok((
            Connection::over_rings(life_a, Some(ab.clone()), None),
            Connection::over_rings(life_b, None, Some(ab)),
        ))
    }
}

/// Returns the two ends of a new pipe on the kernel's descriptors, speaking CPython's wire
/// format: what `pipe` was before it moved to shared memory, for a peer that is not one of
/// ours (a Python process handed the descriptor), or to compare.
///
/// Duplex (`true`) is a unix `socketpair`: both ends send and receive, and messages may carry
/// file descriptors. Simplex (`false`) is a `pipe2`: the first end only receives, the second
/// only sends. Every descriptor is close-on-exec.
///
/// ```
/// let (reader, writer) = multiprocessing::connection::socket_pipe(false)?;
/// writer.send(&(1, "one"))?;
/// assert_eq!(reader.recv::<(i32, String)>()?, (1, "one".to_string()));
/// assert!(reader.send(&0).is_err()); // read-only end
/// # Ok::<(), multiprocessing::connection::Error>(())
/// ```
///
/// # Errors
/// [`Error::Os`] when the kernel is out of descriptors.
pub fn socket_pipe(duplex: bool) -> Result<(Connection, Connection)> {
    if duplex {
        let (a, b) = sys::socketpair()?;
        Ok((
            Connection::new(a, Transport::Unix, true, true),
            Connection::new(b, Transport::Unix, true, true),
        ))
    } else {
        let (r, w) = sys::pipe()?;
        Ok((
            Connection::new(r, Transport::Pipe, true, false),
            Connection::new(w, Transport::Pipe, false, true),
        ))
    }
}

/// One end of a message pipe: Python's `multiprocessing.connection.Connection`.
///
/// Messages are whole: never merged, never split. Senders are serialized against each other
/// and so are receivers, so a `Connection` can be shared between threads without
/// interleaving frames. A connection is made by [`pipe`] (shared-memory rings, between our
/// own processes), by [`socket_pipe`], or by a [`Listener`](crate::Listener) or
/// [`Client`](crate::Client); on the last three the bytes on the wire are CPython's
/// (`send_bytes` here is `recv_bytes` there).
///
/// A connection is a [`Message`](mp_codec::Message) itself: send it to another process (over
/// a unix socket, a ring pipe, or as a `Process` argument) and the receiver gets its own
/// handle on the same end. A socket or pipe travels as its descriptor alone: the receiver
/// learns what it holds from the descriptor itself — a pipe end (read-only or write-only by
/// its access mode), a unix or a TCP stream socket — and applies its own default message
/// limit: a peer's bytes cannot make a read end writable, a pipe pass for a socket, or lift
/// the limit. Any other descriptor is refused (the codec's
/// [`Malformed`](mp_codec::Error::Malformed) error) and closed. A ring end travels as its
/// rings' queue handles, which check their own parts, and its lifeline, which must be a
/// unix stream socket.
///
/// ```
/// let (a, b) = multiprocessing::connection::pipe(true)?;
/// a.send_bytes(b"ping")?;
/// assert!(b.poll(Some(std::time::Duration::ZERO))?);
/// assert_eq!(b.recv_bytes()?, b"ping");
/// drop(a);
/// assert!(matches!(b.recv_bytes(), Err(multiprocessing::connection::Error::Eof)));
/// # Ok::<(), multiprocessing::connection::Error>(())
/// ```
#[derive(Debug)]
pub struct Connection {
    /// The socket or pipe; for a ring connection, the lifeline.
    fd: OwnedFd,
    transport: Transport,
    readable: bool,
    writable: bool,
    max_len: usize,
    send: Mutex<Frame>,
    recv: Mutex<Incoming>,
    /// The rings, for a connection made by [`pipe`].
    rings: Option<Box<ring::Rings>>,
    /// [`set_nonblocking`](Connection::set_nonblocking), for a ring connection.
    nonblocking: AtomicBool,
}

/// What a connection sends of itself. A socket or pipe is its descriptor alone: the
/// receiver learns what it is from the descriptor, never from the bytes.
#[derive(Serialize)]
enum WireOut<'a> {
    Descriptor(#[serde(serialize_with = "mp_codec::fd::serialize")] &'a OwnedFd),
    Rings(ring::PartsOut<'a>),
}

#[derive(Deserialize)]
enum WireIn {
    Descriptor(#[serde(deserialize_with = "mp_codec::fd::deserialize")] OwnedFd),
    Rings(ring::PartsIn),
}

impl Serialize for Connection {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.rings {
            None => WireOut::Descriptor(&self.fd),
            Some(rings) => WireOut::Rings(ring::PartsOut {
                rx: rings.rx.as_ref(),
                tx: rings.tx.as_ref(),
                life: &self.fd,
            }),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Connection {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match WireIn::deserialize(deserializer)? {
            WireIn::Descriptor(fd) => Connection::from_received(fd),
            WireIn::Rings(parts) => Connection::from_received_rings(parts),
        }
        .map_err(mp_codec::fd::rejected)
    }
}

#[derive(Debug, Default)]
struct Incoming {
    frame: Frame,
    /// A failure left a frame half-read: the stream is out of step.
    broken: bool,
}

impl Connection {
    pub(crate) fn new(fd: OwnedFd, transport: Transport, readable: bool, writable: bool) -> Self {
        Connection {
            fd,
            transport,
            readable,
            writable,
            max_len: wire::DEFAULT_MAX_LEN,
            send: Mutex::default(),
            recv: Mutex::default(),
            rings: None,
            nonblocking: AtomicBool::new(false),
        }
    }

    fn over_rings(life: OwnedFd, rx: Option<ring::Channel>, tx: Option<ring::Channel>) -> Self {
        let mut conn = Connection::new(life, Transport::Ring, rx.is_some(), tx.is_some());
        conn.rings = Some(Box::new(ring::Rings::new(rx, tx)));
        conn
    }

    /// A ring connection that came from a peer: its rings were checked by the queue as they
    /// arrived; its lifeline must be a unix stream socket; what it can do follows from the
    /// rings it has.
    fn from_received_rings(parts: ring::PartsIn) -> Result<Self, String> {
        use rustix::net::{AddressFamily, SocketType};
        let found = sys::describe(&parts.life).map_err(|e| format!("received lifeline: {e}"))?;
        if found.socket != Some((SocketType::STREAM, AddressFamily::UNIX)) {
            return Err("a ring connection's lifeline must be a unix stream socket".into());
        }
        if parts.rx.is_none() && parts.tx.is_none() {
            return Err("a ring connection came with no ring".into());
        }
        Ok(Connection::over_rings(parts.life, parts.rx, parts.tx))
    }

    /// A connection for a descriptor that came from a peer, described by the descriptor alone
    /// (its file type, access mode, socket type and family) and this side's defaults; on error
    /// the descriptor is closed.
    fn from_received(fd: OwnedFd) -> Result<Self, String> {
        use rustix::{
            fs::FileType,
            net::{AddressFamily, SocketType},
        };
        let found = sys::describe(&fd).map_err(|e| format!("received descriptor: {e}"))?;
        let transport = match (found.file_type, found.socket) {
            (FileType::Fifo, _) => Transport::Pipe,
            (FileType::Socket, Some((SocketType::STREAM, AddressFamily::UNIX))) => Transport::Unix,
            (FileType::Socket, Some((SocketType::STREAM, AddressFamily::INET)))
            | (FileType::Socket, Some((SocketType::STREAM, AddressFamily::INET6))) => {
                Transport::Tcp
            }
            (FileType::Socket, Some((kind, family))) => {
                return Err(format!(
                    "received descriptor is a {kind:?} socket of family {family:?}, \
                     not a unix or TCP stream socket"
                ));
            }
            (other, _) => {
                return Err(format!(
                    "received descriptor is a {other:?}, not a pipe or stream socket"
                ));
            }
        };
        if !found.readable && !found.writable {
            return Err("received descriptor can neither read nor write".into());
        }
        Ok(Connection::new(
            fd,
            transport,
            found.readable,
            found.writable,
        ))
    }

    /// Wraps a connected unix stream socket (e.g. an inherited bootstrap descriptor).
    pub fn from_unix_socket(fd: OwnedFd) -> Self {
        Connection::new(fd, Transport::Unix, true, true)
    }

    /// Wraps the read end of a pipe.
    pub fn from_pipe_reader(fd: OwnedFd) -> Self {
        Connection::new(fd, Transport::Pipe, true, false)
    }

    /// Wraps the write end of a pipe.
    pub fn from_pipe_writer(fd: OwnedFd) -> Self {
        Connection::new(fd, Transport::Pipe, false, true)
    }

    /// Whether this end can receive.
    pub fn readable(&self) -> bool {
        self.readable
    }

    /// Whether this end can send.
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// The largest message [`recv`](Self::recv) and friends accept (default 4 GiB): a longer
    /// one fails with [`Error::BadMessageLength`] before anything is allocated for it.
    pub fn set_max_message_len(&mut self, max: usize) {
        self.max_len = max;
    }

    /// Sends a value (any [`Encode`]: serde types, [`Pod`](mp_codec::Pod), [`Bytes`](mp_codec::Bytes)).
    /// Descriptors the value holds travel with it over unix sockets and rings.
    ///
    /// On a ring ([`pipe`]) a send looks whether the peer has gone on its first call and at
    /// most once a millisecond after that (a look is a system call, which a busy exchange
    /// should not make per message), and whenever it waits for room: a message sent in
    /// between to an end already gone is dropped with the ring, as one in a socket's buffer
    /// is when its reader exits, and the next look fails with `EPIPE`.
    ///
    /// # Errors
    /// [`Error::WrongDirection`] on a read-only end, [`Error::FdsNeedUnixSocket`],
    /// [`Error::Codec`] if the value cannot be encoded, or [`Error::Os`] — `EPIPE` when the
    /// peer has closed (never a `SIGPIPE` death on sockets).
    pub fn send<T: Encode + ?Sized>(&self, value: &T) -> Result<()> {
        self.check_writable()?;
        let mut frame = lock(&self.send);
        frame.clear();
        let result = value
            .encode(&mut frame)
            .map_err(Error::from)
            .and_then(|()| self.send_parts(&frame.bytes, &frame.fds));
        // Close the duplicated descriptors now, sent or not.
        frame.fds.clear();
        result
    }

    /// Sends `bytes` as one message, as they are (Python's `send_bytes`; slice for
    /// `offset`/`size`). An empty message is legal.
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub fn send_bytes(&self, bytes: &[u8]) -> Result<()> {
        self.check_writable()?;
        let _one_writer = lock(&self.send);
        self.send_parts(bytes, &[] as &[OwnedFd])
    }

    fn send_parts(&self, bytes: &[u8], fds: &[OwnedFd]) -> Result<()> {
        if let Some(rings) = &self.rings {
            let timeout = self
                .nonblocking
                .load(Ordering::Relaxed)
                .then_some(Duration::ZERO);
            return rings.send(&self.fd, bytes, fds, timeout);
        }
        match self.transport {
            Transport::Unix => wire::send_parts(&self.fd, bytes, fds)?,
            _ if !fds.is_empty() => {
                return Err(Error::FdsNeedUnixSocket(self.transport.name()));
            }
            Transport::Tcp => wire::send_parts(&self.fd, bytes, fds)?,
            Transport::Pipe => wire::write_frame(&self.fd, bytes)?,
            Transport::Ring => unreachable!("a ring connection has its rings"),
        }
        Ok(())
    }

    /// Receives one value sent by [`send`](Self::send), blocking until it arrives.
    ///
    /// # Errors
    /// [`Error::Eof`] once the peer has closed, [`Error::WrongDirection`] on a write-only end,
    /// [`Error::BadMessageLength`] over the limit, [`Error::Codec`] if the message is not a
    /// `T` (the connection stays usable), or [`Error::Os`].
    pub fn recv<T: Decode>(&self) -> Result<T> {
        let mut incoming = self.receive(self.max_len, true)?;
        let value = T::decode(&mut incoming.frame);
        // Descriptors the value did not claim came unasked: close them now, whatever `T`'s
        // decoding did with the frame.
        incoming.frame.fds.clear();
        Ok(value?)
    }

    /// Sends a frame made elsewhere — bytes and the descriptors that go with them — as one
    /// message.
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub fn send_frame(&self, frame: &Frame) -> Result<()> {
        self.check_writable()?;
        let _one_writer = lock(&self.send);
        self.send_parts(&frame.bytes, &frame.fds)
    }

    /// Receives one message as a raw [`Frame`]: its bytes and any descriptors that came with
    /// it, for decoding in parts.
    ///
    /// # Errors
    /// As [`recv_bytes`](Self::recv_bytes).
    pub fn recv_frame(&self) -> Result<Frame> {
        let mut incoming = self.receive(self.max_len, true)?;
        Ok(std::mem::take(&mut incoming.frame))
    }

    /// Makes reads and writes fail instead of blocking (or block again): a receive with no
    /// message begun is `Codec(WouldBlock)` (its `raw_os_error` is `EAGAIN`) and leaves the
    /// connection as it was; a read that stops half-way through a message leaves the
    /// connection unreadable, so use this where that is acceptable, e.g. draining a peer
    /// that has exited.
    ///
    /// # Errors
    /// [`Error::Os`] from `fcntl`.
    pub fn set_nonblocking(&self, nonblocking: bool) -> Result<()> {
        if self.rings.is_some() {
            // (A ring never stops half-way through a message: it stays readable.)
            self.nonblocking.store(nonblocking, Ordering::Relaxed);
            return Ok(());
        }
        sys::set_nonblocking(&self.fd, nonblocking)
    }

    /// Receives one message as bytes (Python's `recv_bytes`).
    ///
    /// # Errors
    /// As [`recv`](Self::recv), without the decoding errors.
    pub fn recv_bytes(&self) -> Result<Vec<u8>> {
        self.recv_bytes_max(self.max_len)
    }

    /// Receives one message of at most `max_len` bytes (Python's `recv_bytes(maxlength)`).
    /// A longer one is [`Error::BadMessageLength`] and, as in CPython, leaves the connection
    /// unreadable.
    ///
    /// ```
    /// let (a, b) = multiprocessing::connection::pipe(true)?;
    /// a.send_bytes(&[0; 300])?;
    /// assert!(matches!(b.recv_bytes_max(256), Err(multiprocessing::connection::Error::BadMessageLength { len: 300, .. })));
    /// assert!(matches!(b.recv_bytes(), Err(multiprocessing::connection::Error::Unreadable)));
    /// # Ok::<(), multiprocessing::connection::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`recv_bytes`](Self::recv_bytes).
    pub fn recv_bytes_max(&self, max_len: usize) -> Result<Vec<u8>> {
        let mut incoming = self.receive(max_len.min(self.max_len), false)?;
        Ok(std::mem::take(&mut incoming.frame.bytes))
    }

    /// Receives one message into `buf` and returns its length (Python's `recv_bytes_into`;
    /// slice for `offset`).
    ///
    /// ```
    /// let (a, b) = multiprocessing::connection::pipe(true)?;
    /// a.send_bytes(b"hello")?;
    /// let mut buf = [0; 3];
    /// match b.recv_bytes_into(&mut buf) {
    ///     Err(multiprocessing::connection::Error::BufferTooShort(whole)) => assert_eq!(whole, b"hello"),
    ///     other => panic!("{other:?}"),
    /// }
    /// # Ok::<(), multiprocessing::connection::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::BufferTooShort`] with the whole message when it does not fit; otherwise as
    /// [`recv_bytes`](Self::recv_bytes).
    pub fn recv_bytes_into(&self, buf: &mut [u8]) -> Result<usize> {
        let mut incoming = self.receive(self.max_len, false)?;
        let bytes = &incoming.frame.bytes;
        if bytes.len() > buf.len() {
            return Err(Error::BufferTooShort(std::mem::take(
                &mut incoming.frame.bytes,
            )));
        }
        buf[..bytes.len()].copy_from_slice(bytes);
        Ok(bytes.len())
    }

    /// Reads one whole frame into the receive state, which stays locked for the caller.
    /// Receives one frame. `with_fds`: collect descriptors sent with it (`recvmsg`); the
    /// bytes-only receives use plain `read`, cheaper, with which the kernel closes any
    /// descriptors that came along (as CPython's `recv_bytes` drops them).
    fn receive(&self, max_len: usize, with_fds: bool) -> Result<MutexGuard<'_, Incoming>> {
        if !self.readable {
            return Err(Error::WrongDirection("write"));
        }
        let mut incoming = lock(&self.recv);
        if incoming.broken {
            return Err(Error::Unreadable);
        }
        let Incoming { frame, broken } = &mut *incoming;
        if let Some(rings) = &self.rings {
            let timeout = self
                .nonblocking
                .load(Ordering::Relaxed)
                .then_some(Duration::ZERO);
            match rings.recv_into(&self.fd, timeout, frame, max_len) {
                Ok(()) => {}
                Err(err @ Error::BadMessageLength { .. }) => {
                    // As a socket's: the connection is unreadable after it (CPython's rule).
                    *broken = true;
                    return Err(err);
                }
                Err(err) => return Err(err),
            }
            if !with_fds {
                frame.fds.clear();
            }
            return Ok(incoming);
        }
        let result = match self.transport {
            Transport::Unix if with_fds => wire::recv_frame(&self.fd, max_len, frame),
            Transport::Unix | Transport::Tcp | Transport::Pipe | Transport::Ring => {
                frame.fds.clear();
                wire::read_frame(&self.fd, max_len, &mut frame.bytes)
            }
        };
        match result {
            Ok(()) => Ok(incoming),
            Err(mp_codec::Error::Closed) => Err(Error::Eof),
            // Nothing was read: the stream is still in step.
            Err(err @ mp_codec::Error::WouldBlock) => Err(Error::Codec(err)),
            Err(err) => {
                // Anything else leaves the stream mid-frame: refuse to read garbage later.
                *broken = true;
                Err(err.into())
            }
        }
    }

    /// Whether a message (or end of file) is ready to be received, waiting up to `timeout`
    /// (`None`: forever; `Some(Duration::ZERO)`: just look, Python's default).
    ///
    /// # Errors
    /// [`Error::WrongDirection`] on a write-only end, or [`Error::Os`].
    pub fn poll(&self, timeout: Option<Duration>) -> Result<bool> {
        if !self.readable {
            return Err(Error::WrongDirection("write"));
        }
        let Some(rings) = &self.rings else {
            return Ok(!crate::wait::wait(&[&self.fd], timeout)?.is_empty());
        };
        if rings.ready(&self.fd) {
            return Ok(true);
        }
        // The doorbell is a hint (another reader may take the message first): look again
        // after each wake, until the deadline.
        let deadline = timeout.map(|t| Instant::now().checked_add(t));
        loop {
            let left = match deadline {
                None | Some(None) => None,
                Some(Some(at)) => match at.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Ok(false),
                },
            };
            let woke = !crate::wait::wait(&[rings.pollable(&self.fd)], left)?.is_empty();
            if rings.ready(&self.fd) {
                return Ok(true);
            }
            if !woke {
                return Ok(false);
            }
            // Woken with nothing there: a late ring of the doorbell. Silence it (it rings
            // again for the next message), or this loop would spin.
            rings.resync();
        }
    }

    /// Closes this end. Dropping it does the same; this is Python's `close()`.
    pub fn close(self) {}

    /// The socket or pipe; `None` for a ring connection.
    pub(crate) fn socket_fd(&self) -> Option<&OwnedFd> {
        self.rings.is_none().then_some(&self.fd)
    }

    /// For a ring connection, one message taken by `deadline` (`WouldBlock` after it);
    /// `None` for a socket or pipe.
    pub(crate) fn ring_recv_by(
        &self,
        deadline: Instant,
        max_len: usize,
    ) -> Option<Result<Vec<u8>>> {
        let rings = self.rings.as_ref()?;
        let incoming = lock(&self.recv);
        if incoming.broken {
            return Some(Err(Error::Unreadable));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        Some(
            rings
                .recv(&self.fd, Some(left), max_len)
                .map(|frame| frame.bytes),
        )
    }

    fn check_writable(&self) -> Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(Error::WrongDirection("read"))
        }
    }
}

impl AsFd for Connection {
    /// The descriptor to poll: the socket or pipe itself, or for a ring connection one that
    /// polls readable when a message may be there or the peer has gone (asking for it arms
    /// the read ring's doorbell: from then on, a send that finds the ring empty makes a
    /// system call; see `mp_queue::Queue`'s `AsFd`).
    fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.rings {
            Some(rings) => rings.pollable(&self.fd),
            None => self.fd.as_fd(),
        }
    }
}

impl AsRawFd for Connection {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the state inconsistent in a way that
    // matters: the broken flag covers half-read frames.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        thread,
    };

    use super::*;

    /// Both kinds of pipe: tests that loop over them hold for each (`pipe` in their bodies
    /// is the loop's).
    const KINDS: [MakePipe; 2] = [pipe, socket_pipe];

    type MakePipe = fn(bool) -> Result<(Connection, Connection)>;

    fn raw_read(fd: &impl AsFd, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        let mut got = 0;
        while got < n {
            got += rustix::io::read(fd, &mut buf[got..]).unwrap();
        }
        buf
    }

    #[test]
    fn frames_are_cpythons_byte_for_byte() {
        let (a, b) = socket_pipe(true).unwrap();
        a.send_bytes(b"abc").unwrap();
        a.send_bytes(b"").unwrap();
        assert_eq!(raw_read(&b, 11), [0, 0, 0, 3, b'a', b'b', b'c', 0, 0, 0, 0]);
    }

    #[test]
    fn a_long_header_is_understood() {
        let (a, b) = socket_pipe(true).unwrap();
        let mut bytes = (-1i32).to_be_bytes().to_vec();
        bytes.extend(5u64.to_be_bytes());
        bytes.extend(b"hello");
        rustix::io::write(&a, &bytes).unwrap();
        assert_eq!(b.recv_bytes().unwrap(), b"hello");
    }

    #[test]
    fn messages_are_never_merged_or_split() {
        for pipe in KINDS {
            let (r, w) = pipe(false).unwrap();
            let sizes = [0usize, 1, 100_000, 0, 3 << 20, 7];
            let writer = thread::spawn(move || {
                for (i, n) in sizes.into_iter().enumerate() {
                    w.send_bytes(&vec![i as u8; n]).unwrap();
                }
            });
            for (i, n) in sizes.into_iter().enumerate() {
                assert_eq!(r.recv_bytes().unwrap(), vec![i as u8; n]);
            }
            writer.join().unwrap();
            assert!(matches!(r.recv_bytes(), Err(Error::Eof)));
        }
    }

    #[test]
    fn empty_messages_are_visible_to_poll() {
        for pipe in KINDS {
            let (a, b) = pipe(true).unwrap();
            assert!(!b.poll(Some(Duration::ZERO)).unwrap());
            a.send_bytes(b"").unwrap();
            assert!(b.poll(Some(Duration::from_secs(10))).unwrap());
            assert_eq!(b.recv_bytes().unwrap(), b"");
            assert!(!b.poll(Some(Duration::ZERO)).unwrap());
        }
    }

    /// Runs `f` on a thread and waits at most 30 s for its result.
    fn within_30s<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("hung: no answer in 30 s")
    }

    #[test]
    fn a_reader_asleep_wakes_with_eof_when_the_writer_goes_after_its_messages() {
        for pipe in KINDS {
            let (r, w) = pipe(false).unwrap();
            let (started_tx, started) = std::sync::mpsc::channel();
            let reader = thread::spawn(move || {
                started_tx.send(()).unwrap();
                let first = r.recv_bytes();
                let second = r.recv_bytes();
                let third = r.recv_bytes();
                (first, second, third)
            });
            started.recv().unwrap();
            w.send_bytes(b"one").unwrap();
            w.send_bytes(&[2; 700_000]).unwrap();
            drop(w);
            let (first, second, third) = within_30s(move || reader.join().unwrap());
            assert_eq!(first.unwrap(), b"one");
            assert_eq!(second.unwrap(), vec![2; 700_000]);
            assert!(matches!(third, Err(Error::Eof)), "{third:?}");
        }
    }

    #[test]
    fn a_nonblocking_ring_end_says_end_of_file_and_would_block_as_a_socket_does() {
        for pipe in KINDS {
            let (r, w) = pipe(false).unwrap();
            r.set_nonblocking(true).unwrap();
            assert!(matches!(
                r.recv_bytes(),
                Err(Error::Codec(mp_codec::Error::WouldBlock))
            ));
            w.send_bytes(b"last").unwrap();
            drop(w);
            assert_eq!(r.recv_bytes().unwrap(), b"last");
            assert!(matches!(r.recv_bytes(), Err(Error::Eof)));
        }
        // A send into a full ring fails instead of waiting.
        let (r, w) = pipe(false).unwrap();
        w.set_nonblocking(true).unwrap();
        let message = vec![0u8; 1 << 20];
        let err = (0..64)
            .find_map(|_| w.send_bytes(&message).err())
            .expect("a 4 MiB ring took 64 MiB");
        assert!(
            matches!(err, Error::Codec(mp_codec::Error::WouldBlock)),
            "{err:?}"
        );
        drop(r);
    }

    #[test]
    fn a_big_ring_message_over_the_limit_is_refused() {
        let (a, mut b) = pipe(true).unwrap();
        b.set_max_message_len(1000);
        a.send_bytes(&vec![3; 3 << 20]).unwrap(); // beside the ring, in a memfd
        assert!(matches!(
            b.recv_bytes(),
            Err(Error::BadMessageLength { len, max: 1000 }) if len == 3 << 20
        ));
    }

    #[test]
    fn poll_with_a_timeout_wakes_for_a_message_and_for_the_end() {
        for pipe in KINDS {
            let (a, b) = pipe(true).unwrap();
            assert!(!b.poll(Some(Duration::from_millis(5))).unwrap());
            let b = std::sync::Arc::new(b);
            let poller = b.clone();
            let polled = thread::spawn(move || poller.poll(Some(Duration::from_secs(30))));
            a.send(&5u32).unwrap();
            assert!(within_30s(move || polled.join().unwrap()).unwrap());
            assert_eq!(b.recv::<u32>().unwrap(), 5);
            let poller = b.clone();
            let polled = thread::spawn(move || poller.poll(None));
            drop(a);
            assert!(within_30s(move || polled.join().unwrap()).unwrap());
            assert!(matches!(b.recv_bytes(), Err(Error::Eof)));
        }
    }

    #[test]
    fn wait_sees_ring_and_socket_connections_side_by_side() {
        let (ring_a, ring_b) = pipe(true).unwrap();
        let (sock_a, sock_b) = socket_pipe(true).unwrap();
        let ten = Some(Duration::from_secs(10));
        assert!(
            crate::wait(&[&ring_b, &sock_b], Some(Duration::ZERO))
                .unwrap()
                .is_empty()
        );
        sock_a.send(&1u8).unwrap();
        assert_eq!(crate::wait(&[&ring_b, &sock_b], ten).unwrap(), [1]);
        sock_b.recv::<u8>().unwrap();
        ring_a.send(&2u8).unwrap();
        assert_eq!(crate::wait(&[&ring_b, &sock_b], ten).unwrap(), [0]);
        assert_eq!(ring_b.recv::<u8>().unwrap(), 2);
        assert!(
            crate::wait(&[&ring_b, &sock_b], Some(Duration::ZERO))
                .unwrap()
                .is_empty()
        );
        drop(ring_a);
        assert_eq!(crate::wait(&[&ring_b, &sock_b], ten).unwrap(), [0]);
    }

    #[test]
    fn a_ring_message_over_the_limit_leaves_the_end_unreadable_as_a_sockets_does() {
        let (a, b) = pipe(true).unwrap();
        a.send_bytes(&[0; 300]).unwrap();
        assert!(matches!(
            b.recv_bytes_max(256),
            Err(Error::BadMessageLength { len: 300, .. })
        ));
        assert!(matches!(b.recv_bytes(), Err(Error::Unreadable)));
    }

    #[test]
    fn poll_sees_end_of_file() {
        for pipe in KINDS {
            let (a, b) = pipe(true).unwrap();
            drop(a);
            assert!(b.poll(None).unwrap());
            assert!(matches!(b.recv::<u8>(), Err(Error::Eof)));
        }
    }

    #[test]
    fn writing_to_a_closed_peer_is_a_broken_pipe_error() {
        for pipe in KINDS {
            let (a, b) = pipe(true).unwrap();
            drop(b);
            let err = a.send_bytes(b"x").unwrap_err();
            assert!(err.is_disconnect(), "{err:?}");

            let (r, w) = pipe(false).unwrap();
            drop(r);
            let err = w.send(&1u8).unwrap_err();
            assert!(err.is_disconnect(), "{err:?}");
        }
    }

    #[test]
    fn each_end_of_a_simplex_pipe_has_one_direction() {
        for pipe in KINDS {
            let (r, w) = pipe(false).unwrap();
            assert!(r.readable() && !r.writable() && w.writable() && !w.readable());
            assert!(matches!(
                r.send_bytes(b""),
                Err(Error::WrongDirection("read"))
            ));
            assert!(matches!(
                w.recv_bytes(),
                Err(Error::WrongDirection("write"))
            ));
            assert!(matches!(w.poll(None), Err(Error::WrongDirection("write"))));
        }
    }

    #[test]
    fn fds_travel_over_duplex_pipes_only() {
        let (mut reader, writer) = std::io::pipe().unwrap();
        let writer = mp_codec::Fd::from(OwnedFd::from(writer));
        let (r, w) = socket_pipe(false).unwrap();
        assert!(matches!(
            w.send(&writer),
            Err(Error::FdsNeedUnixSocket("pipe"))
        ));
        drop((r, w));
        // A simplex ring carries them.
        let (r, w) = pipe(false).unwrap();
        let (_, spare) = sys::pipe().unwrap();
        w.send(&mp_codec::Fd::from(spare)).unwrap();
        r.recv::<mp_codec::Fd>().unwrap();

        let (a, b) = pipe(true).unwrap();
        a.send(&("out", writer)).unwrap();
        let (_, fd): (String, mp_codec::Fd) = b.recv().unwrap();
        std::fs::File::from(fd.into_inner())
            .write_all(b"via fd")
            .unwrap();
        let mut text = String::new();
        reader.read_to_string(&mut text).unwrap();
        assert_eq!(text, "via fd");
    }

    #[test]
    fn a_connection_can_be_sent_over_a_connection() {
        for pipe in KINDS {
            let (a, b) = pipe(true).unwrap();
            let (inner_a, inner_b) = pipe(true).unwrap();
            a.send(&inner_b).unwrap();
            drop(inner_b);
            let received: Connection = b.recv().unwrap();
            inner_a.send("through the sent end").unwrap();
            assert_eq!(received.recv::<String>().unwrap(), "through the sent end");
        }
    }

    /// What `/proc/self/fd` says `fd` is, e.g. `pipe:[1234]` (both ends of a pipe alike).
    fn link(fd: &impl AsFd) -> std::path::PathBuf {
        std::fs::read_link(format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd())).unwrap()
    }

    /// How many descriptors of this process are `link`: exact even while other tests open
    /// and close descriptors of their own.
    fn open_copies(link: &std::path::Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
            .filter(|found| found == link)
            .count()
    }

    #[test]
    fn a_received_connection_ignores_what_the_sender_claims() {
        // The fields a Connection used to carry, filled with lies: the read end of a pipe
        // sold as a writable unix socket with no length limit.
        #[derive(Serialize)]
        struct Forged {
            #[serde(with = "mp_codec::fd")]
            fd: OwnedFd,
            transport: Transport,
            readable: bool,
            writable: bool,
            max_len: usize,
        }
        let (a, b) = pipe(true).unwrap();
        let (r, _w) = sys::pipe().unwrap();
        let forged = Forged {
            fd: r,
            transport: Transport::Unix,
            readable: true,
            writable: true,
            max_len: usize::MAX,
        };
        a.send(&forged).unwrap();
        match b.recv::<Connection>() {
            Ok(got) => {
                assert_eq!(got.transport, Transport::Pipe);
                assert!(got.readable && !got.writable);
                assert_eq!(got.max_len, wire::DEFAULT_MAX_LEN);
            }
            Err(err) => assert!(matches!(err, Error::Codec(_)), "{err:?}"),
        }
    }

    #[test]
    fn a_received_connection_takes_its_kind_from_the_descriptor() {
        let (a, b) = pipe(true).unwrap();
        // What a socket or pipe connection sends of itself: its descriptor alone.
        let pass = |fd: OwnedFd| {
            a.send(&WireOut::Descriptor(&fd)).unwrap();
            b.recv::<Connection>()
        };
        let (r, w) = sys::pipe().unwrap();
        let reader = pass(r).unwrap();
        assert_eq!(reader.transport, Transport::Pipe);
        assert!(reader.readable() && !reader.writable());
        let writer = pass(w).unwrap();
        assert_eq!(writer.transport, Transport::Pipe);
        assert!(!writer.readable() && writer.writable());

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let tcp = pass(tcp.into()).unwrap();
        assert_eq!(tcp.transport, Transport::Tcp);
        assert!(tcp.readable() && tcp.writable());

        let (unix, _peer) = sys::socketpair().unwrap();
        let unix = pass(unix).unwrap();
        assert_eq!(unix.transport, Transport::Unix);
        assert!(unix.readable() && unix.writable());

        // Not a connection at all: refused, and the descriptor closed.
        let (datagram, other) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::DGRAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        drop(other);
        let datagram_link = link(&datagram);
        let err = pass(datagram).unwrap_err();
        assert!(
            matches!(err, Error::Codec(mp_codec::Error::Malformed(_))),
            "{err:?}"
        );
        assert_eq!(
            open_copies(&datagram_link),
            0,
            "the refused descriptor lingers"
        );
        let null = std::fs::File::open("/dev/null").unwrap();
        let err = pass(null.into()).unwrap_err();
        assert!(
            matches!(err, Error::Codec(mp_codec::Error::Malformed(_))),
            "{err:?}"
        );
    }

    #[test]
    fn a_received_connection_has_this_sides_length_limit() {
        let (a, b) = pipe(true).unwrap();
        let (mut small, _other) = pipe(true).unwrap();
        small.set_max_message_len(5);
        a.send(&small).unwrap();
        assert_eq!(
            b.recv::<Connection>().unwrap().max_len,
            wire::DEFAULT_MAX_LEN
        );
    }

    #[test]
    fn recv_closes_descriptors_the_decoded_type_did_not_claim() {
        for pipe in KINDS {
            /// A `Decode` that, like many a hand-written one, never looks at the descriptors.
            struct Ignores;
            impl Decode for Ignores {
                fn decode(_: &mut Frame) -> mp_codec::Result<Self> {
                    Ok(Ignores)
                }
            }
            let (a, b) = pipe(true).unwrap();
            let (r, w) = sys::pipe().unwrap();
            let before = open_copies(&link(&r));
            let frame = Frame {
                bytes: vec![1],
                fds: vec![w],
            };
            a.send_frame(&frame).unwrap();
            drop(frame);
            b.recv::<Ignores>().unwrap();
            assert_eq!(
                open_copies(&link(&r)),
                before - 1,
                "the stray descriptor lingers"
            );
            // and a Pod receive closes them too
            let (r, w) = sys::pipe().unwrap();
            let before = open_copies(&link(&r));
            a.send_frame(&Frame {
                bytes: 7u32.to_ne_bytes().to_vec(),
                fds: vec![w],
            })
            .unwrap();
            assert_eq!(b.recv::<mp_codec::Pod<u32>>().unwrap().0, 7);
            assert_eq!(
                open_copies(&link(&r)),
                before - 1,
                "the stray descriptor lingers"
            );
        }
    }

    #[test]
    fn a_decode_error_leaves_the_connection_usable() {
        for pipe in KINDS {
            let (a, b) = pipe(true).unwrap();
            a.send(&(1u8, 2u8)).unwrap();
            a.send(&3u8).unwrap();
            assert!(matches!(b.recv::<u8>(), Err(Error::Codec(_))));
            assert_eq!(b.recv::<u8>().unwrap(), 3);
        }
    }

    #[test]
    fn concurrent_senders_never_interleave_frames() {
        for pipe in KINDS {
            let (a, b) = pipe(true).unwrap();
            let a = std::sync::Arc::new(a);
            let senders: Vec<_> = (0..2u8)
                .map(|t| {
                    let a = a.clone();
                    thread::spawn(move || {
                        for _ in 0..20 {
                            a.send_bytes(&vec![t; 300_000]).unwrap();
                        }
                    })
                })
                .collect();
            for _ in 0..40 {
                let msg = b.recv_bytes().unwrap();
                assert_eq!(msg.len(), 300_000);
                assert!(msg.iter().all(|&x| x == msg[0]));
            }
            for s in senders {
                s.join().unwrap();
            }
        }
    }

    #[test]
    fn a_nonblocking_read_with_nothing_there_leaves_the_connection_usable() {
        for pipe in KINDS {
            let (a, b) = pipe(true).unwrap();
            b.set_nonblocking(true).unwrap();
            assert!(matches!(
                b.recv_bytes(),
                Err(Error::Codec(mp_codec::Error::WouldBlock))
            ));
            a.send_bytes(b"later").unwrap();
            assert_eq!(b.recv_bytes().unwrap(), b"later");
        }
    }

    #[test]
    fn recv_bytes_closes_descriptors_that_came_with_the_message() {
        let (a, b) = crate::pipe(true).unwrap();
        let (x, y) = crate::pipe(true).unwrap();
        a.send(&y).unwrap();
        drop(y);
        assert!(!b.recv_bytes().unwrap().is_empty());
        // No copy of `y` is left anywhere, so `x` sees the end of the stream.
        assert!(
            x.poll(Some(Duration::from_secs(5))).unwrap(),
            "a copy of y lingers"
        );
        assert!(matches!(x.recv_bytes(), Err(Error::Eof)));
    }

    #[test]
    fn recv_bytes_into_fits_or_hands_the_message_back() {
        for pipe in KINDS {
            let (a, b) = pipe(true).unwrap();
            a.send_bytes(b"12345").unwrap();
            a.send_bytes(b"123").unwrap();
            let mut buf = [0; 4];
            assert!(
                matches!(b.recv_bytes_into(&mut buf), Err(Error::BufferTooShort(m)) if m == b"12345")
            );
            assert_eq!(b.recv_bytes_into(&mut buf).unwrap(), 3);
            assert_eq!(&buf[..3], b"123");
        }
    }
}
