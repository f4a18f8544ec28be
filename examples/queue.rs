//! The second program of Python's multiprocessing docs: five processes each put `n*n` on
//! one queue; the parent joins them, then drains the queue and prints the five squares, one
//! per line (in whatever order they arrived).
//!
//! `cargo run --example queue`

use multiprocessing::{Process, Queue};

fn square(args: (Queue<u64>, u64)) {
    let (q, n) = args;
    q.put(n * n).expect("the queue is open");
}

fn main() -> Result<(), multiprocessing::Error> {
    let q = Queue::<u64>::new()?;
    let mut children = Vec::new();
    for n in 1..=5 {
        children.push(Process::new(square, (q.clone(), n)).start()?);
    }
    for child in &mut children {
        child.join()?;
    }
    while !q.empty() {
        println!("{}", q.get()?);
    }
    Ok(())
}
