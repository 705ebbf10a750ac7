"""Threads help I/O-bound code; CPU-bound Python code needs processes. The same work, both ways.

    python examples/cpu_threads_vs_processes.py                  # threads, then processes
    conctools run examples/cpu_threads_vs_processes.py threads   # the report shows why threads lose

Four jobs of pure-Python arithmetic. In threads they take as long as one thread doing all four
(only the thread holding the GIL runs Python code); in processes they run on every core.
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

JOBS = 4
N = 8_000_000


def crunch(n: int) -> int:
    """CPU-bound Python code: no I/O, no C call that could release the GIL."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def run(pool: type[Executor], jobs: int = JOBS, n: int = N) -> float:
    """Run ``jobs`` crunches in ``pool``; return the wall time."""
    start = time.perf_counter()
    with pool(max_workers=jobs) as executor:
        results = list(executor.map(crunch, [n] * jobs))
    elapsed = time.perf_counter() - start
    assert len(results) == jobs
    print(f"{pool.__name__:>19}: {jobs} x crunch({n:,}) in {elapsed:.2f} s")
    return elapsed


def main(argv: list[str]) -> None:
    modes = argv or ["threads", "processes"]
    print(f"{len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} cores")
    took = {}
    for mode in modes:
        took[mode] = run(ThreadPoolExecutor if mode == "threads" else ProcessPoolExecutor)
    if len(took) == 2:
        print(f"processes were {took['threads'] / took['processes']:.1f}x faster")


if __name__ == "__main__":
    main(sys.argv[1:])
