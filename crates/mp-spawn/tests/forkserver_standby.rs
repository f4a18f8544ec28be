//! A forkserver's standby children, killed from outside, are passed over. A binary of its
//! own: it kills the server's children, which tests running beside it could be using.

use std::{os::fd::AsFd, time::Duration};

use mp_spawn::{Process, StartMethod};
use rustix::process::{Pid, PidfdFlags, Signal, kill_process, pidfd_open};

fn plus_one(x: u32) -> u32 {
    x + 1
}

/// Our children whose environment marks them as a forkserver.
fn forkservers() -> Vec<u32> {
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
fn children_of(pid: u32) -> Vec<u32> {
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

#[test]
fn standby_children_killed_from_outside_are_passed_over() {
    let start = |x| {
        Process::new(plus_one, x)
            .method(StartMethod::Forkserver)
            .start()
            .unwrap()
            .join_timeout(Duration::from_secs(30))
            .unwrap()
    };
    assert_eq!(start(10), Some(11));
    let server = forkservers()[0];
    let standbys = children_of(server);
    assert!(!standbys.is_empty(), "the server keeps standby children");
    for pid in standbys {
        let pid = Pid::from_raw(pid as i32).unwrap();
        let Ok(pidfd) = pidfd_open(pid, PidfdFlags::empty()) else {
            continue; // already gone
        };
        let _ = kill_process(pid, Signal::KILL);
        let gone = mp_pipe::wait(&[pidfd.as_fd()], Some(Duration::from_secs(30))).unwrap();
        assert_eq!(gone, [0]);
    }
    assert_eq!(start(20), Some(21));
    assert_eq!(forkservers(), [server], "the same server carries on");
}
