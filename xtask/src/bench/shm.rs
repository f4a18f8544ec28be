//! Shared memory and locks across processes: ours against the raw libc primitives doing the
//! same job, and CPython's `multiprocessing` with the same work.
//!
//! - `value_lock_inc_2proc`: two forked processes (pinned to CPUs 0 and 1) each add 1 to a
//!   shared counter 200,000 times under its lock; ops/s. Raw: a process-shared
//!   `pthread_mutex_t` next to a `u64` in an anonymous shared mapping. Both children start
//!   on a shared flag, so they really contend; the clock runs from the flag to both reaped.
//! - `lock_handoff_rtt`: two processes pass the turn back and forth through two locks used as
//!   binary semaphores (a Python `Lock` may be released by another process); ns per round
//!   trip. Raw: process-shared POSIX semaphores (`sem_post`/`sem_wait`).
//! - `array_fill_1m`, `array_sum_1m`: a child writes `i` into each of 1M `i64`s, or sums
//!   them, timing itself; ns per pass. Raw: the same loop over a shared anonymous mapping.
//! - `shm_create_64mib`: create and drop a 64 MiB shared block.

use std::{
    hint::black_box,
    mem::size_of,
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

use mp_shm::{Array, SharedMemory, Value};
use mp_sync::Lock;

use super::{Impl, Unit, Workload, cpython, pipe::pin, time_batched};

const INCREMENTS: u64 = 200_000;
const ELEMENTS: usize = 1 << 20;

pub fn workloads() -> Vec<Workload> {
    vec![
        Workload {
            name: "value_lock_inc_2proc",
            unit: Unit::OpsPerSec,
            impls: vec![
                Impl::new("raw/pthread mutex pshared", raw_inc),
                Impl::new("ours/Value lock()", ours_inc),
                cpython("Value.get_lock()", "shm.py", "value_lock_inc_2proc"),
            ],
        },
        Workload {
            name: "lock_handoff_rtt",
            unit: Unit::NsPerOp,
            impls: vec![
                raw_handoff(),
                ours_handoff(),
                cpython("Lock pair", "shm.py", "lock_handoff_rtt"),
            ],
        },
        Workload {
            name: "array_fill_1m",
            unit: Unit::NsPerOp,
            impls: vec![
                raw_array("raw/loop over mmap", fill),
                ours_array("ours/Array lock()", fill),
                cpython("Array get_obj()[:]", "shm.py", "array_fill_1m"),
            ],
        },
        Workload {
            name: "array_sum_1m",
            unit: Unit::NsPerOp,
            impls: vec![
                raw_array("raw/loop over mmap", sum),
                ours_array("ours/Array lock()", sum),
                cpython("sum(Array get_obj())", "shm.py", "array_sum_1m"),
            ],
        },
        Workload {
            name: "shm_create_64mib",
            unit: Unit::NsPerOp,
            impls: vec![
                raw_create(),
                ours_create_array(),
                ours_create_named(),
                cpython("SharedMemory", "shm.py", "shm_create_64mib"),
            ],
        },
    ]
}

/// An anonymous shared mapping of `len` bytes, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> Mapping {
        // SAFETY: a fresh anonymous mapping overlaps nothing; unmapped once, on drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "mmap failed");
        Mapping {
            ptr: NonNull::new(ptr.cast()).unwrap(),
            len,
        }
    }

    fn at<T>(&self, offset: usize) -> *mut T {
        assert!(offset + size_of::<T>() <= self.len);
        // SAFETY: in bounds (checked).
        unsafe { self.ptr.as_ptr().add(offset).cast() }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our mapping; no pointer into it outlives the bench closure that owns it.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Forks a child pinned to `cpu` that runs `body` and exits (1 if it panicked).
fn fork_pinned(cpu: usize, body: impl FnOnce()) -> libc::pid_t {
    // SAFETY: the child only runs `body` (plain Rust on memory it inherited) and `_exit`s,
    // never returning into the parent's stack frames.
    match unsafe { libc::fork() } {
        0 => {
            pin(cpu);
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).is_ok();
            // SAFETY: ends the child without running the parent's exit handlers.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        -1 => panic!("fork failed"),
        pid => pid,
    }
}

fn reap(pid: libc::pid_t) -> Result<(), String> {
    let mut status = 0;
    // SAFETY: `pid` is our child; `status` is a valid out-pointer.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else {
        Err(format!("child failed with status {status:#x}"))
    }
}

/// Both children start counting together, once the parent says go.
fn wait_for(go: &AtomicU64) {
    while go.load(Ordering::SeqCst) == 0 {
        std::hint::spin_loop();
    }
}

fn ops_per_sec(ops: u64, start: Instant) -> f64 {
    ops as f64 / start.elapsed().as_secs_f64()
}

#[repr(C)]
struct RawCounter {
    mutex: libc::pthread_mutex_t,
    count: u64,
}

fn raw_inc() -> Result<f64, String> {
    let map = Mapping::new(4096);
    let shared: *mut RawCounter = map.at(0);
    // SAFETY: the mapping is ours, zeroed, large enough and aligned (page); the mutex is
    // initialized process-shared before any child exists.
    unsafe {
        let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
        libc::pthread_mutexattr_init(&mut attr);
        libc::pthread_mutexattr_setpshared(&mut attr, libc::PTHREAD_PROCESS_SHARED);
        libc::pthread_mutex_init(&raw mut (*shared).mutex, &attr);
        libc::pthread_mutexattr_destroy(&mut attr);
    }
    // SAFETY: an `AtomicU64` after the counter, in the zeroed mapping.
    let go = unsafe { &*map.at::<AtomicU64>(2048) };
    let children: Vec<_> = (0..2)
        .map(|cpu| {
            fork_pinned(cpu, || {
                wait_for(go);
                for _ in 0..INCREMENTS {
                    // SAFETY: the mutex is initialized and process-shared; `count` is only
                    // touched while it is held.
                    unsafe {
                        libc::pthread_mutex_lock(&raw mut (*shared).mutex);
                        (*shared).count += 1;
                        libc::pthread_mutex_unlock(&raw mut (*shared).mutex);
                    }
                }
            })
        })
        .collect();
    let start = Instant::now();
    go.store(1, Ordering::SeqCst);
    for pid in children {
        reap(pid)?;
    }
    let rate = ops_per_sec(2 * INCREMENTS, start);
    // SAFETY: both children are gone.
    let count = unsafe { (*shared).count };
    if count != 2 * INCREMENTS {
        return Err(format!("lost updates: {count}"));
    }
    Ok(rate)
}

fn ours_inc() -> Result<f64, String> {
    let counter = Value::new(0u64).map_err(|e| e.to_string())?;
    let go = mp_sync::Shared::<AtomicU64>::new().map_err(|e| e.to_string())?;
    let children: Vec<_> = (0..2)
        .map(|cpu| {
            let counter = counter.clone();
            let go = &go;
            fork_pinned(cpu, move || {
                wait_for(go);
                for _ in 0..INCREMENTS {
                    *counter.lock().expect("nobody dies") += 1;
                }
            })
        })
        .collect();
    let start = Instant::now();
    go.store(1, Ordering::SeqCst);
    for pid in children {
        reap(pid)?;
    }
    let rate = ops_per_sec(2 * INCREMENTS, start);
    match counter.get() {
        n if n == 2 * INCREMENTS => Ok(rate),
        n => Err(format!("lost updates: {n}")),
    }
}

/// Runs `rounds` round trips between this process (CPU 0) and a forked partner (CPU 1):
/// `post(b); wait(a)` here, `wait(b); post(a)` there; returns ns per round trip.
fn handoff(
    iters: &mut u64,
    wait_a: impl Fn() + Copy,
    post_a: impl Fn(),
    wait_b: impl Fn(),
    post_b: impl Fn() + Copy,
    stop: &AtomicU64,
) -> Result<f64, String> {
    stop.store(0, Ordering::SeqCst);
    let partner = fork_pinned(1, || {
        loop {
            wait_b();
            if stop.load(Ordering::SeqCst) != 0 {
                break;
            }
            post_a();
        }
    });
    pin(0);
    let ns = time_batched(iters, |n| {
        for _ in 0..n {
            post_b();
            wait_a();
        }
    });
    stop.store(1, Ordering::SeqCst);
    post_b();
    reap(partner)?;
    Ok(ns)
}

fn raw_handoff() -> Impl {
    let map = Mapping::new(4096);
    let a: *mut libc::sem_t = map.at(0);
    let b: *mut libc::sem_t = map.at(64);
    let stop: *mut AtomicU64 = map.at(128);
    // SAFETY: both semaphores sit in the shared mapping, initialized once at 0.
    unsafe {
        libc::sem_init(a, 1, 0);
        libc::sem_init(b, 1, 0);
    }
    let mut iters = 0;
    Impl::new("raw/sem_post+sem_wait", move || {
        let _keep = &map;
        // SAFETY: the semaphores are initialized and live as long as the mapping.
        let (a, b) = (SemPtr(a), SemPtr(b));
        // SAFETY: an `AtomicU64` in the mapping (zeroed is valid).
        let stop = unsafe { &*stop };
        handoff(
            &mut iters,
            move || a.wait(),
            move || a.post(),
            move || b.wait(),
            move || b.post(),
            stop,
        )
    })
}

#[derive(Clone, Copy)]
struct SemPtr(*mut libc::sem_t);

impl SemPtr {
    fn wait(self) {
        // SAFETY: an initialized process-shared semaphore (see `raw_handoff`).
        while unsafe { libc::sem_wait(self.0) } != 0 {}
    }

    fn post(self) {
        // SAFETY: as above.
        unsafe { libc::sem_post(self.0) };
    }
}

fn ours_handoff() -> Impl {
    let (a, b) = (Lock::new().unwrap(), Lock::new().unwrap());
    // Held = "not posted".
    assert!(a.acquire().is_held() && b.acquire().is_held());
    let stop = mp_sync::Shared::<AtomicU64>::new().unwrap();
    let mut iters = 0;
    Impl::new("ours/Lock pair", move || {
        // The last partner exited holding `b` (it took the stop signal): take it back, so a
        // new partner does not find it held by a dead process.
        if b.owner_pid() != Some(std::process::id()) {
            let _ = b.release();
            assert!(b.acquire().is_held());
        }
        let (a, b) = (&a, &b);
        handoff(
            &mut iters,
            move || assert!(a.acquire().is_held()),
            move || a.release().expect("held"),
            move || assert!(b.acquire().is_held()),
            move || b.release().expect("held"),
            &stop,
        )
    })
}

fn fill(xs: &mut [i64]) -> i64 {
    for (i, x) in xs.iter_mut().enumerate() {
        *x = i as i64;
    }
    xs[xs.len() - 1]
}

fn sum(xs: &mut [i64]) -> i64 {
    xs.iter().sum()
}

const PASSES: u32 = 20;

/// Runs `work` over the elements `PASSES` times in a forked child that times itself and
/// leaves ns per pass in `report`.
fn in_child(report: &AtomicU64, work: impl Fn() -> i64) -> Result<f64, String> {
    let child = fork_pinned(1, || {
        work(); // first touch in this process
        let start = Instant::now();
        for _ in 0..PASSES {
            black_box(work());
        }
        report.store(
            (start.elapsed().as_nanos() / u128::from(PASSES)) as u64,
            Ordering::SeqCst,
        );
    });
    reap(child)?;
    Ok(report.load(Ordering::SeqCst) as f64)
}

fn raw_array(name: &str, work: fn(&mut [i64]) -> i64) -> Impl {
    let map = Mapping::new(64 + ELEMENTS * 8);
    Impl::new(name, move || {
        // SAFETY: an `AtomicU64` at the start of the mapping (zeroed is valid).
        let report = unsafe { &*map.at::<AtomicU64>(0) };
        let elements = map.at::<i64>(64);
        in_child(report, || {
            // SAFETY: `ELEMENTS` i64s after the report slot, used only by this child now.
            work(unsafe { std::slice::from_raw_parts_mut(elements, ELEMENTS) })
        })
    })
}

fn ours_array(name: &str, work: fn(&mut [i64]) -> i64) -> Impl {
    let array = Array::<i64>::new(ELEMENTS).unwrap();
    let report = mp_sync::Shared::<AtomicU64>::new().unwrap();
    Impl::new(name, move || {
        in_child(&report, || work(&mut array.lock().expect("nobody dies")))
    })
}

const BLOCK: usize = 64 << 20;

fn raw_create() -> Impl {
    let mut iters = 0;
    Impl::new("raw/memfd+mmap", move || {
        Ok(super::time_per_op(&mut iters, || {
            let fd = rustix::fs::memfd_create("raw", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
            rustix::fs::ftruncate(&fd, BLOCK as u64).unwrap();
            // SAFETY: a fresh mapping of our own memfd, unmapped right away.
            unsafe {
                let p = libc::mmap(
                    std::ptr::null_mut(),
                    BLOCK,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    0,
                );
                assert_ne!(p, libc::MAP_FAILED);
                libc::munmap(p, BLOCK);
            }
        }))
    })
}

fn ours_create_array() -> Impl {
    let mut iters = 0;
    Impl::new("ours/Array<u8>::new", move || {
        Ok(super::time_per_op(&mut iters, || {
            black_box(Array::<u8>::new(BLOCK).unwrap());
        }))
    })
}

fn ours_create_named() -> Impl {
    let mut iters = 0;
    Impl::new("ours/SharedMemory::new", move || {
        Ok(super::time_per_op(&mut iters, || {
            black_box(SharedMemory::new(BLOCK).unwrap());
        }))
    })
}
