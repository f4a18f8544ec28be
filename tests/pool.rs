//! The pool through the facade: the documentation's third program, errors that convert to
//! the umbrella's, and pool tasks that use the other crates (a queue, a shared value).

use std::process::Command;

use multiprocessing::{Pool, Queue, Value, pool};

use crate::support::{Guarded, example};

#[test]
fn the_pool_example_prints_the_five_squares() {
    let (status, out, err) = Guarded::spawn(Command::new(example("pool"))).finish();
    assert!(status.success(), "{err}");
    assert_eq!(out.trim(), "[1, 4, 9, 16, 25]");
}

fn report((q, counter, x): (Queue<u64>, Value<u64>, u64)) -> u64 {
    counter.fetch_add(x);
    q.put(x * 10).expect("the queue is open");
    x
}

#[test]
fn pool_tasks_share_a_queue_and_a_value_with_the_parent() {
    let pool = Pool::new(2).unwrap();
    let q = Queue::<u64>::new().unwrap();
    let counter = Value::new(0u64).unwrap();
    let args = (1..=10).map(|x| (q.clone(), counter.clone(), x));
    assert_eq!(
        pool.map(report, args).unwrap(),
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(counter.get(), 55);
    let mut got: Vec<u64> = (0..10).map(|_| q.get().unwrap()).collect();
    got.sort();
    assert_eq!(got, (1..=10).map(|x| x * 10).collect::<Vec<_>>());
}

fn fail(x: u32) -> u32 {
    panic!("no {x}")
}

#[test]
fn pool_errors_are_matchable_from_the_umbrella() {
    let run = || -> multiprocessing::Result<u32> {
        let pool = Pool::new(1)?;
        Ok(pool.apply(fail, 7)?)
    };
    match run() {
        Err(multiprocessing::Error::Pool(pool::Error::Panicked { message })) => {
            assert_eq!(message, "no 7");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_quickstart_tour_runs_to_its_end() {
    let (status, out, err) = Guarded::spawn(Command::new(example("quickstart"))).finish();
    assert!(status.success(), "{err}");
    assert!(out.contains("Pool.map: the longest Collatz chain"), "{out}");
    assert!(out.contains("killed by signal 6, SIGABRT"), "{out}");
    assert!(
        out.lines()
            .last()
            .is_some_and(|l| l.contains("met at a barrier")),
        "{out}"
    );
}
