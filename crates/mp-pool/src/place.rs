//! Where a forked worker starts: beside its parent, not after it.
//!
//! Linux queues a forked child on its parent's CPU. On this project's machines (KVM, 2
//! vCPUs) nothing moved it while the parent kept that CPU busy, even with the other CPU
//! idle: in a C probe, 185 of 200 children of a parent that worked on for 400 µs after
//! `fork` had not run by then; allowed only the other CPU, 199 of 200 had. A pool's parent
//! forks its workers back to back, then sends the first task: its first worker used to
//! start only once the parent slept waiting for that task's result, with its whole start-up
//! in the way of the result.
//!
//! So the pool's `k`-th worker (counting from 0) is first allowed only the `k`-th CPU of
//! those its parent may use, the parent's own CPU left out ([`Plan::start_beside`]), which
//! makes the scheduler move it at once. Workers beyond the number of such CPUs stay where
//! the kernel put them, beside the parent, which soon waits for its first result and leaves
//! them its CPU: two workers moved onto one CPU took longer to answer the first task than
//! one moved and one left (the first worker's start-up then shared its CPU with the
//! second's: in three A/B pairs of the bench, the first result came 10 to 18% sooner).
//!
//! Before its first task a moved worker takes back the whole set ([`Plan::back_to_all`]),
//! so every task runs with the mask the worker would have inherited. Not before: the worker
//! may start running before its parent has moved it, but every task is sent after that
//! move, by the thread that made it. (For the same reason a pool with an initializer, which
//! runs before any task, does not move its workers.) Both steps are best effort: a failure
//! leaves the worker where the kernel put it, never stops it. Workers started by the
//! forkserver or by spawn are not the pool's children to place, and a parent allowed a
//! single CPU has nothing to do.

use rustix::thread::{CpuSet, sched_getaffinity, sched_getcpu, sched_setaffinity};
use serde::{Deserialize, Serialize};

/// Where a worker about to be forked starts: on CPU `to` of `allowed`, until its first task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Plan {
    /// The CPUs this thread may run on (two or more), which the worker inherits.
    allowed: Vec<u32>,
    /// The CPU the worker starts on: one of `allowed`, not the one this thread runs on.
    to: u32,
}

/// The plan for the `k`-th worker (from 0) forked next by this thread: the `k`-th CPU of
/// those it may run on, its own left out. `None` if there is no such CPU (it is allowed a
/// single CPU, or fewer than `k + 2`), or its set or its CPU cannot be read.
pub(crate) fn plan(k: usize) -> Option<Plan> {
    let set = sched_getaffinity(None).ok()?;
    let allowed: Vec<u32> = (0..CpuSet::MAX_CPU)
        .filter(|&cpu| set.is_set(cpu))
        .filter_map(|cpu| u32::try_from(cpu).ok())
        .collect();
    let here = u32::try_from(sched_getcpu()).ok()?;
    if !allowed.contains(&here) {
        return None;
    }
    let to = allowed.iter().copied().filter(|&c| c != here).nth(k)?;
    Some(Plan { allowed, to })
}

fn set_of(cpus: impl IntoIterator<Item = u32>) -> CpuSet {
    let mut set = CpuSet::new();
    for cpu in cpus {
        set.set(cpu as usize);
    }
    set
}

impl Plan {
    fn beside(&self) -> CpuSet {
        set_of([self.to])
    }

    /// Moves `child`, just forked, onto the plan's CPU.
    pub(crate) fn start_beside(&self, child: u32) {
        if let Some(pid) = rustix::process::Pid::from_raw(child as i32) {
            let _ = sched_setaffinity(Some(pid), &self.beside());
        }
    }

    /// In a worker, before its first task: back on every CPU of the plan, if its mask is
    /// still the one [`Plan::start_beside`] gave it (a mask someone else gave it meanwhile
    /// is theirs).
    pub(crate) fn back_to_all(&self) {
        if sched_getaffinity(None).is_ok_and(|now| now == self.beside()) {
            let _ = sched_setaffinity(None, &set_of(self.allowed.iter().copied()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moved_worker_gets_its_whole_set_back_and_another_mask_is_left_alone() {
        std::thread::spawn(|| {
            let Some(plan) = plan(0) else {
                return; // a single CPU: nothing is ever moved
            };
            // As `start_beside` leaves a worker.
            sched_setaffinity(None, &plan.beside()).unwrap();
            plan.back_to_all();
            assert_eq!(
                sched_getaffinity(None).unwrap(),
                set_of(plan.allowed.clone())
            );
            // A mask someone else set (here: every CPU but the plan's) is theirs.
            let theirs = set_of(plan.allowed.iter().copied().filter(|&c| c != plan.to));
            sched_setaffinity(None, &theirs).unwrap();
            plan.back_to_all();
            assert_eq!(sched_getaffinity(None).unwrap(), theirs);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn the_kth_worker_gets_the_kth_cpu_but_this_one_and_no_plan_past_them() {
        std::thread::spawn(|| {
            let set = sched_getaffinity(None).unwrap();
            let allowed: Vec<u32> = (0..CpuSet::MAX_CPU)
                .filter(|&cpu| set.is_set(cpu))
                .map(|cpu| cpu as u32)
                .collect();
            // Pinned to its first CPU, so the CPU it runs on is known.
            sched_setaffinity(None, &set_of([allowed[0]])).unwrap();
            assert_eq!(plan(0), None, "a thread allowed one CPU moves nothing");
            sched_setaffinity(None, &set_of(allowed.clone())).unwrap();
            let Some(first) = plan(0) else {
                return; // a single CPU: nothing is ever moved
            };
            assert!(allowed.contains(&first.to));
            assert_eq!(first.beside(), set_of([first.to]), "one CPU, not a set");
            let others = allowed.len() - 1;
            assert_eq!(plan(others), None, "one worker per other CPU, no more");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_child_moved_beside_runs_beside() {
        let Some(plan) = plan(0) else {
            return;
        };
        let (read, _write) = rustix::pipe::pipe().unwrap();
        // SAFETY: the child only blocks reading a pipe nobody writes, until it is killed.
        let pid = match unsafe { libc::fork() } {
            0 => {
                let _ = rustix::io::read(&read, &mut [0u8; 1]);
                // SAFETY: ends the child at once.
                unsafe { libc::_exit(0) }
            }
            -1 => panic!("fork"),
            pid => pid,
        };
        plan.start_beside(pid as u32);
        let there = sched_getaffinity(rustix::process::Pid::from_raw(pid));
        // SAFETY: our own child, killed and reaped here (SIGKILL cannot be caught or blocked:
        // the wait returns).
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        assert_eq!(there.unwrap(), plan.beside());
    }
}
