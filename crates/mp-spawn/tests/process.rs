//! `Process` through the public API, under every start method: values and exit codes, joins
//! with timeouts, signals, daemons and parent death, zombies, descriptor hygiene, nesting and
//! large messages. Every wait on another process has a deadline.

use std::{
    collections::BTreeSet,
    os::fd::AsFd,
    time::{Duration, Instant},
};

use mp_codec::Bytes;
use mp_pipe::{Connection, pipe};
use mp_spawn::{Error, Process, StartMethod, active_children, current_process, parent_process};
use rustix::process::{Pid, PidfdFlags, Signal, kill_process, pidfd_open};

const METHODS: [StartMethod; 3] = [
    StartMethod::Fork,
    StartMethod::Spawn,
    StartMethod::Forkserver,
];
const DEADLINE: Duration = Duration::from_secs(30);

fn join_in_time<R: mp_codec::Message + 'static>(p: &mut Process<R>) -> Result<R, Error> {
    match p.join_timeout(DEADLINE) {
        Ok(Some(value)) => Ok(value),
        Ok(None) => panic!("{} still running after {DEADLINE:?}", p.name()),
        Err(e) => Err(e),
    }
}

fn square(x: u64) -> u64 {
    x * x
}

fn panics(message: String) -> u8 {
    panic!("{message}")
}

fn exits(code: i32) -> u8 {
    std::process::exit(code)
}

fn segfaults(_: ()) -> u8 {
    // Rust's runtime handler (inherited under fork) swallows the first SIGSEGV that is not a
    // stack overflow and restores the default action; the second is fatal.
    let me = rustix::process::getpid();
    kill_process(me, Signal::SEGV).unwrap();
    kill_process(me, Signal::SEGV).unwrap();
    unreachable!("SIGSEGV is fatal")
}

#[test]
fn the_exit_code_table_holds_under_every_method() {
    for method in METHODS {
        let mut ok = Process::new(square, 9).method(method).start().unwrap();
        assert_eq!(join_in_time(&mut ok).unwrap(), 81, "{method:?}");
        assert_eq!(ok.exitcode(), Some(0));

        let mut p = Process::new(panics, "boom".to_string())
            .method(method)
            .start()
            .unwrap();
        match join_in_time(&mut p) {
            Err(Error::Panicked { message, .. }) => assert_eq!(message, "boom"),
            other => panic!("{method:?}: {other:?}"),
        }
        assert_eq!(p.exitcode(), Some(1));

        let mut e = Process::new(exits, 7).method(method).start().unwrap();
        assert!(matches!(
            join_in_time(&mut e),
            Err(Error::Exited { code: 7, .. })
        ));
        assert_eq!(e.exitcode(), Some(7));

        let mut s = Process::new(segfaults, ()).method(method).start().unwrap();
        assert!(matches!(
            join_in_time(&mut s),
            Err(Error::Killed { signal: 11, .. })
        ));
        assert_eq!(s.exitcode(), Some(-11), "{method:?}");
    }
}

fn exits_zero(_: ()) {
    std::process::exit(0)
}

#[test]
fn a_child_that_calls_exit_0_has_not_returned() {
    // Not even when its target returns (): its exit code alone does not tell.
    for method in METHODS {
        let mut p = Process::new(exits_zero, ()).method(method).start().unwrap();
        assert!(
            matches!(join_in_time(&mut p), Err(Error::Exited { code: 0, .. })),
            "{method:?}"
        );
        assert_eq!(p.exitcode(), Some(0));
        let mut ok = Process::new(nothing, ()).method(method).start().unwrap();
        join_in_time(&mut ok).unwrap();
        assert_eq!(ok.exitcode(), Some(0));
    }
}

/// Returns `x` while a thread of its own calls `exit(3)` at the same instant.
fn returns_while_a_thread_exits(x: u64) -> u64 {
    let both = std::sync::Arc::new(std::sync::Barrier::new(2));
    let theirs = both.clone();
    std::thread::spawn(move || {
        theirs.wait();
        std::process::exit(3)
    });
    both.wait();
    x
}

#[test]
fn a_child_that_returns_as_a_thread_exits_sends_one_outcome_at_most() {
    // Whichever wins, the child's socket carries one frame at most: the next child to get
    // the same pooled socket sees its own outcome.
    for x in 0..300 {
        let mut racy = Process::new(returns_while_a_thread_exits, x)
            .method(StartMethod::Fork)
            .start()
            .unwrap();
        match join_in_time(&mut racy) {
            Ok(v) => assert_eq!(v, x),
            Err(Error::Exited { code: 3, .. }) => {}
            Err(Error::Exited { code: 0, .. }) => {}
            other => panic!("{x}: {other:?}"),
        }
        let mut next = Process::new(square, x)
            .method(StartMethod::Fork)
            .start()
            .unwrap();
        assert_eq!(join_in_time(&mut next).unwrap(), x * x, "{x}");
    }
}

/// Waits for one message on `conn`, then returns it.
fn wait_for_word(conn: Connection) -> String {
    conn.recv::<String>().unwrap_or_default()
}

#[test]
fn join_timeout_leaves_a_running_child_running() {
    for method in METHODS {
        let (ours, theirs) = pipe(true).unwrap();
        let mut p = Process::new(wait_for_word, theirs)
            .method(method)
            .start()
            .unwrap();
        assert_eq!(p.join_timeout(Duration::from_millis(20)).unwrap(), None);
        assert!(p.is_alive());
        assert_eq!(p.exitcode(), None);
        ours.send("go").unwrap();
        assert_eq!(join_in_time(&mut p).unwrap(), "go");
        assert!(!p.is_alive());
    }
}

#[test]
fn terminate_and_kill_end_a_child_with_minus_the_signal() {
    for method in METHODS {
        let (_ours, theirs) = pipe(true).unwrap();
        let mut p = Process::new(wait_for_word, theirs)
            .method(method)
            .start()
            .unwrap();
        p.terminate().unwrap();
        assert!(matches!(
            join_in_time(&mut p),
            Err(Error::Killed { signal: 15, .. })
        ));
        assert_eq!(p.exitcode(), Some(-15));
        p.kill().unwrap(); // already gone: nothing happens

        let (_ours, theirs) = pipe(true).unwrap();
        let mut p = Process::new(wait_for_word, theirs)
            .method(method)
            .start()
            .unwrap();
        p.kill().unwrap();
        assert!(matches!(
            join_in_time(&mut p),
            Err(Error::Killed { signal: 9, .. })
        ));
        assert_eq!(p.exitcode(), Some(-9));
    }
}

/// Descriptors open in this process, with what they point at.
fn open_fds(_: ()) -> Vec<(i32, String)> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let fd: i32 = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?.display().to_string();
            Some((fd, target))
        })
        .collect()
}

#[test]
fn an_exec_child_sees_only_stdio_and_its_own_descriptors() {
    // Plenty of descriptors open here; none of them may reach the child.
    let _noise: Vec<_> = (0..20).map(|_| pipe(true).unwrap()).collect();
    for method in [StartMethod::Spawn, StartMethod::Forkserver] {
        let mut p = Process::new(open_fds, ()).method(method).start().unwrap();
        let fds = join_in_time(&mut p).unwrap();
        let extra: Vec<_> = fds.iter().filter(|(fd, _)| *fd > 2).collect();
        // Its result socket, the pidfd of its parent, and the one read_dir itself opened.
        assert!(extra.len() <= 3, "{method:?}: {fds:?}");
        assert!(
            fds.iter().filter(|(fd, _)| *fd <= 2).count() == 3,
            "{fds:?}"
        );
        for (_, target) in &extra {
            assert!(
                target.starts_with("socket:")
                    || target.contains("pidfd")
                    || target.starts_with("/proc/"),
                "{method:?}: unexpected {target} in {fds:?}"
            );
        }
        assert_eq!(
            extra
                .iter()
                .filter(|(_, t)| t.starts_with("socket:"))
                .count(),
            1
        );
    }
}

fn names(_: ()) -> (String, String, Vec<u32>, u32) {
    let me = current_process();
    let parent = parent_process().expect("a child has a parent");
    assert!(parent.is_alive());
    assert!(
        !parent.join(Some(Duration::from_millis(10))),
        "the parent is still running"
    );
    let parent = parent.pid();
    let mut grandchild = Process::new(|_: ()| current_process().name, ())
        .method(StartMethod::Spawn)
        .start()
        .unwrap();
    (
        me.name,
        join_in_time(&mut grandchild).unwrap(),
        me.identity,
        parent,
    )
}

#[test]
fn children_start_children_named_as_in_python() {
    for method in METHODS {
        let mut p = Process::new(names, ()).method(method).start().unwrap();
        let (name, grandchild, identity, parent) = join_in_time(&mut p).unwrap();
        assert_eq!(name, format!("Process-{}", identity[0]), "{method:?}");
        assert_eq!(grandchild, format!("{name}:1"));
        assert_eq!(parent, std::process::id());
    }
    assert_eq!(current_process().name, "MainProcess");
    assert!(parent_process().is_none());
}

fn echo_size(data: Bytes) -> Bytes {
    let sum = data.0.iter().map(|&b| u64::from(b)).sum::<u64>();
    let mut back = data.0;
    back.extend_from_slice(&sum.to_le_bytes());
    Bytes(back)
}

#[test]
fn sixty_four_mib_each_way_under_every_method() {
    let data: Vec<u8> = (0..64usize << 20).map(|i| (i % 251) as u8).collect();
    let sum: u64 = data.iter().map(|&b| u64::from(b)).sum();
    for method in METHODS {
        let mut p = Process::new(echo_size, Bytes(data.clone()))
            .method(method)
            .start()
            .unwrap();
        let back = join_in_time(&mut p).unwrap().0;
        assert_eq!(back.len(), data.len() + 8, "{method:?}");
        assert_eq!(back[..data.len()], data[..]);
        assert_eq!(back[data.len()..], sum.to_le_bytes());
    }
}

#[test]
fn a_closure_can_capture_under_fork_only() {
    let words = vec!["x".to_string(); 3];
    let mut p = Process::fork(move || words.concat()).start().unwrap();
    assert_eq!(join_in_time(&mut p).unwrap(), "xxx");
    let other = Process::fork(|| 1u8).method(StartMethod::Spawn).start();
    assert!(matches!(other, Err(Error::ForkOnly)));
}

/// Zombie children of this process right now.
fn zombies() -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for pid in children.split_whitespace() {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The state follows the parenthesized command name.
            if stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'))
            {
                out.insert(pid.parse().unwrap());
            }
        }
    }
    out
}

/// Waits, with a deadline, until `pid` is no zombie of ours.
fn reaped_in_time(pid: u32) -> bool {
    let until = Instant::now() + DEADLINE;
    while Instant::now() < until {
        if !zombies().contains(&pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

#[test]
fn no_zombie_after_join_drop_or_a_panic_in_the_parent() {
    for method in METHODS {
        // joined
        let mut p = Process::new(square, 2).method(method).start().unwrap();
        let pid = p.pid();
        join_in_time(&mut p).unwrap();
        assert!(!zombies().contains(&pid));

        // dropped while running, then it ends
        let (ours, theirs) = pipe(true).unwrap();
        let p = Process::new(wait_for_word, theirs)
            .method(method)
            .start()
            .unwrap();
        let pid = p.pid();
        let pidfd = pidfd_open(Pid::from_raw(pid as i32).unwrap(), PidfdFlags::empty()).unwrap();
        drop(p);
        ours.send("bye").unwrap();
        assert_eq!(
            mp_pipe::wait(&[pidfd.as_fd()], Some(DEADLINE)).unwrap(),
            [0]
        );
        assert!(reaped_in_time(pid), "{method:?}: {pid} left a zombie");

        // a panic in the parent while it holds an un-joined process that has ended
        let (ours, theirs) = pipe(true).unwrap();
        let started = std::panic::catch_unwind(move || {
            let p = Process::new(wait_for_word, theirs)
                .method(method)
                .start()
                .unwrap();
            let pid = p.pid();
            // Opened before it can end: a forkserver reaps its children at once.
            let fd = pidfd_open(Pid::from_raw(pid as i32).unwrap(), PidfdFlags::empty()).unwrap();
            ours.send("end").unwrap();
            mp_pipe::wait(&[fd.as_fd()], Some(DEADLINE)).unwrap();
            std::panic::panic_any(pid);
        });
        let pid = *started.unwrap_err().downcast::<u32>().unwrap();
        assert!(
            reaped_in_time(pid),
            "{method:?}: {pid} left a zombie after a panic"
        );
    }
}

fn child_pid_of_grandchild(daemon: bool) -> u32 {
    let (ours, theirs) = pipe(true).unwrap();
    let g = Process::new(wait_for_word, theirs)
        .daemon(daemon)
        .method(StartMethod::Spawn)
        .start()
        .unwrap();
    let pid = g.pid();
    std::mem::forget(ours); // keep the grandchild waiting
    std::mem::forget(g); // its fate is decided by our exit, not by a drop
    pid
}

fn start_grandchild_and_hang(conn: Connection) -> u8 {
    let pid = child_pid_of_grandchild(false);
    conn.send(&pid).unwrap();
    let _ = conn.recv::<u8>(); // until killed
    0
}

fn start_daemon_and_return(daemon: bool) -> u32 {
    child_pid_of_grandchild(daemon)
}

fn gone_in_time(pid: u32, within: Duration) -> bool {
    match pidfd_open(Pid::from_raw(pid as i32).unwrap(), PidfdFlags::empty()) {
        Ok(fd) => !mp_pipe::wait(&[fd.as_fd()], Some(within))
            .unwrap()
            .is_empty(),
        Err(_) => true, // already gone and reaped
    }
}

/// Under every start method: a child runs `target`, which starts a grandchild, sends its
/// pid and hangs; SIGKILL the child, and the grandchild must be gone within a second.
fn killing_the_child_takes_the_grandchild(target: impl Fn(Connection) -> u8 + Copy + 'static) {
    for method in METHODS {
        let (ours, theirs) = pipe(true).unwrap();
        let mut p = Process::new(target, theirs).method(method).start().unwrap();
        let grandchild: u32 = ours.recv().unwrap();
        assert!(!gone_in_time(grandchild, Duration::ZERO));
        p.kill().unwrap();
        assert!(matches!(
            join_in_time(&mut p),
            Err(Error::Killed { signal: 9, .. })
        ));
        assert!(
            gone_in_time(grandchild, Duration::from_secs(1)),
            "{method:?}: orphan left"
        );
    }
}

#[test]
fn killing_a_parent_with_sigkill_takes_its_children_with_it() {
    killing_the_child_takes_the_grandchild(start_grandchild_and_hang);
}

#[test]
fn daemons_die_with_a_normal_exit_and_the_others_are_joined() {
    for method in METHODS {
        let mut p = Process::new(start_daemon_and_return, true)
            .method(method)
            .start()
            .unwrap();
        let daemon = join_in_time(&mut p).unwrap();
        assert!(
            gone_in_time(daemon, Duration::from_secs(1)),
            "{method:?}: daemon survived"
        );
    }
    // A non-daemonic grandchild keeps its parent from finishing until it ends.
    let mut p = Process::new(start_daemon_and_return, false)
        .start()
        .unwrap();
    assert_eq!(p.join_timeout(Duration::from_millis(200)).unwrap(), None);
    assert!(p.is_alive());
    p.kill().unwrap(); // and the grandchild goes with it
    let _ = join_in_time(&mut p);
}

#[test]
fn active_children_lists_the_running_ones() {
    for method in METHODS {
        let (ours, theirs) = pipe(true).unwrap();
        let mut p = Process::new(wait_for_word, theirs)
            .name("lister")
            .method(method)
            .start()
            .unwrap();
        assert!(
            active_children()
                .iter()
                .any(|c| c.pid == p.pid() && c.name == "lister"),
            "{method:?}"
        );
        ours.send("x").unwrap();
        join_in_time(&mut p).unwrap();
        assert!(!active_children().iter().any(|c| c.pid == p.pid()));
    }
}

/// The write end of a pipe that the test process's own `atexit` handler writes to.
static PARENT_EXIT_PIPE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn parents_exit_handler() {
    let fd = PARENT_EXIT_PIPE.load(std::sync::atomic::Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: `fd` is the write end of a pipe this process keeps open for its lifetime
        // (leaked by the test below); `write` has no other precondition.
        unsafe {
            libc::write(fd, b"!".as_ptr().cast(), 1);
        }
    }
}

fn exits_three(_: ()) -> u8 {
    std::process::exit(3)
}

#[test]
fn exit_in_a_forked_child_runs_none_of_the_parents_exit_handlers() {
    use std::os::fd::IntoRawFd;
    let (reader, writer) = std::io::pipe().unwrap();
    PARENT_EXIT_PIPE.store(
        std::os::fd::OwnedFd::from(writer).into_raw_fd(),
        std::sync::atomic::Ordering::Relaxed,
    );
    // SAFETY: the handler is a plain function valid for the life of the process.
    unsafe {
        libc::atexit(parents_exit_handler);
    }
    let mut p = Process::new(exits_three, ())
        .method(StartMethod::Fork)
        .start()
        .unwrap();
    assert!(matches!(
        join_in_time(&mut p),
        Err(Error::Exited { code: 3, .. })
    ));
    let ran = mp_pipe::wait(&[reader.as_fd()], Some(Duration::ZERO)).unwrap();
    assert!(
        ran.is_empty(),
        "the parent's atexit handler ran in the child"
    );
}

#[test]
fn a_child_outlives_the_thread_that_started_it() {
    // PR_SET_PDEATHSIG fires when the parent *thread* exits; the child must tell that apart
    // from its parent process dying, and carry on.
    for method in METHODS {
        let (ours, theirs) = pipe(true).unwrap();
        let starter = std::thread::spawn(move || {
            Process::new(wait_for_word, theirs)
                .method(method)
                .start()
                .unwrap()
        });
        let mut p = starter.join().unwrap(); // the starting thread is gone now
        ours.send("still here").unwrap();
        assert_eq!(join_in_time(&mut p).unwrap(), "still here", "{method:?}");
    }
}

fn hand_back_a_connection(greeting: String) -> Connection {
    let (ours, theirs) = pipe(true).unwrap();
    ours.send(&greeting).unwrap();
    theirs
}

fn big_result_with_a_connection(size: usize) -> (Vec<u8>, Connection) {
    let (ours, theirs) = pipe(true).unwrap();
    ours.send(&size).unwrap();
    (vec![9; size], theirs)
}

#[test]
fn a_result_may_carry_descriptors() {
    // Past the inline limit the result travels in a memfd; its descriptors still follow it.
    for method in METHODS {
        let mut p = Process::new(big_result_with_a_connection, 200_000)
            .method(method)
            .start()
            .unwrap();
        let (bytes, conn) = join_in_time(&mut p).unwrap();
        assert_eq!(bytes, vec![9; 200_000]);
        assert_eq!(conn.recv::<usize>().unwrap(), 200_000, "{method:?}");
    }
    for method in METHODS {
        let mut p = Process::new(hand_back_a_connection, "inside".to_string())
            .method(method)
            .start()
            .unwrap();
        let conn = join_in_time(&mut p).unwrap();
        assert_eq!(conn.recv::<String>().unwrap(), "inside", "{method:?}");
        // The child has exited: its end is closed, so the stream ends here.
        assert!(matches!(conn.recv::<String>(), Err(mp_pipe::Error::Eof)));
    }
}

fn nothing(_: ()) {}

/// Set in the environment of this test binary run again as a helper.
const HELPER: &str = "MP_SPAWN_TEST_HELPER";

/// Runs this test binary again for the one test `name` (a helper that acts only with
/// [`HELPER`] set), its output captured, and waits for it (at most [`DEADLINE`]).
fn run_helper(name: &str, setup: impl FnOnce(&mut std::process::Command)) -> std::process::Output {
    let mut helper = std::process::Command::new(std::env::current_exe().unwrap());
    helper
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(HELPER, "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    setup(&mut helper);
    let child = helper.spawn().unwrap();
    let pid = Pid::from_raw(child.id() as i32).unwrap();
    let ended = pidfd_open(pid, PidfdFlags::empty()).unwrap();
    if mp_pipe::wait(&[ended.as_fd()], Some(DEADLINE))
        .unwrap()
        .is_empty()
    {
        let _ = kill_process(pid, Signal::KILL);
        panic!("the helper still runs after {DEADLINE:?}");
    }
    child.wait_with_output().unwrap()
}

#[test]
fn helper_prints_a_partial_line_then_forks() {
    if std::env::var_os(HELPER).is_none() {
        return; // only as the helper of the test below
    }
    prints_a_partial_line_then_forks("unfinished line".into());
    // The same from a process that has never had a second thread (which holds no stdio
    // lock across the fork): a spawned child.
    let mut p = Process::new(prints_a_partial_line_then_forks, "from one thread".into())
        .method(StartMethod::Spawn)
        .start()
        .unwrap();
    join_in_time(&mut p).unwrap();
}

fn prints_a_partial_line_then_forks(text: String) {
    print!("<<{text}");
    Process::new(nothing, ())
        .method(StartMethod::Fork)
        .start()
        .unwrap()
        .join()
        .unwrap();
    println!(">>");
}

#[test]
fn a_forked_child_does_not_print_its_parents_unflushed_output_again() {
    // Python flushes stdio before a fork, or the child writes out its copy of the parent's
    // buffer as it exits, and the parent writes the same bytes again later.
    let out = run_helper("helper_prints_a_partial_line_then_forks", |_| {});
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert_eq!(stdout.matches("<<unfinished line").count(), 1, "{stdout}");
    assert!(stdout.contains("<<unfinished line>>"), "{stdout}");
    assert_eq!(stdout.matches("<<from one thread").count(), 1, "{stdout}");
    assert!(stdout.contains("<<from one thread>>"), "{stdout}");
}

/// Writes `<what> <pid>` as one line straight to stdout: exit handlers run after std's
/// stdout may be gone, and one `write` of a short line is never interleaved.
fn say_from_exit(what: &str) {
    let line = format!("{what} {}\n", std::process::id());
    // SAFETY: `line` is a live buffer of `line.len()` bytes; fd 1 is this process's stdout.
    unsafe {
        libc::write(1, line.as_ptr().cast(), line.len());
    }
}

extern "C" fn helpers_exit_handler() {
    say_from_exit("parent-handler");
}

extern "C" fn childs_own_exit_handler() {
    say_from_exit("own-handler");
}

fn exits_six(_: ()) -> u8 {
    std::process::exit(6)
}

/// Registers an exit handler of its own, starts a fork child that calls `exit`, then calls
/// `exit(4)`: its own handler runs, its parent's do not.
fn registers_forks_and_exits(_: ()) -> u8 {
    // SAFETY: the handler is a plain function valid for the life of the process.
    unsafe {
        libc::atexit(childs_own_exit_handler);
    }
    let grandchild = Process::new(exits_six, ())
        .method(StartMethod::Fork)
        .start()
        .map(|mut g| g.join_timeout(DEADLINE));
    match grandchild {
        Err(Error::Exited { code: 6, .. }) | Ok(Err(Error::Exited { code: 6, .. })) => {
            std::process::exit(4)
        }
        _ => 9,
    }
}

/// Registers the parent's exit handler, then: a fork child that registers its own, forks a
/// grandchild that calls `exit`, and calls `exit(4)`; and a child forked by hand that calls
/// `exit(5)`. Prints the pids.
fn exit_handler_scenario() {
    // SAFETY: the handler is a plain function valid for the life of the process.
    unsafe {
        libc::atexit(helpers_exit_handler);
    }
    let mut child = Process::new(registers_forks_and_exits, ())
        .method(StartMethod::Fork)
        .start()
        .unwrap();
    println!("ours {} {:?}", child.pid(), join_in_time(&mut child));
    // A child forked by other means is left alone: it runs its parent's handlers.
    // SAFETY: the child only calls `exit`, which is what is under test; no other thread of
    // this process holds a lock the child needs (the helper's other thread has ended).
    let pid = unsafe {
        match libc::fork() {
            0 => libc::exit(5),
            pid => pid,
        }
    };
    let mut status = 0;
    // SAFETY: `pid` is this process's own unreaped child; `status` is a live `c_int`.
    unsafe {
        libc::waitpid(pid, &mut status, 0);
    }
    println!("raw {pid} {}", libc::WEXITSTATUS(status));
}

fn exit_handler_scenario_in_a_fresh_process(_: ()) {
    // A spawned child has never had a second thread: its forks take the other path.
    println!("spawned {}", std::process::id());
    exit_handler_scenario();
}

#[test]
fn helper_registers_an_exit_handler_and_forks() {
    if std::env::var_os(HELPER).is_none() {
        return; // only as the helper of the test below
    }
    println!("helper {}", std::process::id());
    // A process that has had a second thread.
    std::thread::spawn(|| ()).join().unwrap();
    exit_handler_scenario();
    let mut spawned = Process::new(exit_handler_scenario_in_a_fresh_process, ())
        .method(StartMethod::Spawn)
        .start()
        .unwrap();
    join_in_time(&mut spawned).unwrap();
}

#[test]
fn exit_in_a_fork_child_runs_its_own_handlers_and_none_of_its_parents() {
    // From a parent that has only ever had one thread, and from one that has had more (the
    // parent arms the guard before the fork in both).
    let out = run_helper("helper_registers_an_exit_handler_and_forks", |_| {});
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    // libtest may print its own words on the line before ours.
    let pid_of = |prefix: &str| -> Vec<String> {
        let mut pids: Vec<String> = stdout
            .lines()
            .filter_map(|l| l.split_once(prefix).map(|(_, rest)| rest))
            .map(|rest| rest.split(' ').next().unwrap_or("").to_string())
            .collect();
        pids.sort();
        pids
    };
    let ours = pid_of("ours ");
    let raw = pid_of("raw ");
    assert_eq!(ours.len(), 2, "{stdout}");
    assert_eq!(raw.len(), 2, "{stdout}");
    assert_eq!(stdout.matches("code: 4 })").count(), 2, "{stdout}");
    for pid in &raw {
        assert!(stdout.contains(&format!("raw {pid} 5")), "{stdout}");
    }
    // The children's own handlers ran in those children alone; the parents' ran in the
    // helper (which exits) and in the children forked by hand, never in ours nor in their
    // children. The spawned child ends without running exit handlers, as every child does.
    assert_eq!(pid_of("own-handler "), ours, "{stdout}");
    let mut expected = raw.clone();
    expected.extend(pid_of("helper "));
    expected.sort();
    assert_eq!(pid_of("parent-handler "), expected, "{stdout}");
    assert_eq!(pid_of("spawned ").len(), 1, "{stdout}");
}

fn descriptor_limits(_: ()) -> (u64, u64) {
    let (soft, hard) = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .zip(rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum)
        .unwrap_or((0, 0));
    (soft, hard)
}

#[test]
fn helper_lowers_its_descriptor_limit_and_starts_children() {
    if std::env::var_os(HELPER).is_none() {
        return; // only as the helper of the test below
    }
    let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum;
    rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(200),
            maximum: hard,
        },
    )
    .unwrap();
    for method in METHODS {
        let mut p = Process::new(descriptor_limits, ())
            .method(method)
            .start()
            .unwrap();
        println!("limits {method:?} {:?}", join_in_time(&mut p).unwrap());
    }
    println!("own {:?}", descriptor_limits(()));
}

#[test]
fn children_get_their_parents_descriptor_limits() {
    // The forkserver raises its own soft limit (it holds three descriptors per child); its
    // children get the parent's limits back.
    let out = run_helper(
        "helper_lowers_its_descriptor_limit_and_starts_children",
        |_| {},
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let own = stdout
        .split_once("own ")
        .and_then(|(_, rest)| rest.lines().next())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(own.starts_with("(200, "), "{stdout}");
    for method in METHODS {
        assert!(
            stdout.contains(&format!("limits {method:?} {own}")),
            "{method:?}: {stdout}"
        );
    }
}

fn identity_or_die(x: u64) -> u64 {
    match x % 5 {
        // killed before it sends anything
        1 => {
            let _ = kill_process(rustix::process::getpid(), Signal::KILL);
            unreachable!()
        }
        2 => panic!("odd one {x}"),
        3 => std::process::exit(3),
        _ => x,
    }
}

fn big(x: u64) -> Vec<u64> {
    vec![x; 100_000] // past the inline limit: through a memfd
}

#[test]
fn children_reuse_result_sockets_without_crossing_results() {
    // Result sockets are pooled (fork and forkserver): whatever one child did (returned,
    // panicked, exited, was killed, sent a big result), the next one's join sees only its
    // own outcome.
    for (round, method) in [StartMethod::Fork, StartMethod::Forkserver]
        .into_iter()
        .cycle()
        .take(6)
        .enumerate()
    {
        let round = round as u64;
        let mut running: Vec<(u64, Process<u64>)> = (0..10)
            .map(|x| {
                let p = Process::new(identity_or_die, x)
                    .method(method)
                    .start()
                    .unwrap();
                (x, p)
            })
            .collect();
        if round % 3 == 1 {
            running.reverse(); // joined in another order than started
        }
        for (x, mut p) in running {
            match (x % 5, join_in_time(&mut p)) {
                (1, Err(Error::Killed { signal: 9, .. })) => {}
                (2, Err(Error::Panicked { message, .. })) => {
                    assert_eq!(message, format!("odd one {x}"))
                }
                (3, Err(Error::Exited { code: 3, .. })) => {}
                (_, Ok(v)) => assert_eq!(v, x),
                (_, other) => panic!("{x}: {other:?}"),
            }
        }
        let mut p = Process::new(big, round).method(method).start().unwrap();
        assert_eq!(join_in_time(&mut p).unwrap(), vec![round; 100_000]);
    }
}

/// Waits for a word or EOF, for at most [`DEADLINE`]: an orphan left by a failing test ends
/// on its own (it holds the test's output pipes).
fn linger(conn: Connection) -> u8 {
    let _ = conn.poll(Some(DEADLINE));
    0
}

fn fork_grandchild_and_hang(conn: Connection) -> u8 {
    // Forked from this child's main thread: the grandchild arms a plain SIGKILL as its
    // parent-death signal.
    let (ours, theirs) = pipe(true).unwrap();
    let g = Process::new(linger, theirs)
        .method(StartMethod::Fork)
        .start()
        .unwrap();
    conn.send(&g.pid()).unwrap();
    std::mem::forget((ours, g));
    let _ = conn.recv::<u8>(); // until killed
    0
}

#[test]
fn a_grandchild_forked_by_a_main_thread_dies_with_its_killed_parent() {
    killing_the_child_takes_the_grandchild(fork_grandchild_and_hang);
}

#[test]
fn helper_starts_children_that_panic() {
    if std::env::var_os(HELPER).is_none() {
        return; // only as the helper of the test below
    }
    for method in METHODS {
        let name = format!("panicker-{method:?}");
        let mut p = Process::new(panics, format!("{method:?} says no"))
            .name(name)
            .method(method)
            .start()
            .unwrap();
        assert!(matches!(join_in_time(&mut p), Err(Error::Panicked { .. })));
    }
}

#[test]
fn a_panicking_child_reports_its_name_and_message_on_stderr() {
    for backtraces in [false, true] {
        panic_reports(backtraces);
    }
}

fn panic_reports(backtraces: bool) {
    let out = run_helper("helper_starts_children_that_panic", |helper| {
        if backtraces {
            helper.env("RUST_BACKTRACE", "1");
        } else {
            helper.env_remove("RUST_BACKTRACE");
        }
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for method in METHODS {
        let report = format!("Process panicker-{method:?}:\n");
        let at = stderr
            .find(&report)
            .unwrap_or_else(|| panic!("no {report:?} in {stderr}"));
        // (std's own hook may start with an empty line)
        let rest = stderr[at + report.len()..].trim_start_matches('\n');
        let line = rest.lines().next().unwrap_or_default();
        assert!(
            line.contains("panicked at") && line.contains("process.rs"),
            "{rest}"
        );
        assert!(
            rest.lines().nth(1) == Some(&format!("{method:?} says no")),
            "{rest}"
        );
        // A forked child never takes std's backtrace lock (a thread of the parent that is
        // not copied may hold it); an exec'd or forkserver child prints std's backtrace.
        let third = rest.lines().nth(2).unwrap_or_default();
        let noted = third.starts_with("note: no backtrace in a child started by fork");
        assert_eq!(noted, backtraces && method == StartMethod::Fork, "{rest}");
        if backtraces && method != StartMethod::Fork {
            assert!(third.starts_with("stack backtrace:"), "{rest}");
        }
    }
}

unsafe extern "C" {
    fn __cxa_atexit(
        func: extern "C" fn(*mut libc::c_void),
        arg: *mut libc::c_void,
        dso: *mut libc::c_void,
    ) -> libc::c_int;
    fn __cxa_finalize(dso: *mut libc::c_void);
}

extern "C" fn churned_handler(_: *mut libc::c_void) {}

/// The key the churning threads register their handlers under.
static CHURN_KEY: u8 = 0;

/// Registers an exit handler and runs it away again, in a loop, until `stop`: each call
/// takes glibc's exit-handler lock.
fn churn_exit_handlers(stop: &std::sync::atomic::AtomicBool) {
    let key = (&raw const CHURN_KEY).cast_mut().cast::<libc::c_void>();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        // SAFETY: the handler is a plain function valid for the life of the process that
        // ignores its argument; `key` is only compared, never dereferenced, and names the
        // handlers registered here alone, which `__cxa_finalize` runs (doing nothing) and
        // removes.
        unsafe {
            __cxa_atexit(churned_handler, std::ptr::null_mut(), key);
            __cxa_finalize(key);
        }
    }
}

#[test]
fn helper_forks_while_other_threads_register_exit_handlers() {
    if std::env::var_os(HELPER).is_none() {
        return; // only as the helper of the test below
    }
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| churn_exit_handlers(&stop));
        }
        let hung = (0..100).find(|_| {
            let mut p = Process::new(nothing, ())
                .method(StartMethod::Fork)
                .start()
                .unwrap();
            match p.join_timeout(Duration::from_secs(10)) {
                Ok(Some(())) => false,
                Ok(None) => {
                    let _ = p.kill();
                    true
                }
                Err(e) => panic!("{e}"),
            }
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(hung, None, "a fork child hung");
    });
}

#[test]
fn fork_children_do_not_hang_while_other_threads_register_exit_handlers() {
    // A fork child must take no lock that another thread of its parent may hold: glibc's
    // exit-handler lock among them (issue 13, point 4).
    let out = run_helper(
        "helper_forks_while_other_threads_register_exit_handlers",
        |_| {},
    );
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What a child sees of Python's parity points: its start method, with the one a child of
/// its own gets by default, its parent's name, and where its stdin leads.
fn parity(_: ()) -> (StartMethod, StartMethod, String, String, String) {
    let mut grandchild = Process::new(|_: ()| mp_spawn::get_start_method(), ())
        .start()
        .unwrap();
    let stdin = std::fs::read_link("/proc/self/fd/0")
        .map_or_else(|e| format!("unreadable: {e}"), |p| p.display().to_string());
    let grandchild_method = join_in_time(&mut grandchild).unwrap();
    let parent = parent_process().expect("a child has a parent");
    (
        mp_spawn::get_start_method(),
        grandchild_method,
        parent.name().to_string(),
        current_process().name,
        stdin,
    )
}

#[test]
fn a_child_sees_its_own_start_method_its_parents_name_and_a_null_stdin() {
    for method in METHODS {
        let mut p = Process::new(parity, ()).method(method).start().unwrap();
        let (own, grandchild, parent, me, stdin) = join_in_time(&mut p).unwrap();
        assert_eq!(own, method, "get_start_method() in a {method:?} child");
        assert_eq!(
            grandchild, method,
            "the default start method in a {method:?} child"
        );
        assert_eq!(parent, "MainProcess", "{method:?}");
        assert_eq!(me, p.name());
        assert_eq!(stdin, "/dev/null", "a {method:?} child's stdin");
    }
}

#[test]
fn all_start_methods_are_listed_default_first() {
    assert_eq!(
        mp_spawn::get_all_start_methods(),
        [
            StartMethod::Forkserver,
            StartMethod::Fork,
            StartMethod::Spawn
        ]
    );
}

/// A result whose `Serialize` fails with serde's own custom error, as most impls do.
#[derive(Debug, serde::Deserialize)]
struct Unencodable;

impl serde::Serialize for Unencodable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("this value stays home"))
    }
}

fn unencodable(_: ()) -> Unencodable {
    Unencodable
}

#[test]
fn a_result_that_fails_to_encode_keeps_the_encoders_message_and_the_type() {
    for method in METHODS {
        let mut p = Process::new(unencodable, ())
            .method(method)
            .start()
            .unwrap();
        let err = join_in_time(&mut p).unwrap_err().to_string();
        assert!(
            err.contains("this value stays home") && err.contains("Unencodable"),
            "{method:?}: {err}"
        );
    }
}
