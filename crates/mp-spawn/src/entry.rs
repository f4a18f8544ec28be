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
pub(crate) fn anchor() -> usize {
    anchor as fn() -> usize as usize
}

/// Written by the parent on its end of the bootstrap socket before it starts the child
/// (or the forkserver), so the child finds it there at once: a socket that does not hold
/// it is not one of ours (a stale variable), and the program runs as usual.
pub(crate) const PREAMBLE: [u8; 8] = *b"mp-spawn";

/// Runs in every process of this executable before `main` (see `sys::CONSTRUCTOR`).
///
/// The private variables are removed whatever happens. A process becomes a child (or the
/// forkserver) only if [`bootstrap_socket`] accepts what the variable names; otherwise the
/// program runs as usual.
pub(crate) fn on_load() {
    if let Some(value) = take_env(CHILD_ENV)
        && let Some(socket) = bootstrap_socket(value)
    {
        sys::ignore_sigpipe();
        finish(run_bootstrap(Connection::from_unix_socket(socket), true));
    }
    if let Some(value) = take_env(SERVER_ENV)
        && let Some(socket) = bootstrap_socket(value)
    {
        sys::ignore_sigpipe();
        crate::start::forkserver::serve(socket)
    }
}

/// Reads and removes a private variable: `Some(Some((fd, parent)))` when set to
/// `<fd>:<parent pid>`.
fn take_env(key: &str) -> Option<Option<(i32, i32)>> {
    let value = std::env::var_os(key)?;
    sys::remove_env_before_main(key);
    Some(value.to_str().and_then(parse_env))
}

/// The value of a private variable: the bootstrap descriptor and the parent's pid.
fn parse_env(value: &str) -> Option<(i32, i32)> {
    let (fd, parent) = value.split_once(':')?;
    Some((fd.parse().ok()?, parent.parse().ok()?))
}

/// The value of a private variable for a child of this process.
pub(crate) fn env_value() -> String {
    format!("{BOOT_FD}:{}", std::process::id())
}

/// Whether a process may act as a child at all: not when it runs with privileges its
/// invoker lacks (setuid, setgid, file capabilities: `AT_SECURE`, or real and effective ids
/// that differ). Whoever started it could set the variable and hand it a socket, and the
/// bootstrap says what to run with what arguments: the program then runs as usual.
pub(crate) fn may_act_as_child(c: &sys::Credentials) -> bool {
    !c.secure && c.uid == c.euid && c.gid == c.egid
}

/// What the peer of a bootstrap socket says about it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Peer {
    /// Made by our parent, as the variable says, under our own user: act as the child.
    Parent,
    /// Made by the process the variable names, which is no longer our parent: it died
    /// before we got here (we were handed to a reaper), and we should die with it.
    ParentGone,
    /// Anything else: not a bootstrap of ours.
    Stranger,
}

/// Judges a bootstrap socket's peer (`SO_PEERCRED`: for a socket pair, the process that
/// made the pair and its effective uid then) against the parent the variable names, our
/// kernel parent and our uid.
///
/// Our parent makes the pair and then starts us (spawn: the child; forkserver: the server;
/// a forkserver's own children are forked from it, never exec'd, and are not judged here).
/// This is no authentication of the bytes: a process of the same user can make a pair,
/// fork, and exec this program from the child. What it gains is nothing it did not have:
/// it can only pick one of the targets built into the program (see `targets`), with
/// arguments of its choosing, as the same user. The check keeps other users' sockets,
/// and descriptors inherited by accident, out.
pub(crate) fn judge_peer(peer_pid: i32, peer_uid: u32, named: i32, ppid: i32, uid: u32) -> Peer {
    if peer_uid != uid || peer_pid != named || named <= 0 {
        Peer::Stranger
    } else if ppid != named {
        Peer::ParentGone
    } else {
        Peer::Parent
    }
}

/// The bootstrap socket a private variable's value names, if this process should act on
/// it; `None` means "run `main`". Never blocks: the parent wrote [`PREAMBLE`] before
/// starting us, so it is there now or never. A descriptor that is closed, not a socket, not
/// made by our parent, or silent leaves the program to run as usual, untouched.
fn bootstrap_socket(value: Option<(i32, i32)>) -> Option<std::os::fd::OwnedFd> {
    if !may_act_as_child(&sys::credentials()) {
        return None;
    }
    let (fd, named) = value?;
    let socket = sys::inherited_fd(fd)?;
    let peer = rustix::net::sockopt::socket_peercred(socket).ok()?;
    let ppid = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get());
    match judge_peer(
        peer.pid.as_raw_nonzero().get(),
        peer.uid.as_raw(),
        named,
        ppid,
        rustix::process::getuid().as_raw(),
    ) {
        Peer::Parent => {}
        Peer::ParentGone => sys::exit_now(START_FAILED),
        Peer::Stranger => return None,
    }
    let mut preamble = [0u8; PREAMBLE.len()];
    match rustix::net::recv(socket, &mut preamble, rustix::net::RecvFlags::DONTWAIT) {
        Ok((n, _)) if n == PREAMBLE.len() && preamble == PREAMBLE => {
            Some(sys::take_inherited_fd(socket))
        }
        _ => None,
    }
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
            // Through i128: the nanoseconds are a u64 or an i64 depending on the rustix backend.
            mtime: st.map_or((0, 0), |s| (s.st_mtime, i128::from(s.st_mtime_nsec) as u64)),
            layout: sys::offset_of(anchor(), finish as fn(i32) -> ! as usize),
        }
    })
}

/// What an exec'd or forkserver child is told to run.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Header {
    pub(crate) fingerprint: Fingerprint,
    /// Which entry of the table of targets to run (see `sys::targets`): the offset of its
    /// trampoline from [`anchor`]. It only selects; the child calls the table's own pointer.
    pub(crate) target: u64,
    /// [`types_of`] the target, its argument and its result, which the trampoline checks.
    pub(crate) types: u64,
    /// FNV-1a of the fingerprint, the target and the types: a corrupted message is caught
    /// here (integrity, not authentication: anyone can compute it).
    pub(crate) check: u64,
    pub(crate) name: String,
    pub(crate) identity: Vec<u32>,
    pub(crate) daemon: bool,
    pub(crate) parent_pid: u32,
    /// The parent's name, for the child's `parent_process().name()`.
    pub(crate) parent_name: String,
    /// How the child was started: its `get_start_method()`.
    pub(crate) method: crate::StartMethod,
}

fn fnv1a(h: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(h, |h, &byte| {
        (h ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

pub(crate) fn checksum(f: &Fingerprint, target: u64, types: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for word in [
        f.dev,
        f.ino,
        f.size,
        f.mtime.0 as u64,
        f.mtime.1,
        f.layout,
        target,
        types,
    ] {
        h = fnv1a(h, &word.to_le_bytes());
    }
    h
}

/// A hash of the names of a target's type, its argument's and its result's.
pub(crate) fn types_of<F, A, R>() -> u64 {
    fnv1a(
        0xcbf2_9ce4_8422_2325,
        std::any::type_name::<(F, A, R)>().as_bytes(),
    )
}

/// How a child runs the target a table entry stands for: check the types the bootstrap
/// names, decode `A` from the frame, run, send `R`.
pub(crate) type Trampoline = fn(u64, Frame, Outlet<'_>) -> i32;

/// The child's side of `Process::new(target: F, args: A)`: its address is what the table
/// of targets holds (see `sys::register_target`), and `F` (zero-sized) fixes the target.
pub(crate) fn trampoline<F, A, R>(types: u64, mut args: Frame, outlet: Outlet<'_>) -> i32
where
    F: Fn(A) -> R + Copy + 'static,
    A: Decode + 'static,
    R: Encode + 'static,
{
    if types != types_of::<F, A, R>() {
        return fail(
            outlet,
            "the bootstrap names a target of other argument or result types",
        );
    }
    let target: F = sys::copy_of_zero_sized();
    match A::decode(&mut args) {
        Ok(args) => run_target(outlet, move || target(args)),
        Err(err) => fail(outlet, &format!("cannot decode the arguments: {err}")),
    }
}

/// The header and arguments of a bootstrap message for `target(args)`, `F` zero-sized.
pub(crate) fn bootstrap_frame<F, A, R>(
    _target: &F,
    args: &A,
    name: &str,
    identity: &[u32],
    daemon: bool,
    method: crate::StartMethod,
) -> crate::Result<Frame>
where
    F: Fn(A) -> R + Copy + 'static,
    A: Decode + Encode + 'static,
    R: Decode + Encode + 'static,
{
    sys::register_target::<F, A, R>();
    let fingerprint = fingerprint().clone();
    let trampoline = trampoline::<F, A, R> as Trampoline;
    // In the table the child will look in (not so if this code lives in a shared library,
    // whose table the child's executable does not share).
    if !sys::same_object(anchor(), trampoline as usize)
        || !sys::targets().contains(&Some(trampoline))
    {
        return Err(crate::Error::NotInExecutable);
    }
    let target = sys::offset_of(anchor(), trampoline as usize);
    let types = types_of::<F, A, R>();
    let header = Header {
        check: checksum(&fingerprint, target, types),
        fingerprint,
        target,
        types,
        name: name.to_string(),
        identity: identity.to_vec(),
        daemon,
        parent_pid: std::process::id(),
        parent_name: current::name(),
        method,
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

/// Checks a header against this image and finds its target in the table of targets: the
/// entry whose offset from [`anchor`] the header names. Nothing from the bytes is ever
/// called; they only choose among the table's entries.
fn verify(header: &Header) -> Result<Trampoline, String> {
    if header.fingerprint != *fingerprint() {
        return Err("the bootstrap was made by a different executable".into());
    }
    if header.check != checksum(&header.fingerprint, header.target, header.types) {
        return Err("the bootstrap message is corrupted".into());
    }
    sys::targets()
        .iter()
        .flatten()
        .copied()
        .find(|&t| sys::offset_of(anchor(), t as usize) == header.target)
        .ok_or_else(|| "the bootstrap names no target of this executable".into())
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
    let trampoline = match verify(&header) {
        Ok(trampoline) => trampoline,
        Err(why) => return fail(outlet, &why),
    };
    current::become_child(
        header.name,
        header.identity,
        header.daemon,
        (header.parent_pid, header.parent_name),
        header.method,
        exec_child, // a forkserver's child: its parent process is not its kernel's parent
    );
    trampoline(header.types, args, outlet)
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
                    &format!(
                        "cannot encode the result, a {}: {err}",
                        std::any::type_name::<R>()
                    ),
                );
                1
            }
        },
        Err(payload) => {
            let message = crate::call::panic_message(&*payload);
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

#[cfg(test)]
mod tests {
    use std::{
        ffi::CString,
        os::fd::{AsFd, BorrowedFd},
        time::Duration,
    };

    use super::*;
    use crate::{Error, Process, StartMethod, start};

    const DEADLINE: Duration = Duration::from_secs(30);

    /// Has the signature of a trampoline, and ends its process with a code nothing else
    /// uses. It is in no table: an attacker reads its offset with `nm`.
    fn evil(_: u64, _: Frame, _: Outlet<'_>) -> i32 {
        sys::exit_now(77)
    }

    fn triple(x: u64) -> u64 {
        3 * x
    }

    /// Writes `target ran` to the file `path`.
    fn marks(path: String) -> u8 {
        let _ = std::fs::write(path, "target ran");
        0
    }

    fn encode(header: &Header, args: &[u8]) -> Frame {
        let head = Frame::encode(header).unwrap().bytes;
        let mut bytes = (head.len() as u32).to_le_bytes().to_vec();
        bytes.extend(head);
        bytes.extend_from_slice(args);
        Frame {
            bytes,
            fds: Vec::new(),
        }
    }

    /// Starts a spawned child from `frame` and joins it.
    fn run_spawned(frame: Frame) -> (Result<Option<u64>, Error>, Option<i32>) {
        let mut started = start::spawn::start(frame).unwrap();
        let pidfd = started.pidfd.take().map(std::sync::Arc::new);
        let mut p: Process<u64> = Process::made(
            started,
            "forged".into(),
            vec![1],
            pidfd,
            0,
            false,
            StartMethod::Spawn,
        );
        let joined = p.join_timeout(DEADLINE);
        if matches!(joined, Ok(None)) {
            let _ = p.kill();
        }
        (joined, p.exitcode())
    }

    fn assert_refused((joined, code): (Result<Option<u64>, Error>, Option<i32>), needle: &str) {
        assert_ne!(code, Some(77), "the forged target ran");
        assert_eq!(code, Some(START_FAILED));
        match joined {
            Err(Error::StartFailed { message, .. }) => {
                assert!(message.contains(needle), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_forged_bootstrap_with_a_valid_checksum_does_not_run_its_target() {
        let good = bootstrap_frame(
            &triple,
            &5u64,
            "forged",
            &[9],
            false,
            crate::StartMethod::Spawn,
        )
        .unwrap();
        let (mut header, args) = split(good).unwrap();
        // The offset of a function that is no target, with a checksum to match.
        header.target = sys::offset_of(anchor(), evil as Trampoline as usize);
        header.check = checksum(&header.fingerprint, header.target, header.types);
        let forged = encode(&header, &args.bytes);
        assert_refused(
            run_spawned(forged),
            "the bootstrap names no target of this executable",
        );
    }

    #[test]
    fn a_bootstrap_naming_a_target_of_other_types_is_refused() {
        let good = bootstrap_frame(
            &triple,
            &5u64,
            "forged",
            &[9],
            false,
            crate::StartMethod::Spawn,
        )
        .unwrap();
        let (mut header, args) = split(good).unwrap();
        header.types ^= 1;
        header.check = checksum(&header.fingerprint, header.target, header.types);
        assert_refused(run_spawned(encode(&header, &args.bytes)), "other argument");
    }

    #[test]
    fn every_target_started_here_is_in_the_table() {
        fn trampoline_of<F, A, R>(_: &F) -> Trampoline
        where
            F: Fn(A) -> R + Copy + 'static,
            A: Decode + 'static,
            R: Encode + 'static,
        {
            trampoline::<F, A, R>
        }
        let ours = trampoline_of(&triple);
        bootstrap_frame(&triple, &1u64, "t", &[1], false, crate::StartMethod::Spawn).unwrap();
        assert!(sys::targets().contains(&Some(ours)));
        assert!(!sys::targets().contains(&Some(evil as Trampoline)));
    }

    #[test]
    fn a_privileged_process_never_acts_as_a_child() {
        let plain = sys::Credentials {
            secure: false,
            uid: 1000,
            euid: 1000,
            gid: 100,
            egid: 100,
        };
        assert!(may_act_as_child(&plain));
        for c in [
            sys::Credentials {
                secure: true,
                ..plain
            },
            sys::Credentials { euid: 0, ..plain },
            sys::Credentials { egid: 0, ..plain },
            sys::Credentials { uid: 0, ..plain },
        ] {
            assert!(!may_act_as_child(&c), "{c:?}");
        }
    }

    #[test]
    fn only_a_socket_our_parent_made_under_our_user_is_a_bootstrap() {
        // peer pid, peer uid, named parent, our parent, our uid
        assert_eq!(judge_peer(10, 5, 10, 10, 5), Peer::Parent);
        assert_eq!(judge_peer(10, 6, 10, 10, 5), Peer::Stranger);
        assert_eq!(judge_peer(11, 5, 10, 10, 5), Peer::Stranger);
        assert_eq!(judge_peer(10, 5, 11, 10, 5), Peer::Stranger);
        assert_eq!(judge_peer(0, 5, 0, 0, 5), Peer::Stranger);
        // Made by the parent named, which is no longer ours: it died.
        assert_eq!(judge_peer(10, 5, 10, 1, 5), Peer::ParentGone);
        assert_eq!(parse_env("3:42"), Some((3, 42)));
        assert_eq!(parse_env("3"), None);
        assert_eq!(parse_env("x:1"), None);
    }

    /// Set to a file's path: [`stale_probe`] writes there whether the private variable is
    /// still set.
    const PROBE: &str = "MP_SPAWN_TEST_STALE_PROBE";

    /// Runs only in this test binary started again by [`run_with_variable`]: the program's
    /// own `main` (libtest's) got this far.
    #[test]
    fn stale_probe() {
        if let Some(path) = std::env::var_os(PROBE) {
            let seen =
                std::env::var_os(CHILD_ENV).is_some() || std::env::var_os(SERVER_ENV).is_some();
            std::fs::write(path, format!("main ran; variable seen: {seen}")).unwrap();
        }
    }

    /// Starts this test binary again for [`stale_probe`] alone, with `CHILD_ENV=value` and
    /// `keep` as descriptor 3 (and nothing above it), and waits for it (at most
    /// [`DEADLINE`]). Returns its exit code and what the probe wrote.
    fn run_with_variable(value: &str, keep: BorrowedFd<'_>) -> (i32, Option<String>) {
        run_with(CHILD_ENV, value, keep)
    }

    /// As [`run_with_variable`], for the private variable `key`.
    fn run_with(key: &str, value: &str, keep: BorrowedFd<'_>) -> (i32, Option<String>) {
        let path = std::env::temp_dir().join(format!(
            "mp-spawn-probe-{}-{}",
            std::process::id(),
            rustix::time::clock_gettime(rustix::time::ClockId::Monotonic).tv_nsec
        ));
        let mut env = start::child_env(key, value);
        env.push(CString::new(format!("{PROBE}={}", path.display())).unwrap());
        let args = [
            start::argv0(),
            c"--exact".into(),
            c"entry::tests::stale_probe".into(),
            c"--test-threads=1".into(),
            c"-q".into(),
        ];
        let args: Vec<&std::ffi::CStr> = args.iter().map(|a| a.as_c_str()).collect();
        let pid = sys::spawn_self(&args, &env, keep, BOOT_FD).unwrap();
        let pidfd = start::open_pidfd(pid as u32).unwrap();
        if mp_pipe::wait(&[&pidfd], Some(DEADLINE)).unwrap().is_empty() {
            let _ = rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::KILL);
            let _ = rustix::process::waitid(
                rustix::process::WaitId::PidFd(pidfd.as_fd()),
                rustix::process::WaitIdOptions::EXITED,
            );
            let _ = std::fs::remove_file(&path);
            panic!("the program with a stale variable still runs after {DEADLINE:?}");
        }
        let status = rustix::process::waitid(
            rustix::process::WaitId::PidFd(pidfd.as_fd()),
            rustix::process::WaitIdOptions::EXITED,
        )
        .unwrap()
        .unwrap();
        let probe = std::fs::read_to_string(&path).ok();
        let _ = std::fs::remove_file(&path);
        (crate::process::exit_code(&status), probe)
    }

    const MAIN_RAN: &str = "main ran; variable seen: false";

    #[test]
    fn a_stale_variable_naming_a_closed_descriptor_reaches_main() {
        let null = std::fs::File::open("/dev/null").unwrap();
        // Descriptor 5 is closed in the child: everything above 3 is.
        let value = format!("5:{}", std::process::id());
        assert_eq!(
            run_with_variable(&value, null.as_fd()),
            (0, Some(MAIN_RAN.into()))
        );
        // And a value that is no descriptor at all.
        assert_eq!(
            run_with_variable("three", null.as_fd()),
            (0, Some(MAIN_RAN.into()))
        );
    }

    #[test]
    fn a_stale_variable_naming_a_pipe_reaches_main() {
        let (reader, _writer) = rustix::pipe::pipe().unwrap();
        assert_eq!(
            run_with_variable(&env_value(), reader.as_fd()),
            (0, Some(MAIN_RAN.into()))
        );
    }

    #[test]
    fn a_stale_variable_naming_a_silent_socket_reaches_main() {
        // Made by the parent, so its peer is right: only its silence tells.
        let (_ours, theirs) = start::socketpair().unwrap();
        for key in [CHILD_ENV, SERVER_ENV] {
            assert_eq!(
                run_with(key, &env_value(), theirs.as_fd()),
                (0, Some(MAIN_RAN.into())),
                "{key}"
            );
        }
    }

    /// A socket pair made by another process (a fork child of ours), which it hands back.
    fn pair_made_elsewhere() -> (mp_pipe::Connection, mp_pipe::Connection, u32) {
        let mut maker = Process::fork(|| {
            let (a, b) = mp_pipe::socket_pipe(true).unwrap();
            (a, b, std::process::id())
        })
        .start()
        .unwrap();
        maker.join_timeout(DEADLINE).unwrap().expect("in time")
    }

    #[test]
    fn a_bootstrap_on_a_socket_another_process_made_is_not_run() {
        let marker = std::env::temp_dir().join(format!("mp-spawn-marker-{}", std::process::id()));
        let frame = bootstrap_frame(
            &marks,
            &marker.display().to_string(),
            "stranger",
            &[1],
            false,
            crate::StartMethod::Spawn,
        )
        .unwrap();
        // Named as our own pid: the peer (the maker) is not the parent named.
        let (ours, theirs, _) = pair_made_elsewhere();
        rustix::net::send(&ours, &PREAMBLE, rustix::net::SendFlags::empty()).unwrap();
        ours.send_frame(&frame).unwrap();
        let ran = run_with_variable(&env_value(), theirs.as_fd());
        let target_ran = marker.exists();
        let _ = std::fs::remove_file(&marker);
        assert!(!target_ran, "the target ran");
        assert_eq!(ran, (0, Some(MAIN_RAN.into())));

        // Named as the maker: the right peer, but not our parent (as if it had died before
        // we looked): the child ends at once, running neither the target nor `main`.
        let (ours, theirs, maker) = pair_made_elsewhere();
        rustix::net::send(&ours, &PREAMBLE, rustix::net::SendFlags::empty()).unwrap();
        ours.send_frame(&frame).unwrap();
        let ran = run_with_variable(&format!("{BOOT_FD}:{maker}"), theirs.as_fd());
        let target_ran = marker.exists();
        let _ = std::fs::remove_file(&marker);
        assert!(!target_ran, "the target ran");
        assert_eq!(ran, (START_FAILED, None));
    }
}
