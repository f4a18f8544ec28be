//! A child computes prefix sums in place in a shared `Array<i64>`; the parent prints them.
//!
//! `cargo run --example shared_array`

use multiprocessing::{Array, Process};

fn prefix_sums(numbers: Array<i64>) {
    let mut numbers = numbers
        .lock()
        .expect("no other process died holding the lock");
    let mut total = 0;
    for x in numbers.iter_mut() {
        total += *x;
        *x = total;
    }
}

fn main() -> Result<(), multiprocessing::Error> {
    let numbers = Array::from_slice(&[1i64, 2, 3, 4, 5, 6, 7, 8])?;
    Process::new(prefix_sums, numbers.clone()).start()?.join()?;
    println!("{:?}", numbers.to_vec());
    Ok(())
}
