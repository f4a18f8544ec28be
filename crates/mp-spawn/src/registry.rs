//! Every child this process started and has not reaped yet: listed by `active_children`,
//! reaped in the background once its `Process` is dropped, and dealt with at exit (daemons
//! killed, the others joined), so no zombie and no orphan is left.

use std::{
    os::fd::{AsFd, OwnedFd},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    time::Duration,
};

use rustix::process::{Pid, Signal, WaitId, WaitIdOptions, pidfd_send_signal, waitid};

use crate::{ChildInfo, sys};

struct Entry {
    /// Unique for the life of the process, unlike a pid, which the kernel reuses.
    serial: u64,
    pid: u32,
    name: String,
    daemon: bool,
    /// Our own child (waitable); false for a forkserver's child, which the server reaps.
    own: bool,
    /// Its `Process` was dropped: reaping it is the registry's job now. While a `Process`
    /// lives, only it reaps (anyone else would steal its exit status).
    dropped: bool,
    /// A forkserver's child's pidfd (shared with its `Process`), or one opened for our own
    /// child once it is handed to the reaper thread (after that, its pid is no proof). Our
    /// own children need none before: their pids stay theirs until we reap them.
    pidfd: Option<Arc<OwnedFd>>,
}

impl Entry {
    fn wait_id(&self) -> WaitId<'_> {
        match &self.pidfd {
            Some(fd) => WaitId::PidFd(fd.as_fd()),
            None => WaitId::Pid(Pid::from_raw(self.pid as i32).expect("a child's pid is positive")),
        }
    }

    /// Whether it has ended (without reaping it).
    fn ended(&self) -> bool {
        match &self.pidfd {
            Some(fd) => mp_pipe::wait(&[fd], Some(Duration::ZERO)).is_ok_and(|r| !r.is_empty()),
            None => !matches!(
                waitid(
                    self.wait_id(),
                    WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT,
                ),
                Ok(None)
            ),
        }
    }
}

pub(crate) struct Registry {
    owner: u32,
    /// Hands out entry serials.
    next_serial: u64,
    entries: Vec<Entry>,
    /// A child just started: its entry's serial and its pid, which is written into the
    /// entry on the next use of the registry. The parent of a fork writes here (beside the
    /// lock, a page it writes anyway), not into the entries, which would cost it one more
    /// page copied while the child runs.
    pending: Option<(u64, u32)>,
    reaper: Option<mpsc::Sender<(u64, Arc<OwnedFd>)>>,
    wake: Option<OwnedFd>,
}

impl Registry {
    pub(crate) const fn new() -> Self {
        Registry {
            owner: 0,
            next_serial: 1,
            entries: Vec::new(),
            pending: None,
            reaper: None,
            wake: None,
        }
    }
}

static REGISTRY: &Mutex<Registry> = &crate::held::HELD.registry;

fn registry() -> MutexGuard<'static, Registry> {
    registry_of(crate::current::pid())
}

/// [`registry`], for a caller that knows this process's pid.
fn registry_of(pid: u32) -> MutexGuard<'static, Registry> {
    let mut reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    if reg.owner != pid {
        // A forked child: its parent's children are not its own. Forget them without
        // closing their descriptors' owners (the copies here are ours to close).
        if reg.owner == 0 {
            sys::at_exit(at_exit);
        }
        reg.owner = pid;
        reg.entries.clear();
        reg.pending = None;
        reg.reaper = None;
        reg.wake = None;
    }
    if let Some((serial, pid)) = reg.pending.take()
        && let Some(entry) = reg.entries.iter_mut().rev().find(|e| e.serial == serial)
    {
        entry.pid = pid;
    }
    reg
}

/// The process that last registered a child: a process that never did (a fresh child) has
/// nothing to finish at exit and need not touch the registry at all.
static PARENT_OF_ANY: &AtomicU32 = &crate::held::HELD.parent_of_any;

/// Records a child just started by this process (`me`); returns its entry's serial.
pub(crate) fn register(
    pid: u32,
    name: &str,
    daemon: bool,
    own: bool,
    pidfd: Option<Arc<OwnedFd>>,
    me: u32,
) -> u64 {
    reserve(name, daemon, own, pidfd, me).started(pid)
}

/// The registry, locked until the pid of the child about to be started is known (across
/// the fork, for `start::fork`), with an entry made for it: then only its pid is filled
/// in. An entry neither [`started`](Self::started) nor [`left`](Self::leave) is removed
/// (the fork failed).
pub(crate) struct Reservation {
    reg: MutexGuard<'static, Registry>,
    serial: u64,
    settled: bool,
}

/// Makes an entry for a child about to be started by this process (`me`; forked, for
/// `start::fork`, by this thread), and holds the registry until the child's pid is known.
pub(crate) fn reserve(
    name: &str,
    daemon: bool,
    own: bool,
    pidfd: Option<Arc<OwnedFd>>,
    me: u32,
) -> Reservation {
    if PARENT_OF_ANY.load(Ordering::Relaxed) != me {
        PARENT_OF_ANY.store(me, Ordering::Relaxed);
    }
    let mut reg = registry_of(me);
    let serial = reg.next_serial;
    reg.next_serial += 1;
    reg.entries.push(Entry {
        serial,
        pid: 0,
        name: name.to_string(),
        daemon,
        own,
        dropped: false,
        pidfd,
    });
    Reservation {
        reg,
        serial,
        settled: false,
    }
}

impl Reservation {
    /// The child is `pid` (in the parent, for a fork). Returns its entry's serial.
    pub(crate) fn started(mut self, pid: u32) -> u64 {
        self.reg.pending = Some((self.serial, pid));
        self.settled = true;
        self.serial
    }

    /// In the child: unlocks its copy of the registry and touches nothing else (the entries
    /// are its parent's, forgotten when it first uses the registry).
    #[inline]
    pub(crate) fn leave(mut self) {
        self.settled = true;
    }
}

impl Drop for Reservation {
    #[inline]
    fn drop(&mut self) {
        if !self.settled {
            let serial = self.serial;
            self.reg.entries.retain(|e| e.serial != serial);
        }
    }
}

/// The child has been reaped (or is being reaped by the forkserver).
pub(crate) fn forget(serial: u64) {
    registry().entries.retain(|e| e.serial != serial);
}

/// The `Process` of a still-running child was dropped: reap it in the background when it
/// ends. Non-daemonic ones are still joined at exit.
pub(crate) fn reap_later(serial: u64) {
    let mut reg = registry();
    let Some(entry) = reg.entries.iter_mut().find(|e| e.serial == serial) else {
        return;
    };
    entry.dropped = true;
    // A forkserver's child is reaped by the server: the reaper only forgets it when it ends.
    // Our own child's pid is still its own (nobody else reaps it), so a pidfd opened now is
    // for that child.
    let fd = match &entry.pidfd {
        Some(fd) => fd.clone(),
        None => {
            let opened = Pid::from_raw(entry.pid as i32)
                .ok_or(rustix::io::Errno::SRCH)
                .and_then(|pid| {
                    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
                });
            let Ok(fd) = opened else {
                return; // out of descriptors: it is reaped at exit, or by `active_children`
            };
            let fd = Arc::new(fd);
            entry.pidfd = Some(fd.clone());
            fd
        }
    };
    if reg.reaper.is_none() {
        let (tx, rx) = mpsc::channel();
        let Ok((wake_r, wake_w)) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC) else {
            return;
        };
        let spawned = std::thread::Builder::new()
            .name("mp-spawn reaper".into())
            .spawn(move || reaper(rx, wake_r));
        if spawned.is_err() {
            return;
        }
        reg.reaper = Some(tx);
        reg.wake = Some(wake_w);
    }
    if let (Some(tx), Some(wake)) = (&reg.reaper, &reg.wake)
        && tx.send((serial, fd)).is_ok()
    {
        let _ = rustix::io::write(wake, &[1]);
    }
}

/// Waits on the pidfds of dropped children and reaps each as it ends.
fn reaper(rx: mpsc::Receiver<(u64, Arc<OwnedFd>)>, wake: OwnedFd) {
    let mut watched: Vec<(u64, Arc<OwnedFd>)> = Vec::new();
    loop {
        let mut fds: Vec<&dyn AsFd> = vec![&wake];
        fds.extend(watched.iter().map(|(_, f)| &**f as &dyn AsFd));
        let Ok(ready) = mp_pipe::wait(&fds, None) else {
            return;
        };
        let mut ended = Vec::new();
        for i in ready {
            if i == 0 {
                let _ = rustix::io::read(&wake, &mut [0; 64]);
                while let Ok(fd) = rx.try_recv() {
                    watched.push(fd);
                }
            } else {
                ended.push(i - 1);
            }
        }
        for i in ended.into_iter().rev() {
            let (serial, fd) = watched.swap_remove(i);
            forget(serial);
            // ECHILD for a forkserver's child, which is not ours to reap: harmless.
            let _ = waitid(WaitId::PidFd(fd.as_fd()), WaitIdOptions::EXITED);
        }
    }
}

/// Running children; ended ones whose `Process` was dropped are reaped on the way.
pub(crate) fn active() -> Vec<ChildInfo> {
    let mut reg = registry();
    reg.entries.retain(|e| {
        if e.dropped && e.ended() {
            if e.own {
                let _ = waitid(e.wait_id(), WaitIdOptions::EXITED | WaitIdOptions::NOHANG);
            }
            return false;
        }
        true
    });
    reg.entries
        .iter()
        .filter(|e| !e.ended())
        .map(|e| ChildInfo {
            pid: e.pid,
            name: e.name.clone(),
            daemon: e.daemon,
        })
        .collect()
}

/// What Python does at exit: kill daemonic children, join the others, reap them all.
#[inline]
pub(crate) fn finish_children() {
    if PARENT_OF_ANY.load(Ordering::Relaxed) == crate::current::pid() {
        finish_started_children();
    }
}

#[cold]
#[inline(never)]
fn finish_started_children() {
    let entries = std::mem::take(&mut registry().entries);
    for e in entries.iter().filter(|e| e.daemon) {
        let _ = match &e.pidfd {
            Some(fd) => pidfd_send_signal(fd, Signal::KILL),
            None => rustix::process::kill_process(
                Pid::from_raw(e.pid as i32).expect("a child's pid is positive"),
                Signal::KILL,
            ),
        };
    }
    for e in &entries {
        if e.own {
            // ECHILD if the reaper thread got it first: it has ended either way.
            while let Err(rustix::io::Errno::INTR) = waitid(e.wait_id(), WaitIdOptions::EXITED) {}
        } else if let Some(fd) = &e.pidfd {
            let _ = mp_pipe::wait(&[fd], None);
        }
    }
}

extern "C" fn at_exit() {
    let owner = REGISTRY.lock().map_or(0, |r| r.owner);
    if owner == std::process::id() {
        finish_children();
    }
}
