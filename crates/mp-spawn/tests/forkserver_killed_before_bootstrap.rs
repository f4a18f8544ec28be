//! A forkserver's child killed before it read its bootstrap takes the descriptors of its
//! arguments with it: nobody else holds them, so the far end of a pipe handed to it sees
//! the hang-up at once, before the child is joined. A binary of its own: it stops the
//! server's children, which tests running beside it could be using.

mod common;

use std::{os::fd::AsFd, time::Duration};

use common::{children_of, forkservers, kill_and_wait, start_plus_one};
use mp_spawn::{Process, StartMethod};
use rustix::process::{Pid, PidfdFlags, Signal, kill_process, pidfd_open};

fn holds(_conn: mp_pipe::Connection) -> u32 {
    0
}

#[test]
fn a_child_killed_before_its_bootstrap_leaves_no_copy_of_its_arguments() {
    assert_eq!(start_plus_one(10), Some(11));
    let server = forkservers()[0];
    // Every standby stopped: the next start's bootstrap waits, unread, in its socket.
    let standbys = children_of(server);
    assert!(!standbys.is_empty(), "the server keeps standby children");
    for &pid in &standbys {
        let _ = kill_process(Pid::from_raw(pid as i32).unwrap(), Signal::STOP);
    }
    let (ours, theirs) = mp_pipe::pipe(true).unwrap();
    let mut child = Process::new(holds, theirs)
        .method(StartMethod::Forkserver)
        .start()
        .unwrap();
    let pid = Pid::from_raw(child.pid() as i32).unwrap();
    let pidfd = pidfd_open(pid, PidfdFlags::empty()).unwrap();
    kill_process(pid, Signal::KILL).unwrap();
    let gone = mp_pipe::wait(&[pidfd.as_fd()], Some(Duration::from_secs(30))).unwrap();
    assert_eq!(gone, [0], "the child did not die");
    // Before any join: the child's copy of the pipe's end died with it, and no other is left.
    assert!(
        ours.poll(Some(Duration::from_secs(10))).unwrap(),
        "the pipe's far end is still held by someone"
    );
    assert!(matches!(ours.recv_bytes(), Err(mp_pipe::Error::Eof)));
    assert!(child.join_timeout(Duration::from_secs(30)).is_err());
    // The standbys still stopped, killed and waited for (a start passes over the dead).
    for pid in standbys {
        kill_and_wait(pid);
    }
    assert_eq!(start_plus_one(20), Some(21), "the server carries on");
}
