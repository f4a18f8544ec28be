//! Frames on a byte stream, in CPython's `multiprocessing.connection` format.
//!
//! Each message is a 4-byte big-endian signed length and the payload; a payload over
//! `0x7fffffff` bytes is announced by the length −1 and then an 8-byte big-endian length.
//! On a unix socket the frame's descriptors ride with its first byte as `SCM_RIGHTS`.
//!
//! ```
//! use mp_codec::{wire, Frame};
//! use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
//!
//! let (a, b) = socketpair(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None)?;
//! wire::send_frame(&a, &Frame::encode(&vec![1u16, 2, 3])?)?;
//! let mut frame = Frame::new();
//! wire::recv_frame(&b, wire::DEFAULT_MAX_LEN, &mut frame)?;
//! assert_eq!(frame.bytes, [3, 1, 2, 3]);
//! assert_eq!(frame.decode::<Vec<u16>>()?, [1, 2, 3]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::{
    io::{IoSlice, IoSliceMut},
    mem::MaybeUninit,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
};

use rustix::{
    io::Errno,
    net::{
        RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
        SendAncillaryMessage, SendFlags,
    },
};

use crate::{Error, Frame, Result, sys};

/// The most descriptors one frame can carry: Linux's `SCM_MAX_FD`.
pub const MAX_FDS: usize = 253;

/// The default limit on a received payload: 4 GiB. Raise it per call where larger messages
/// are expected. The limit is not an allocation: a receive buffer starts at 64 KiB and grows
/// only as payload bytes actually arrive (doubling, so at most twice what arrived), so a
/// header that lies about the length costs the receiver nothing until the bytes come.
pub const DEFAULT_MAX_LEN: usize = 4 << 30;

/// Payload bytes reserved up front on the peer's word alone. Beyond this a buffer grows only
/// with the bytes that arrive: a header claiming 2 GiB followed by nothing used to reserve
/// 16 MiB at once. Growing by doubling keeps the copies of a large frame to about its size.
const INITIAL_RESERVE: usize = 64 << 10;

/// The largest length the short (4-byte) header can announce.
const SHORT_MAX: usize = 0x7fff_ffff;

/// The length header for a `len`-byte payload: 4 bytes, or 12 for payloads over 2 GiB − 1.
///
/// ```
/// let mut buf = [0; 12];
/// assert_eq!(multiprocessing::codec::wire::header(5, &mut buf), [0, 0, 0, 5]);
/// assert_eq!(multiprocessing::codec::wire::header(1 << 31, &mut buf).len(), 12);
/// ```
#[inline]
pub fn header(len: usize, buf: &mut [u8; 12]) -> &[u8] {
    if len <= SHORT_MAX {
        buf[..4].copy_from_slice(&(len as u32).to_be_bytes());
        &buf[..4]
    } else {
        buf[..4].copy_from_slice(&(-1i32).to_be_bytes());
        buf[4..].copy_from_slice(&(len as u64).to_be_bytes());
        &buf[..]
    }
}

/// Sends `frame` on a unix stream socket: header, payload, and its descriptors as
/// `SCM_RIGHTS`. Never raises `SIGPIPE` (`MSG_NOSIGNAL`); retries on `EINTR` and short writes.
///
/// # Errors
/// [`Error::TooManyFds`] for more than [`MAX_FDS`] descriptors (nothing is sent), or
/// [`Error::Os`]`("sendmsg", …)`, e.g. `EPIPE` when the peer has closed.
pub fn send_frame(socket: impl AsFd, frame: &Frame) -> Result<()> {
    send_parts(socket, &frame.bytes, &frame.fds)
}

/// [`send_frame`] from its parts: a payload and the descriptors to send with it.
///
/// # Errors
/// As [`send_frame`].
pub fn send_parts(socket: impl AsFd, payload: &[u8], fds: &[impl AsFd]) -> Result<()> {
    send_parts_as(socket.as_fd(), payload, fds, None)
}

/// [`send_frame`] that also works on a non-blocking socket: where the socket's buffer is
/// full it waits until there is room (`poll`), instead of failing with `EAGAIN` half-way
/// through a frame, unless `gone` becomes readable first (say, the pidfd of the process
/// reading: a peer whose end has other holders never makes a send fail with `EPIPE`).
///
/// # Errors
/// As [`send_frame`]; `EPIPE` once `gone` is readable while waiting.
pub fn send_frame_waiting(socket: impl AsFd, frame: &Frame, gone: BorrowedFd<'_>) -> Result<()> {
    send_parts_as(socket.as_fd(), &frame.bytes, &frame.fds, Some(gone))
}

fn send_parts_as(
    socket: BorrowedFd<'_>,
    payload: &[u8],
    fds: &[impl AsFd],
    wait_unless: Option<BorrowedFd<'_>>,
) -> Result<()> {
    use rustix::event::{PollFd, PollFlags};
    let retry = |op: &mut dyn FnMut() -> Result<usize, Errno>| loop {
        match (op(), wait_unless) {
            (Err(Errno::INTR), _) => continue,
            (Err(Errno::AGAIN), Some(gone)) => {
                let mut pfds = [
                    PollFd::new(&socket, PollFlags::OUT),
                    PollFd::new(&gone, PollFlags::IN),
                ];
                match rustix::event::poll(&mut pfds, None) {
                    Ok(_) if !pfds[1].revents().is_empty() => return Err(Errno::PIPE),
                    Ok(_) | Err(Errno::INTR) => continue,
                    Err(e) => return Err(e),
                }
            }
            (other, _) => return other,
        }
    };
    if fds.len() > MAX_FDS {
        return Err(Error::TooManyFds {
            count: fds.len(),
            max: MAX_FDS,
        });
    }
    if fds.is_empty() && payload.len() <= SMALL {
        let mut buf = [0u8; 4 + SMALL];
        buf[..4].copy_from_slice(&(payload.len() as u32).to_be_bytes());
        buf[4..4 + payload.len()].copy_from_slice(payload);
        let mut out = &buf[..4 + payload.len()];
        while !out.is_empty() {
            let sent = retry(&mut || rustix::net::send(socket, out, SendFlags::NOSIGNAL))
                .map_err(|e| Error::os("sendmsg", e))?;
            out = &out[sent..];
        }
        return Ok(());
    }
    let mut head = [0; 12];
    let head = header(payload.len(), &mut head);
    let mut out = Outgoing::new(head, payload);
    if !fds.is_empty() {
        let fds: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        control.push(SendAncillaryMessage::ScmRights(&fds));
        let sent = retry(&mut || sendmsg(socket, &out.slices(), &mut control))
            .map_err(|e| Error::os("sendmsg", e))?;
        out.advance(sent);
    }
    let mut control = SendAncillaryBuffer::default();
    while !out.done() {
        let sent = retry(&mut || sendmsg(socket, &out.slices(), &mut control))
            .map_err(|e| Error::os("sendmsg", e))?;
        out.advance(sent);
    }
    Ok(())
}

/// Payloads up to this size, without descriptors, are sent from one contiguous copy with
/// `send`, cheaper than `sendmsg` with two slices.
const SMALL: usize = 1024;

/// Writes a frame with no descriptors to any stream: a pipe, a socket, a file.
///
/// Writing to a pipe whose reader has gone raises `SIGPIPE`, which Rust programs ignore by
/// default; the write then fails with `EPIPE`.
///
/// # Errors
/// [`Error::Os`]`("write", …)`.
pub fn write_frame(fd: impl AsFd, payload: &[u8]) -> Result<()> {
    let fd = fd.as_fd();
    let mut head = [0; 12];
    let mut out = Outgoing::new(header(payload.len(), &mut head), payload);
    while !out.done() {
        let sent =
            retry(|| rustix::io::writev(fd, &out.slices())).map_err(|e| Error::os("write", e))?;
        out.advance(sent);
    }
    Ok(())
}

/// Receives one frame from a unix stream socket into `frame` (which is cleared first),
/// together with any descriptors sent with it (installed close-on-exec).
///
/// Memory grows with the bytes that arrive, not with the length the header announces (see
/// [`DEFAULT_MAX_LEN`]). The call waits for the whole frame for as long as the peer keeps
/// its end open, as any blocking read does; a peer that may stall needs `poll` first and a
/// non-blocking socket, or a socket timeout.
///
/// # Errors
/// [`Error::Closed`] at end of file before a frame, [`Error::Truncated`] at end of file inside
/// one, [`Error::TooLarge`] when the announced length exceeds `max_len` (the payload is left
/// unread: the stream is no longer usable), [`Error::FdsTruncated`], or [`Error::Os`]. On any
/// error the descriptors that arrived are closed and `frame.fds` is empty.
pub fn recv_frame(socket: impl AsFd, max_len: usize, frame: &mut Frame) -> Result<()> {
    frame.clear();
    let mut source = Source {
        fd: socket.as_fd(),
        fds: Some(&mut frame.fds),
    };
    let result = source
        .read_header(max_len)
        .and_then(|len| source.read_payload(len, &mut frame.bytes));
    if result.is_err() {
        // Descriptors of a frame that did not arrive whole belong to nobody: close them.
        frame.fds.clear();
    }
    result
}

/// Reads one frame written by [`write_frame`] (or CPython's `send_bytes`) from any stream into
/// `buf`, which is cleared first.
///
/// # Errors
/// As [`recv_frame`], without the descriptor errors.
pub fn read_frame(fd: impl AsFd, max_len: usize, buf: &mut Vec<u8>) -> Result<()> {
    buf.clear();
    let mut source = Source {
        fd: fd.as_fd(),
        fds: None,
    };
    let len = source.read_header(max_len)?;
    source.read_payload(len, buf)
}

fn sendmsg(
    socket: BorrowedFd<'_>,
    iov: &[IoSlice<'_>],
    control: &mut SendAncillaryBuffer<'_, '_, '_>,
) -> Result<usize, Errno> {
    rustix::net::sendmsg(socket, iov, control, SendFlags::NOSIGNAL)
}

fn retry<T>(mut op: impl FnMut() -> Result<T, Errno>) -> Result<T, Errno> {
    loop {
        match op() {
            Err(Errno::INTR) => continue,
            other => return other,
        }
    }
}

/// A header and a payload, partly written.
struct Outgoing<'a> {
    head: &'a [u8],
    payload: &'a [u8],
}

impl<'a> Outgoing<'a> {
    fn new(head: &'a [u8], payload: &'a [u8]) -> Self {
        Outgoing { head, payload }
    }

    fn slices(&self) -> [IoSlice<'a>; 2] {
        [IoSlice::new(self.head), IoSlice::new(self.payload)]
    }

    fn advance(&mut self, mut n: usize) {
        let from_head = n.min(self.head.len());
        self.head = &self.head[from_head..];
        n -= from_head;
        self.payload = &self.payload[n..];
    }

    fn done(&self) -> bool {
        self.head.is_empty() && self.payload.is_empty()
    }
}

/// The reading end of a stream, collecting descriptors when it is a socket.
struct Source<'a> {
    fd: BorrowedFd<'a>,
    fds: Option<&'a mut Vec<OwnedFd>>,
}

impl Source<'_> {
    /// Reads the length header; `Closed` if the stream ends before its first byte.
    fn read_header(&mut self, max_len: usize) -> Result<usize> {
        let mut short = [0; 4];
        let got = self.read_exact(&mut short, true)?;
        if got == 0 {
            return Err(Error::Closed);
        }
        if got < 4 {
            return Err(truncated(4, got));
        }
        let len = match i32::from_be_bytes(short) {
            -1 => {
                let mut long = [0; 8];
                let got = self.read_exact(&mut long, false)?;
                if got < 8 {
                    return Err(truncated(12, 4 + got));
                }
                u64::from_be_bytes(long)
            }
            len if len < 0 => {
                return Err(Error::Malformed(format!("bad message length {len}").into()));
            }
            len => len as u64,
        };
        if len > max_len as u64 {
            return Err(Error::TooLarge {
                len,
                max: max_len as u64,
            });
        }
        Ok(len as usize)
    }

    /// Fills `buf` from the stream; returns how many bytes arrived before end of file.
    /// `at_start`: nothing of this frame has been read yet, so a non-blocking descriptor with
    /// nothing to read is [`Error::WouldBlock`] (the stream is still in step).
    fn read_exact(&mut self, buf: &mut [u8], at_start: bool) -> Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            let n = match self.fds.as_deref_mut() {
                Some(fds) => recv_with_fds(self.fd, &mut buf[got..], fds),
                None => retry(|| rustix::io::read(self.fd, &mut buf[got..]))
                    .map_err(|e| Error::os("read", e)),
            };
            let n = match n {
                Err(e)
                    if at_start
                        && got == 0
                        && e.raw_os_error() == Some(Errno::AGAIN.raw_os_error()) =>
                {
                    return Err(Error::WouldBlock);
                }
                other => other?,
            };
            if n == 0 {
                break;
            }
            got += n;
        }
        Ok(got)
    }

    /// Reads exactly `len` payload bytes into `buf`, growing it as bytes arrive: at most
    /// [`INITIAL_RESERVE`] before any arrive, then at most doubling what has arrived.
    fn read_payload(&mut self, len: usize, buf: &mut Vec<u8>) -> Result<()> {
        buf.reserve_exact(len.min(INITIAL_RESERVE));
        while buf.len() < len {
            if buf.len() == buf.capacity() {
                buf.reserve_exact((len - buf.len()).min(buf.len().max(INITIAL_RESERVE)));
            }
            let n = retry(|| sys::read_into_spare(self.fd, buf, len))
                .map_err(|e| Error::os("read", e))?;
            if n == 0 {
                let head = if len > SHORT_MAX { 12 } else { 4 };
                return Err(truncated((head + len) as u64, (head + buf.len()) as u64));
            }
        }
        Ok(())
    }
}

fn truncated(expected: impl TryInto<u64>, got: impl TryInto<u64>) -> Error {
    Error::Truncated {
        expected: expected.try_into().unwrap_or(u64::MAX),
        got: got.try_into().unwrap_or(u64::MAX),
    }
}

/// One `recvmsg`, appending any descriptors that arrive to `fds`.
fn recv_with_fds(fd: BorrowedFd<'_>, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> Result<usize> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = retry(|| {
        rustix::net::recvmsg(
            fd,
            &mut [IoSliceMut::new(buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
    })
    .map_err(|e| Error::os("recvmsg", e))?;
    let mut received = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = message {
            received.extend(fds);
        }
    }
    if msg.flags.contains(ReturnFlags::CTRUNC) {
        // Some descriptors were dropped by the kernel; the ones it did install are of no
        // use without the rest, and closing them here (with `received`) leaks none.
        return Err(Error::FdsTruncated);
    }
    fds.append(&mut received);
    Ok(msg.bytes)
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        os::fd::OwnedFd,
        thread,
    };

    use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};

    use super::*;
    use crate::{Bytes, Fd};

    fn pair() -> (OwnedFd, OwnedFd) {
        socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap()
    }

    fn raw_write(fd: &OwnedFd, bytes: &[u8]) {
        rustix::io::write(fd, bytes).unwrap();
    }

    #[test]
    fn headers_are_cpythons() {
        let mut buf = [0; 12];
        assert_eq!(header(0, &mut buf), [0, 0, 0, 0]);
        assert_eq!(header(0x1234, &mut buf), [0, 0, 0x12, 0x34]);
        assert_eq!(header(0x7fff_ffff, &mut buf), [0x7f, 0xff, 0xff, 0xff]);
        assert_eq!(
            header(0x8000_0000, &mut buf),
            [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0x80, 0, 0, 0]
        );
    }

    #[test]
    fn a_pipe_fd_crosses_a_socket_and_the_receiver_writes_into_it() {
        let (a, b) = pair();
        let (mut reader, writer) = std::io::pipe().unwrap();
        let frame = Frame::encode(&("log", Fd::from(OwnedFd::from(writer)))).unwrap();
        send_frame(&a, &frame).unwrap();
        drop(frame); // our last copy of the write end: only the one in flight remains
        let mut got = Frame::new();
        recv_frame(&b, DEFAULT_MAX_LEN, &mut got).unwrap();
        let (name, fd): (String, Fd) = got.decode().unwrap();
        assert_eq!(name, "log");
        std::fs::File::from(fd.into_inner())
            .write_all(b"written by the receiver")
            .unwrap();
        let mut text = String::new();
        reader.read_to_string(&mut text).unwrap();
        assert_eq!(text, "written by the receiver");
    }

    #[test]
    fn empty_frames_are_legal() {
        let (a, b) = pair();
        send_frame(&a, &Frame::new()).unwrap();
        let mut got = Frame::encode(&7u8).unwrap();
        recv_frame(&b, DEFAULT_MAX_LEN, &mut got).unwrap();
        assert!(got.bytes.is_empty());
    }

    #[test]
    fn eof_before_a_frame_is_closed_and_inside_one_is_truncated() {
        let (a, b) = pair();
        drop(a);
        let mut frame = Frame::new();
        assert!(matches!(
            recv_frame(&b, DEFAULT_MAX_LEN, &mut frame),
            Err(Error::Closed)
        ));

        let (a, b) = pair();
        raw_write(&a, &[0, 0, 0, 10, 1, 2, 3]);
        drop(a);
        assert!(matches!(
            recv_frame(&b, DEFAULT_MAX_LEN, &mut frame),
            Err(Error::Truncated {
                expected: 14,
                got: 7
            })
        ));
    }

    #[test]
    fn an_oversized_length_is_refused_before_allocating() {
        let (a, b) = pair();
        raw_write(&a, &[0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0]);
        let mut buf = Vec::new();
        let err = read_frame(&b, DEFAULT_MAX_LEN, &mut buf).unwrap_err();
        assert!(matches!(err, Error::TooLarge { len, .. } if len == 0xff << 56));
        assert_eq!(buf.capacity(), 0);

        raw_write(&a, &[0, 0, 1, 0]);
        assert!(matches!(
            read_frame(&b, 255, &mut buf),
            Err(Error::TooLarge { len: 256, max: 255 })
        ));
    }

    #[test]
    fn a_header_promising_2_gib_then_eof_reserves_little() {
        let (a, b) = pair();
        raw_write(&a, &[0x7f, 0xff, 0xff, 0xff, 1, 2, 3]);
        drop(a);
        let mut frame = Frame::new();
        let err = recv_frame(&b, DEFAULT_MAX_LEN, &mut frame).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Truncated {
                    expected: 0x8000_0003,
                    got: 7
                }
            ),
            "{err:?}"
        );
        let reserved = frame.bytes.capacity();
        assert!(reserved <= INITIAL_RESERVE, "{reserved} bytes reserved");
    }

    #[test]
    fn a_buffer_grows_with_the_bytes_that_arrive_not_the_header() {
        // A header claiming 3 GiB (the long form), 1 MiB of payload, then end of file.
        let (reader, writer) = std::io::pipe().unwrap();
        let sender = thread::spawn(move || {
            let mut head = [0; 12];
            let mut writer = writer;
            writer.write_all(header(3 << 30, &mut head)).unwrap();
            writer.write_all(&vec![9; 1 << 20]).unwrap();
        });
        let mut buf = Vec::new();
        let err = read_frame(&reader, DEFAULT_MAX_LEN, &mut buf).unwrap_err();
        sender.join().unwrap();
        assert!(
            matches!(err, Error::Truncated { got, .. } if got == 12 + (1 << 20)),
            "{err:?}"
        );
        assert_eq!(buf.len(), 1 << 20);
        let reserved = buf.capacity();
        assert!(
            reserved <= 2 * buf.len() + INITIAL_RESERVE,
            "{reserved} bytes reserved"
        );
    }

    /// How many descriptors of this process refer to `fd`'s pipe or socket (either end): the
    /// count of `/proc/self/fd` entries naming its inode, unaffected by other tests.
    fn open_copies(fd: &impl AsFd) -> usize {
        use std::os::fd::AsRawFd;
        let target = |n: &str| std::fs::read_link(format!("/proc/self/fd/{n}")).ok();
        let me = target(&fd.as_fd().as_raw_fd().to_string()).unwrap();
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|entry| target(entry.ok()?.file_name().to_str()?))
            .filter(|link| *link == me)
            .count()
    }

    #[test]
    fn fds_that_came_with_a_truncated_control_message_are_closed_at_once() {
        let (a, b) = pair();
        // With SO_PASSCRED the sender's credentials take part of the control buffer, so of
        // MAX_FDS descriptors only some fit: the kernel installs those and sets MSG_CTRUNC.
        rustix::net::sockopt::set_socket_passcred(&b, true).unwrap();
        let (_r, w) = rustix::pipe::pipe().unwrap();
        let before = open_copies(&w);
        let frame = Frame {
            bytes: vec![1],
            fds: (0..MAX_FDS).map(|_| w.try_clone().unwrap()).collect(),
        };
        send_frame(&a, &frame).unwrap();
        drop(frame);
        let mut got = Frame::new();
        let err = recv_frame(&b, DEFAULT_MAX_LEN, &mut got).unwrap_err();
        assert!(matches!(err, Error::FdsTruncated), "{err:?}");
        assert!(got.fds.is_empty());
        assert_eq!(
            open_copies(&w),
            before,
            "copies of the sent descriptor linger"
        );
    }

    #[test]
    fn negative_lengths_other_than_minus_one_are_malformed() {
        let (a, b) = pair();
        raw_write(&a, &(-2i32).to_be_bytes());
        let mut buf = Vec::new();
        assert!(matches!(
            read_frame(&b, DEFAULT_MAX_LEN, &mut buf),
            Err(Error::Malformed(_))
        ));
    }

    #[test]
    fn a_waiting_send_fills_a_non_blocking_socket_whole() {
        let (a, b) = socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .unwrap();
        let big = Frame {
            bytes: (0..4 << 20).map(|i| i as u8).collect(),
            fds: Vec::new(),
        };
        let errno = |err: Error| match err {
            Error::Os(_, e) => e.raw_os_error().map(Errno::from_raw_os_error),
            _ => None,
        };
        // Far past the socket's buffer: a plain send gives up with EAGAIN part-way...
        assert_eq!(errno(send_frame(&a, &big).unwrap_err()), Some(Errno::AGAIN));
        let mut stale = vec![0; 8 << 20];
        while let Ok(n @ 1..) = rustix::io::read(&b, &mut stale) {
            let _ = n;
        }
        // ...a waiting one sends it all while the reader takes it.
        rustix::io::ioctl_fionbio(&b, false).unwrap();
        let reader = thread::spawn(move || {
            let mut frame = Frame::new();
            recv_frame(&b, DEFAULT_MAX_LEN, &mut frame).unwrap();
            frame.bytes
        });
        let (never, _keep) = rustix::pipe::pipe().unwrap();
        send_frame_waiting(&a, &big, never.as_fd()).unwrap();
        assert_eq!(reader.join().unwrap(), big.bytes);

        // A reader that is gone (here: a pipe that turns readable) ends the wait.
        let (gone, poke) = rustix::pipe::pipe().unwrap();
        rustix::io::write(&poke, b"x").unwrap();
        let err = send_frame_waiting(&a, &big, gone.as_fd()).unwrap_err();
        assert_eq!(errno(err), Some(Errno::PIPE));
    }

    #[test]
    fn large_frames_stream_through_a_pipe_in_order() {
        let (reader, writer) = std::io::pipe().unwrap();
        let sizes = [0usize, 1, 65_536, 3 << 20, 5];
        let sender = thread::spawn(move || {
            for (i, &n) in sizes.iter().enumerate() {
                write_frame(&writer, &vec![i as u8; n]).unwrap();
            }
        });
        let mut buf = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            read_frame(&reader, DEFAULT_MAX_LEN, &mut buf).unwrap();
            assert_eq!(buf.len(), n);
            assert!(buf.iter().all(|&b| b == i as u8));
        }
        sender.join().unwrap();
        assert!(matches!(
            read_frame(&reader, DEFAULT_MAX_LEN, &mut buf),
            Err(Error::Closed)
        ));
    }

    #[test]
    fn sending_to_a_closed_peer_is_epipe_not_sigpipe() {
        let (a, b) = pair();
        drop(b);
        let err = send_frame(&a, &Frame::encode(&1u8).unwrap()).unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(rustix::io::Errno::PIPE.raw_os_error())
        );
    }

    #[test]
    fn too_many_fds_sends_nothing() {
        let (a, b) = pair();
        let (_r, w) = std::io::pipe().unwrap();
        let w = OwnedFd::from(w);
        let frame = Frame {
            bytes: vec![1],
            fds: (0..=MAX_FDS).map(|_| w.try_clone().unwrap()).collect(),
        };
        assert!(matches!(
            send_frame(&a, &frame),
            Err(Error::TooManyFds { count: 254, .. })
        ));
        send_frame(&a, &Frame::encode(&Bytes(vec![2])).unwrap()).unwrap();
        let mut got = Frame::new();
        recv_frame(&b, DEFAULT_MAX_LEN, &mut got).unwrap();
        assert_eq!(got.bytes, [2]);
    }

    #[test]
    fn the_most_fds_a_frame_may_carry_all_arrive() {
        let (a, b) = pair();
        let (_r, w) = std::io::pipe().unwrap();
        let w = OwnedFd::from(w);
        let frame = Frame {
            bytes: vec![1, 2, 3],
            fds: (0..MAX_FDS).map(|_| w.try_clone().unwrap()).collect(),
        };
        send_frame(&a, &frame).unwrap();
        let mut got = Frame::new();
        recv_frame(&b, DEFAULT_MAX_LEN, &mut got).unwrap();
        assert_eq!(got.fds.len(), MAX_FDS);
        assert_eq!(got.bytes, [1, 2, 3]);
    }
}
