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

from mpi4py.util.pool import Pool
# The workloads of the pool benchmark, on mpi4py's pool instead of multiprocessing's.
from pool import chunk1_on, cpu_tasks, map_1m_on, speedup_on

WORKLOADS = {
    "mpi_task_chunk1": chunk1_on,
    "mpi_map_1m": map_1m_on,
    "mpi_cpu16_speedup": lambda pool: speedup_on(pool, cpu_tasks()),
}

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in WORKLOADS:
        sys.exit(f"usage: mpi.py {{{','.join(WORKLOADS)}}}")
    with Pool() as pool:
        print(WORKLOADS[sys.argv[1]](pool))
