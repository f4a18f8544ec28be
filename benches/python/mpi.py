"""The MPI workloads with mpi4py's pool (mpi4py.util.pool.Pool, on mpi4py.futures), the same
jobs as crates/mp-mpi/examples/mpi_bench.rs. Run as

    mpirun -n 3 python3 -m mpi4py.futures mpi.py WORKLOAD

so that rank 0 runs this script and ranks 1 and 2 are the pool's workers. Prints one number:

    mpi_task_chunk1     ns per task of map(square, range(n), chunksize=1)
    mpi_map_1m          ns per item of map(square, range(1_000_000))
    mpi_cpu16_speedup   serial time / pool time of 16 ~20 ms tasks

Every result is checked.
"""

import sys
import time

from mpi4py.util.pool import Pool
from pool import burn, square, sum_of_squares  # the tasks of the pool benchmark
from timing import measure

def chunk1(pool):
    def batch(n):
        got = sum(pool.map(square, range(n), chunksize=1))
        assert got == sum_of_squares(n), (got, n)

    batch(100)  # warm-up
    return measure(batch)


def map_1m(pool):
    n = 1_000_000
    pool.map(square, range(1000))  # warm-up
    start = time.perf_counter_ns()
    squares = pool.map(square, range(n))
    took = time.perf_counter_ns() - start
    assert len(squares) == n and sum(squares) == sum_of_squares(n)
    return took / n


def cpu16_speedup(pool):
    iterations = 1 << 10
    while True:  # about 20 ms a task
        start = time.perf_counter_ns()
        burn((1, iterations))
        took = time.perf_counter_ns() - start
        if took >= 5e6:
            iterations = int(iterations * 20e6 / took)
            break
        iterations *= 2
    tasks = [(seed, iterations) for seed in range(16)]
    pool.map(square, range(10))  # warm-up: the workers are running
    start = time.perf_counter_ns()
    serial = [burn(task) for task in tasks]
    serial_ns = time.perf_counter_ns() - start
    start = time.perf_counter_ns()
    parallel = pool.map(burn, tasks)
    parallel_ns = time.perf_counter_ns() - start
    assert parallel == serial
    return serial_ns / parallel_ns


WORKLOADS = {
    "mpi_task_chunk1": chunk1,
    "mpi_map_1m": map_1m,
    "mpi_cpu16_speedup": cpu16_speedup,
}

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in WORKLOADS:
        sys.exit(f"usage: mpi.py {{{','.join(WORKLOADS)}}}")
    with Pool() as pool:
        print(WORKLOADS[sys.argv[1]](pool))
