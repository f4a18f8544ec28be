//! Helpers for tests that run other processes: every wait has a deadline, and no child
//! outlives its test (killed and reaped on drop).

use std::{
    io::Read,
    os::fd::AsFd,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use rustix::{
    event::{PollFd, PollFlags, Timespec, poll},
    process::{Pid, PidfdFlags, pidfd_open},
};

/// How long any test waits on another process before failing.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A built example of this package (cargo builds examples for `cargo test`).
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap(); // target/<profile>/deps/.. 
    let path = dir.join("examples").join(name);
    assert!(path.exists(), "{} is not built", path.display());
    path
}

/// A script in `tests/python`.
pub fn python_script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
}

/// Blocks until `fd` is readable or `deadline` passes; false on timeout.
pub fn readable_by(fd: impl AsFd, deadline: Instant) -> bool {
    let left = deadline.saturating_duration_since(Instant::now());
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    let timeout = Timespec::try_from(left).unwrap();
    loop {
        match poll(&mut fds, Some(&timeout)) {
            Ok(n) => return n > 0,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => panic!("poll: {e}"),
        }
    }
}

/// A child process that is killed and reaped if the test ends without waiting for it.
pub struct Guarded {
    child: Option<Child>,
    what: String,
}

impl Guarded {
    /// Starts `command` with stdout and stderr piped.
    pub fn spawn(command: Command) -> Self {
        Guarded::start(command, Stdio::null())
    }

    /// Like [`spawn`](Self::spawn), with a pipe to the child's stdin.
    pub fn spawn_with_stdin(command: Command) -> Self {
        Guarded::start(command, Stdio::piped())
    }

    fn start(mut command: Command, stdin: Stdio) -> Self {
        let what = format!("{command:?}");
        let child = command
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Guarded {
            child: Some(child),
            what,
        }
    }

    /// Closes the child's stdin (it sees EOF).
    pub fn close_stdin(&mut self) {
        drop(self.child.as_mut().unwrap().stdin.take());
    }

    /// Reads stdout up to the first newline, failing the test at the deadline.
    pub fn first_line(&mut self) -> String {
        let deadline = Instant::now() + DEADLINE;
        let mut line = Vec::new();
        let mut byte = [0];
        while !line.ends_with(b"\n") {
            let stdout = self.child.as_mut().unwrap().stdout.as_mut().unwrap();
            assert!(
                readable_by(&*stdout, deadline),
                "{} printed no line within {DEADLINE:?}",
                self.what
            );
            if stdout.read(&mut byte).unwrap() == 0 {
                let err = self.stderr();
                panic!("{} exited before printing a line: {err}", self.what);
            }
            line.push(byte[0]);
        }
        String::from_utf8(line).unwrap().trim_end().to_string()
    }

    fn stderr(&mut self) -> String {
        let mut text = String::new();
        if let Some(err) = self.child.as_mut().unwrap().stderr.as_mut() {
            let _ = err.read_to_string(&mut text);
        }
        text
    }

    /// Waits for the child to exit (failing at the deadline) and returns its status, stdout
    /// and stderr.
    pub fn finish(mut self) -> (ExitStatus, String, String) {
        let mut child = self.child.take().unwrap();
        let pidfd = pidfd_open(Pid::from_child(&child), PidfdFlags::empty()).unwrap();
        let exited = readable_by(&pidfd, Instant::now() + DEADLINE);
        if !exited {
            let _ = child.kill();
        }
        let out = child.wait_with_output().unwrap();
        assert!(exited, "{} still running after {DEADLINE:?}", self.what);
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
