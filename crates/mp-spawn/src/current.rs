//! What a process knows about itself, its parent and its children.

use std::{sync::MutexGuard, time::Duration};

use rustix::process::{Pid, PidfdFlags, pidfd_open};

use crate::{StartMethod, registry};

/// This process as Python's `current_process()` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentProcess {
    /// `MainProcess` in the program that started it all, else the name it was started with
    /// (`Process-1`, `Process-1:2`, … unless named).
    pub name: String,
    /// The process id.
    pub pid: u32,
    /// Position in the tree of processes: `[1, 2]` for `Process-1:2`; empty for the main one.
    pub identity: Vec<u32>,
    /// Whether this process was started as a daemon.
    pub daemon: bool,
}

/// The process that started this one (Python's `parent_process()`).
#[derive(Debug, Clone)]
pub struct ParentProcess {
    pid: u32,
    name: String,
    /// Whether it is also the kernel's parent (fork, spawn); a forkserver's child has the
    /// server for that.
    kernel_parent: bool,
}

impl ParentProcess {
    /// The parent's name, as its `current_process().name` said when it started this one.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The parent's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the parent is still running.
    pub fn is_alive(&self) -> bool {
        !self.join(Some(Duration::ZERO))
    }

    /// Waits up to `timeout` (`None`: forever) for the parent to end; true if it has.
    pub fn join(&self, timeout: Option<Duration>) -> bool {
        if self.kernel_parent {
            // While it lives it is our parent, so its pid is its own.
            let ours = rustix::process::getppid().map(|p| p.as_raw_nonzero().get() as u32);
            if ours != Some(self.pid) {
                return true;
            }
        }
        // A forkserver's child: its parent's death takes the server, and so this process,
        // with it (death signals), so while this process can ask, the pid is still its
        // parent's, or nobody's.
        match Pid::from_raw(self.pid as i32).map(|p| pidfd_open(p, PidfdFlags::empty())) {
            Some(Ok(fd)) => mp_pipe::wait(&[&fd], timeout).is_ok_and(|ready| !ready.is_empty()),
            _ => true,
        }
    }
}

/// A running child of this process, as [`active_children`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildInfo {
    /// The process id.
    pub pid: u32,
    /// Its name.
    pub name: String,
    /// Whether it is daemonic.
    pub daemon: bool,
}

/// This process's own state; reset in a forked child, which is a different process.
pub(crate) struct Me {
    pub(crate) pid: u32,
    pub(crate) name: String,
    pub(crate) identity: Vec<u32>,
    pub(crate) daemon: bool,
    pub(crate) children_started: u32,
    pub(crate) parent: Option<ParentProcess>,
    /// How this process was started; `None` in a main process.
    pub(crate) method: Option<StartMethod>,
    /// Started by `fork` (set by the parent before the fork): this process may have
    /// inherited locks of std's held by threads that do not exist here.
    pub(crate) forked: bool,
}

/// Held across `fork` (see `start::fork`).
pub(crate) fn lock() -> MutexGuard<'static, impl Sized> {
    crate::held::HELD
        .me
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn me() -> MutexGuard<'static, Option<Me>> {
    let mut me = crate::held::HELD
        .me
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let pid = std::process::id();
    if me.as_ref().is_none_or(|m| m.pid != pid) {
        // First use, or a fork we did not make ourselves: this is a main process.
        *me = Some(Me {
            pid,
            name: "MainProcess".into(),
            identity: Vec::new(),
            daemon: false,
            children_started: 0,
            parent: None,
            method: None,
            forked: false,
        });
    }
    me
}

/// Records who this process is, in a child just started. `kernel_parent`: the parent process
/// is also the kernel's parent (fork, spawn), not a forkserver.
pub(crate) fn become_child(
    name: String,
    identity: Vec<u32>,
    daemon: bool,
    parent: (u32, String),
    method: StartMethod,
    kernel_parent: bool,
) {
    let mut me = prepare_child(name, identity, daemon, parent, method);
    me.pid = pid();
    if let Some(parent) = &mut me.parent {
        parent.kernel_parent = kernel_parent;
    }
    install(me);
}

/// A forked child's identity, built in the parent before the fork: the child then only has
/// to [`install`] it, without allocating (every page a child writes costs a copy).
/// `parent`: the parent's pid and name.
pub(crate) fn prepare_child(
    name: String,
    identity: Vec<u32>,
    daemon: bool,
    (parent_pid, parent_name): (u32, String),
    method: StartMethod,
) -> Me {
    Me {
        pid: 0,
        name,
        identity,
        daemon,
        children_started: 0,
        parent: Some(ParentProcess {
            pid: parent_pid,
            name: parent_name,
            kernel_parent: true,
        }),
        method: Some(method),
        forked: false,
    }
}

/// How this process was started, if it is a child of ours.
pub(crate) fn start_method() -> Option<StartMethod> {
    me().as_ref().and_then(|m| m.method)
}

/// This process's name (`MainProcess` unless it is a child of ours).
pub(crate) fn name() -> String {
    me().as_ref().map_or_else(String::new, |m| m.name.clone())
}

/// In a forked child: `fd` is its result socket, where its exit guard (`sys::exit_guard`)
/// says that the target called `exit`. Kept open until the child ends.
#[inline]
pub(crate) fn set_forked_outlet(fd: std::os::fd::BorrowedFd<'_>) {
    crate::held::HELD.forked_outlet.store(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// Whether process `pid` (this one) was started by our fork: read without a lock, from the
/// exit guard (`sys::exit_guard`).
pub(crate) fn forked_by_us(pid: u32) -> bool {
    crate::held::HELD
        .forked_pid
        .load(std::sync::atomic::Ordering::Relaxed)
        == pid
}

/// Whether this process was started by `fork` (see [`Me::forked`]).
pub(crate) fn forked() -> bool {
    me().as_ref().is_some_and(|m| m.forked)
}

/// Makes `me` this process's identity. The parent's, copied by fork, is not freed here:
/// freeing would write to the allocator's pages, and the child is short of nothing.
#[inline]
pub(crate) fn install(mut me: Me) {
    me.pid = pid();
    if me.forked {
        let held = &crate::held::HELD;
        held.forked_pid
            .store(me.pid, std::sync::atomic::Ordering::Relaxed);
        // Forked while its parent was ending, maybe: the parent's claim is not ours.
        held.outcome_claimed
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }
    let old = crate::held::HELD
        .me
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .replace(me);
    std::mem::forget(old);
}

/// This process's id, by an inline system call (libc's `getpid` would be one more page of
/// code for a forked child to fault in).
#[inline]
pub(crate) fn pid() -> u32 {
    rustix::process::getpid().as_raw_nonzero().get() as u32
}

/// The name and identity of the next child this process starts, and this process's pid.
pub(crate) fn next_child() -> (String, Vec<u32>, u32) {
    let mut me = me();
    let me = me.as_mut().expect("initialized by me()");
    me.children_started += 1;
    let mut identity = me.identity.clone();
    identity.push(me.children_started);
    // One allocation for the name (a start makes as few as it can: see `start::fork`).
    let mut name = String::with_capacity(8 + 11 * identity.len());
    name.push_str("Process-");
    for (i, n) in identity.iter().enumerate() {
        if i > 0 {
            name.push(':');
        }
        let _ = std::fmt::Write::write_fmt(&mut name, format_args!("{n}"));
    }
    (name, identity, me.pid)
}

/// This process (Python's `current_process()`).
///
/// ```
/// assert_eq!(multiprocessing::process::current_process().name, "MainProcess");
/// fn whoami(_: ()) -> String {
///     multiprocessing::process::current_process().name
/// }
/// let name = multiprocessing::process::Process::new(whoami, ()).start()?.join()?;
/// assert!(name.starts_with("Process-"));
/// # Ok::<(), multiprocessing::process::Error>(())
/// ```
pub fn current_process() -> CurrentProcess {
    let me = me();
    let me = me.as_ref().expect("initialized by me()");
    CurrentProcess {
        name: me.name.clone(),
        pid: me.pid,
        identity: me.identity.clone(),
        daemon: me.daemon,
    }
}

/// The process that started this one, or `None` in a main process.
pub fn parent_process() -> Option<ParentProcess> {
    me().as_ref().and_then(|m| m.parent.clone())
}

/// The children of this process that are still running; finished ones are reaped on the way
/// (as in Python).
pub fn active_children() -> Vec<ChildInfo> {
    registry::active()
}

/// How many CPUs this process may use: the CPUs in its affinity mask, further limited by a
/// cgroup CPU quota (v2 `cpu.max`, or v1 `cpu.cfs_quota_us`), rounded up; at least 1.
///
/// This is what a pool should size itself by. Python's `os.cpu_count()` counts every CPU of
/// the machine whatever the affinity or quota; 3.13's `os.process_cpu_count()` honours the
/// affinity but not the quota.
pub fn cpu_count() -> usize {
    let affinity = rustix::thread::sched_getaffinity(None)
        .map(|set| set.count() as usize)
        .unwrap_or(0);
    let online = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut n = if affinity > 0 { affinity } else { online };
    if let Some(quota) = cgroup_quota() {
        n = n.min(quota);
    }
    n.max(1)
}

/// The CPU quota of this process's cgroup, in whole CPUs (rounded up), if one is set.
fn cgroup_quota() -> Option<usize> {
    let groups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in groups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.is_empty() {
            // cgroup v2: walk up from our group; the tightest cpu.max wins.
            let mut best: Option<usize> = None;
            let mut dir = std::path::PathBuf::from(format!("/sys/fs/cgroup{path}"));
            loop {
                if let Ok(text) = std::fs::read_to_string(dir.join("cpu.max"))
                    && let Some(q) = parse_quota(&text)
                {
                    best = Some(best.map_or(q, |b| b.min(q)));
                }
                if !dir.pop() || !dir.starts_with("/sys/fs/cgroup") {
                    break;
                }
            }
            return best;
        }
        if controllers.split(',').any(|c| c == "cpu") {
            let base = format!("/sys/fs/cgroup/cpu,cpuacct{path}");
            let read = |f: &str| -> Option<i64> {
                std::fs::read_to_string(format!("{base}/{f}"))
                    .ok()?
                    .trim()
                    .parse()
                    .ok()
            };
            let (quota, period) = (read("cpu.cfs_quota_us")?, read("cpu.cfs_period_us")?);
            if quota > 0 && period > 0 {
                return Some((quota as usize).div_ceil(period as usize));
            }
        }
    }
    None
}

/// `cpu.max` is `max PERIOD` (no quota) or `QUOTA PERIOD`.
fn parse_quota(text: &str) -> Option<usize> {
    let mut parts = text.split_whitespace();
    let quota: u64 = parts.next()?.parse().ok()?;
    let period: u64 = parts.next()?.parse().ok()?;
    (period > 0).then(|| quota.div_ceil(period) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max_parses() {
        assert_eq!(parse_quota("max 100000\n"), None);
        assert_eq!(parse_quota("150000 100000\n"), Some(2));
        assert_eq!(parse_quota("100000 100000"), Some(1));
    }

    #[test]
    fn cpu_count_honours_the_affinity_mask() {
        let allowed = rustix::thread::sched_getaffinity(None).unwrap().count() as usize;
        let n = cpu_count();
        assert!((1..=allowed).contains(&n), "{n} of {allowed}");
    }
}
