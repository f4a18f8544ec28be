//! Shared values, arrays and named blocks across processes, through the facade: the doc
//! examples, nothing left behind after SIGKILL, and Python opening what we create.

use std::{os::fd::AsFd, process::Command, time::Instant};

use multiprocessing::{Array, Connection, Process, SharedMemory, StartMethod, pipe};
use rustix::process::{Pid, PidfdFlags, Signal, kill_process, pidfd_open};

use crate::support::{DEADLINE, Guarded, example, readable_by};

#[test]
fn the_value_example_prints_1() {
    let (status, out, err) = Guarded::spawn(Command::new(example("value"))).finish();
    assert!(status.success(), "{err}");
    assert_eq!(out, "1\n");
}

#[test]
fn the_shared_array_example_prints_prefix_sums() {
    let (status, out, err) = Guarded::spawn(Command::new(example("shared_array"))).finish();
    assert!(status.success(), "{err}");
    assert_eq!(out, "[1, 3, 6, 10, 15, 21, 28, 36]\n");
}

fn inode(fd: impl AsFd) -> u64 {
    rustix::fs::fstat(fd).unwrap().st_ino
}

/// Every (pid, what) in /proc that maps or holds open the file with inode `ino`, among
/// the processes we may look at.
fn holders(ino: u64) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name();
        let Some(pid) = pid
            .to_str()
            .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if let Ok(maps) = std::fs::read_to_string(entry.path().join("maps")) {
            for line in maps.lines() {
                let fields: Vec<_> = line.split_whitespace().collect();
                if fields.len() >= 6
                    && fields[5].starts_with("/memfd:mp-shm")
                    && fields[4].parse() == Ok(ino)
                {
                    found.push(format!("{pid} maps {line}"));
                }
            }
        }
        if let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) {
            for fd in fds.flatten() {
                let is_memfd = std::fs::read_link(fd.path())
                    .is_ok_and(|l| l.to_string_lossy().starts_with("/memfd:mp-shm"));
                if is_memfd
                    && std::fs::metadata(fd.path())
                        .is_ok_and(|m| std::os::unix::fs::MetadataExt::ino(&m) == ino)
                {
                    found.push(format!("{pid} holds fd {:?}", fd.file_name()));
                }
            }
        }
    }
    found
}

fn grandchild_holds(array: Array<u8>) {
    array.set(1, 2).unwrap();
    loop {
        std::thread::park();
    }
}

fn child_shares_with_a_grandchild(conn: Connection) {
    let array = Array::<u8>::new(1 << 20).unwrap();
    let grandchild = Process::new(grandchild_holds, array.clone())
        .method(StartMethod::Spawn)
        .daemon(true)
        .start()
        .unwrap();
    while array.get(1) != Some(2) {
        std::thread::yield_now();
    }
    conn.send(&(inode(&array), grandchild.pid())).unwrap();
    loop {
        std::thread::park();
    }
}

#[test]
fn nothing_of_a_region_survives_sigkill_of_every_process_using_it() {
    let (ours, theirs) = pipe(true).unwrap();
    let child = Process::new(child_shares_with_a_grandchild, theirs)
        .daemon(true)
        .start()
        .unwrap();
    assert!(
        readable_by(&ours, Instant::now() + DEADLINE),
        "child never reported"
    );
    let (ino, grandchild): (u64, u32) = ours.recv().unwrap();
    let grandchild_fd = pidfd_open(
        Pid::from_raw(grandchild as i32).unwrap(),
        PidfdFlags::empty(),
    )
    .unwrap();
    assert!(
        holders(ino).len() >= 2,
        "both processes map the region: {:?}",
        holders(ino)
    );
    let child_fd = pidfd_open(
        Pid::from_raw(child.pid() as i32).unwrap(),
        PidfdFlags::empty(),
    )
    .unwrap();
    kill_process(Pid::from_raw(grandchild as i32).unwrap(), Signal::KILL).unwrap();
    child.kill().unwrap();
    for fd in [&grandchild_fd, &child_fd] {
        assert!(
            readable_by(fd, Instant::now() + DEADLINE),
            "a process survived SIGKILL"
        );
    }
    assert_eq!(
        holders(ino),
        Vec::<String>::new(),
        "the region outlived its processes"
    );
}

#[test]
fn python_opens_what_we_create_and_we_open_what_python_creates() {
    let ours = SharedMemory::new(32).unwrap();
    ours.write(0, b"from rust").unwrap();
    let script = format!(
        "from multiprocessing import shared_memory as s\n\
         from multiprocessing import resource_tracker\n\
         m = s.SharedMemory({:?})\n\
         resource_tracker.unregister(m._name, 'shared_memory')  # 3.11 tracks what it opens\n\
         print(bytes(m.buf[:9]).decode())\n\
         m.buf[:11] = b'from python'\n\
         m.close()\n\
         n = s.SharedMemory(create=True, size=16)\n\
         n.buf[:5] = b'hello'\n\
         print(n.name, flush=True)\n\
         import sys; sys.stdin.readline()\n\
         n.close(); n.unlink()\n",
        ours.name()
    );
    let mut python = Command::new("python3");
    python.arg("-c").arg(script);
    let mut py = Guarded::spawn_with_stdin(python);
    assert_eq!(py.first_line(), "from rust");
    let name = py.first_line();
    let theirs = SharedMemory::open(&name).unwrap();
    let mut buf = [0; 5];
    theirs.read(0, &mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    let mut buf = [0; 11];
    ours.read(0, &mut buf).unwrap();
    assert_eq!(&buf, b"from python");
    py.close_stdin();
    let (status, _, err) = py.finish();
    assert!(status.success(), "{err}");
    drop(theirs); // opened, not created: must not unlink (Python already did)
}
