//! The third program of Python's docs on MPI ranks instead of forked processes (built with
//! the `mpi` feature, which needs Open MPI):
//!
//! ```sh
//! cargo build --release --example mpi_pool --features mpi
//! mpirun -n 4 target/release/examples/mpi_pool      # prints [1, 4, 9, 16, 25]
//! ```
//!
//! Python's, with mpi4py (`mpirun -n 4 python -m mpi4py.futures prog.py`):
//!
//! ```python
//! from mpi4py.util.pool import Pool
//!
//! def f(x):
//!     return x*x
//!
//! if __name__ == '__main__':
//!     with Pool() as p:
//!         print(p.map(f, [1, 2, 3, 4, 5]))
//! ```
//!
//! Every rank runs `main`: on rank 0 `MpiPool::world` returns the pool of the other three;
//! on those it serves tasks, and ends the process when rank 0's pool ends.

use multiprocessing::mpi::MpiPool;

fn f(x: u64) -> u64 {
    x * x
}

fn main() -> Result<(), multiprocessing::mpi::Error> {
    let pool = MpiPool::world()?;
    println!("{:?}", pool.map(f, [1, 2, 3, 4, 5])?);
    Ok(())
}
