"""Shared memory and locks in CPython's multiprocessing, the workload named on the command
line (see xtask/src/bench/shm.rs for what each measures). Prints one number in the
workload's unit: ops/s for value_lock_inc_2proc, nanoseconds otherwise. Processes use the
fork start method and are pinned to CPUs 0 and 1 like ours."""

import multiprocessing as mp
import os
import sys
import time
from multiprocessing import shared_memory
from timing import pin

INCREMENTS = 200_000
ELEMENTS = 1 << 20
PASSES = 5
TARGET_NS = 0.2e9
ctx = mp.get_context("fork")



def increment(value, cpu):
    pin(cpu)
    for _ in range(INCREMENTS):
        with value.get_lock():
            value.value += 1


def value_lock_inc_2proc():
    value = ctx.Value("q", 0)
    procs = [ctx.Process(target=increment, args=(value, cpu)) for cpu in (0, 1)]
    start = time.perf_counter_ns()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    took = time.perf_counter_ns() - start
    assert value.value == 2 * INCREMENTS, value.value
    return 2 * INCREMENTS / (took / 1e9)


def partner(a, b, stop):
    pin(1)
    while True:
        b.acquire()
        if stop.value:
            return
        a.release()


def lock_handoff_rtt():
    a, b = ctx.Lock(), ctx.Lock()
    a.acquire()
    b.acquire()
    stop = ctx.RawValue("i", 0)
    p = ctx.Process(target=partner, args=(a, b, stop))
    p.start()
    pin(0)
    n = 1
    while True:
        start = time.perf_counter_ns()
        for _ in range(n):
            b.release()
            a.acquire()
        took = time.perf_counter_ns() - start
        if took >= TARGET_NS:
            break
        n *= 2
    stop.value = 1
    b.release()
    p.join()
    return took / n


def fill(array):
    with array.get_lock():
        array.get_obj()[:] = range(ELEMENTS)


def total(array):
    with array.get_lock():
        return sum(array.get_obj())


def timed_in_child(array, work, conn):
    pin(1)
    work(array)
    start = time.perf_counter_ns()
    for _ in range(PASSES):
        work(array)
    conn.send((time.perf_counter_ns() - start) / PASSES)


def array_pass(work):
    array = ctx.Array("q", ELEMENTS)
    ours, theirs = ctx.Pipe()
    p = ctx.Process(target=timed_in_child, args=(array, work, theirs))
    p.start()
    ns = ours.recv()
    p.join()
    return ns


def shm_create_64mib():
    n = 1
    while True:
        start = time.perf_counter_ns()
        for _ in range(n):
            block = shared_memory.SharedMemory(create=True, size=64 << 20)
            block.close()
            block.unlink()
        took = time.perf_counter_ns() - start
        if took >= TARGET_NS:
            return took / n
        n *= 2


WORKLOADS = {
    "value_lock_inc_2proc": value_lock_inc_2proc,
    "lock_handoff_rtt": lock_handoff_rtt,
    "array_fill_1m": lambda: array_pass(fill),
    "array_sum_1m": lambda: array_pass(total),
    "shm_create_64mib": shm_create_64mib,
}

if __name__ == "__main__":
    print(WORKLOADS[sys.argv[1]]())
