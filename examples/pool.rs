//! The third program of Python's `multiprocessing` docs: a pool of three workers maps
//! `square` over 1 to 5 and prints `[1, 4, 9, 16, 25]`.
//!
//! ```python
//! from multiprocessing import Pool
//!
//! def square(x):
//!     return x * x
//!
//! if __name__ == '__main__':
//!     with Pool(3) as p:
//!         print(p.map(square, [1, 2, 3, 4, 5]))
//! ```
//!
//! `cargo run --example pool`

use multiprocessing::Pool;

fn square(x: u64) -> u64 {
    x * x
}

fn main() -> Result<(), multiprocessing::Error> {
    let pool = Pool::new(3)?; // terminated when dropped, as `with Pool(3)` does
    println!("{:?}", pool.map(square, [1, 2, 3, 4, 5])?);
    Ok(())
}
