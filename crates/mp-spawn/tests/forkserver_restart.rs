//! The forkserver is started again when it has died. A binary of its own: killing the
//! server would kill the forkserver children of tests running beside it.

use std::{os::fd::AsFd, time::Duration};

use mp_spawn::{Process, StartMethod};
use rustix::process::{Pid, PidfdFlags, Signal, kill_process, pidfd_open};

fn plus_one(x: u32) -> u32 {
    x + 1
}

/// Our children whose environment marks them as a forkserver.
fn forkservers() -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for pid in children.split_whitespace() {
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            if env
                .split(|&b| b == 0)
                .any(|kv| kv.starts_with(b"__MP_SPAWN_FORKSERVER="))
            {
                out.push(pid.parse().unwrap());
            }
        }
    }
    out
}

#[test]
fn a_dead_forkserver_is_started_again() {
    let start = |x| {
        Process::new(plus_one, x)
            .method(StartMethod::Forkserver)
            .start()
            .unwrap()
            .join_timeout(Duration::from_secs(30))
            .unwrap()
    };
    assert_eq!(start(1), Some(2));
    let servers = forkservers();
    assert_eq!(servers.len(), 1, "{servers:?}");
    let pid = Pid::from_raw(servers[0] as i32).unwrap();
    let pidfd = pidfd_open(pid, PidfdFlags::empty()).unwrap();
    kill_process(pid, Signal::KILL).unwrap();
    let gone = mp_pipe::wait(&[pidfd.as_fd()], Some(Duration::from_secs(30))).unwrap();
    assert_eq!(gone, [0]);
    assert_eq!(start(2), Some(3));
    let now = forkservers();
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(now[0], servers[0]);
}
