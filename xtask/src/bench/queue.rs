//! Queue workloads (issue 14): producer processes to one consumer process, and a ping-pong
//! over two queues, against a raw shared-memory ring, CPython's `multiprocessing` queues,
//! ipc-channel, our own `pipe()`, and crossbeam-channel between threads (the in-process
//! ceiling).
//!
//! - `queue_1to1_8b`: one producer puts `u64`s, one consumer gets them (items/s).
//! - `queue_2to1_8b`: two producers put `u64`s, one consumer gets them all (items/s). The raw
//!   reference is two SPSC rings, one per producer, that the consumer takes from in turn,
//!   one item at a time, skipping an empty one: the least an MPSC hand-off costs with no
//!   shared write position to fight over. (A true MPSC ring would need the producers to
//!   reserve slots with an atomic on one cache line, which is part of what is measured in
//!   ours, not of the floor.)
//! - `raw/spsc ring paced`: the same ring, whose consumer pauses 2 µs once it has caught up
//!   with the producer 8 times in a row, as ours does ([`raw::Ring::paced`]). The plain
//!   ring runs in one of two modes, and which one is up to each run (its consumer keeping
//!   up item by item and pulling the line the producer writes, at a fraction of the rate,
//!   or running lines behind it); paced, it runs in the fast one every time. Issue 14's
//!   1→1 target is checked against both.
//! - `raw/spsc ring +1 rmw` (and `raw/2 spsc rings +1 rmw`): the same rings, where each
//!   push and each pop also makes one uncontended atomic read-modify-write on a word of its
//!   own side ([`raw::Ring::with_rmw`]). Any queue that lets more than one process put, or
//!   more than one take, needs at least that per item (a reservation, a claim or a lock),
//!   so this row is the ceiling of every such design here, ours included; the gap between
//!   the two raw rows is what a `lock`ed instruction costs an item on this machine.
//! - `raw/spsc ring biased` (and `raw/2 spsc rings biased`): the same rings, where each push
//!   and each pop also makes what the fast path of an end owned by one process at a time
//!   makes (two stores and a load, ordered by the compiler only, on lines no other party
//!   writes in the steady state; another process taking the end over would run
//!   `membarrier(2)`, which fences every CPU running a registered owner):
//!   the ceiling of a queue with no atomic read-modify-write in its steady state
//!   ([`raw::Ring::biased`]). Two such rings are the ceiling of per-producer lanes.
//! - `queue_64kib`: 64 KiB items, one producer to one consumer (MB/s). The raw ring has
//!   16 slots of 64 KiB; its producer copies a buffer in, its consumer copies it out into
//!   a buffer of its own. Ours and crossbeam take an owned item: their producer makes each
//!   one (a 64 KiB copy of a template, as a producer makes its data), as `cpython/` pickles
//!   one; ipc-channel's `bytes_channel` sends from a borrowed buffer.
//! - `queue_rtt_8b`: the parent puts a `u64` on one queue, the child takes it and puts it on
//!   a second, the parent takes it back (ns per round trip). Peers: a pair of raw rings,
//!   our `mp_pipe::pipe()` (`send`/`recv` of the same `u64`), CPython's `Queue` pair,
//!   ipc-channel, crossbeam between threads.
//!
//! Placement (the machines have 2 cores): the consumer (the bench process) runs on CPU 0;
//! every producer, or the echoing child, on CPU 1, so the two producers of `2to1` share it.
//! CPython's processes are placed the same way. Producers are forked from the bench process
//! (which is single-threaded when it forks: checked) and inherit the queue, ring or channel;
//! they start together once all are running, and the clock runs from that go to the
//! consumer's last item, so process start-up is not measured. Each run moves about
//! [`RUN`]'s worth of items, calibrated on the first (warm-up) run.
//!
//! Every item carries its sequence number (in its first 8 bytes), and the consumer checks
//! their sum: a run that lost or garbled an item fails instead of counting. Every wait has a
//! deadline ([`DEADLINE`]), so a stuck peer fails its run, and a child whose parent dies is
//! killed (`PR_SET_PDEATHSIG`).

pub(super) mod raw;

use std::{
    cell::Cell,
    panic::AssertUnwindSafe,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use crossbeam_channel as crossbeam;
use ipc_channel::ipc;
use mp_codec::{Bytes, Message};
use mp_queue::Queue;

use self::raw::{Ring, Shared};
use super::{
    Bound, Impl, Target, Unit, Workload, cpython_with,
    pipe::{PARENT_CPU, PEER_CPU, pin},
};

/// How long any wait on another process or thread may last before its run fails.
const DEADLINE: Duration = Duration::from_secs(10);
/// About how long one measured run moves items for.
const RUN: Duration = Duration::from_millis(100);
/// The CPU of the consumer (the bench process), and that of every producer or echoer.
const CONSUMER_CPU: usize = PARENT_CPU;
const PRODUCER_CPU: usize = PEER_CPU;
/// The size of the large items.
const LARGE: usize = 64 << 10;
/// Slots of the raw ring, and the bound of crossbeam's channel, for 8-byte items: half of
/// what our queue's default 1 MiB ring holds of them (16 bytes a frame), and far more than
/// a stream keeps in flight.
const SMALL_SLOTS: usize = 1 << 15;
/// Slots of the raw ring, and crossbeam's bound, for 64 KiB items: our default ring's 1 MiB.
const LARGE_SLOTS: usize = 16;

pub fn workloads() -> Vec<Workload> {
    vec![
        Workload {
            name: "queue_1to1_8b",
            unit: Unit::OpsPerSec,
            impls: vec![
                raw_stream("raw/spsc ring", 8, SMALL_SLOTS, 1),
                raw_stream_with("raw/spsc ring paced", 8, SMALL_SLOTS, 1, Ring::paced),
                raw_stream_with("raw/spsc ring +1 rmw", 8, SMALL_SLOTS, 1, Ring::with_rmw),
                raw_stream_with("raw/spsc ring biased", 8, SMALL_SLOTS, 1, Ring::biased),
                ours_stream::<u64>(8, 1),
                cpython("Queue", "queue_1to1_8b"),
                cpython("SimpleQueue", "queue_1to1_8b"),
                ipc_stream(1),
                crossbeam_stream::<u64>(8, SMALL_SLOTS, 1),
            ],
        },
        Workload {
            name: "queue_2to1_8b",
            unit: Unit::OpsPerSec,
            impls: vec![
                raw_stream("raw/2 spsc rings", 8, SMALL_SLOTS, 2),
                raw_stream_with("raw/2 spsc rings +1 rmw", 8, SMALL_SLOTS, 2, Ring::with_rmw),
                raw_stream_with("raw/2 spsc rings biased", 8, SMALL_SLOTS, 2, Ring::biased),
                ours_stream::<u64>(8, 2),
                cpython("Queue", "queue_2to1_8b"),
                cpython("SimpleQueue", "queue_2to1_8b"),
                ipc_stream(2),
                crossbeam_stream::<u64>(8, SMALL_SLOTS, 2),
            ],
        },
        Workload {
            name: "queue_64kib",
            unit: Unit::MegabytesPerSec,
            impls: vec![
                raw_stream("raw/spsc ring", LARGE, LARGE_SLOTS, 1),
                ours_stream::<Bytes>(LARGE, 1),
                cpython("Queue", "queue_64kib"),
                cpython("SimpleQueue", "queue_64kib"),
                ipc_bytes_stream(),
                crossbeam_stream::<Vec<u8>>(LARGE, LARGE_SLOTS, 1),
            ],
        },
        Workload {
            name: "queue_rtt_8b",
            unit: Unit::NsPerOp,
            impls: vec![
                raw_rtt(),
                ours_pipe_rtt("ours/mp-pipe socket", mp_pipe::socket_pipe),
                ours_pipe_rtt("ours/mp-pipe ring", mp_pipe::pipe),
                ours_rtt(),
                cpython("Queue", "queue_rtt_8b"),
                ipc_rtt(),
                crossbeam_rtt(),
            ],
        },
    ]
}

/// Issue 14's targets for the queue, checked after the table.
pub fn targets() -> Vec<Target> {
    let ours = "ours/mp-queue";
    vec![
        Target::new("queue_1to1_8b", ours, "raw/spsc ring", Bound::AtLeast(0.5)),
        // The same, against the raw ring in its fast mode in every run (see `Ring::paced`):
        // the plain ring's ratio depends on which mode it fell into.
        Target::new(
            "queue_1to1_8b",
            ours,
            "raw/spsc ring paced",
            Bound::AtLeast(0.5),
        ),
        Target::new(
            "queue_1to1_8b",
            ours,
            "cpython/Queue",
            Bound::AtLeast(100.0),
        ),
        Target::new(
            "queue_2to1_8b",
            ours,
            "raw/2 spsc rings",
            Bound::AtLeast(0.3),
        ),
        Target::new("queue_64kib", ours, "cpython/Queue", Bound::AtLeast(2.0)),
        Target::new(
            "queue_rtt_8b",
            ours,
            "ours/mp-pipe socket",
            Bound::AtMost(0.2),
        ),
    ]
}

fn cpython(kind: &str, workload: &str) -> Impl {
    cpython_with(kind, "queues.py", &[kind, workload])
}

/// What moves through a stream workload: made from its sequence number (and, for the large
/// items, a template of the item's size), and read back.
trait Item: Send + 'static {
    fn make(seq: u64, template: &[u8]) -> Self;
    fn seq(&self) -> u64;
}

impl Item for u64 {
    fn make(seq: u64, _: &[u8]) -> Self {
        seq
    }
    fn seq(&self) -> u64 {
        *self
    }
}

impl Item for Vec<u8> {
    fn make(seq: u64, template: &[u8]) -> Self {
        let mut item = template.to_vec();
        item[..8].copy_from_slice(&seq.to_ne_bytes());
        item
    }
    fn seq(&self) -> u64 {
        first_word(self)
    }
}

impl Item for Bytes {
    fn make(seq: u64, template: &[u8]) -> Self {
        Bytes(Vec::make(seq, template))
    }
    fn seq(&self) -> u64 {
        self.0.seq()
    }
}

fn first_word(bytes: &[u8]) -> u64 {
    u64::from_ne_bytes(bytes[..8].try_into().expect("an item has 8 bytes at least"))
}

/// Counts a stream's items and checks their sequence numbers: each of `producers` sent
/// `0..n`, so they must sum to `producers * n(n-1)/2`.
struct Tally {
    expected: u64,
    sum: u64,
}

impl Tally {
    fn new(n: u64, producers: usize) -> Tally {
        Tally {
            expected: (n * n.saturating_sub(1) / 2).wrapping_mul(producers as u64),
            sum: 0,
        }
    }

    fn add(&mut self, seq: u64) {
        self.sum = self.sum.wrapping_add(seq);
    }

    fn check(&self) -> Result<(), String> {
        if self.sum == self.expected {
            Ok(())
        } else {
            Err(format!(
                "items lost or garbled: sequence numbers sum to {}, not {}",
                self.sum, self.expected
            ))
        }
    }
}

/// Calibrates `run(n)` on the first call (kept in `n`) so it takes about [`RUN`], then runs
/// it; `run(n)` moves `n` items per producer and says how long that took. Returns the
/// seconds it took per item moved, of the `n * producers`.
pub(super) fn per_item(
    n: &mut u64,
    producers: usize,
    mut run: impl FnMut(u64) -> Result<Duration, String>,
) -> Result<f64, String> {
    if *n == 0 {
        let mut k = 256u64;
        loop {
            let took = run(k)?;
            if took >= RUN / 4 || k >= 1 << 36 {
                *n = (k as f64 * RUN.as_secs_f64() / took.as_secs_f64().max(1e-9)).ceil() as u64;
                break;
            }
            k *= 2;
        }
    }
    let took = run(*n)?;
    Ok(took.as_secs_f64() / (*n * producers as u64) as f64)
}

/// Items per second, or MB/s of `size`-byte items when they are large.
fn rate(size: usize, seconds_per_item: f64) -> f64 {
    if size >= LARGE {
        size as f64 / seconds_per_item / 1e6
    } else {
        1.0 / seconds_per_item
    }
}

/// Waits, yielding the CPU, until `done()`; fails after [`DEADLINE`].
pub(super) fn wait_for(what: &str, mut done: impl FnMut() -> bool) -> Result<(), String> {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > DEADLINE {
            return Err(format!("waited {DEADLINE:?} for {what}"));
        }
        std::thread::yield_now();
    }
    Ok(())
}

/// Forks one child per entry of `cpus`, pinned there, each running `child(index)` once all
/// are running and the parent says go; the parent, on [`CONSUMER_CPU`], runs `parent` from
/// that go. Returns how long `parent` took. Children that outlive a failed `parent` are
/// killed; all are reaped, and a child that failed fails the run.
fn in_processes(
    cpus: &[usize],
    child: impl Fn(usize) -> Result<(), String>,
    parent: impl FnOnce() -> Result<(), String>,
) -> Result<Duration, String> {
    // Only a single-threaded process may run arbitrary code in a fork child.
    let threads = std::fs::read_dir("/proc/self/task")
        .map_err(|e| format!("/proc/self/task: {e}"))?
        .count();
    if threads != 1 {
        return Err(format!("will not fork with {threads} threads running"));
    }
    let control = Shared::new(128)?;
    let (ready, go) = (control.word(0), control.word(64));
    let me = rustix::process::getpid();
    let mut children = Vec::new();
    for (i, &cpu) in cpus.iter().enumerate() {
        // SAFETY: this process has one thread (checked above), so the child inherits no
        // lock some other thread held; it runs only `child` and ends with `_exit`, never
        // returning into the caller's frames or running the parent's destructors.
        match unsafe { libc::fork() } {
            0 => {
                let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    let death = Some(rustix::process::Signal::KILL);
                    rustix::process::set_parent_process_death_signal(death)
                        .map_err(|e| format!("PR_SET_PDEATHSIG: {e}"))?;
                    if rustix::process::getppid() != Some(me) {
                        return Err("the bench process is gone".to_string());
                    }
                    pin(cpu);
                    ready.fetch_add(1, Ordering::SeqCst);
                    wait_for("go", || go.load(Ordering::SeqCst) != 0)?;
                    child(i)
                }));
                let code = match result {
                    Ok(Ok(())) => 0,
                    Ok(Err(why)) => {
                        eprintln!("xtask bench: child {i}: {why}");
                        1
                    }
                    Err(_) => 2, // the panic hook has printed it
                };
                // SAFETY: ends the child without unwinding into the parent's frames.
                unsafe { libc::_exit(code) }
            }
            -1 => {
                let error = format!("fork: {}", std::io::Error::last_os_error());
                let _ = finish(&children, true); // the fork failure is the news
                return Err(error);
            }
            pid => children.push(pid),
        }
    }
    pin(CONSUMER_CPU);
    let timed = wait_for("the children to start", || {
        ready.load(Ordering::SeqCst) == cpus.len() as u64
    })
    .and_then(|()| {
        let start = Instant::now();
        go.store(1, Ordering::SeqCst);
        parent().map(|()| start.elapsed())
    });
    let reaped = finish(&children, timed.is_err());
    let took = timed?;
    reaped.map(|()| took)
}

/// Kills the children first if `kill`, then reaps them all; the first failure, if any.
pub(super) fn finish(children: &[libc::pid_t], kill: bool) -> Result<(), String> {
    let mut result = Ok(());
    for &pid in children {
        if kill {
            // SAFETY: `pid` is our unreaped child, so it names no other process.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let mut status = 0;
        // SAFETY: `pid` is our child; `status` is a valid out-pointer. Every child's waits
        // have deadlines, so this returns.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) && result.is_ok() {
            result = Err(format!("child {pid} failed (wait status {status:#x})"));
        }
    }
    result
}

/// [`in_processes`] with threads: one per entry of `cpus`, pinned there; the calling thread
/// runs `parent` on [`CONSUMER_CPU`].
fn in_threads(
    cpus: &[usize],
    child: impl Fn(usize) -> Result<(), String> + Sync,
    parent: impl FnOnce() -> Result<(), String>,
) -> Result<Duration, String> {
    let (ready, go) = (AtomicU64::new(0), AtomicU64::new(0));
    std::thread::scope(|scope| {
        let threads: Vec<_> = cpus
            .iter()
            .enumerate()
            .map(|(i, &cpu)| {
                let (ready, go, child) = (&ready, &go, &child);
                scope.spawn(move || {
                    pin(cpu);
                    ready.fetch_add(1, Ordering::SeqCst);
                    wait_for("go", || go.load(Ordering::SeqCst) != 0)?;
                    child(i)
                })
            })
            .collect();
        pin(CONSUMER_CPU);
        let timed = wait_for("the threads to start", || {
            ready.load(Ordering::SeqCst) == cpus.len() as u64
        })
        .and_then(|()| {
            let start = Instant::now();
            go.store(1, Ordering::SeqCst);
            parent().map(|()| start.elapsed())
        });
        // A failed parent has dropped its ends (or let the go wait time out): the threads
        // end on their own.
        go.store(1, Ordering::SeqCst);
        let mut joined = Ok(());
        for thread in threads {
            let result = thread
                .join()
                .unwrap_or_else(|_| Err("thread panicked".into()));
            if joined.is_ok() {
                joined = result;
            }
        }
        let took = timed?;
        joined.map(|()| took)
    })
}

/// `producers` forked producers, each with a ring of `slots` slots of `size` bytes, the
/// consumer taking from each in turn.
fn raw_stream(name: &str, size: usize, slots: usize, producers: usize) -> Impl {
    raw_stream_with(name, size, slots, producers, Ring::new)
}

/// [`raw_stream`] on rings made by `make` ([`Ring::with_rmw`], say).
fn raw_stream_with(
    name: &str,
    size: usize,
    slots: usize,
    producers: usize,
    make: fn(usize, usize) -> Result<Ring, String>,
) -> Impl {
    let mut rings: Vec<Ring> = Vec::new();
    let mut n = 0;
    Impl::new(name, move || {
        if rings.is_empty() {
            rings = (0..producers)
                .map(|_| make(size, slots))
                .collect::<Result<_, _>>()?;
        }
        let rings = &rings;
        let seconds = per_item(&mut n, producers, |n| {
            in_processes(
                &vec![PRODUCER_CPU; producers],
                |i| {
                    let mut producer = rings[i].producer();
                    let mut item = vec![7u8; size];
                    for seq in 0..n {
                        item[..8].copy_from_slice(&seq.to_ne_bytes());
                        producer.push(&item)?;
                    }
                    Ok(())
                },
                || {
                    let mut consumers: Vec<_> = rings.iter().map(Ring::consumer).collect();
                    let mut item = vec![0u8; size];
                    let mut tally = Tally::new(n, producers);
                    let mut left = n * producers as u64;
                    let start = Instant::now();
                    let mut idle = 0u32;
                    while left > 0 {
                        for consumer in &mut consumers {
                            if consumer.try_pop(&mut item) {
                                tally.add(first_word(&item));
                                left -= 1;
                                idle = 0;
                            }
                        }
                        idle = idle.wrapping_add(1);
                        if idle.is_multiple_of(1024) && start.elapsed() > DEADLINE {
                            return Err(format!("raw rings: {left} items never came"));
                        }
                    }
                    tally.check()
                },
            )
        })?;
        Ok(rate(size, seconds))
    })
}

/// Our queue (default ring, unbounded): `producers` forked producers `put`, the parent `get`s.
fn ours_stream<T: Item + Message>(size: usize, producers: usize) -> Impl {
    let mut queue: Option<Queue<T>> = None;
    let mut n = 0;
    Impl::new("ours/mp-queue", move || {
        if queue.is_none() {
            queue = Some(Queue::new().map_err(|e| format!("Queue::new: {e}"))?);
        }
        let q = queue.as_ref().unwrap();
        let seconds = per_item(&mut n, producers, |n| {
            in_processes(
                &vec![PRODUCER_CPU; producers],
                |_| {
                    let template = vec![7u8; size];
                    for seq in 0..n {
                        // No deadline needed: a producer dies with the bench process.
                        q.put(T::make(seq, &template))
                            .map_err(|e| format!("put: {}", e.error))?;
                    }
                    Ok(())
                },
                || {
                    let mut tally = Tally::new(n, producers);
                    for _ in 0..n * producers as u64 {
                        let item = q.get_timeout(DEADLINE).map_err(|e| format!("get: {e}"))?;
                        tally.add(item.seq());
                    }
                    tally.check()
                },
            )
        })?;
        Ok(rate(size, seconds))
    })
}

/// ipc-channel's typed channel of `u64`s: each forked producer has a sender, the parent
/// drops its own so that a dead producer ends its `recv`.
fn ipc_stream(producers: usize) -> Impl {
    let mut n = 0;
    Impl::new("ipc-channel/channel", move || {
        let seconds = per_item(&mut n, producers, |n| {
            let (tx, rx) = ipc::channel::<u64>().map_err(|e| format!("ipc channel: {e}"))?;
            let tx = Cell::new(Some(tx));
            in_processes(
                &vec![PRODUCER_CPU; producers],
                |_| {
                    let tx = tx.take().ok_or("no sender")?;
                    for seq in 0..n {
                        tx.send(seq).map_err(|e| format!("ipc send: {e}"))?;
                    }
                    Ok(())
                },
                || {
                    drop(tx.take());
                    let mut tally = Tally::new(n, producers);
                    for _ in 0..n * producers as u64 {
                        tally.add(rx.recv().map_err(|e| format!("ipc recv: {e:?}"))?);
                    }
                    tally.check()
                },
            )
        })?;
        Ok(rate(8, seconds))
    })
}

/// ipc-channel's bytes channel of 64 KiB messages, one forked producer.
fn ipc_bytes_stream() -> Impl {
    let mut n = 0;
    Impl::new("ipc-channel/bytes_channel", move || {
        let seconds = per_item(&mut n, 1, |n| {
            let (tx, rx) = ipc::bytes_channel().map_err(|e| format!("ipc channel: {e}"))?;
            let tx = Cell::new(Some(tx));
            in_processes(
                &[PRODUCER_CPU],
                |_| {
                    let tx = tx.take().ok_or("no sender")?;
                    let mut item = vec![7u8; LARGE];
                    for seq in 0..n {
                        item[..8].copy_from_slice(&seq.to_ne_bytes());
                        tx.send(&item).map_err(|e| format!("ipc send: {e}"))?;
                    }
                    Ok(())
                },
                || {
                    drop(tx.take());
                    let mut tally = Tally::new(n, 1);
                    for _ in 0..n {
                        let item = rx.recv().map_err(|e| format!("ipc recv: {e:?}"))?;
                        tally.add(first_word(&item));
                    }
                    tally.check()
                },
            )
        })?;
        Ok(rate(LARGE, seconds))
    })
}

/// crossbeam's bounded channel between threads, placed as the processes are.
fn crossbeam_stream<T: Item>(size: usize, bound: usize, producers: usize) -> Impl {
    let mut n = 0;
    Impl::new("crossbeam-channel/threads", move || {
        let seconds = per_item(&mut n, producers, |n| {
            let (tx, rx) = crossbeam::bounded::<T>(bound);
            in_threads(
                &vec![PRODUCER_CPU; producers],
                |_| {
                    let template = vec![7u8; size];
                    for seq in 0..n {
                        // Fails at once if the consumer gave up (it drops the receiver).
                        tx.send(T::make(seq, &template))
                            .map_err(|_| "crossbeam send: receiver gone")?;
                    }
                    Ok(())
                },
                move || {
                    let mut tally = Tally::new(n, producers);
                    for _ in 0..n * producers as u64 {
                        let item = rx
                            .recv_timeout(DEADLINE)
                            .map_err(|e| format!("crossbeam recv: {e}"))?;
                        tally.add(item.seq());
                    }
                    tally.check()
                },
            )
        })?;
        Ok(rate(size, seconds))
    })
}

/// [`per_item`] for round trips: `run(n)` makes `n` of them; nanoseconds per round trip.
fn per_round_trip(
    n: &mut u64,
    run: impl FnMut(u64) -> Result<Duration, String>,
) -> Result<f64, String> {
    per_item(n, 1, run).map(|seconds| seconds * 1e9)
}

fn raw_rtt() -> Impl {
    let mut rings: Option<(Ring, Ring)> = None;
    let mut n = 0;
    Impl::new("raw/spsc ring pair", move || {
        if rings.is_none() {
            rings = Some((Ring::new(8, 64)?, Ring::new(8, 64)?));
        }
        let (ping, pong) = rings.as_ref().unwrap();
        per_round_trip(&mut n, |n| {
            in_processes(
                &[PRODUCER_CPU],
                |_| {
                    let (mut rx, mut tx) = (ping.consumer(), pong.producer());
                    let mut item = [0u8; 8];
                    for _ in 0..n {
                        rx.pop(&mut item)?;
                        tx.push(&item)?;
                    }
                    Ok(())
                },
                || {
                    let (mut tx, mut rx) = (ping.producer(), pong.consumer());
                    let mut item = [0u8; 8];
                    for seq in 0..n {
                        tx.push(&seq.to_ne_bytes())?;
                        rx.pop(&mut item)?;
                        check_echo(seq, u64::from_ne_bytes(item))?;
                    }
                    Ok(())
                },
            )
        })
    })
}

fn check_echo(sent: u64, got: u64) -> Result<(), String> {
    if sent == got {
        Ok(())
    } else {
        Err(format!("sent {sent}, {got} came back"))
    }
}

/// Our `socket_pipe(true)` (a socketpair, what `pipe` was when issue 14 set its target) or
/// `pipe(true)` (shared-memory rings), `send`/`recv` of the `u64`; the parent drops the
/// child's end, so that a dead child ends its `recv`.
fn ours_pipe_rtt(
    name: &str,
    make: fn(bool) -> mp_pipe::Result<(mp_pipe::Connection, mp_pipe::Connection)>,
) -> Impl {
    let mut n = 0;
    Impl::new(name, move || {
        per_round_trip(&mut n, |n| {
            let (here, there) = make(true).map_err(|e| format!("pipe: {e}"))?;
            let there = Cell::new(Some(there));
            in_processes(
                &[PRODUCER_CPU],
                |_| {
                    let conn = there.take().ok_or("no connection")?;
                    for _ in 0..n {
                        let item: u64 = conn.recv().map_err(|e| format!("recv: {e}"))?;
                        conn.send(&item).map_err(|e| format!("send: {e}"))?;
                    }
                    Ok(())
                },
                || {
                    drop(there.take());
                    for seq in 0..n {
                        here.send(&seq).map_err(|e| format!("send: {e}"))?;
                        check_echo(seq, here.recv().map_err(|e| format!("recv: {e}"))?)?;
                    }
                    Ok(())
                },
            )
        })
    })
}

fn ours_rtt() -> Impl {
    let mut queues: Option<(Queue<u64>, Queue<u64>)> = None;
    let mut n = 0;
    Impl::new("ours/mp-queue", move || {
        if queues.is_none() {
            let new = || Queue::new().map_err(|e| format!("Queue::new: {e}"));
            queues = Some((new()?, new()?));
        }
        let (ping, pong) = queues.as_ref().unwrap();
        per_round_trip(&mut n, |n| {
            in_processes(
                &[PRODUCER_CPU],
                |_| {
                    for _ in 0..n {
                        let item = ping.get().map_err(|e| format!("get: {e}"))?;
                        pong.put(item).map_err(|e| format!("put: {}", e.error))?;
                    }
                    Ok(())
                },
                || {
                    for seq in 0..n {
                        ping.put(seq).map_err(|e| format!("put: {}", e.error))?;
                        let item = pong.get_timeout(DEADLINE);
                        check_echo(seq, item.map_err(|e| format!("get: {e}"))?)?;
                    }
                    Ok(())
                },
            )
        })
    })
}

fn ipc_rtt() -> Impl {
    let mut n = 0;
    Impl::new("ipc-channel/channel", move || {
        per_round_trip(&mut n, |n| {
            let fail = |e: std::io::Error| format!("ipc channel: {e}");
            let (ping_tx, ping_rx) = ipc::channel::<u64>().map_err(fail)?;
            let (pong_tx, pong_rx) = ipc::channel::<u64>().map_err(fail)?;
            let theirs = Cell::new(Some((ping_rx, pong_tx)));
            in_processes(
                &[PRODUCER_CPU],
                |_| {
                    let (rx, tx) = theirs.take().ok_or("no channel")?;
                    for _ in 0..n {
                        let item = rx.recv().map_err(|e| format!("ipc recv: {e:?}"))?;
                        tx.send(item).map_err(|e| format!("ipc send: {e}"))?;
                    }
                    Ok(())
                },
                || {
                    drop(theirs.take());
                    for seq in 0..n {
                        ping_tx.send(seq).map_err(|e| format!("ipc send: {e}"))?;
                        let item = pong_rx.recv().map_err(|e| format!("ipc recv: {e:?}"))?;
                        check_echo(seq, item)?;
                    }
                    Ok(())
                },
            )
        })
    })
}

fn crossbeam_rtt() -> Impl {
    let mut n = 0;
    Impl::new("crossbeam-channel/threads", move || {
        per_round_trip(&mut n, |n| {
            let (ping_tx, ping_rx) = crossbeam::bounded::<u64>(1);
            let (pong_tx, pong_rx) = crossbeam::bounded::<u64>(1);
            in_threads(
                &[PRODUCER_CPU],
                |_| {
                    for _ in 0..n {
                        let item = ping_rx
                            .recv_timeout(DEADLINE)
                            .map_err(|e| format!("crossbeam recv: {e}"))?;
                        pong_tx
                            .send(item)
                            .map_err(|_| "crossbeam send: receiver gone")?;
                    }
                    Ok(())
                },
                move || {
                    for seq in 0..n {
                        ping_tx
                            .send(seq)
                            .map_err(|_| "crossbeam send: receiver gone")?;
                        let item = pong_rx
                            .recv_timeout(DEADLINE)
                            .map_err(|e| format!("crossbeam recv: {e}"))?;
                        check_echo(seq, item)?;
                    }
                    Ok(())
                },
            )
        })
    })
}
