//! A request the forkserver cannot be sent, for want of a resource, refuses that start and
//! keeps the server, and with it the children it runs. A binary of its own: it lowers the
//! process's descriptor limit and puts descriptors in flight until the kernel refuses more.

mod common;

use std::{
    os::fd::{AsFd, BorrowedFd},
    time::Duration,
};

use common::{forkservers, start_plus_one};
use mp_pipe::{Connection, pipe};
use mp_spawn::{Process, StartMethod};
use rustix::{
    net::{AddressFamily, SocketFlags, SocketType, socketpair},
    process::{Pid, PidfdFlags, Resource, Rlimit, getrlimit, pidfd_open, setrlimit},
    thread::{CapabilitySet, capabilities, set_capabilities},
};

fn wait_for_word(conn: Connection) -> u32 {
    conn.recv::<u32>().map_or(0, |word| word + 1)
}

fn plus_one(x: u32) -> u32 {
    x + 1
}

/// Sends copies of `fd` over `socket` until the kernel refuses with `ETOOMANYREFS`, which
/// it does once this user has more descriptors in flight than the sender's descriptor
/// limit and the sending thread has neither `CAP_SYS_RESOURCE` nor `CAP_SYS_ADMIN` (in the
/// initial user namespace).
fn fill_in_flight(socket: BorrowedFd<'_>, fd: BorrowedFd<'_>) {
    for sent in 0..10_000 {
        match mp_codec::wire::send_parts(socket, b"x", &[fd]) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ETOOMANYREFS) => return,
            Err(e) => panic!("after {sent} descriptors in flight: {e}"),
        }
    }
    panic!("the kernel never refused a descriptor in flight");
}

/// Whether `fd` (a pidfd: its process has ended) is readable now.
fn readable(fd: BorrowedFd<'_>) -> bool {
    !mp_pipe::wait(&[&fd], Some(Duration::ZERO))
        .unwrap()
        .is_empty()
}

#[test]
fn a_request_refused_by_the_kernel_fails_the_start_and_keeps_the_server() {
    // A child of the server that runs until told.
    let (ours, theirs) = pipe(true).unwrap();
    let mut waiting = Process::new(wait_for_word, theirs)
        .method(StartMethod::Forkserver)
        .start()
        .unwrap();
    let server = forkservers();
    assert_eq!(server.len(), 1, "{server:?}");
    // Looked at through a pidfd from here on: without capabilities, this process may not
    // read the server's environment, which is how `forkservers` tells it.
    let server_pidfd = pidfd_open(
        Pid::from_raw(server[0] as i32).unwrap(),
        PidfdFlags::empty(),
    )
    .unwrap();

    // The kernel now refuses descriptors in flight from this thread once this user has more
    // than 64 in flight: the limit is the process's, the capabilities dropped this thread's.
    let limit = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(64),
            maximum: limit.maximum,
        },
    )
    .unwrap();
    let mut caps = capabilities(None).unwrap();
    caps.effective = CapabilitySet::empty();
    set_capabilities(None, caps).unwrap();
    let (tx, rx) = socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .unwrap();
    // What goes in flight: a pipe, not a socket. Its copies are gone as soon as `rx` closes;
    // a socket sent into its own queue would wait for the kernel's garbage collector.
    let (sent, _) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();

    // Each start takes a standby child asked for before, until none is left: then the
    // request for one cannot be sent, and the start fails. The count in flight is this
    // user's: it drops when another process (the server, say) receives descriptors sent
    // before, so it is topped up before each start.
    let mut refused = None;
    for x in 0..10 {
        fill_in_flight(tx.as_fd(), sent.as_fd());
        match Process::new(plus_one, x)
            .method(StartMethod::Forkserver)
            .start()
        {
            Ok(mut p) => {
                assert_eq!(
                    p.join_timeout(Duration::from_secs(30)).unwrap(),
                    Some(x + 1)
                );
            }
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let refused = refused.expect("a start that needs a new standby child fails");
    let errno = match &refused {
        mp_spawn::Error::Pipe(e) => e.raw_os_error(),
        _ => None,
    };
    assert_eq!(errno, Some(libc::ETOOMANYREFS), "{refused:?}");
    assert!(!readable(server_pidfd.as_fd()), "the server is kept");
    assert!(waiting.is_alive(), "and so is its running child");

    // Room for one more request, and not two: a start asks for two standby children, and
    // takes the one it could ask for.
    fill_in_flight(tx.as_fd(), sent.as_fd());
    let mut one = mp_codec::Frame::new();
    mp_codec::wire::recv_frame(&rx, 1, &mut one).unwrap();
    drop(one);
    let mut p = Process::new(plus_one, 5)
        .method(StartMethod::Forkserver)
        .start()
        .unwrap();
    assert_eq!(p.join_timeout(Duration::from_secs(30)).unwrap(), Some(6));

    // Once the descriptors in flight are gone, starts work again, from the same server.
    drop((tx, rx));
    assert_eq!(start_plus_one(7), Some(8));
    assert!(!readable(server_pidfd.as_fd()), "the same server");
    ours.send(&41u32).unwrap();
    assert_eq!(
        waiting.join_timeout(Duration::from_secs(30)).unwrap(),
        Some(42)
    );
}
