//! Start + join of a process that does nothing, per start method: ours, the raw syscalls
//! doing the same job with nothing on top, procspawn, and CPython with the same method.
//!
//! - `spawn_join_fork`: `raw/fork+waitpid` (a child that `_exit`s at once) is the reference.
//! - `spawn_join_spawn`: `raw/Command re-exec` (this binary run again, exiting in `main`).
//! - `spawn_join_forkserver`: warm (the server already running), against raw fork+waitpid.
//!
//! Every implementation runs with the bench process on one CPU alone, and so every process
//! it starts (they inherit the placement): a start and join is measured as the work it
//! takes on one CPU, not as latency. Across CPUs this VM's wake-ups (20-45 µs each)
//! dominate and fall differently for each implementation and run (the scheduler ran raw
//! fork's child on its parent's CPU, ours on the other in some runs and not others), which
//! made the ratios swing by half. One CPU also takes from the forkserver what it gains
//! from a second (forking the next child while the current one runs).

use std::process::Command;

use mp_spawn::{Process, StartMethod};

use super::{Impl, Unit, Workload, cpython, time_per_op};

fn noop(_: ()) {}

pub fn workloads() -> Vec<Workload> {
    vec![
        Workload {
            name: "spawn_join_fork",
            unit: Unit::NsPerOp,
            impls: vec![
                raw_fork().on_one_cpu(),
                ours(StartMethod::Fork).on_one_cpu(),
                cpython("fork", "spawn.py", "fork").on_one_cpu(),
            ],
        },
        Workload {
            name: "spawn_join_spawn",
            unit: Unit::NsPerOp,
            impls: vec![
                raw_reexec().on_one_cpu(),
                ours(StartMethod::Spawn).on_one_cpu(),
                procspawn_impl().on_one_cpu(),
                cpython("spawn", "spawn.py", "spawn").on_one_cpu(),
            ],
        },
        Workload {
            name: "spawn_join_forkserver",
            unit: Unit::NsPerOp,
            impls: vec![
                raw_fork().on_one_cpu(),
                ours(StartMethod::Forkserver).on_one_cpu(),
                cpython("forkserver", "spawn.py", "forkserver").on_one_cpu(),
            ],
        },
    ]
}

fn ours(method: StartMethod) -> Impl {
    let mut iters = 0;
    Impl::new(format!("ours/{method:?}").to_lowercase(), move || {
        let mut failed = None;
        let ns = time_per_op(&mut iters, || {
            let result = Process::new(noop, ())
                .method(method)
                .start()
                .and_then(|mut p| p.join());
            if let Err(e) = result {
                failed = Some(e.to_string());
            }
        });
        failed.map_or(Ok(ns), Err)
    })
}

fn raw_fork() -> Impl {
    let mut iters = 0;
    Impl::new("raw/fork+waitpid", move || {
        Ok(time_per_op(&mut iters, || {
            // SAFETY: the child calls only `_exit`, which is async-signal-safe; the parent
            // reaps it with `waitpid` on the pid fork returned.
            unsafe {
                match libc::fork() {
                    0 => libc::_exit(0),
                    -1 => panic!("fork failed"),
                    pid => {
                        let mut status = 0;
                        libc::waitpid(pid, &mut status, 0);
                    }
                }
            }
        }))
    })
}

fn raw_reexec() -> Impl {
    let exe = std::env::current_exe().expect("current_exe");
    let mut iters = 0;
    Impl::new("raw/Command re-exec", move || {
        let mut failed = None;
        let ns = time_per_op(&mut iters, || {
            match Command::new(&exe).arg("__noop").status() {
                Ok(s) if s.success() => {}
                other => failed = Some(format!("{other:?}")),
            }
        });
        failed.map_or(Ok(ns), Err)
    })
}

fn procspawn_impl() -> Impl {
    let mut iters = 0;
    Impl::new("procspawn/", move || {
        let mut failed = None;
        let ns = time_per_op(&mut iters, || {
            if let Err(e) = procspawn::spawn((), |()| ()).join() {
                failed = Some(e.to_string());
            }
        });
        failed.map_or(Ok(ns), Err)
    })
}
