//! `forkserver`: one exec'd, single-threaded server per parent, started on first use, forks
//! each child on request. The request carries the child's end of its result socket and the
//! write end of a status pipe (`SCM_RIGHTS`); the reply carries the child's pid and a pidfd.
//! The server reaps its children and writes each exit status (4 bytes) to its status pipe.
//! It dies with its parent (and its children with it), and is started again if it died.

use std::{
    os::fd::{AsFd, OwnedFd},
    sync::Mutex,
};

use mp_codec::Frame;
use mp_pipe::Connection;
use rustix::process::{WaitId, WaitIdOptions, waitid};

use super::{Results, Started, open_pidfd, socketpair, spawn::exec_self};
use crate::{Error, Result, entry, sys};

pub(crate) struct Server {
    owner: u32,
    pidfd: OwnedFd,
    conn: Connection,
}

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

/// Held across `fork` (see `start::fork`).
pub(crate) fn lock() -> std::sync::MutexGuard<'static, impl Sized> {
    SERVER.lock().unwrap_or_else(|e| e.into_inner())
}

fn launch() -> Result<Server> {
    let (ours, theirs) = socketpair()?;
    let pid = exec_self(entry::SERVER_ENV, theirs)?;
    Ok(Server {
        owner: std::process::id(),
        pidfd: open_pidfd(pid).inspect_err(|_| sys::kill_and_reap(pid as i32))?,
        conn: Connection::from_unix_socket(ours),
    })
}

/// Asks the server for a child: the bootstrap travels with the request, so the child finds
/// it in memory the moment it is forked; the child's socket end and the status pipe's write
/// end ride last among the descriptors.
/// How a request failed: refused by a server still in step with us, or with the connection
/// to the server broken (it died, or the stream is out of step) and a new server needed.
enum Failed {
    Refused(Error),
    Broken(Error),
}

fn request(
    server: &Server,
    bootstrap: &mut Frame,
    child_end: &OwnedFd,
    status_w: &OwnedFd,
) -> Result<(u32, OwnedFd), Failed> {
    let dup = |fd: &OwnedFd| {
        fd.try_clone()
            .map_err(|e| Failed::Refused(Error::os("dup", e)))
    };
    let (child_end, status_w) = (dup(child_end)?, dup(status_w)?);
    bootstrap.fds.push(child_end);
    bootstrap.fds.push(status_w);
    let sent = server.conn.send_frame(bootstrap);
    bootstrap.fds.truncate(bootstrap.fds.len() - 2);
    match sent {
        Ok(()) => {}
        // Too many descriptors in the arguments: nothing was sent, the server is fine.
        Err(err @ mp_pipe::Error::Codec(mp_codec::Error::TooManyFds { .. })) => {
            return Err(Failed::Refused(err.into()));
        }
        Err(err) => return Err(Failed::Broken(err.into())),
    }
    let mut reply = server
        .conn
        .recv_frame()
        .map_err(|e| Failed::Broken(e.into()))?;
    // An empty reply: the server could not fork (or track) the child, and says so.
    let pid = reply
        .bytes
        .first_chunk::<4>()
        .map(|b| u32::from_le_bytes(*b))
        .ok_or_else(|| {
            Failed::Refused(Error::os(
                "fork (in the forkserver)",
                std::io::Error::other("the forkserver could not start the child"),
            ))
        })?;
    let pidfd = match reply.fds.pop() {
        Some(fd) => fd,
        None => open_pidfd(pid).map_err(Failed::Refused)?,
    };
    Ok((pid, pidfd))
}

pub(crate) fn start(mut bootstrap: Frame) -> Result<Started> {
    let mut server = SERVER.lock().unwrap_or_else(|e| e.into_inner());
    // Made under the lock, which a fork also holds: no forked child can inherit a copy of
    // the status pipe's write end and keep it open after the server is gone.
    let (ours, theirs) = socketpair()?;
    let (status_r, status_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| Error::os("pipe2", e))?;
    let mut attempt = 0;
    let (pid, pidfd) = loop {
        if server
            .as_ref()
            .is_none_or(|s| s.owner != std::process::id())
        {
            // None yet, or our parent's (inherited through fork): start our own.
            *server = Some(launch()?);
        }
        let current = server.as_ref().expect("just launched");
        match request(current, &mut bootstrap, &theirs, &status_w) {
            Ok(reply) => break reply,
            // A server that refused (it could not fork, say) is still good: its running
            // children must not be taken down with it.
            Err(Failed::Refused(err)) => return Err(err),
            // Dead, or out of step: start a new one, once.
            Err(Failed::Broken(_)) if attempt == 0 => {
                attempt += 1;
                *server = None;
            }
            Err(Failed::Broken(err)) => return Err(err),
        }
    };
    // Close our copies of the child's ends before a fork elsewhere can copy them.
    drop((theirs, status_w));
    drop(server);
    let conn = Connection::from_unix_socket(ours);
    Ok(Started {
        pid,
        pidfd: Some(pidfd),
        own: false,
        status: Some(status_r),
        results: Results::Conn(conn),
    })
}

/// The server's main loop; never returns.
pub(crate) fn serve(socket: OwnedFd) -> ! {
    let parent = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get());
    if sys::die_with_parent(parent).is_err() {
        sys::exit_now(entry::START_FAILED);
    }
    sys::raise_fd_limit();
    let mut conn = Some(Connection::from_unix_socket(socket));
    let mut children: Vec<(OwnedFd, OwnedFd)> = Vec::new();
    while let Some(requests) = conn.as_ref() {
        let mut fds: Vec<&dyn AsFd> = vec![requests];
        fds.extend(children.iter().map(|(pidfd, _)| pidfd as &dyn AsFd));
        let Ok(ready) = mp_pipe::wait(&fds, None) else {
            break;
        };
        let mut ended = Vec::new();
        let mut request = None;
        for i in ready {
            if i == 0 {
                request = Some(requests.recv_frame());
            } else {
                ended.push(i - 1);
            }
        }
        for i in ended.into_iter().rev() {
            let (pidfd, status_w) = children.swap_remove(i);
            let code = match waitid(WaitId::PidFd(pidfd.as_fd()), WaitIdOptions::EXITED) {
                Ok(Some(status)) => crate::process::exit_code(&status),
                _ => -libc::SIGKILL,
            };
            let _ = rustix::io::write(&status_w, &code.to_le_bytes());
        }
        match request {
            Some(Ok(request)) => handle(request, &mut conn, &mut children),
            Some(Err(_)) => conn = None, // the parent has gone
            None => {}
        }
    }
    // Our children get their parent-death signal as we exit.
    sys::exit_now(0)
}

fn handle(
    mut request: Frame,
    conn: &mut Option<Connection>,
    children: &mut Vec<(OwnedFd, OwnedFd)>,
) {
    let (Some(status_w), Some(child_end)) = (request.fds.pop(), request.fds.pop()) else {
        // Not a request we understand: an empty reply, so the parent gets an error, not a hang.
        if let Some(conn) = conn.as_ref() {
            let _ = conn.send_frame(&Frame::new());
        }
        return;
    };
    let server = std::process::id();
    match sys::fork() {
        Ok(None) => {
            // The new child: keep only its own socket, and the limits its parent had.
            sys::restore_fd_limit();
            drop(conn.take());
            children.clear();
            drop(status_w);
            if sys::die_with_parent(server as i32).is_err() {
                entry::finish(entry::START_FAILED);
            }
            let code = entry::run_frame(request, &Connection::from_unix_socket(child_end), false);
            entry::finish(code)
        }
        Ok(Some(pid)) => {
            drop(child_end);
            let reply = match open_pidfd(pid as u32) {
                Ok(pidfd) => {
                    let dup = pidfd.try_clone();
                    children.push((pidfd, status_w));
                    Frame {
                        bytes: (pid as u32).to_le_bytes().to_vec(),
                        fds: dup.into_iter().collect(),
                    }
                }
                Err(_) => {
                    // Untrackable: end it now rather than leave it unreaped; the parent gets
                    // an error.
                    sys::kill_and_reap(pid);
                    Frame::new()
                }
            };
            if let Some(conn) = conn.as_ref() {
                let _ = conn.send_frame(&reply);
            }
        }
        Err(_) => {
            // Dropping the request's descriptors tells the parent: its child socket gets EOF.
            drop((child_end, status_w, request));
            if let Some(conn) = conn.as_ref() {
                let _ = conn.send_frame(&Frame::new());
            }
        }
    }
}
