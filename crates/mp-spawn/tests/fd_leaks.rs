//! Dropped processes leave no descriptor behind. A binary of its own: it counts the whole
//! process's descriptors, which tests running beside it would disturb.

use std::time::{Duration, Instant};

use mp_spawn::{Process, StartMethod};

fn square(x: u64) -> u64 {
    x * x
}

fn open_fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn dropped_processes_leave_no_descriptors_behind() {
    for method in [
        StartMethod::Fork,
        StartMethod::Spawn,
        StartMethod::Forkserver,
    ] {
        // Warm up: the forkserver and the reaper thread hold descriptors of their own.
        drop(Process::new(square, 1).method(method).start().unwrap());
        let mut warm = Process::new(square, 1).method(method).start().unwrap();
        warm.join_timeout(Duration::from_secs(30)).unwrap();
        let before = open_fd_count();
        for i in 0..40 {
            drop(Process::new(square, i).method(method).start().unwrap());
        }
        // Every dropped child ends at once; the registry lets go of each as it does.
        let until = Instant::now() + Duration::from_secs(30);
        while open_fd_count() > before + 2 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        // The reaper thread's wake pipe may appear during the loop: 2 descriptors. A leak
        // is one or more per dropped process.
        let after = open_fd_count();
        assert!(
            after <= before + 2,
            "{method:?}: {before} fds before, {after} after"
        );
    }
}
