//! A frame carrying a pipe's write end crosses into another process over a unix socket
//! (`SCM_RIGHTS`); that process writes through it and the parent reads what it wrote.

use std::{
    io::{Read, Write},
    os::fd::{AsFd, OwnedFd},
    process::{Command, Stdio},
    time::Duration,
};

use multiprocessing::codec::{Fd, Frame, wire};
use rustix::{
    event::{PollFd, PollFlags, Timespec, poll},
    net::{AddressFamily, SocketFlags, SocketType, socketpair},
    process::{Pid, PidfdFlags, pidfd_open},
};

const CHILD_ENV: &str = "MP_TEST_CODEC_CHILD";
const DEADLINE: Duration = Duration::from_secs(20);

/// The child's half: its stdin is the socket; receive one frame and write through its fd.
#[test]
#[ignore = "the child half of a_pipe_fd_sent_to_another_process_is_written_through_there"]
fn codec_child_helper() {
    assert!(std::env::var_os(CHILD_ENV).is_some(), "run only as a child");
    let stdin = std::io::stdin();
    let mut frame = Frame::new();
    wire::recv_frame(stdin.as_fd(), wire::DEFAULT_MAX_LEN, &mut frame).unwrap();
    let (greeting, pipe): (String, Fd) = frame.decode().unwrap();
    std::fs::File::from(pipe.into_inner())
        .write_all(greeting.as_bytes())
        .unwrap();
}

/// Waits until `fd` is readable, or fails the test at the deadline.
fn wait_readable(fd: impl AsFd, what: &str) {
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    let timeout = Timespec::try_from(DEADLINE).unwrap();
    let n = poll(&mut fds, Some(&timeout)).unwrap();
    assert_eq!(n, 1, "{what} not ready within {DEADLINE:?}");
}

#[test]
fn a_pipe_fd_sent_to_another_process_is_written_through_there() {
    let (ours, theirs) = socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "codec::codec_child_helper",
            "--ignored",
            "--quiet",
        ])
        .env(CHILD_ENV, "1")
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pidfd = pidfd_open(
        Pid::from_raw(child.id() as i32).unwrap(),
        PidfdFlags::empty(),
    )
    .unwrap();

    let (mut reader, writer) = std::io::pipe().unwrap();
    let greeting = "hello from the other process".to_string();
    let frame = Frame::encode(&(greeting.clone(), Fd::from(OwnedFd::from(writer)))).unwrap();
    wire::send_frame(&ours, &frame).unwrap();
    drop(frame); // now only the child holds a write end

    let mut got = String::new();
    wait_readable(&reader, "the pipe");
    reader.read_to_string(&mut got).unwrap();
    assert_eq!(got, greeting);
    wait_readable(&pidfd, "the child's exit");
    assert!(child.wait().unwrap().success());
}
