//! The forkserver is started again when it has died. A binary of its own: killing the
//! server would kill the forkserver children of tests running beside it.

mod common;

use std::{os::fd::AsFd, time::Duration};

use common::{forkservers, start_plus_one as start};
use rustix::process::{Pid, PidfdFlags, Signal, kill_process, pidfd_open};

#[test]
fn a_dead_forkserver_is_started_again() {
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
