//! `forkserver`: one exec'd, single-threaded server per parent, started on first use, forks
//! children on request. Each child is forked *ahead* of its start, as a standby that waits
//! for its bootstrap on a socket of its own: the request carries the child's end of that
//! socket and the write end of a status pipe (`SCM_RIGHTS`), the reply the child's pid. A
//! start sends the bootstrap straight to the standby and asks for the next one. The server
//! reaps its children and writes each exit status (4 bytes) to its status pipe, having first
//! thrown away whatever the child left unread (a bootstrap, if it was killed before it read
//! it, whose descriptors would otherwise live on in the pooled socket). It dies with
//! its parent (and its children, standby or not, with it), and is started again if it died.

use std::{
    collections::VecDeque,
    os::fd::{AsFd, OwnedFd},
    sync::Mutex,
};

use mp_codec::Frame;
use mp_pipe::Connection;
use rustix::process::{WaitId, WaitIdOptions, waitid};

use super::{
    Results, Started,
    channel::{self, Channel},
    open_pidfd, socketpair,
    spawn::exec_self,
};
use crate::{Error, Result, entry, sys};

pub(crate) struct Server {
    owner: u32,
    pidfd: OwnedFd,
    conn: Connection,
    /// Standby children asked for whose replies are not read yet, oldest first.
    asked: VecDeque<Asked>,
}

/// What was made for a standby child asked for: its result socket pair (pooled, as for
/// fork: the server and the child get copies of the child's end, so no unix socket is
/// destroyed per child; destroying one while descriptors are in flight, as requests' are,
/// makes the kernel queue its unix garbage collector, a worker thread's wake-up each time)
/// and the read end of its status pipe.
struct Asked {
    channel: Channel,
    status: OwnedFd,
}

/// How many standby children a parent keeps asked for: two, so that a start rarely waits
/// for the server to fork, even when children are started one after another and each ends
/// before the server has forked the next (measured: with one, half the starts of such a
/// loop waited for a fork, ~40 µs).
const STANDBYS: usize = 2;

impl Drop for Server {
    fn drop(&mut self) {
        // Replaced after a failure: make sure it is gone, and reap it. One inherited through
        // fork is our parent's: only close our copies of its descriptors.
        if self.owner == std::process::id() {
            let _ = rustix::process::pidfd_send_signal(&self.pidfd, rustix::process::Signal::KILL);
            let _ = waitid(WaitId::PidFd(self.pidfd.as_fd()), WaitIdOptions::EXITED);
        }
    }
}

static SERVER: &Mutex<Option<Server>> = &crate::held::HELD.server;

/// Stops this process's server, if it has one (it is started again on the next use).
pub(crate) fn stop() {
    let server = SERVER.lock().unwrap_or_else(|e| e.into_inner()).take();
    drop(server);
}

/// The running server's pid, read from its pidfd's `fdinfo` (`None` if this process has
/// no server of its own).
pub(crate) fn pid() -> Option<u32> {
    let server = SERVER.lock().unwrap_or_else(|e| e.into_inner());
    let server = server.as_ref().filter(|s| s.owner == std::process::id())?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&server.pidfd);
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|p| p.trim().parse().ok())
}

/// Held across `fork` (see `start::fork`).
pub(crate) fn lock() -> std::sync::MutexGuard<'static, impl Sized> {
    SERVER.lock().unwrap_or_else(|e| e.into_inner())
}

fn launch() -> Result<Server> {
    let (ours, theirs) = socketpair()?;
    let pid = exec_self(entry::SERVER_ENV, &ours, theirs)?;
    Ok(Server {
        owner: std::process::id(),
        pidfd: open_pidfd(pid).inspect_err(|_| sys::kill_and_reap(pid as i32))?,
        conn: Connection::from_unix_socket(ours),
        asked: VecDeque::new(),
    })
}

/// How getting a standby failed: refused (by a server still in step with us, or for want
/// of a resource, see [`short_of_resources`]), or with the connection to the server broken
/// (it died, or the stream is out of step) and a new server needed.
enum Failed {
    Refused(Error),
    Broken(Error),
    /// The standby is gone (killed from outside): take the next.
    Gone(Error),
}

/// A child the server forked ahead of need, waiting for its bootstrap on its end of
/// `channel`.
struct Standby {
    pid: u32,
    pidfd: OwnedFd,
    status: OwnedFd,
    channel: Channel,
}

impl Server {
    /// Asks for standby children until [`STANDBYS`] are, without waiting for replies. Each
    /// request carries the child's end of its socket and its status pipe's write end.
    fn request(&mut self) -> Result<(), Failed> {
        while self.asked.len() < STANDBYS {
            let channel = channel::take(crate::current::pid()).map_err(Failed::Refused)?;
            let (status, status_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                .map_err(|e| Failed::Refused(Error::os("pipe2", e)))?;
            mp_codec::wire::send_parts(
                &self.conn,
                &[],
                &[channel.theirs.as_fd(), status_w.as_fd()],
            )
            .map_err(|e| {
                let refused = short_of_resources(&e);
                let err = mp_pipe::Error::from(e).into();
                if refused {
                    Failed::Refused(err)
                } else {
                    Failed::Broken(err)
                }
            })?;
            self.asked.push_back(Asked { channel, status });
        }
        Ok(())
    }

    /// The oldest standby asked for (asking now if none is): usually forked long ago and its
    /// reply waiting, since each start asks for the next ones.
    fn standby(&mut self) -> Result<Standby, Failed> {
        // Topping up can fail (out of descriptors, say) without spoiling a standby already
        // asked for, even one asked for just now; the next start tries again.
        let topped_up = self.request();
        if self.asked.is_empty() {
            topped_up?;
        }
        let reply = self
            .conn
            .recv_bytes()
            .map_err(|e| Failed::Broken(e.into()))?;
        let asked = self.asked.pop_front().expect("asked for above");
        // An empty reply: the server could not fork (or track) the child, and says so.
        let Some(pid) = reply.first_chunk::<4>().map(|b| u32::from_le_bytes(*b)) else {
            return Err(Failed::Refused(Error::os(
                "fork (in the forkserver)",
                std::io::Error::other("the forkserver could not start the child"),
            )));
        };
        // The standby waits for us and cannot end by itself, so its pid is its own unless it
        // was killed from outside. Then the server reaps it and writes its status: a pidfd
        // opened before that status is readable is the standby's (the pid could only have
        // been reused after the reaping, in the instant before the status is written).
        let pidfd = match open_pidfd(pid) {
            Ok(pidfd) => pidfd,
            // Gone already: with the server, or alone?
            Err(err) if readable_now(self.pidfd.as_fd()) => return Err(Failed::Broken(err)),
            // Out of descriptors, say: the standby is fine, but this start cannot have it.
            Err(err) if !matches!(&err, Error::Os(_, e) if e.raw_os_error() == Some(libc::ESRCH)) =>
            {
                return Err(Failed::Refused(err));
            }
            Err(err) => return Err(Failed::Gone(err)),
        };
        // One look at the server (a dead server's standby, whose reply may have waited here,
        // died with it), the standby and its status. Only descriptors seen readable count:
        // a failed look is no reason to replace the server, which takes its running
        // children down with it.
        let ready = mp_pipe::wait(
            &[&self.pidfd, &pidfd, &asked.status],
            Some(std::time::Duration::ZERO),
        )
        .unwrap_or_default();
        if ready.first() == Some(&0) {
            return Err(Failed::Broken(Error::os(
                "forkserver",
                std::io::Error::other("the forkserver has died"),
            )));
        }
        if !ready.is_empty() {
            return Err(Failed::Gone(Error::os(
                "forkserver",
                std::io::Error::other("the standby child has died"),
            )));
        }
        Ok(Standby {
            pid,
            pidfd,
            status: asked.status,
            channel: asked.channel,
        })
    }
}

/// Starts a child from the forkserver: takes the standby child the server forked ahead of
/// time, asks for the next one, and sends the bootstrap straight to the standby. The server
/// is off the path of a start (its fork happens while the previous child runs), as in
/// Android's pool of unspecialized zygote children; the first start waits for one fork.
pub(crate) fn start(bootstrap: Frame) -> Result<Started> {
    // A server is started again at most once per start; up to two dead standbys are passed
    // over.
    let (mut relaunched, mut passed_over) = (false, 0);
    loop {
        let standby = {
            let mut server = SERVER.lock().unwrap_or_else(|e| e.into_inner());
            if server
                .as_ref()
                .is_none_or(|s| s.owner != std::process::id())
            {
                // None yet, or our parent's (inherited through fork): start our own.
                *server = Some(launch()?);
            }
            let current = server.as_mut().expect("just launched");
            match current.standby() {
                Ok(standby) => {
                    // The next one, forked while this one runs. A failure here shows again,
                    // and is handled, at the next start.
                    let _ = current.request();
                    standby
                }
                // A server that refused (it could not fork, say) is still good: its running
                // children must not be taken down with it.
                Err(Failed::Refused(err)) => return Err(err),
                // Dead, or out of step: start a new one, once.
                Err(Failed::Broken(_)) if !relaunched => {
                    relaunched = true;
                    *server = None;
                    continue;
                }
                Err(Failed::Broken(err)) => return Err(err),
                Err(Failed::Gone(_)) if passed_over < 2 => {
                    passed_over += 1;
                    continue;
                }
                Err(Failed::Gone(err)) => return Err(err),
            }
        };
        // Sent without the lock: the arguments may be large, and the standby reads them as
        // they come (our end is non-blocking: the send waits for room, and gives up if the
        // standby dies meanwhile, as we hold its end too and would never see EPIPE).
        match mp_codec::wire::send_frame_waiting(
            &standby.channel.ours,
            &bootstrap,
            standby.pidfd.as_fd(),
        ) {
            Ok(()) => {
                unread_if_gone(standby.pidfd.as_fd(), standby.channel.theirs.as_fd());
                return Ok(Started {
                    pid: standby.pid,
                    pidfd: Some(standby.pidfd),
                    own: false,
                    status: Some(standby.status),
                    results: Results::Pooled {
                        channel: standby.channel,
                        bootstrapped: true,
                    },
                });
            }
            // Too many descriptors in the arguments: nothing was sent.
            Err(err @ mp_codec::Error::TooManyFds { .. }) => {
                return Err(mp_pipe::Error::from(err).into());
            }
            // The standby died before its start (killed from outside): take the next one.
            Err(_) if passed_over < 2 => {
                passed_over += 1;
                continue;
            }
            Err(err) => return Err(mp_pipe::Error::from(err).into()),
        }
    }
}

/// Whether a request failed for want of a resource: kernel memory, or room for more
/// descriptors in flight (`ETOOMANYREFS`: this user has more in flight than our descriptor
/// limit, and we have neither `CAP_SYS_RESOURCE` nor `CAP_SYS_ADMIN` in the initial user
/// namespace). A request has no payload: its four-byte header and two descriptors go in
/// one `sendmsg` on a blocking socket, in one buffer, or not at all. So the server is still
/// in step, and is kept, with its running children. Any other failure counts as a broken
/// connection.
fn short_of_resources(err: &mp_codec::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ENOMEM | libc::ENOBUFS | libc::ETOOMANYREFS)
    )
}

/// Whether `fd` is readable right now; a failed look says no.
fn readable_now(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    mp_pipe::wait(&[&fd], Some(std::time::Duration::ZERO)).is_ok_and(|ready| !ready.is_empty())
}

/// The server's main loop; never returns.
///
/// A round of it allocates nothing once its buffers have grown: while standby children
/// live, every page the server writes after a fork costs it a copy, and `malloc` and `free`
/// write to three (the allocator's state, the chunk's, `errno`'s). The table of children,
/// the poll set and the request's frame are reused, the reply is built on the stack.
pub(crate) fn serve(socket: OwnedFd) -> ! {
    let parent = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get());
    if sys::die_with_parent(parent).is_err() {
        sys::exit_now(entry::START_FAILED);
    }
    // Ctrl-C reaches the whole process group; the server serves the group's other members
    // and is not itself a program to interrupt (as in CPython's forkserver). Its children get
    // the default back.
    sys::ignore_sigint(true);
    sys::raise_fd_limit();
    // Worked out once here, so that no child works it out again (each page a child writes
    // costs it a copy): the fingerprint, the panic hook, this thread's id, stdout's buffer.
    let _ = entry::fingerprint();
    entry::install_panic_hook();
    let _ = std::thread::current().id();
    let _ = std::io::Write::flush(&mut std::io::stdout().lock());
    let mut conn = Some(Connection::from_unix_socket(socket));
    // Allocated together, so that they likely share a page or two.
    let mut children: Vec<Child> = Vec::with_capacity(64);
    let mut polled: Vec<sys::PollFd> = Vec::with_capacity(65);
    let mut request = Frame::new();
    request.fds.reserve(4);
    while let Some(requests) = conn.as_ref() {
        polled.clear();
        polled.push(sys::PollFd::readable(requests.as_fd()));
        polled.extend(
            children
                .iter()
                .map(|child| sys::PollFd::readable(child.pidfd.as_fd())),
        );
        match sys::poll(&mut polled) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
        // Ended children, last first: `swap_remove` moves only entries already looked at.
        for i in (1..polled.len()).rev() {
            if !polled[i].ready() {
                continue;
            }
            let child = children.swap_remove(i - 1);
            let code = match waitid(WaitId::PidFd(child.pidfd.as_fd()), WaitIdOptions::EXITED) {
                Ok(Some(status)) => crate::process::exit_code(&status),
                _ => -libc::SIGKILL,
            };
            // A child that ran its target to the end had read its bootstrap whole.
            if code != 0 {
                discard_unread(child.socket.as_fd());
            }
            let _ = rustix::io::write(&child.status_w, &code.to_le_bytes());
        }
        if polled[0].ready() {
            match mp_codec::wire::recv_frame(requests, REQUEST_MAX, &mut request) {
                Ok(()) => handle(&mut request, &mut conn, &mut children),
                Err(_) => conn = None, // the parent has gone
            }
        }
    }
    // Our children get their parent-death signal as we exit.
    sys::exit_now(0)
}

/// A child the server forked and has not reaped yet.
struct Child {
    pidfd: OwnedFd,
    /// Where its exit status goes.
    status_w: OwnedFd,
    /// A copy of the child's end of its result socket, kept until the child is reaped (see
    /// [`discard_unread`]).
    socket: OwnedFd,
}

/// Throws away whatever a reaped child left unread on its socket, and with it the
/// descriptors the parent sent it (a plain `recv` takes no descriptors: the kernel closes
/// those it carried).
///
/// A child killed before it read its bootstrap leaves the bootstrap queued on its socket,
/// the descriptors of its arguments in flight with it. The parent holds its own copy of the
/// child's end (the pair is pooled, see `Asked`), so the socket, and every one of those
/// descriptors, would outlive the child until the parent joined it: a pipe's end handed to
/// the child would never hang up for the other end's reader in the meantime. Discarded
/// here, as the child is reaped and before its status is written, they close with it.
///
/// Only for a child that did not exit with 0: one that did ran its target, so had read its
/// bootstrap whole (the read of an empty socket would cost every start a system call).
///
/// The parent sends the descriptors with the frame's first bytes, and gives up sending
/// once the child is gone, so a few reads at most take everything that matters; the count
/// is bounded all the same.
fn discard_unread(socket: std::os::fd::BorrowedFd<'_>) {
    let mut buf = [0u8; 256];
    for _ in 0..1024 {
        match rustix::net::recv(socket, &mut buf, rustix::net::RecvFlags::DONTWAIT) {
            Ok((0, _)) => return,
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(_) => return,
        }
    }
}

/// After a bootstrap was sent: if the standby has ended already, throws away what it left
/// unread on its socket (`theirs`, of which we hold a copy). It may have been killed between
/// the look at it before the send and the send, and reaped (its socket emptied, see
/// [`discard_unread`]) before the bootstrap arrived: the descriptors in it would then live
/// on in our copy until the child was joined. (Killed after this look, it is reaped after
/// the send, and the server throws them away.)
fn unread_if_gone(pidfd: std::os::fd::BorrowedFd<'_>, theirs: std::os::fd::BorrowedFd<'_>) {
    if readable_now(pidfd) {
        discard_unread(theirs);
    }
}

/// A request is a frame with no bytes (the descriptors are all it says).
const REQUEST_MAX: usize = 64;

/// Forks a standby child, which waits for its bootstrap on the socket end the request
/// carried, and replies with its pid; or with an empty reply if it cannot.
fn handle(request: &mut Frame, conn: &mut Option<Connection>, children: &mut Vec<Child>) {
    // Built in a small buffer: the server's stack stays within fewer pages (each written
    // after a fork costs a copy).
    let reply = |bytes: &[u8]| {
        if let Some(conn) = conn.as_ref() {
            entry::send_small(conn.as_fd(), bytes);
        }
    };
    let fds = (request.fds.pop(), request.fds.pop());
    request.clear();
    let (Some(status_w), Some(child_end)) = fds else {
        // Not a request we understand: an empty reply, so the parent gets an error, not a hang.
        reply(&[]);
        return;
    };
    let server = std::process::id();
    match sys::fork() {
        Ok(None) => {
            // The new child: keep only its own socket, and the limits its parent had.
            sys::restore_fd_limit();
            sys::ignore_sigint(false);
            drop(conn.take());
            children.clear();
            drop(status_w);
            if sys::die_with_parent_main_thread(server as i32).is_err() {
                entry::finish(entry::START_FAILED);
            }
            let code = entry::run_standby(Connection::from_unix_socket(child_end));
            entry::finish(code)
        }
        Ok(Some(pid)) => {
            match open_pidfd(pid as u32) {
                Ok(pidfd) => {
                    children.push(Child {
                        pidfd,
                        status_w,
                        socket: child_end,
                    });
                    reply(&(pid as u32).to_le_bytes());
                }
                Err(_) => {
                    // Untrackable: end it now rather than leave it unreaped; the parent gets
                    // an error.
                    sys::kill_and_reap(pid);
                    reply(&[]);
                }
            }
        }
        Err(_) => reply(&[]),
    }
}

#[cfg(test)]
mod tests {
    use std::{os::fd::AsFd, time::Duration};

    use super::*;

    /// A bootstrap sent to a standby that has ended already: its descriptors close at once.
    #[test]
    fn a_bootstrap_sent_to_an_ended_standby_keeps_no_descriptor_alive() {
        let mut ended = std::process::Command::new("true").spawn().unwrap();
        let pidfd = open_pidfd(ended.id()).unwrap();
        let gone = mp_pipe::wait(&[&pidfd.as_fd()], Some(Duration::from_secs(30))).unwrap();
        assert_eq!(gone, [0], "the child did not end");
        let (ours, theirs) = socketpair().unwrap();
        let (reader, writer) = rustix::pipe::pipe().unwrap();
        mp_codec::wire::send_parts(&ours, b"bootstrap", &[writer.as_fd()]).unwrap();
        drop(writer); // in flight only, now
        unread_if_gone(pidfd.as_fd(), theirs.as_fd());
        // The pipe's only writer was the one in flight: end of file, not a wait.
        let ready = mp_pipe::wait(&[&reader.as_fd()], Some(Duration::from_secs(10))).unwrap();
        assert_eq!(ready, [0], "the descriptor in flight is still alive");
        assert_eq!(rustix::io::read(&reader, &mut [0u8; 1]).unwrap(), 0);
        ended.wait().unwrap();
    }
}
