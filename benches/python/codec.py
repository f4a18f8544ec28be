"""The codec workloads in CPython: a pickle dumps + loads round trip, as Connection.send/recv
encode. Prints nanoseconds per round trip for the workload named on the command line."""

import pickle
import sys
import time

VALUES = {
    "codec_u64": 0x1234_5678_9ABC,
    "codec_small_struct": {"id": 1234567, "name": "worker-7", "scores": [1, 20, 300, 4000], "done": False},
    "codec_64kib": bytes([7]) * (64 << 10),
}


def per_op(value, seconds=0.02):
    dumps, loads, protocol = pickle.dumps, pickle.loads, pickle.HIGHEST_PROTOCOL
    n = 1
    while True:
        start = time.perf_counter_ns()
        for _ in range(n):
            loads(dumps(value, protocol))
        took = time.perf_counter_ns() - start
        if took >= seconds * 1e9:
            return took / n
        n *= 2


if __name__ == "__main__":
    print(per_op(VALUES[sys.argv[1]]))
