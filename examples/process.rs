//! The first program of Python's multiprocessing docs: a child prints 0 to 4, the parent
//! joins it.
//!
//! `cargo run --example process`

use multiprocessing::Process;

fn count(n: u32) {
    for i in 0..n {
        println!("{i}");
    }
}

fn main() -> Result<(), multiprocessing::Error> {
    let mut child = Process::new(count, 5).start()?;
    child.join()?;
    Ok(())
}
