"""The pool workloads in CPython: multiprocessing.Pool(2) with the fork start method (3.11's
default on Linux), the same jobs as xtask/src/bench/pool.rs. This process runs where the
bench placed it (the machine's first 2 CPUs), and so do the pool's workers.

    pool.py pool_startup        prints ns from Pool(2) to the answer of apply(square, (3,))
    pool.py pool_task_chunk1    prints ns per task of map(square, range(n), chunksize=1)
    pool.py pool_map_1m         prints ns per item of map(square, range(1_000_000))
    pool.py pool_cpu16_speedup  prints serial time / pool time of 16 ~20 ms tasks

Every result is checked (the sum of the squares, or the tasks' results against the serial
run's); terminating the pool is outside the clock.
"""

import multiprocessing as mp
import sys
import time
from timing import measure

ctx = mp.get_context("fork")
WORKERS = 2
MASK = (1 << 64) - 1


def square(x):
    return x * x


def sum_of_squares(n):
    return (n - 1) * n * (2 * n - 1) // 6


def burn(task):
    """xorshift64 rounds from the seed: the CPU-bound task (as `burn` in pool.rs)."""
    seed, iterations = task
    x = seed | 1
    for _ in range(iterations):
        x ^= (x << 13) & MASK
        x ^= x >> 7
        x ^= (x << 17) & MASK
    return x


def startup():
    def once():
        start = time.perf_counter_ns()
        pool = ctx.Pool(WORKERS)
        answer = pool.apply(square, (3,))
        took = time.perf_counter_ns() - start
        pool.terminate()
        pool.join()
        assert answer == 9, answer
        return took

    once()  # warm-up
    total, n = 0, 0
    while total < 0.1e9:
        total += once()
        n += 1
    return total / n


def chunk1_on(pool):
    """ns per task of map(square, range(n), chunksize=1) on a running `pool`."""
    def batch(n):
        got = sum(pool.map(square, range(n), chunksize=1))
        assert got == sum_of_squares(n), (got, n)

    batch(100)  # warm-up
    return measure(batch)


def map_1m_on(pool):
    """ns per item of map(square, range(1_000_000)) on a running `pool`."""
    n = 1_000_000
    pool.map(square, range(1000))  # warm-up
    start = time.perf_counter_ns()
    squares = pool.map(square, range(n))
    took = time.perf_counter_ns() - start
    assert len(squares) == n and sum(squares) == sum_of_squares(n)
    return took / n


def cpu_tasks():
    """The 16 tasks of about 20 ms each, calibrated here."""
    iterations = 1 << 10
    while True:
        start = time.perf_counter_ns()
        burn((1, iterations))
        took = time.perf_counter_ns() - start
        if took >= 5e6:
            iterations = int(iterations * 20e6 / took)
            break
        iterations *= 2
    return [(seed, iterations) for seed in range(16)]


def speedup_on(pool, tasks):
    """Serial time here over `pool`'s time for map(burn, tasks); the results checked."""
    pool.map(square, range(10))  # warm-up: the workers are running
    start = time.perf_counter_ns()
    serial = [burn(task) for task in tasks]
    serial_ns = time.perf_counter_ns() - start
    start = time.perf_counter_ns()
    parallel = pool.map(burn, tasks)
    parallel_ns = time.perf_counter_ns() - start
    assert parallel == serial
    return serial_ns / parallel_ns


def chunk1():
    with ctx.Pool(WORKERS) as pool:
        return chunk1_on(pool)


def map_1m():
    with ctx.Pool(WORKERS) as pool:
        return map_1m_on(pool)


def cpu16_speedup():
    tasks = cpu_tasks()
    with ctx.Pool(WORKERS) as pool:
        return speedup_on(pool, tasks)


WORKLOADS = {
    "pool_startup": startup,
    "pool_task_chunk1": chunk1,
    "pool_map_1m": map_1m,
    "pool_cpu16_speedup": cpu16_speedup,
}

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in WORKLOADS:
        sys.exit(f"usage: pool.py {{{','.join(WORKLOADS)}}}")
    print(WORKLOADS[sys.argv[1]]())
