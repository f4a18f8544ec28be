//! The three start methods. Each returns a [`Started`]: the child's pid, a pidfd for it, and
//! the parent's end of the child's result socket (over which exec'd children also receive
//! their bootstrap).

pub(crate) mod channel;
pub(crate) mod fork;
pub(crate) mod forkserver;
pub(crate) mod spawn;

use std::{
    ffi::CString,
    os::{fd::OwnedFd, unix::ffi::OsStrExt},
};

use mp_pipe::Connection;
use rustix::process::{Pid, PidfdFlags, pidfd_open};

use crate::{Error, Result, entry};

/// A child just started.
pub(crate) struct Started {
    pub(crate) pid: u32,
    /// A forkserver's child comes with a pidfd; for our own children one is opened only if
    /// needed (their pid cannot be reused before we reap them).
    pub(crate) pidfd: Option<OwnedFd>,
    /// Whether we are its parent (fork, spawn) and reap it with `waitid`; a forkserver's
    /// child is reaped by the server, which reports the exit status on `status`.
    pub(crate) own: bool,
    pub(crate) status: Option<OwnedFd>,
    pub(crate) results: Results,
}

/// Where a child's outcome arrives.
#[derive(Debug)]
pub(crate) enum Results {
    /// The socket an exec'd child also got its bootstrap on.
    Conn(Connection),
    /// A pooled socket pair (see `channel`), given back once the outcome is read.
    /// `bootstrapped`: a bootstrap went to the child over it, so a child that sent nothing
    /// may have left some of it unread, and the pair is not reused then.
    Pooled {
        channel: channel::Channel,
        bootstrapped: bool,
    },
}

pub(crate) fn socketpair() -> Result<(OwnedFd, OwnedFd)> {
    rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| Error::os("socketpair", e))
}

pub(crate) fn open_pidfd(pid: u32) -> Result<OwnedFd> {
    let pid = Pid::from_raw(pid as i32).ok_or(Error::os("pidfd_open", rustix::io::Errno::SRCH))?;
    pidfd_open(pid, PidfdFlags::empty()).map_err(|e| Error::os("pidfd_open", e))
}

/// The environment for an exec'd process of ours: the current one without our private
/// variables, plus `KEY=VALUE`.
pub(crate) fn child_env(key: &str, value: &str) -> Vec<CString> {
    let mut env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| k != entry::CHILD_ENV && k != entry::SERVER_ENV)
        .filter_map(|(k, v)| {
            let mut kv = k;
            kv.push("=");
            kv.push(v);
            CString::new(kv.as_bytes()).ok()
        })
        .collect();
    env.push(CString::new(format!("{key}={value}")).expect("no NUL in our own variables"));
    env
}

/// `argv[0]` for an exec'd process of ours: the parent's own.
pub(crate) fn argv0() -> CString {
    std::env::args_os()
        .next()
        .and_then(|a| CString::new(a.as_bytes()).ok())
        .unwrap_or_else(|| c"mp-spawn-child".to_owned())
}
