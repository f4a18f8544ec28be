//! A child's side: becoming a worker before `main` (exec'd children and the forkserver), the
//! bootstrap message that says what to run, and running it.

use std::{
    os::fd::{AsFd, BorrowedFd},
    panic::{AssertUnwindSafe, catch_unwind},
    sync::OnceLock,
};

use mp_codec::{Decode, Encode, Frame};
use mp_pipe::Connection;
use serde::{Deserialize, Serialize};

use crate::{current, registry, sys};

/// Set in an exec'd child's environment: the descriptor its bootstrap arrives on.
pub(crate) const CHILD_ENV: &str = "__MP_SPAWN_CHILD";
/// Set in the forkserver's environment: the descriptor of its request socket.
pub(crate) const SERVER_ENV: &str = "__MP_SPAWN_FORKSERVER";
/// Where the bootstrap (or request) socket is placed in an exec'd process.
pub(crate) const BOOT_FD: i32 = 3;
/// Exit code of a child that could not start its target.
pub(crate) const START_FAILED: i32 = 1;

/// The point every function offset is measured from.
#[inline(never)]
fn anchor() -> usize {
    anchor as fn() -> usize as usize
}

/// Runs in every process of this executable before `main` (see `sys::CONSTRUCTOR`).
pub(crate) fn on_load() {
    if let Some(fd) = take_env(CHILD_ENV) {
        sys::ignore_sigpipe();
        let code = match fd.and_then(sys::take_inherited_fd) {
            Some(socket) => run_bootstrap(Connection::from_unix_socket(socket), true),
            None => START_FAILED,
        };
        finish(code);
    }
    if let Some(fd) = take_env(SERVER_ENV) {
        sys::ignore_sigpipe();
        match fd.and_then(sys::take_inherited_fd) {
            Some(socket) => crate::start::forkserver::serve(socket),
            None => sys::exit_now(START_FAILED),
        }
    }
}

/// Reads and removes a private variable: `Some(Some(fd))` when set to a number.
fn take_env(key: &str) -> Option<Option<i32>> {
    let value = std::env::var_os(key)?;
    sys::remove_env_before_main(key);
    Some(value.to_str().and_then(|v| v.parse().ok()))
}

/// True when this process was started as a child but the constructor did not turn it into
/// one: starting processes from here would recurse.
pub(crate) fn entry_was_skipped() -> bool {
    std::env::var_os(CHILD_ENV).is_some() || std::env::var_os(SERVER_ENV).is_some()
}

/// Identifies the executable image: the file behind `/proc/self/exe` and one distance
/// between two functions in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Fingerprint {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, u64),
    layout: u64,
}

impl Fingerprint {
    #[cfg(test)]
    pub(crate) fn other_for_tests() -> Self {
        Fingerprint {
            ino: fingerprint().ino ^ 1,
            ..fingerprint().clone()
        }
    }
}

pub(crate) fn fingerprint() -> &'static Fingerprint {
    static MINE: OnceLock<Fingerprint> = OnceLock::new();
    MINE.get_or_init(|| {
        let st = rustix::fs::stat("/proc/self/exe").ok();
        Fingerprint {
            dev: st.map_or(0, |s| s.st_dev),
            ino: st.map_or(0, |s| s.st_ino),
            size: st.map_or(0, |s| s.st_size as u64),
            mtime: st.map_or((0, 0), |s| (s.st_mtime, s.st_mtime_nsec)),
            layout: sys::offset_of(anchor(), finish as fn(i32) -> ! as usize),
        }
    })
}

/// What an exec'd or forkserver child is told to run.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Header {
    pub(crate) fingerprint: Fingerprint,
    pub(crate) trampoline: u64,
    pub(crate) target: u64,
    /// FNV-1a of the two offsets and the fingerprint: a corrupted offset is caught here.
    pub(crate) check: u64,
    pub(crate) name: String,
    pub(crate) identity: Vec<u32>,
    pub(crate) daemon: bool,
    pub(crate) parent_pid: u32,
}

fn checksum(f: &Fingerprint, trampoline: u64, target: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for word in [
        f.dev,
        f.ino,
        f.size,
        f.mtime.0 as u64,
        f.mtime.1,
        f.layout,
        trampoline,
        target,
    ] {
        for byte in word.to_le_bytes() {
            h = (h ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// How a child runs a `fn(A) -> R` given by offset: decode `A` from the frame, run, send `R`.
pub(crate) type Trampoline = fn(&sys::SameImage, u64, Frame, Outlet<'_>) -> i32;

fn trampoline<A: Decode, R: Encode>(
    image: &sys::SameImage,
    target: u64,
    mut args: Frame,
    outlet: Outlet<'_>,
) -> i32 {
    let target: fn(A) -> R = sys::function_at(image, anchor(), target);
    match A::decode(&mut args) {
        Ok(args) => run_target(outlet, move || target(args)),
        Err(err) => fail(outlet, &format!("cannot decode the arguments: {err}")),
    }
}

/// The header and arguments of a bootstrap message for `target(args)`.
pub(crate) fn bootstrap_frame<A: Decode + Encode, R: Decode + Encode>(
    target: fn(A) -> R,
    args: &A,
    name: &str,
    identity: &[u32],
    daemon: bool,
) -> crate::Result<Frame> {
    let fingerprint = fingerprint().clone();
    let (trampoline, target) = (trampoline::<A, R> as Trampoline as usize, target as usize);
    if !sys::same_object(anchor(), trampoline) || !sys::same_object(anchor(), target) {
        return Err(crate::Error::NotInExecutable);
    }
    let trampoline = sys::offset_of(anchor(), trampoline);
    let target = sys::offset_of(anchor(), target);
    let header = Header {
        check: checksum(&fingerprint, trampoline, target),
        fingerprint,
        trampoline,
        target,
        name: name.to_string(),
        identity: identity.to_vec(),
        daemon,
        parent_pid: std::process::id(),
    };
    let head = Frame::encode(&header)?;
    let mut frame = Frame::new();
    frame
        .bytes
        .extend_from_slice(&(head.bytes.len() as u32).to_le_bytes());
    frame.bytes.extend_from_slice(&head.bytes);
    args.encode(&mut frame)?;
    Ok(frame)
}

/// Checks a header against this image.
fn verify(header: &Header) -> Result<sys::SameImage, String> {
    if header.fingerprint != *fingerprint() {
        return Err("the bootstrap was made by a different executable".into());
    }
    if header.check != checksum(&header.fingerprint, header.trampoline, header.target) {
        return Err("the bootstrap message is corrupted".into());
    }
    Ok(sys::SameImage(()))
}

/// Splits a bootstrap frame into its header and the arguments' frame.
fn split(mut frame: Frame) -> Result<(Header, Frame), String> {
    let bad = |what: &str| format!("the bootstrap message is corrupted ({what})");
    let len = frame
        .bytes
        .first_chunk::<4>()
        .map(|b| u32::from_le_bytes(*b) as usize)
        .ok_or_else(|| bad("too short"))?;
    let head = frame
        .bytes
        .get(4..4 + len)
        .ok_or_else(|| bad("header length"))?;
    let header: Header = Frame {
        bytes: head.to_vec(),
        fds: Vec::new(),
    }
    .decode()
    .map_err(|e| bad(&e.to_string()))?;
    frame.bytes.drain(..4 + len);
    Ok((header, frame))
}

/// An exec'd or forkserver child: receive the bootstrap, become the named process, run.
/// `exec_child`: we are the parent's own child (spawn), so arrange to die with it; a
/// forkserver's child has done so with the server already.
pub(crate) fn run_bootstrap(conn: Connection, exec_child: bool) -> i32 {
    match conn.recv_frame() {
        Ok(frame) => run_frame(frame, Outlet::new(&conn), exec_child),
        Err(err) => {
            eprintln!("mp-spawn child: no bootstrap message: {err}");
            START_FAILED
        }
    }
}

/// A forkserver's standby child: wait for the bootstrap and run it. End of file means the
/// parent let the standby go (or died): leave quietly; any other failure says why.
///
/// Beyond making its socket blocking it does nothing ahead of time: measured, work done here
/// right after the fork (faulting in stack and heap, opening a pidfd) competes for the CPUs
/// with the child that runs meanwhile and costs a start more than it saves.
pub(crate) fn run_standby(conn: Connection) -> i32 {
    // A pooled socket is non-blocking (see `start::channel`); the outcome is sent
    // non-blocking again.
    if conn.set_nonblocking(false).is_err() {
        return START_FAILED;
    }
    match conn.recv_frame() {
        Ok(frame) => {
            // Non-blocking again, as the pool keeps its pairs, and as the outcome is sent.
            if rustix::io::ioctl_fionbio(&conn, true).is_err() {
                return START_FAILED;
            }
            // Its own socket's buffer: a room too large could cut a result in two.
            let buffer = rustix::net::sockopt::socket_send_buffer_size(&conn).unwrap_or(0);
            run_frame(
                frame,
                Outlet::ready(conn.as_fd(), inline_room(buffer)),
                false,
            )
        }
        Err(mp_pipe::Error::Eof) => 0,
        Err(err) => {
            eprintln!("mp-spawn child: no bootstrap message: {err}");
            START_FAILED
        }
    }
}

/// Runs a bootstrap frame already received.
pub(crate) fn run_frame(frame: Frame, outlet: Outlet<'_>, exec_child: bool) -> i32 {
    install_panic_hook();
    let (header, args) = match split(frame) {
        Ok(parts) => parts,
        Err(why) => return fail(outlet, &why),
    };
    if exec_child && sys::die_with_parent(header.parent_pid as i32).is_err() {
        return fail(outlet, "cannot arrange to die with the parent");
    }
    let image = match verify(&header) {
        Ok(image) => image,
        Err(why) => return fail(outlet, &why),
    };
    let trampoline: Trampoline = sys::function_at(&image, anchor(), header.trampoline);
    current::become_child(
        header.name,
        header.identity,
        header.daemon,
        header.parent_pid,
        exec_child, // a forkserver's child: its parent process is not its kernel's parent
    );
    trampoline(&image, header.target, args, outlet)
}

/// The three ways a child's run ends, as the first byte of the result frame.
pub(crate) const RETURNED: u8 = 0;
pub(crate) const PANICKED: u8 = 1;
pub(crate) const FAILED: u8 = 2;
/// The result frame's bytes are in the memfd that comes first among its descriptors.
pub(crate) const IN_MEMFD: u8 = 3;
/// The target called `exit` (sent by a forked child's exit guard, `sys::exit_guard`): the
/// child's exit status, 0 included, is then no sign that it returned.
pub(crate) const EXITED: u8 = 4;

/// Results up to this size go straight into the socket, whose buffer (over 200 KiB by
/// default) takes them without blocking; larger ones go through a memfd. Either way the child
/// never waits for its parent to read, so the parent need only wait for the child to exit:
/// one wake-up per join.
const INLINE_RESULT: usize = 64 << 10;

/// How many bytes of result may go inline on a socket whose send buffer is `buffer` bytes:
/// only what surely fits whole (a partial send could not be taken back), at most
/// [`INLINE_RESULT`].
pub(crate) fn inline_room(buffer: usize) -> usize {
    INLINE_RESULT.min(buffer / 4)
}

/// Where a child sends its outcome: its result socket, and how much may go inline.
#[derive(Clone, Copy)]
pub(crate) struct Outlet<'a> {
    socket: BorrowedFd<'a>,
    /// Known for a socket made non-blocking by the parent (a forked child's, see
    /// `start::channel`); otherwise found out when sending.
    room: Option<usize>,
    /// The handle to stdout to flush before sending (see [`Outlet::flushing`]).
    stdout: Option<&'a std::io::Stdout>,
    /// See [`Outlet::status_says_returned`].
    status_says_returned: bool,
}

impl<'a> Outlet<'a> {
    /// An exec'd child's bootstrap connection.
    pub(crate) fn new(conn: &'a Connection) -> Self {
        Outlet {
            socket: conn.as_fd(),
            room: None,
            stdout: None,
            status_says_returned: false,
        }
    }

    /// Flushes stdout through `stdout`, a handle the parent got before the fork: the child
    /// then never runs `std::io::stdout()` itself, one page of code fewer to fault in.
    pub(crate) fn flushing(self, stdout: &'a std::io::Stdout) -> Self {
        Outlet {
            stdout: Some(stdout),
            ..self
        }
    }

    /// A socket already non-blocking, with `room` bytes for an inline result.
    pub(crate) fn ready(socket: BorrowedFd<'a>, room: usize) -> Self {
        Outlet {
            socket,
            room: Some(room),
            stdout: None,
            status_says_returned: false,
        }
    }

    /// For a forked child, whose parent reads exit status 0 with nothing sent as "returned
    /// a value that encodes to nothing" (`()`): such a value is then not sent at all, one
    /// system call fewer. A target that calls `exit` instead is told apart by the exit
    /// guard, which sends [`EXITED`] first.
    pub(crate) fn status_says_returned(self) -> Self {
        Outlet {
            status_says_returned: true,
            ..self
        }
    }
}

/// Sends a result frame without ever blocking on the parent. Inlined with the rest of a
/// forked child's path (see `start::fork`): fewer pages of code for it to fault in.
#[inline]
fn send_outcome(outlet: Outlet<'_>, frame: &Frame) {
    let room = outlet.room.unwrap_or_else(|| {
        let _ = rustix::io::ioctl_fionbio(outlet.socket, true);
        inline_room(rustix::net::sockopt::socket_send_buffer_size(outlet.socket).unwrap_or(0))
    });
    if frame.bytes.len() <= room && mp_codec::wire::send_frame(outlet.socket, frame).is_ok() {
        return;
    }
    send_outcome_in_memfd(outlet, frame);
}

/// [`send_outcome`] for a result too big to go inline.
#[cold]
#[inline(never)]
fn send_outcome_in_memfd(outlet: Outlet<'_>, frame: &Frame) {
    let Ok(memfd) = rustix::fs::memfd_create(c"mp-spawn-result", rustix::fs::MemfdFlags::CLOEXEC)
    else {
        return;
    };
    let mut file = std::fs::File::from(memfd);
    if std::io::Write::write_all(&mut file, &frame.bytes).is_err() {
        return;
    }
    let mut fds = vec![file.as_fd()];
    fds.extend(frame.fds.iter().map(AsFd::as_fd));
    let _ = mp_codec::wire::send_parts(outlet.socket, &[IN_MEMFD], &fds);
}

/// The inverse of [`send_outcome`]'s memfd path: the frame as the child built it.
pub(crate) fn unpack_outcome(mut frame: Frame) -> std::io::Result<Frame> {
    if frame.bytes != [IN_MEMFD] || frame.fds.is_empty() {
        return Ok(frame);
    }
    let mut file = std::fs::File::from(frame.fds.remove(0));
    let mut bytes = Vec::new();
    std::io::Seek::rewind(&mut file)?;
    std::io::Read::read_to_end(&mut file, &mut bytes)?;
    Ok(Frame {
        bytes,
        fds: frame.fds,
    })
}

/// Tells the parent the target never ran, and why; the child's exit code.
fn fail(outlet: Outlet<'_>, why: &str) -> i32 {
    let name = current::current_process().name;
    eprintln!("Process {name}: could not start: {why}");
    if claim_outcome() {
        let mut frame = Frame::new();
        set_outcome(&mut frame, FAILED, why);
        send_outcome(outlet, &frame);
    }
    START_FAILED
}

/// Runs `body` under `catch_unwind`, does the child's exit work, and only then sends the
/// outcome, so the parent, woken by it, finds the child already gone. Returns the exit
/// code: 0 after a return, 1 after a panic (whose message the hook printed after
/// `Process <name>:`).
///
/// A result that encodes to nothing (`()`) is sent as the tag alone, from the stack: a
/// forked child then writes nothing to the heap, whose every touched page would cost it a
/// copy. A forked child sends it not at all (see [`Outlet::status_says_returned`]).
#[inline]
pub(crate) fn run_target<R: Encode>(outlet: Outlet<'_>, body: impl FnOnce() -> R) -> i32 {
    let mut frame = Frame::new();
    let code = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(value) => match value.encode(&mut frame) {
            Ok(()) => 0,
            Err(err) => {
                set_outcome(
                    &mut frame,
                    PANICKED,
                    &format!("cannot encode the result: {err}"),
                );
                1
            }
        },
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "Box<dyn Any>".into());
            set_outcome(&mut frame, PANICKED, &message);
            1
        }
    };
    prepare_exit(outlet.stdout);
    // A thread calling `exit` meanwhile has its outcome sent (by the exit guard) instead.
    if !claim_outcome() {
        return code;
    }
    // The parent may have gone, or dropped its Process: nobody to tell then.
    if code == 0 && frame.bytes.is_empty() && frame.fds.is_empty() {
        if outlet.status_says_returned {
            return code;
        }
        send_empty(outlet.socket, RETURNED);
    } else {
        if code == 0 {
            frame.bytes.insert(0, RETURNED);
        }
        send_outcome(outlet, &frame);
    }
    // Not dropped: the process is about to end, and freeing would write to the allocator's
    // pages (a copy each, in a forked child).
    std::mem::forget(frame);
    code
}

/// Whether the caller is the one to send this child's outcome: the first to ask is. A
/// child sends one frame at most, or its parent could read the second as the outcome of
/// the next child given the same pooled socket.
pub(crate) fn claim_outcome() -> bool {
    !crate::held::HELD
        .outcome_claimed
        .swap(true, std::sync::atomic::Ordering::AcqRel)
}

/// Sends a frame of the tag alone (see [`send_small`]).
#[inline]
pub(crate) fn send_empty(socket: BorrowedFd<'_>, tag: u8) {
    send_small(socket, &[std::hint::black_box(tag)]);
}

/// Sends a frame of at most 4 bytes, built on the stack and sent with one inline system
/// call: a constant's page, or the codec's sending code, would each be one more page for a
/// forked child (or the forkserver) to fault in. A few bytes go at once or not at all.
#[inline]
pub(crate) fn send_small(socket: BorrowedFd<'_>, payload: &[u8]) {
    let mut frame = [0u8; 12 + 4];
    let head = mp_codec::wire::header(
        payload.len(),
        (&mut frame[..12]).try_into().expect("12 bytes"),
    )
    .len();
    frame[head..head + payload.len()].copy_from_slice(payload);
    let _ = rustix::net::send(
        socket,
        &frame[..head + payload.len()],
        rustix::net::SendFlags::NOSIGNAL,
    );
}

/// Makes `frame` say that the run ended with `tag` (not [`RETURNED`]), and why.
fn set_outcome(frame: &mut Frame, tag: u8, why: &str) {
    frame.clear();
    frame.bytes.push(tag);
    frame.bytes.extend_from_slice(why.as_bytes());
}

/// Prefixes a child's panic report with `Process <name>:`, as Python does a traceback.
/// Installed in the parent before a fork (so the child needs no lock for it) and in exec'd
/// and forkserver children before they run; in a main process it adds nothing.
pub(crate) fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        // Read now, not while panicking: a forked child must not wait for a lock (here the
        // environment's) that another thread of its parent held at the fork.
        let backtraces = std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0");
        std::panic::set_hook(Box::new(move |info| {
            let me = current::current_process();
            let forked = current::forked();
            if me.identity.is_empty() {
                default(info);
            } else if backtraces && !forked {
                // An exec'd child, or a forkserver's (forked from a single thread): std's
                // hook, with its backtrace, cannot find its lock held by a thread gone.
                eprintln!("Process {}:", me.name);
                default(info);
            } else {
                // The default hook holds a lock of std's while it prints, which a forked
                // child finds held for ever if another thread of its parent was printing a
                // panic at the fork: print the same lines without it.
                // The lines std prints, in one write whose failure is ignored (a panic in
                // here would abort the child before it reports its panic).
                let thread = std::thread::current();
                let location = info
                    .location()
                    .map(|l| format!(" at {l}"))
                    .unwrap_or_default();
                // A backtrace needs std's lock too: a forked child goes without.
                let note = if backtraces {
                    "note: no backtrace in a child started by fork (std's backtrace lock may \
                     be held by a thread of the parent that does not exist here); the spawn \
                     and forkserver start methods print one\n"
                } else {
                    ""
                };
                let report = format!(
                    "Process {}:\nthread '{}' ({}) panicked{location}:\n{}\n{note}",
                    me.name,
                    thread.name().unwrap_or("<unnamed>"),
                    rustix::thread::gettid().as_raw_nonzero(),
                    info.payload_as_str().unwrap_or("Box<dyn Any>"),
                );
                let mut left = report.as_bytes();
                let stderr = std::io::stderr();
                while let Ok(n @ 1..) = rustix::io::write(&stderr, left) {
                    left = &left[n..];
                }
            }
        }));
    });
}

/// Ends a child: its own children dealt with as at exit, stdio flushed, then `_exit`, so
/// nothing of the parent's (destructors, `atexit` work) runs here.
#[inline]
pub(crate) fn finish(code: i32) -> ! {
    prepare_exit(None);
    sys::exit_now(code)
}

/// [`finish`], flushing stdout through a handle got before the fork (see
/// [`Outlet::flushing`]).
#[inline]
pub(crate) fn finish_flushing(code: i32, stdout: &std::io::Stdout) -> ! {
    prepare_exit(Some(stdout));
    sys::exit_now(code)
}

/// A child's exit work: its own children dealt with as at exit, stdout flushed (stderr has
/// no buffer).
#[inline]
fn prepare_exit(stdout: Option<&std::io::Stdout>) {
    registry::finish_children();
    use std::io::Write;
    let _ = match stdout {
        Some(mut stdout) => stdout.flush(),
        None => std::io::stdout().flush(),
    };
}
