//! A forkserver's standby children, killed from outside, are passed over. A binary of its
//! own: it kills the server's children, which tests running beside it could be using.

mod common;

use std::{os::fd::AsFd, time::Duration};

use common::{children_of, forkservers, start_plus_one as start};
use rustix::process::{Pid, PidfdFlags, Signal, kill_process, pidfd_open};

#[test]
fn standby_children_killed_from_outside_are_passed_over() {
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
