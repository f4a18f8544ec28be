//! Every child this process started and has not reaped yet: listed by `active_children`,
//! reaped in the background once its `Process` is dropped, and dealt with at exit (daemons
//! killed, the others joined), so no zombie and no orphan is left.

use std::{
    os::fd::{AsFd, OwnedFd},
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicU32, AtomicU64, Ordering},
        mpsc,
    },
    time::Duration,
};

use rustix::process::{Signal, WaitId, WaitIdOptions, pidfd_send_signal, waitid};

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
    pidfd: OwnedFd,
}

struct Registry {
    owner: u32,
    entries: Vec<Entry>,
    reaper: Option<mpsc::Sender<(u64, OwnedFd)>>,
    wake: Option<OwnedFd>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    owner: 0,
    entries: Vec::new(),
    reaper: None,
    wake: None,
});

/// Held across `fork` (see `start::fork`).
pub(crate) fn lock() -> MutexGuard<'static, impl Sized> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

fn registry() -> MutexGuard<'static, Registry> {
    let mut reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    let pid = std::process::id();
    if reg.owner != pid {
        // A forked child: its parent's children are not its own. Forget them without
        // closing their descriptors' owners (the copies here are ours to close).
        if reg.owner == 0 {
            sys::at_exit(at_exit);
        }
        reg.owner = pid;
        reg.entries.clear();
        reg.reaper = None;
        reg.wake = None;
    }
    reg
}

/// The process that last registered a child: a process that never did (a fresh child) has
/// nothing to finish at exit and need not touch the registry at all.
static PARENT_OF_ANY: AtomicU32 = AtomicU32::new(0);

/// Hands out entry serials.
static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1);

/// Records a child just started; returns its entry's serial (0 if it could not be recorded).
pub(crate) fn register(pid: u32, name: &str, daemon: bool, own: bool, pidfd: &OwnedFd) -> u64 {
    PARENT_OF_ANY.store(std::process::id(), Ordering::Relaxed);
    let Ok(pidfd) = pidfd.try_clone() else {
        return 0; // out of descriptors: unlisted, and only a join (not a drop) reaps it
    };
    let serial = NEXT_SERIAL.fetch_add(1, Ordering::Relaxed);
    registry().entries.push(Entry {
        serial,
        pid,
        name: name.to_string(),
        daemon,
        own,
        dropped: false,
        pidfd,
    });
    serial
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
    let Ok(fd) = entry.pidfd.try_clone() else {
        return;
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
fn reaper(rx: mpsc::Receiver<(u64, OwnedFd)>, wake: OwnedFd) {
    let mut watched: Vec<(u64, OwnedFd)> = Vec::new();
    loop {
        let mut fds: Vec<&dyn AsFd> = vec![&wake];
        fds.extend(watched.iter().map(|(_, f)| f as &dyn AsFd));
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
    let ended =
        |e: &Entry| mp_pipe::wait(&[&e.pidfd], Some(Duration::ZERO)).is_ok_and(|r| !r.is_empty());
    reg.entries.retain(|e| {
        if e.dropped && ended(e) {
            if e.own {
                let _ = waitid(
                    WaitId::PidFd(e.pidfd.as_fd()),
                    WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
                );
            }
            return false;
        }
        true
    });
    reg.entries
        .iter()
        .filter(|e| !ended(e))
        .map(|e| ChildInfo {
            pid: e.pid,
            name: e.name.clone(),
            daemon: e.daemon,
        })
        .collect()
}

/// What Python does at exit: kill daemonic children, join the others, reap them all.
pub(crate) fn finish_children() {
    if PARENT_OF_ANY.load(Ordering::Relaxed) != std::process::id() {
        return;
    }
    let entries = std::mem::take(&mut registry().entries);
    for e in entries.iter().filter(|e| e.daemon) {
        let _ = pidfd_send_signal(&e.pidfd, Signal::KILL);
    }
    for e in &entries {
        let _ = mp_pipe::wait(&[&e.pidfd], None);
        if e.own {
            let _ = waitid(WaitId::PidFd(e.pidfd.as_fd()), WaitIdOptions::EXITED);
        }
    }
}

extern "C" fn at_exit() {
    let owner = REGISTRY.lock().map_or(0, |r| r.owner);
    if owner == std::process::id() {
        finish_children();
    }
}
