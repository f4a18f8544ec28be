"""What the benchmark scripts share: placing a process on a CPU, and timing a batch."""

import os
import time


def pin(cpu):
    """Runs the calling process on `cpu` only (quietly does nothing where that is refused)."""
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError:
        pass


def measure(batch, target_ns=0.1e9):
    """Nanoseconds per operation of batch(n), doubling n until a batch takes target_ns."""
    n = 1
    while True:
        start = time.perf_counter_ns()
        batch(n)
        took = time.perf_counter_ns() - start
        if took >= target_ns:
            return took / n
        n *= 2
