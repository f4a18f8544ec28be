"""Start + join of a process that does nothing, in CPython, with the start method named on
the command line (fork, spawn, forkserver). Prints nanoseconds per start + join; the
forkserver is started (and the spawn machinery imported) before timing begins."""

import multiprocessing as mp
import sys
import time

TARGET_NS = 0.2e9


def noop():
    pass


def main(method):
    ctx = mp.get_context(method)

    def once():
        p = ctx.Process(target=noop)
        p.start()
        p.join()

    once()  # warm-up: starts the forkserver, imports what spawn needs
    n = 1
    while True:
        start = time.perf_counter_ns()
        for _ in range(n):
            once()
        took = time.perf_counter_ns() - start
        if took >= TARGET_NS:
            print(took / n)
            return
        n *= 2


if __name__ == "__main__":
    main(sys.argv[1])
