//! The raw floors of the pool workloads: what the same job costs done with bare syscalls and
//! shared words between forked processes, with nothing a pool needs on top (no encoding, no
//! shared task queue, no results put back in order, no supervision, no repair after a crash).
//!
//! - [`startup`]: two `fork`s and one round trip of a `u64` over a pair of pipes.
//! - [`chunk1`]: two forked workers, each fed one task at a time through its own SPSC ring of
//!   8-byte words in a `MAP_SHARED` memfd and answering through another.
//! - [`map_1m`]: two forked workers take 125,000-item chunks (CPython's default chunk size
//!   for 1,000,000 items and 2 workers) by a shared counter; the parent writes the inputs
//!   into one shared array, the workers write the squares into a second, the parent copies
//!   those into the `Vec` it returns. That is the bytes moved: 8 written, 8 read and 8
//!   written by a worker, 8 read back, per item.
//!
//! The bench process may have threads when these fork (rayon's, procspawn's, a pool's
//! supervisor), so a child does only async-signal-safe work: atomics on the shared mapping,
//! `read`/`write`/`close`, `sched_yield`, `clock_gettime`, `prctl` and `_exit`. It never
//! allocates, and leaves through `_exit` without unwinding into the parent's frames. Every
//! wait has a deadline ([`DEADLINE`]); a child whose parent dies is killed
//! (`PR_SET_PDEATHSIG`) or sees its pipe's end of file.

use std::{
    os::fd::{AsFd, AsRawFd},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use super::{DEADLINE, WORKERS, square};
use crate::bench::queue::{finish, raw::Shared};

/// An exit code of a raw child that waited past [`DEADLINE`].
const TIMED_OUT: i32 = 3;
/// An exit code of a raw child that lost its parent before it could start.
const ORPHANED: i32 = 4;

/// Forks one child per worker, each running `child(index)` once all are running and the
/// parent says go, exiting with the code it returns; the parent runs `parent` from that go.
/// Returns how long `parent` took. Children outliving a failed `parent` are killed; all are
/// reaped, and a child that failed fails the run. `child` must be async-signal-safe (see
/// the module's docs).
pub fn in_forks(
    child: impl Fn(usize) -> i32,
    parent: impl FnOnce() -> Result<(), String>,
) -> Result<Duration, String> {
    let control = Shared::new(128)?;
    let (ready, go) = (control.word(0), control.word(64));
    let me = rustix::process::getpid();
    let mut children = Vec::with_capacity(WORKERS);
    for i in 0..WORKERS {
        // SAFETY: the child does only async-signal-safe work (`child` is, by this function's
        // contract; the rest is atomics, prctl, getppid, sched_yield, clock_gettime), so a
        // lock another thread of ours held at the fork cannot stop it; it ends with `_exit`,
        // never returning into the caller's frames or running the parent's destructors.
        match unsafe { libc::fork() } {
            0 => {
                let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let death = Some(rustix::process::Signal::KILL);
                    if rustix::process::set_parent_process_death_signal(death).is_err()
                        || rustix::process::getppid() != Some(me)
                    {
                        return ORPHANED;
                    }
                    ready.fetch_add(1, Ordering::SeqCst);
                    let start = Instant::now();
                    while go.load(Ordering::SeqCst) == 0 {
                        if start.elapsed() > DEADLINE {
                            return TIMED_OUT;
                        }
                        std::thread::yield_now();
                    }
                    child(i)
                }))
                .unwrap_or(2);
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
    let timed = yield_until("the children to start", || {
        ready.load(Ordering::SeqCst) == WORKERS as u64
    })
    .and_then(|()| {
        let start = Instant::now();
        go.store(1, Ordering::SeqCst);
        parent().map(|()| start.elapsed())
    });
    go.store(1, Ordering::SeqCst); // a parent that never said go still lets them end
    let reaped = finish(&children, timed.is_err());
    let took = timed?;
    reaped.map(|()| took)
}

/// Waits, yielding the CPU, until `done()`; fails after [`DEADLINE`].
fn yield_until(what: &str, mut done: impl FnMut() -> bool) -> Result<(), String> {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > DEADLINE {
            return Err(format!("raw: waited {DEADLINE:?} for {what}"));
        }
        std::thread::yield_now();
    }
    Ok(())
}

/// [`yield_until`] for a child: false when the deadline passed.
fn child_yield_until(start: Instant, mut done: impl FnMut() -> bool) -> bool {
    while !done() {
        if start.elapsed() > DEADLINE {
            return false;
        }
        std::thread::yield_now();
    }
    true
}

/// Two forks and one round trip; returns how long from the first pipe to the answer.
/// The children are told to go (their pipe's end of file) and reaped after the clock stops.
pub fn startup() -> Result<Duration, String> {
    let fail = |what: &'static str| move |e: rustix::io::Errno| format!("{what}: {e}");
    let mut children = Vec::with_capacity(WORKERS);
    let start = Instant::now();
    let (task_rx, task_tx) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(fail("pipe"))?;
    let (result_rx, result_tx) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(fail("pipe"))?;
    for _ in 0..WORKERS {
        // SAFETY: the child makes only async-signal-safe calls (close, read, write, _exit)
        // on descriptors it inherited, allocates nothing, and ends with `_exit`.
        match unsafe { libc::fork() } {
            0 => {
                // SAFETY: our copies of the parent's ends; closing them lets a dead parent
                // end our `read` with end of file. Nothing else in this process uses them.
                unsafe {
                    libc::close(task_tx.as_raw_fd());
                    libc::close(result_rx.as_raw_fd());
                }
                let mut task = [0u8; 8];
                let code = loop {
                    match rustix::io::read(&task_rx, &mut task) {
                        Ok(8) => {
                            let answer = square(u64::from_ne_bytes(task)).to_ne_bytes();
                            if rustix::io::write(&result_tx, &answer) != Ok(8) {
                                break 1;
                            }
                        }
                        Ok(0) => break 0,
                        Err(rustix::io::Errno::INTR) => {}
                        _ => break 1, // writes of 8 bytes to a pipe are atomic: never short
                    }
                };
                // SAFETY: ends the child without unwinding into the parent's frames.
                unsafe { libc::_exit(code) }
            }
            -1 => {
                let error = format!("fork: {}", std::io::Error::last_os_error());
                let _ = finish(&children, true);
                return Err(error);
            }
            pid => children.push(pid),
        }
    }
    let answer = (|| {
        rustix::io::write(&task_tx, &3u64.to_ne_bytes()).map_err(fail("write"))?;
        let mut poll = [rustix::event::PollFd::new(
            &result_rx,
            rustix::event::PollFlags::IN,
        )];
        let deadline = rustix::event::Timespec::try_from(DEADLINE).map_err(|e| e.to_string())?;
        if rustix::event::poll(&mut poll, Some(&deadline)).map_err(fail("poll"))? == 0 {
            return Err(format!("raw: no answer in {DEADLINE:?}"));
        }
        let mut answer = [0u8; 8];
        match rustix::io::read(result_rx.as_fd(), &mut answer).map_err(fail("read"))? {
            8 => Ok(u64::from_ne_bytes(answer)),
            n => Err(format!("raw: read {n} bytes, not 8")),
        }
    })();
    let took = start.elapsed();
    drop(task_tx); // end of file: both children exit
    let reaped = finish(&children, answer.is_err());
    match answer? {
        9 => reaped.map(|()| took),
        other => Err(format!("raw: square(3) came back as {other}")),
    }
}

/// Slots of each ring of [`chunk1`].
const RING_SLOTS: usize = 256;
/// Bytes of one ring of [`chunk1`]: its consumer's counter, its producer's counter (a cache
/// line apart), then the slots.
const RING_BYTES: usize = 128 + RING_SLOTS * 8;
/// What tells a [`chunk1`] worker to stop (tasks are below it).
const STOP: u64 = u64::MAX;

/// The shared memory of [`chunk1`]: per worker a ring of tasks and a ring of results.
pub fn chunk1_region() -> Result<Shared, String> {
    Shared::new(2 * WORKERS * RING_BYTES)
}

/// A single-producer, single-consumer ring of words, at `offset` in `region`.
struct WordRing<'a> {
    /// Words taken (the consumer's alone to write).
    head: &'a AtomicU64,
    /// Words put (the producer's alone to write).
    tail: &'a AtomicU64,
    slots: &'a [AtomicU64],
}

impl<'a> WordRing<'a> {
    fn at(region: &'a Shared, offset: usize) -> Self {
        WordRing {
            head: region.word(offset),
            tail: region.word(offset + 64),
            slots: region.words(offset + 128, RING_SLOTS),
        }
    }

    fn reset(&self) {
        self.head.store(0, Ordering::SeqCst);
        self.tail.store(0, Ordering::SeqCst);
    }
}

/// The producer's side of a [`WordRing`], caching the consumer's counter.
struct Put<'a> {
    ring: WordRing<'a>,
    tail: u64,
    head: u64,
}

impl<'a> Put<'a> {
    fn new(ring: WordRing<'a>) -> Self {
        let (tail, head) = (
            ring.tail.load(Ordering::Relaxed),
            ring.head.load(Ordering::Acquire),
        );
        Put { ring, tail, head }
    }

    fn try_put(&mut self, word: u64) -> bool {
        if self.tail - self.head == RING_SLOTS as u64 {
            self.head = self.ring.head.load(Ordering::Acquire);
            if self.tail - self.head == RING_SLOTS as u64 {
                return false;
            }
        }
        self.ring.slots[self.tail as usize % RING_SLOTS].store(word, Ordering::Relaxed);
        self.tail += 1;
        self.ring.tail.store(self.tail, Ordering::Release);
        true
    }
}

/// The consumer's side of a [`WordRing`], caching the producer's counter.
struct Take<'a> {
    ring: WordRing<'a>,
    head: u64,
    tail: u64,
}

impl<'a> Take<'a> {
    fn new(ring: WordRing<'a>) -> Self {
        let (head, tail) = (
            ring.head.load(Ordering::Relaxed),
            ring.tail.load(Ordering::Acquire),
        );
        Take { ring, head, tail }
    }

    fn try_take(&mut self) -> Option<u64> {
        if self.head == self.tail {
            self.tail = self.ring.tail.load(Ordering::Acquire);
            if self.head == self.tail {
                return None;
            }
        }
        let word = self.ring.slots[self.head as usize % RING_SLOTS].load(Ordering::Relaxed);
        self.head += 1;
        self.ring.head.store(self.head, Ordering::Release);
        Some(word)
    }
}

fn tasks_of(region: &Shared, worker: usize) -> WordRing<'_> {
    WordRing::at(region, 2 * worker * RING_BYTES)
}

fn results_of(region: &Shared, worker: usize) -> WordRing<'_> {
    WordRing::at(region, (2 * worker + 1) * RING_BYTES)
}

/// Squares of `0..n`, one task per word, dealt to the workers in turn; the parent sums the
/// answers as they come and checks the sum against `expected`. Returns the parent's time.
pub fn chunk1(region: &Shared, n: u64, expected: u64) -> Result<Duration, String> {
    for worker in 0..WORKERS {
        tasks_of(region, worker).reset();
        results_of(region, worker).reset();
    }
    in_forks(
        |worker| {
            let (mut tasks, mut results) = (
                Take::new(tasks_of(region, worker)),
                Put::new(results_of(region, worker)),
            );
            let start = Instant::now();
            loop {
                let mut task = None;
                if !child_yield_until(start, || {
                    task = tasks.try_take();
                    task.is_some()
                }) {
                    return TIMED_OUT;
                }
                match task {
                    Some(STOP) => return 0,
                    Some(x) => {
                        let answer = square(x);
                        if !child_yield_until(start, || results.try_put(answer)) {
                            return TIMED_OUT;
                        }
                    }
                    None => unreachable!("waited for a task"),
                }
            }
        },
        || {
            let mut tasks: Vec<Put> = (0..WORKERS)
                .map(|w| Put::new(tasks_of(region, w)))
                .collect();
            let mut results: Vec<Take> = (0..WORKERS)
                .map(|w| Take::new(results_of(region, w)))
                .collect();
            let (mut next, mut got, mut sum) = (0u64, 0u64, 0u64);
            let start = Instant::now();
            while got < n {
                let mut moved = false;
                while next < n && tasks[next as usize % WORKERS].try_put(next) {
                    next += 1;
                    moved = true;
                }
                for results in &mut results {
                    while let Some(answer) = results.try_take() {
                        sum = sum.wrapping_add(answer);
                        got += 1;
                        moved = true;
                    }
                }
                if !moved {
                    if start.elapsed() > DEADLINE {
                        return Err(format!("raw: {} answers never came", n - got));
                    }
                    std::thread::yield_now();
                }
            }
            for tasks in &mut tasks {
                yield_until("room for the stop word", || tasks.try_put(STOP))?;
            }
            check_sum(sum, expected)
        },
    )
}

/// Items of [`map_1m`], and its chunks: CPython's default chunk size for 2 workers,
/// ceil(items / (4 × workers)).
pub const MAP_ITEMS: usize = 1_000_000;
const MAP_CHUNK: usize = MAP_ITEMS.div_ceil(4 * WORKERS);
const MAP_CHUNKS: u64 = MAP_ITEMS.div_ceil(MAP_CHUNK) as u64;
/// Where [`map_1m`]'s counters and arrays lie in its region.
const PUBLISHED: usize = 0;
const CLAIMED: usize = 64;
const DONE: usize = 128;
const INPUTS: usize = 192;
const OUTPUTS: usize = INPUTS + MAP_ITEMS * 8;

/// The shared memory of [`map_1m`].
pub fn map_region() -> Result<Shared, String> {
    Shared::new(OUTPUTS + MAP_ITEMS * 8)
}

/// The squares of `0..1_000_000` into a `Vec`, the parent checking their sum against
/// `expected`. Returns the parent's time, from the first input written to the `Vec` full.
pub fn map_1m(region: &Shared, expected: u64) -> Result<Duration, String> {
    let (published, claimed, done) = (
        region.word(PUBLISHED),
        region.word(CLAIMED),
        region.word(DONE),
    );
    for word in [published, claimed, done] {
        word.store(0, Ordering::SeqCst);
    }
    let inputs = region.words(INPUTS, MAP_ITEMS);
    let outputs = region.words(OUTPUTS, MAP_ITEMS);
    in_forks(
        |_| {
            let start = Instant::now();
            loop {
                let chunk = claimed.fetch_add(1, Ordering::AcqRel);
                if chunk >= MAP_CHUNKS {
                    return 0;
                }
                if !child_yield_until(start, || published.load(Ordering::Acquire) > chunk) {
                    return TIMED_OUT;
                }
                let range =
                    chunk as usize * MAP_CHUNK..((chunk as usize + 1) * MAP_CHUNK).min(MAP_ITEMS);
                for (input, output) in inputs[range.clone()].iter().zip(&outputs[range]) {
                    output.store(square(input.load(Ordering::Relaxed)), Ordering::Relaxed);
                }
                done.fetch_add(1, Ordering::Release);
            }
        },
        || {
            for (chunk, inputs) in inputs.chunks(MAP_CHUNK).enumerate() {
                let first = (chunk * MAP_CHUNK) as u64;
                for (i, input) in (first..).zip(inputs) {
                    input.store(i, Ordering::Relaxed);
                }
                published.store(chunk as u64 + 1, Ordering::Release);
            }
            yield_until("the workers' chunks", || {
                done.load(Ordering::Acquire) == MAP_CHUNKS
            })?;
            let squares: Vec<u64> = outputs.iter().map(|w| w.load(Ordering::Relaxed)).collect();
            check_sum(
                squares.iter().fold(0, |sum, &x| sum.wrapping_add(x)),
                expected,
            )
        },
    )
}

/// Fails unless the answers summed to what the inputs' squares sum to.
pub fn check_sum(sum: u64, expected: u64) -> Result<(), String> {
    if sum == expected {
        Ok(())
    } else {
        Err(format!(
            "answers lost or garbled: they sum to {sum}, not {expected}"
        ))
    }
}
