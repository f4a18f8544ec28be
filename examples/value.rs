//! The fourth program of Python's multiprocessing docs, in its simplest form: a child
//! increments a shared `Value` created at 0; the parent joins it and prints `1`.
//!
//! `cargo run --example value`

use multiprocessing::{Process, Value};

fn increment(counter: Value<i32>) {
    *counter
        .lock()
        .expect("no other process died holding the lock") += 1;
}

fn main() -> Result<(), multiprocessing::Error> {
    let counter = Value::new(0i32)?;
    Process::new(increment, counter.clone()).start()?.join()?;
    println!("{}", counter.get());
    Ok(())
}
