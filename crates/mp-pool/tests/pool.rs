//! The pool across processes: every API, every way a worker can die, Ctrl-C, timeouts.

use std::time::{Duration, Instant};

use mp_pool::{Error, ExitStatus, Pool};
use mp_spawn::StartMethod;

/// Any wait on another process longer than this fails the test.
const DEADLINE: Duration = Duration::from_secs(30);

fn square(x: u64) -> u64 {
    x * x
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
    }
}
