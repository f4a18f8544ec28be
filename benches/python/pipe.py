"""The pipe workloads in CPython: multiprocessing.Pipe between two processes, the parent on
CPU 0 and the child on CPU 1 (as the Rust implementations are placed).

    pipe.py pipe_rtt_8b   prints nanoseconds per round trip of an 8-byte message
    pipe.py pipe_1mib     prints MB/s of 1 MiB messages sent one way
"""

import multiprocessing as mp
import sys
from timing import pin, measure

MIB = 1 << 20



def echo(conn, parents_end):
    parents_end.close()  # or this child would never see end of file
    pin(1)
    try:
        while True:
            conn.send_bytes(conn.recv_bytes())
    except EOFError:
        pass


def sink(conn, parents_end):
    parents_end.close()
    pin(1)
    try:
        while True:
            n = conn.recv()
            for _ in range(n):
                conn.recv_bytes()
            conn.send_bytes(b"")
    except EOFError:
        pass



def main(workload):
    ctx = mp.get_context("fork")
    here, there = ctx.Pipe(duplex=True)
    child = ctx.Process(target=echo if workload == "pipe_rtt_8b" else sink, args=(there, here))
    child.start()
    there.close()
    pin(0)
    if workload == "pipe_rtt_8b":
        message = b"\x07" * 8

        def batch(n):
            for _ in range(n):
                here.send_bytes(message)
                here.recv_bytes()

        measure(batch)  # warm-up
        print(measure(batch))
    else:
        message = b"\x07" * MIB

        def batch(n):
            here.send(n)
            for _ in range(n):
                here.send_bytes(message)
            here.recv_bytes()

        measure(batch)
        print(MIB / measure(batch) * 1e3)
    here.close()
    child.join()


if __name__ == "__main__":
    main(sys.argv[1])
