//! What the forkserver tests share: each runs in a binary of its own, as it kills the
//! server or its children, which tests running beside it could be using.

use std::time::Duration;

use mp_spawn::{Process, StartMethod};

fn plus_one(x: u32) -> u32 {
    x + 1
}

/// Starts `plus_one(x)` from the forkserver and joins it (at most 30 s).
pub fn start_plus_one(x: u32) -> Option<u32> {
    Process::new(plus_one, x)
        .method(StartMethod::Forkserver)
        .start()
        .unwrap()
        .join_timeout(Duration::from_secs(30))
        .unwrap()
}

/// Our children whose environment marks them as a forkserver.
pub fn forkservers() -> Vec<u32> {
    children_of(std::process::id())
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .unwrap_or_default()
                .split(|&b| b == 0)
                .any(|kv| kv.starts_with(b"__MP_SPAWN_FORKSERVER="))
        })
        .collect()
}

/// The children of `pid` (a forkserver's: its standby children, when none runs a target).
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        out.extend(
            children
                .split_whitespace()
                .map(|p| p.parse::<u32>().unwrap()),
        );
    }
    out
}

/// Kills `pid` with SIGKILL and waits (at most 30 s) until it is gone; nothing to do if it
/// is gone already.
#[allow(
    dead_code,
    reason = "not every test binary that shares this module kills"
)]
pub fn kill_and_wait(pid: u32) {
    use rustix::process::{Pid, PidfdFlags, Signal, kill_process, pidfd_open};
    let pid = Pid::from_raw(pid as i32).unwrap();
    let Ok(pidfd) = pidfd_open(pid, PidfdFlags::empty()) else {
        return; // already gone
    };
    let _ = kill_process(pid, Signal::KILL);
    let gone = mp_pipe::wait(
        &[std::os::fd::AsFd::as_fd(&pidfd)],
        Some(Duration::from_secs(30)),
    )
    .unwrap();
    assert_eq!(gone, [0], "{pid:?} did not die");
}
