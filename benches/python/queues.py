"""The queue workloads in CPython: multiprocessing.Queue or SimpleQueue between processes
started with fork and placed as the Rust ones are (see xtask/src/bench/queue.rs): the
consumer (this process) on CPU 0, every producer, or the echoing child, on CPU 1.

    queues.py KIND queue_1to1_8b   prints items/s, one producer putting ints
    queues.py KIND queue_2to1_8b   prints items/s, two producers putting ints
    queues.py KIND queue_64kib     prints MB/s of 64 KiB bytes items, one producer
    queues.py KIND queue_rtt_8b    prints nanoseconds per round trip over two queues

KIND is Queue or SimpleQueue. The producers live for the whole run and put each batch when
told its size over a pipe, so process start-up is not measured; the consumer checks what it
got (the sum of the sequence numbers, or the size of each large item).

(Named queues.py, as multiprocessing.queues: a queue.py here would shadow the standard
library's queue module, which multiprocessing imports.)
"""

import multiprocessing as mp
import sys
from timing import pin, measure

LARGE = 64 << 10
ctx = mp.get_context("fork")




def producer(q, control, large):
    pin(1)
    item = b"\x07" * LARGE
    while True:
        n = control.recv()
        if n is None:
            return
        for seq in range(n):
            q.put(item if large else seq)


def stream(kind, producers, large):
    q = getattr(ctx, kind)()
    controls, procs = [], []
    for _ in range(producers):
        here, there = ctx.Pipe()
        p = ctx.Process(target=producer, args=(q, there, large), daemon=True)
        p.start()
        there.close()
        controls.append(here)
        procs.append(p)
    pin(0)

    def batch(n):
        for control in controls:
            control.send(n)
        total = 0
        for _ in range(n * producers):
            item = q.get()
            total += len(item) if large else item
        expected = n * producers * LARGE if large else producers * n * (n - 1) // 2
        assert total == expected, (total, expected)

    measure(batch)  # warm-up
    ns_per_item = measure(batch) / producers
    for control in controls:
        control.send(None)
    for p in procs:
        p.join()
    return LARGE / ns_per_item * 1e3 if large else 1e9 / ns_per_item


def echo(ping, pong):
    pin(1)
    while True:
        item = ping.get()
        if item is None:
            return
        pong.put(item)


def round_trip(kind):
    ping, pong = getattr(ctx, kind)(), getattr(ctx, kind)()
    p = ctx.Process(target=echo, args=(ping, pong), daemon=True)
    p.start()
    pin(0)

    def batch(n):
        for seq in range(n):
            ping.put(seq)
            assert pong.get() == seq

    measure(batch)  # warm-up
    ns = measure(batch)
    ping.put(None)
    p.join()
    return ns


def main(kind, workload):
    if kind not in ("Queue", "SimpleQueue"):
        sys.exit(f"unknown queue kind {kind}")
    if workload == "queue_1to1_8b":
        print(stream(kind, 1, False))
    elif workload == "queue_2to1_8b":
        print(stream(kind, 2, False))
    elif workload == "queue_64kib":
        print(stream(kind, 1, True))
    elif workload == "queue_rtt_8b":
        print(round_trip(kind))
    else:
        sys.exit(f"unknown workload {workload}")


if __name__ == "__main__":
    main(*sys.argv[1:])
