//! The pool across processes: every call, every way a worker can die, Ctrl-C, timeouts,
//! `maxtasksperchild`, initializers, and what dropping, closing and joining do.
//!
//! Nothing here sleeps to synchronize: a task that must wait blocks on a `Connection` the
//! test holds; every wait has a deadline.

use std::{
    rc::Rc,
    sync::mpsc,
    time::{Duration, Instant},
};

use mp_pipe::{Connection, pipe};
use mp_pool::{Error, ExitStatus, Pool};
use mp_spawn::{Process, StartMethod};

/// Any wait on another process longer than this fails the test.
const DEADLINE: Duration = Duration::from_secs(30);

fn square(x: u64) -> u64 {
    x * x
}

/// Blocks until the test sends a byte on the other end, then returns it.
fn wait_for(conn: Connection) -> u8 {
    conn.recv::<u8>().unwrap_or(0)
}

/// Tells the test it has started (a byte on `started`), then blocks on `hold`.
fn start_and_hold((started, hold): (Connection, Connection)) -> u8 {
    started.send(&1u8).unwrap();
    hold.recv::<u8>().unwrap_or(0)
}

fn boom(x: u64) -> u64 {
    if x == 3 {
        panic!("item {x} is cursed");
    }
    x
}

fn die(how: u8) -> u8 {
    // No core dump: writing one delays the death the pool is to see.
    let no_core = rustix::process::Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    let _ = rustix::process::setrlimit(rustix::process::Resource::Core, no_core);
    match how {
        0 => {
            let _ = rustix::process::kill_process(
                rustix::process::getpid(),
                rustix::process::Signal::KILL,
            );
        }
        1 => std::process::exit(123),
        2 => {
            // SAFETY: raises a signal in this process; no memory is touched.
            unsafe { libc::raise(libc::SIGSEGV) };
        }
        _ => {
            // Out of memory: the address space capped, then an allocation past it
            // (Rust's allocation failure aborts the process).
            let cap = rustix::process::Rlimit {
                current: Some(256 << 20),
                maximum: None,
            };
            let _ = rustix::process::setrlimit(rustix::process::Resource::As, cap);
            let mut hog: Vec<Vec<u8>> = Vec::new();
            loop {
                hog.push(vec![1u8; 64 << 20]);
            }
        }
    }
    how
}

fn pid_of(_: u64) -> u32 {
    std::process::id()
}

fn alive(pid: u32) -> bool {
    // A pid the pool reaped is gone from /proc (or, reused, belongs to another program).
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| !stat.contains(") Z "))
}

#[test]
fn map_squares_in_order_under_every_start_method() {
    for method in [
        StartMethod::Fork,
        StartMethod::Spawn,
        StartMethod::Forkserver,
    ] {
        let pool = Pool::builder().processes(3).method(method).build().unwrap();
        assert_eq!(
            pool.map(square, 1..=5).unwrap(),
            [1, 4, 9, 16, 25],
            "{method:?}"
        );
        let many: Vec<u64> = (0..10_000).collect();
        let out = pool.map(square, many.iter().copied()).unwrap();
        assert!(out.iter().zip(&many).all(|(y, x)| *y == x * x));
        assert!(pool.map(square, Vec::new()).unwrap().is_empty());
    }
}

/// The CPUs the calling thread may run on.
fn my_cpus(_: ()) -> Vec<usize> {
    let set = rustix::thread::sched_getaffinity(None).unwrap();
    (0..rustix::thread::CpuSet::MAX_CPU)
        .filter(|&c| set.is_set(c))
        .collect()
}

#[test]
fn forked_workers_end_up_on_every_cpu_their_parent_may_use() {
    // A forked worker starts away from its parent's CPU, then takes the whole set back
    // before its first task (the pool's `place` module): every task sees the mask the
    // worker would have inherited. (On a machine of one CPU nothing is moved, and this
    // holds all the same.)
    for method in [StartMethod::Fork, StartMethod::Forkserver] {
        let pool = Pool::builder().processes(2).method(method).build().unwrap();
        let mine = my_cpus(());
        for _ in 0..4 {
            assert_eq!(pool.apply(my_cpus, ()).unwrap(), mine, "{method:?}");
        }
        let answers: Vec<Vec<usize>> = pool.map(my_cpus, vec![(); 16]).unwrap();
        assert!(
            answers.iter().all(|a| *a == mine),
            "{method:?}: {answers:?}"
        );
    }
}

#[test]
fn bad_arguments_are_errors_that_say_what_was_wrong() {
    assert!(matches!(Pool::new(0), Err(Error::InvalidArgument(_))));
    assert!(matches!(
        Pool::builder().processes(1).maxtasksperchild(0).build(),
        Err(Error::InvalidArgument(_))
    ));
    let pool = Pool::new(1).unwrap();
    let err = pool.map_chunked(square, 0..3, 0).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid argument: chunksize must be at least 1"
    );
}

#[test]
fn apply_starmap_and_async_results() {
    fn add(a: u64, b: u64) -> u64 {
        a + b
    }
    let pool = Pool::new(2).unwrap();
    assert_eq!(pool.apply(square, 12).unwrap(), 144);
    assert_eq!(pool.starmap(add, [(1, 2), (3, 4)]).unwrap(), [3, 7]);
    let later = pool.map_async_chunked(square, 0..100, 7).unwrap();
    assert!(later.wait_timeout(DEADLINE));
    assert!(later.ready());
    assert_eq!(later.successful(), Some(true));
    assert_eq!(
        later.get().unwrap(),
        (0..100).map(|x| x * x).collect::<Vec<_>>()
    );
    let failing = pool.map_async(boom, 0..10).unwrap();
    assert!(failing.wait_timeout(DEADLINE));
    assert_eq!(failing.successful(), Some(false));
}

#[test]
fn get_timeout_times_out_and_the_result_still_comes() {
    let pool = Pool::new(1).unwrap();
    let (ours, theirs) = pipe(true).unwrap();
    let later = pool.apply_async(wait_for, theirs).unwrap();
    assert!(matches!(
        later.get_timeout(Duration::from_millis(20)),
        Err(Error::Timeout)
    ));
    assert!(!later.ready());
    assert_eq!(later.successful(), None);
    ours.send(&7u8).unwrap();
    assert_eq!(later.get_timeout(DEADLINE).unwrap(), 7);
}

#[test]
fn callbacks_get_the_value_or_the_error() {
    let pool = Pool::new(2).unwrap();
    let (tx, rx) = mpsc::channel();
    let tx2 = tx.clone();
    pool.apply_async(square, 9)
        .unwrap()
        .on_ready(move |r| tx.send(r.copied().map_err(|e| e.to_string())).unwrap());
    pool.apply_async(boom, 3)
        .unwrap()
        .on_ready(move |r| tx2.send(r.copied().map_err(|e| e.to_string())).unwrap());
    let mut got = [
        rx.recv_timeout(DEADLINE).unwrap(),
        rx.recv_timeout(DEADLINE).unwrap(),
    ];
    got.sort();
    assert_eq!(got[0], Ok(81));
    assert_eq!(got[1], Err("task panicked: item 3 is cursed".to_string()));
}

#[test]
fn a_panicking_task_fails_alone_and_the_pool_goes_on() {
    let pool = Pool::new(2).unwrap();
    match pool.map_chunked(boom, 0..10, 2) {
        Err(Error::Panicked { message }) => assert_eq!(message, "item 3 is cursed"),
        other => panic!("{other:?}"),
    }
    let each: Vec<_> = pool.imap(boom, 0..6).unwrap().collect();
    assert_eq!(each.len(), 6);
    for (i, r) in each.iter().enumerate() {
        match (i, r) {
            (3, Err(Error::Panicked { .. })) => {}
            (i, Ok(v)) if i != 3 => assert_eq!(*v, i as u64),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(pool.map(square, 1..=3).unwrap(), [1, 4, 9]);
}

/// Panics on multiples of 3. Its types are plain numbers: its chunks cross as their bytes.
fn no_thirds(x: u32) -> f64 {
    assert!(!x.is_multiple_of(3), "{x} is a multiple of 3");
    f64::from(x) / 2.0
}

/// A `u32` that is not a plain number, so its chunks are encoded item by item.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct Wrapped(u32);

fn no_thirds_wrapped(x: Wrapped) -> f64 {
    no_thirds(x.0)
}

/// Each result as its value's bits or the error's text, for comparing runs.
fn outcomes(results: impl Iterator<Item = Result<f64, Error>>) -> Vec<Result<u64, String>> {
    results
        .map(|r| r.map(f64::to_bits).map_err(|e| e.to_string()))
        .collect()
}

#[test]
fn plain_numbers_succeed_and_fail_exactly_as_encoded_items_do() {
    let pool = Pool::new(2).unwrap();
    let items = 0..100u32;
    for chunksize in [1, 2, 7, 100] {
        let plain = outcomes(
            pool.imap_chunked(no_thirds, items.clone(), chunksize)
                .unwrap(),
        );
        let wrapped = outcomes(
            pool.imap_chunked(no_thirds_wrapped, items.clone().map(Wrapped), chunksize)
                .unwrap(),
        );
        assert_eq!(plain, wrapped, "chunksize {chunksize}");
        assert_eq!(plain.len(), 100);
        for (x, r) in items.clone().zip(&plain) {
            match r {
                Ok(bits) => assert_eq!(f64::from_bits(*bits), f64::from(x) / 2.0),
                Err(e) => {
                    assert_eq!(x % 3, 0, "{e}");
                    assert_eq!(e, &format!("task panicked: {x} is a multiple of 3"));
                }
            }
        }
        // A map fails with the first failed item, either way.
        for result in [
            pool.map_chunked(no_thirds, 1..10u32, chunksize),
            pool.map_chunked(no_thirds_wrapped, (1..10).map(Wrapped), chunksize),
        ] {
            match result {
                Err(Error::Panicked { message }) => assert!(message.ends_with("of 3"), "{message}"),
                other => panic!("{other:?}"),
            }
        }
    }
    let halves = pool.map(no_thirds, [1u32, 2, 4]).unwrap();
    assert_eq!(halves, [0.5, 1.0, 2.0]);
    assert_eq!(pool.apply(no_thirds, 5).unwrap(), 2.5);
}

/// Encodes as the number, but refuses to encode 13.
#[derive(Debug, PartialEq)]
struct Picky(u64);

impl serde::Serialize for Picky {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == 13 {
            return Err(serde::ser::Error::custom("13 is refused"));
        }
        s.serialize_u64(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Picky {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u64::deserialize(d).map(Picky)
    }
}

fn picky(x: u64) -> Picky {
    Picky(x)
}

fn unpick(p: Picky) -> u64 {
    p.0
}

#[test]
fn arguments_and_results_that_cannot_be_encoded_are_errors_naming_the_type() {
    let pool = Pool::new(1).unwrap();
    match pool.map(unpick, [Picky(1), Picky(13)]) {
        Err(Error::Encode { type_name, reason }) => {
            assert!(type_name.ends_with("Picky"), "{type_name}");
            assert!(reason.contains("13 is refused"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // A result the worker cannot encode (CPython hangs here, gh-103061).
    match pool.map(picky, [1, 13, 2]) {
        Err(Error::Encode { type_name, .. }) => assert!(type_name.ends_with("Picky")),
        other => panic!("{other:?}"),
    }
    let each: Vec<_> = pool.imap(picky, [12, 13, 14]).unwrap().collect();
    assert!(matches!(each[0], Ok(Picky(12))));
    assert!(matches!(each[1], Err(Error::Encode { .. })));
    assert!(matches!(each[2], Ok(Picky(14))));
}

#[test]
fn a_worker_that_dies_fails_only_its_task_and_is_replaced() {
    let pool = Pool::new(2).unwrap();
    let deaths = [
        (0u8, ExitStatus::Signal(libc::SIGKILL)),
        (1, ExitStatus::Code(123)),
        (2, ExitStatus::Signal(libc::SIGSEGV)),
        (3, ExitStatus::Signal(libc::SIGABRT)),
    ];
    // Out of memory is made by capping the address space, which AddressSanitizer's shadow
    // memory alone exceeds: under it, that worker dies of ASan's own report instead.
    let deaths = if cfg!(mp_sanitize = "address") {
        &deaths[..3]
    } else {
        &deaths[..]
    };
    for &(how, expected) in deaths {
        let before = pool.pids();
        let others = pool.map_async_chunked(square, 0..200, 1).unwrap();
        let started = Instant::now();
        match pool.apply(die, how) {
            Err(Error::WorkerLost { pid, status }) => {
                assert_eq!(status, expected, "death {how}");
                assert!(before.contains(&pid), "{pid} not among {before:?}");
            }
            other => panic!("death {how}: {other:?}"),
        }
        eprintln!(
            "death {how} ({expected}): error after {:?}",
            started.elapsed()
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "death {how}: too slow"
        );
        // The queued work completes, and the pool takes more.
        assert_eq!(others.get_timeout(DEADLINE).unwrap().len(), 200);
        assert_eq!(pool.apply(square, 5).unwrap(), 25);
        assert_eq!(pool.pids().len(), 2);
        assert_ne!(pool.pids(), before, "death {how}: not replaced");
    }
}

#[test]
fn a_worker_killed_from_outside_mid_task_fails_that_task_within_a_second() {
    let pool = Pool::new(1).unwrap();
    let (started_rx, started_tx) = pipe(true).unwrap();
    let (hold, held) = pipe(true).unwrap();
    let victim = pool
        .apply_async(start_and_hold, (started_tx, held))
        .unwrap();
    let queued = pool.map_async_chunked(square, 0..50, 1).unwrap();
    assert!(started_rx.poll(Some(DEADLINE)).unwrap());
    let pid = pool.pids()[0];
    let killed = Instant::now();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    match victim.get_timeout(DEADLINE) {
        Err(Error::WorkerLost { pid: lost, status }) => {
            assert_eq!((lost, status), (pid, ExitStatus::Signal(libc::SIGKILL)));
        }
        other => panic!("{other:?}"),
    }
    let after = killed.elapsed();
    eprintln!("killed worker: its task failed {after:?} after the kill");
    assert!(after < Duration::from_secs(1));
    drop(hold);
    assert_eq!(queued.get_timeout(DEADLINE).unwrap().len(), 50);
    assert!(!alive(pid));
}

#[test]
fn a_task_its_dead_worker_never_took_goes_to_another_and_succeeds() {
    let pool = Pool::new(1).unwrap();
    let pid = rustix::process::Pid::from_raw(pool.pids()[0] as i32).unwrap();
    // Stopped, the worker cannot take the task sent to it; killed, it never will.
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
    let result = pool.apply_async(square, 7).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    assert_eq!(result.get_timeout(DEADLINE).unwrap(), 49);
    assert_ne!(
        pool.pids(),
        [pid.as_raw_nonzero().get() as u32],
        "not replaced"
    );
}

fn die_holding_the_lock(_: u8) -> u8 {
    mp_pool::__testing::die_holding_the_reply_lock();
    0
}

#[test]
fn a_worker_killed_holding_the_reply_queues_lock_wedges_nobody() {
    let pool = Pool::new(2).unwrap();
    for _ in 0..3 {
        let others = pool.map_async_chunked(square, 0..2000, 1).unwrap();
        match pool.apply(die_holding_the_lock, 0) {
            Err(Error::WorkerLost { status, .. }) => {
                assert_eq!(status, ExitStatus::Signal(libc::SIGKILL));
            }
            other => panic!("{other:?}"),
        }
        let squares = others.get_timeout(DEADLINE).unwrap();
        assert_eq!(
            squares.iter().sum::<u64>(),
            (0..2000u64).map(|x| x * x).sum()
        );
    }
}

#[test]
fn workers_killed_at_random_moments_lose_one_task_each_and_nothing_hangs() {
    let pool = Pool::new(2).unwrap();
    let n = 20_000u64;
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let pids = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let results = pool.imap_unordered(square, 0..n).unwrap();
    // A killer thread: kills a worker each time it is told to, from the pids it is given.
    let (kill_tx, kill_rx) = mpsc::channel::<u32>();
    let killer = std::thread::spawn(move || {
        let mut kills = 0u64;
        while let Ok(pid) = kill_rx.recv() {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32)
                && rustix::process::kill_process(pid, rustix::process::Signal::KILL).is_ok()
            {
                kills += 1;
            }
        }
        drop(stop_rx);
        kills
    });
    let (mut ok, mut lost, mut sum) = (0u64, 0u64, 0u64);
    let deadline = Instant::now() + DEADLINE;
    for (i, r) in results.enumerate() {
        assert!(Instant::now() < deadline, "took too long");
        match r {
            Ok(v) => {
                ok += 1;
                sum += v;
            }
            Err(Error::WorkerLost { .. }) => lost += 1,
            Err(other) => panic!("{other}"),
        }
        if i % 1000 == 500 {
            let current = pool.pids();
            pids.lock().unwrap().extend(current.iter().copied());
            kill_tx.send(current[i / 1000 % current.len()]).unwrap();
        }
    }
    drop(kill_tx);
    let kills = killer.join().unwrap();
    drop(stop_tx);
    eprintln!("random kills: {kills} workers killed, {lost} of {n} tasks lost, {ok} done");
    assert_eq!(ok + lost, n);
    assert!(kills >= 10, "{kills} kills");
    assert!(lost <= kills, "{lost} tasks lost to {kills} kills");
    // Every square that came back was right: the lost ones are missing from the sum.
    assert!(sum <= (0..n).map(|x| x * x).sum::<u64>());
    assert_eq!(pool.map(square, 0..10).unwrap().len(), 10);
}

fn forever(_: u8) -> u8 {
    // Spins (rather than sleeps) until killed: the timeout must kill it.
    let mut x = 0u64;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

#[test]
fn a_task_past_its_timeout_is_killed_and_fails_and_the_pool_goes_on() {
    let pool = Pool::builder()
        .processes(2)
        .task_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let before = pool.pids();
    match pool.apply(forever, 0) {
        Err(Error::TaskTimeout { pid, after }) => {
            assert!(before.contains(&pid));
            assert_eq!(after, Duration::from_millis(300));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(pool.map(square, 0..100).unwrap().len(), 100);
}

/// A task sent to a pool whose watcher sleeps with no deadline (no task was in flight):
/// the send wakes it, so the task's time is counted and the timeout still kills it.
#[test]
fn a_timeout_is_kept_for_a_task_sent_while_every_worker_was_idle() {
    let pool = Pool::builder()
        .processes(2)
        .task_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    assert_eq!(pool.map(square, 0..10).unwrap().len(), 10);
    let start = Instant::now();
    while !mp_pool::__testing::watcher_untimed(&pool) {
        assert!(
            start.elapsed() < DEADLINE,
            "the watcher never went to sleep untimed"
        );
        std::thread::yield_now();
    }
    let outcome = pool.apply_async(forever, 0).unwrap();
    assert!(
        matches!(
            outcome.get_timeout(DEADLINE),
            Err(Error::TaskTimeout { .. })
        ),
        "the task was not timed out"
    );
}

/// A timeout past the clock's range is no timeout (it must not overflow the watcher).
#[test]
fn an_endless_task_timeout_times_nothing_out() {
    let pool = Pool::builder()
        .processes(1)
        .task_timeout(Duration::MAX)
        .build()
        .unwrap();
    assert_eq!(pool.apply(square, 7).unwrap(), 49);
    // The watcher still sees deaths.
    assert!(matches!(pool.apply(die, 0), Err(Error::WorkerLost { .. })));
    assert_eq!(pool.apply(square, 8).unwrap(), 64);
}

#[test]
fn maxtasksperchild_replaces_workers_as_they_reach_it() {
    let pool = Pool::builder()
        .processes(1)
        .maxtasksperchild(2)
        .build()
        .unwrap();
    let pids = pool.map_chunked(pid_of, 0..10, 1).unwrap();
    let mut distinct = pids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 5, "{pids:?}");
}

static GREETING: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn set_greeting(greeting: String) {
    GREETING.set(greeting).unwrap();
}

fn greet(name: String) -> String {
    format!("{}, {name}", GREETING.get().map_or("?", |g| g))
}

fn broken_init(_: ()) {
    panic!("no config");
}

#[test]
fn the_initializer_runs_in_every_worker_and_a_failing_one_stops_the_pool() {
    let pool = Pool::builder()
        .processes(2)
        .initializer(set_greeting, "hello".to_string())
        .build()
        .unwrap();
    assert_eq!(
        pool.map(greet, ["a".to_string(), "b".to_string()]).unwrap(),
        ["hello, a", "hello, b"]
    );
    let pool = Pool::builder()
        .processes(2)
        .initializer(broken_init, ())
        .build()
        .unwrap();
    match pool.map(square, 0..4) {
        Err(Error::Initializer { message, .. }) => {
            assert!(message.contains("no config"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        pool.apply(square, 1),
        Err(Error::Initializer { .. })
    ));
}

fn exiting_init(_: ()) {
    std::process::exit(3);
}

/// An initializer that ends its worker without a panic (an exit here; an abort or a signal
/// alike) stops the pool too, rather than have it started again and again.
#[test]
fn an_initializer_that_exits_stops_the_pool() {
    let pool = Pool::builder()
        .processes(2)
        .initializer(exiting_init, ())
        .build()
        .unwrap();
    match pool.map(square, 0..4) {
        Err(Error::Initializer { message, .. }) => {
            assert!(message.contains("ended the worker"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

/// A pool whose one worker's initializer exits, then closed and joined: `join` returns
/// (the pool ended inside the reply handling, which must tell the threads to leave).
#[test]
fn join_returns_after_an_initializer_that_exits() {
    for first in ["apply", "apply_async"] {
        let pool = Pool::builder()
            .processes(1)
            .initializer(exiting_init, ())
            .build()
            .unwrap();
        let outcome = within_deadline(move || {
            let outcome = match first {
                "apply" => pool.apply(square, 2),
                _ => pool.apply_async(square, 2).and_then(|r| r.get()),
            };
            pool.close();
            (outcome, pool.join())
        });
        assert!(
            matches!(outcome.0, Err(Error::Initializer { .. })),
            "{first}: {:?}",
            outcome.0
        );
        assert!(outcome.1.is_ok(), "{first}: {:?}", outcome.1);
    }
}

/// A pool of several workers whose initializer fails, closed and joined: `join` hears that
/// the pool ended (every worker's failure arrives in one batch of replies).
#[test]
fn join_returns_after_a_failing_initializer() {
    for _ in 0..5 {
        let pool = Pool::builder()
            .processes(3)
            .initializer(broken_init, ())
            .build()
            .unwrap();
        pool.close();
        let (done, joined) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let _ = pool.join();
            done.send(()).unwrap();
        });
        assert_eq!(joined.recv_timeout(DEADLINE), Ok(()), "join hung");
        waiter.join().unwrap();
    }
}

#[test]
fn imap_takes_its_input_lazily_so_an_endless_one_works() {
    let pool = Pool::new(2).unwrap();
    let pulled = Rc::new(std::cell::Cell::new(0u64));
    let counter = pulled.clone();
    let input = (0u64..).inspect(move |_| counter.set(counter.get() + 1));
    let first: Vec<u64> = pool
        .imap(square, input)
        .unwrap()
        .take(100)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(first, (0..100).map(|x| x * x).collect::<Vec<_>>());
    // At most the bound in flight beyond what was consumed.
    assert!(pulled.get() < 100 + 2 * 33 + 1, "{} pulled", pulled.get());
    let mut all: Vec<u64> = pool
        .imap_unordered_chunked(square, 0..1000, 7)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    all.sort_unstable();
    assert_eq!(all, (0..1000).map(|x| x * x).collect::<Vec<_>>());
}

#[test]
fn close_then_join_drains_and_new_work_is_refused() {
    let pool = Pool::new(2).unwrap();
    assert!(matches!(pool.join(), Err(Error::Running)));
    let later = pool.map_async_chunked(square, 0..500, 3).unwrap();
    let pids = pool.pids();
    pool.close();
    assert!(matches!(pool.apply(square, 1), Err(Error::Closed)));
    pool.join().unwrap();
    assert_eq!(later.get().unwrap().len(), 500);
    assert!(pids.iter().all(|&p| !alive(p)), "workers left: {pids:?}");
}

/// An `imap` takes its input as it is consumed. Consumed only after `close` and `join`
/// (which stopped the workers), the rest of it fails with `Closed` instead of waiting for
/// ever.
#[test]
fn an_imap_consumed_after_close_and_join_fails_instead_of_hanging() {
    let pool = Pool::new(2).unwrap();
    let results = pool.imap(square, 0..100u64).unwrap();
    pool.close();
    pool.join().unwrap();
    let (done, got) = std::sync::mpsc::channel();
    let consumer = std::thread::spawn(move || {
        let outcome: Result<Vec<u64>, Error> = results.collect();
        done.send(outcome.map(|v| v.len())).unwrap();
    });
    match got.recv_timeout(DEADLINE) {
        Ok(Err(Error::Closed)) => {}
        other => panic!("{other:?}"),
    }
    consumer.join().unwrap();
}

#[test]
fn dropping_the_pool_terminates_it_and_outstanding_results_fail_fast() {
    let pool = Pool::new(2).unwrap();
    let (_hold, held) = pipe(true).unwrap();
    let blocked = pool.apply_async(wait_for, held).unwrap();
    let pids = pool.pids();
    let started = Instant::now();
    drop(pool);
    assert!(matches!(
        blocked.get_timeout(DEADLINE),
        Err(Error::Terminated)
    ));
    assert!(started.elapsed() < DEADLINE);
    assert!(pids.iter().all(|&p| !alive(p)), "workers left: {pids:?}");
}

fn run_a_child(x: u64) -> u64 {
    let mut child = Process::new(square, x)
        .method(StartMethod::Fork)
        .start()
        .unwrap();
    child.join().unwrap()
}

#[test]
fn workers_may_start_processes_of_their_own() {
    let pool = Pool::new(2).unwrap();
    assert_eq!(pool.map(run_a_child, [2, 3]).unwrap(), [4, 9]);
}

/// Once every worker runs a task (so each has set itself up), the first sends SIGINT to
/// the whole process group, as a terminal's Ctrl-C does.
fn ctrl_c((everyone, _): (mp_sync::Barrier, u64)) -> u64 {
    if matches!(everyone.wait_with(Some(DEADLINE), None), Ok(0)) {
        let _ = rustix::process::kill_current_process_group(rustix::process::Signal::INT);
    }
    // The pool kills us; until then, hold the task.
    forever(0) as u64
}

/// In a process group of its own: a pool whose `map` gets Ctrl-C. Returns whether the map
/// said so, how long it took after the signal, and which workers are still alive.
fn interrupted_map(method: StartMethod) -> (bool, u64, Vec<u32>) {
    rustix::process::setpgid(None, None).unwrap();
    let pool = Pool::builder().processes(2).method(method).build().unwrap();
    let pids = pool.pids();
    let started = Instant::now();
    let everyone = mp_sync::Barrier::new(2).unwrap();
    let outcome = pool.map_chunked(ctrl_c, (0..4).map(|i| (everyone.clone(), i)), 1);
    let took = started.elapsed().as_millis() as u64;
    let interrupted = matches!(outcome, Err(Error::Interrupted));
    let left = pids.into_iter().filter(|&p| alive(p)).collect();
    (interrupted, took, left)
}

#[test]
fn ctrl_c_during_map_returns_interrupted_with_no_worker_left() {
    for method in [StartMethod::Fork, StartMethod::Forkserver] {
        let mut child = Process::new(interrupted_map, method)
            .method(StartMethod::Fork)
            .start()
            .unwrap();
        let (interrupted, took, left) = child.join_timeout(DEADLINE).unwrap().expect("finished");
        eprintln!("ctrl-c ({method:?}): map returned after {took} ms");
        assert!(interrupted, "{method:?}");
        assert!(left.is_empty(), "{method:?}: workers left {left:?}");
    }
}

fn read_one(conn: Connection) -> (u8, Connection) {
    let byte = conn.recv::<u8>().unwrap_or(0);
    (byte, conn)
}

#[test]
fn items_that_own_descriptors_cross_both_ways_in_one_chunk() {
    let pool = Pool::new(1).unwrap();
    let (ours, theirs): (Vec<_>, Vec<_>) = (0..4).map(|_| pipe(true).unwrap()).unzip();
    for (i, conn) in ours.iter().enumerate() {
        conn.send(&(i as u8 + 10)).unwrap();
    }
    let back = pool.map_chunked(read_one, theirs, 4).unwrap();
    for (i, (byte, conn)) in back.into_iter().enumerate() {
        assert_eq!(byte, i as u8 + 10);
        // The connection that came back is the same pipe.
        conn.send(&(i as u8)).unwrap();
        assert_eq!(ours[i].recv::<u8>().unwrap(), i as u8);
    }
}

#[test]
fn an_imap_dropped_early_leaves_the_pool_free_for_the_next_job() {
    let pool = Pool::new(2).unwrap();
    let pulled = Rc::new(std::cell::Cell::new(0u64));
    let counter = pulled.clone();
    let endless = (0u64..).inspect(move |_| counter.set(counter.get() + 1));
    let firsts: Vec<u64> = pool
        .imap_unordered(square, endless)
        .unwrap()
        .take(5)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(firsts.len(), 5);
    // Taken: what was consumed, plus at most the bound in flight.
    assert!(pulled.get() <= 5 + 2 * 33, "{} pulled", pulled.get());
    // The chunks it left queued are dropped with it: the next job, and the drain after it,
    // do not wait for them.
    assert_eq!(pool.map(square, 0..1000).unwrap().len(), 1000);
    pool.close();
    pool.join().unwrap();
}

#[test]
fn a_callback_that_panics_does_not_stop_the_pool() {
    let pool = Pool::new(2).unwrap();
    // Not ready when the callback is set, so the pool's thread runs it.
    let (release, held) = pipe(true).unwrap();
    let first = pool.apply_async(wait_for, held).unwrap();
    first.on_ready(|_| panic!("a careless callback"));
    release.send(&1u8).unwrap();
    assert_eq!(first.get_timeout(DEADLINE).unwrap(), 1);
    // Results after it still arrive, callbacks included.
    let (tx, rx) = mpsc::channel();
    pool.apply_async(square, 3)
        .unwrap()
        .on_ready(move |r| tx.send(r.copied().ok()).unwrap());
    assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), Some(9));
    assert_eq!(pool.map(square, 0..100).unwrap().len(), 100);
}

/// Runs `f` on a thread of its own and returns what it returns; fails (rather than hang) if
/// it has not returned within [`DEADLINE`].
fn within_deadline<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(f());
    });
    finished
        .recv_timeout(DEADLINE)
        .expect("still waiting at the deadline")
}

#[test]
fn a_first_blocking_call_takes_its_own_replies_and_the_next_call_starts_the_threads() {
    within_deadline(|| {
        let pool = Pool::new(2).unwrap();
        // Long enough for any machine: the first call is answered inside it.
        mp_pool::__testing::set_take_slice(&pool, DEADLINE);
        // A map of several chunks: its replies are taken between chunks, then after.
        assert_eq!(pool.map_chunked(square, 0..100, 7).unwrap()[99], 99 * 99);
        assert!(
            !mp_pool::__testing::threads_started(&pool),
            "the first map waited through the reply thread"
        );
        assert_eq!(pool.apply(square, 4).unwrap(), 16);
        assert!(
            mp_pool::__testing::threads_started(&pool),
            "the second call left the workers unwatched"
        );
    });
}

#[test]
fn a_result_nobody_waits_for_starts_the_threads_after_an_apply_that_did_not() {
    let pool = Pool::builder()
        .processes(2)
        .method(StartMethod::Fork)
        .build()
        .unwrap();
    let pool = within_deadline(move || {
        assert_eq!(pool.apply(square, 3).unwrap(), 9);
        pool
    });
    // A result nobody waits for needs the reply thread: its callback still runs.
    let (tx, rx) = mpsc::channel();
    pool.apply_async(square, 5)
        .unwrap()
        .on_ready(move |r| tx.send(*r.unwrap()).unwrap());
    assert!(mp_pool::__testing::threads_started(&pool));
    assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), 25);
    within_deadline(move || assert_eq!(pool.apply(square, 6).unwrap(), 36));
}

#[test]
fn a_first_apply_whose_worker_dies_fails_within_a_second_and_the_pool_goes_on() {
    within_deadline(|| {
        for how in 0..3u8 {
            let pool = Pool::new(1).unwrap();
            let started = Instant::now();
            match pool.apply(die, how) {
                Err(Error::WorkerLost { .. }) => {}
                other => panic!("death {how}: {other:?}"),
            }
            eprintln!(
                "death {how} on a first apply: error after {:?}",
                started.elapsed()
            );
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "death {how}: {:?}",
                started.elapsed()
            );
            assert_eq!(pool.apply(square, 5).unwrap(), 25, "death {how}");
        }
    });
}

#[test]
fn first_applies_and_maps_from_many_threads_all_get_their_answers() {
    within_deadline(|| {
        let pool = Pool::new(2).unwrap();
        std::thread::scope(|s| {
            let answers: Vec<_> = (0..8u64)
                .map(|i| {
                    let pool = &pool;
                    s.spawn(move || {
                        let mut got: Vec<u64> = (0..10u64)
                            .map(|j| pool.apply(square, i * 20 + j).unwrap())
                            .collect();
                        got.extend(
                            pool.map_chunked(square, i * 20 + 10..i * 20 + 20, 1)
                                .unwrap(),
                        );
                        got
                    })
                })
                .collect();
            for (i, answer) in answers.into_iter().enumerate() {
                let expected: Vec<u64> = (0..20u64).map(|j| (i as u64 * 20 + j).pow(2)).collect();
                assert_eq!(answer.join().unwrap(), expected);
            }
        });
    });
}

#[test]
fn a_callback_that_terminates_the_pool_from_a_first_apply_taking_replies_deadlocks_nobody() {
    let (terminated, outcome) = within_deadline(|| {
        let pool = std::sync::Arc::new(Pool::new(2).unwrap());
        mp_pool::__testing::set_take_slice(&pool, DEADLINE);
        let (hold, held) = pipe(true).unwrap();
        let (started_rx, started_tx) = pipe(true).unwrap();
        let first = {
            let pool = pool.clone();
            std::thread::spawn(move || pool.apply(start_and_hold, (started_tx, held)))
        };
        // The first apply's task runs: its caller takes the replies (usually by now).
        assert!(started_rx.poll(Some(DEADLINE)).unwrap());
        let (tx, rx) = mpsc::channel();
        let p = pool.clone();
        pool.apply_async(square, 2).unwrap().on_ready(move |_| {
            p.terminate();
            let _ = tx.send(());
        });
        let terminated = rx.recv_timeout(DEADLINE).is_ok();
        let outcome = first.join().unwrap();
        drop(hold);
        (terminated, outcome)
    });
    assert!(terminated, "the callback's terminate did not return");
    assert!(matches!(outcome, Err(Error::Terminated)), "{outcome:?}");
}

#[test]
fn terminate_from_another_thread_ends_a_first_apply_at_once() {
    within_deadline(|| {
        let pool = Pool::new(1).unwrap();
        let (hold, held) = pipe(true).unwrap();
        let (started_rx, started_tx) = pipe(true).unwrap();
        std::thread::scope(|s| {
            let waiter = s.spawn(|| pool.apply(start_and_hold, (started_tx, held)));
            assert!(started_rx.poll(Some(DEADLINE)).unwrap());
            let terminated = Instant::now();
            pool.terminate();
            assert!(matches!(waiter.join().unwrap(), Err(Error::Terminated)));
            assert!(terminated.elapsed() < Duration::from_secs(1));
        });
        drop(hold);
    });
}

fn ctrl_c_alone(_: u8) -> u8 {
    let _ = rustix::process::kill_current_process_group(rustix::process::Signal::INT);
    forever(0)
}

/// In a process group of its own: a fresh pool's first `apply` gets Ctrl-C. Whether it said
/// so, and which workers are still alive.
fn interrupted_apply(_: ()) -> (bool, Vec<u32>) {
    rustix::process::setpgid(None, None).unwrap();
    let pool = Pool::builder()
        .processes(1)
        .method(StartMethod::Fork)
        .build()
        .unwrap();
    let pids = pool.pids();
    let interrupted = matches!(pool.apply(ctrl_c_alone, 0), Err(Error::Interrupted));
    let left = pids.into_iter().filter(|&p| alive(p)).collect();
    (interrupted, left)
}

#[test]
fn ctrl_c_during_a_first_apply_returns_interrupted_with_no_worker_left() {
    let mut child = Process::new(interrupted_apply, ())
        .method(StartMethod::Fork)
        .start()
        .unwrap();
    let (interrupted, left) = child.join_timeout(DEADLINE).unwrap().expect("finished");
    assert!(interrupted);
    assert!(left.is_empty(), "workers left {left:?}");
}

#[test]
fn a_dead_worker_is_replaced_under_every_start_method() {
    for method in [
        StartMethod::Fork,
        StartMethod::Spawn,
        StartMethod::Forkserver,
    ] {
        let pool = Pool::builder().processes(2).method(method).build().unwrap();
        let before = pool.pids();
        match pool.apply(die, 0) {
            Err(Error::WorkerLost { status, .. }) => {
                assert_eq!(status, ExitStatus::Signal(libc::SIGKILL), "{method:?}");
            }
            other => panic!("{method:?}: {other:?}"),
        }
        assert_eq!(pool.map(square, 0..50).unwrap().len(), 50, "{method:?}");
        assert_eq!(pool.pids().len(), 2, "{method:?}");
        assert_ne!(pool.pids(), before, "{method:?}: not replaced");
    }
}
