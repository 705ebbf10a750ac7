"""What heavy contention costs: 4 threads hammering two nested locks, stdlib vs traced.

    .venv/bin/python benchmarks/bench_contended.py            # the C fast path
    CONCTOOLS_PURE_PYTHON=1 .venv/bin/python benchmarks/bench_contended.py

Uncontended acquisitions are bench_locks.py's subject; here most acquisitions find the lock
taken at least once in a while, and every contended one pays the slow path (the waiter's site
and task, the registry, the wait histogram, a LockWaitEvent). Wall time of the whole run,
median of interleaved rounds; the contended count says how many acquisitions took the slow path
(it varies from run to run: who waits depends on when the GIL changes hands).
"""

from __future__ import annotations

import itertools
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import conctools
from conctools import lockorder, locks
from conctools.recorder import use_recorder

THREADS = 4
PER_THREAD = 25_000
ROUNDS = 5


_runs = itertools.count()


def hammer(make: Callable[[str], Any]) -> tuple[float, int]:
    """Wall seconds for THREADS x PER_THREAD nested acquisitions, and the outer lock's contentions
    (each run names its locks afresh: statistics are per lock class)."""
    run = next(_runs)
    outer, inner = make(f"outer-{run}"), make(f"inner-{run}")
    total = [0]

    def work() -> None:
        for _ in range(PER_THREAD):
            with outer, inner:
                total[0] += 1

    threads = [threading.Thread(target=work) for _ in range(THREADS)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    assert total[0] == THREADS * PER_THREAD
    stats = getattr(outer, "_ct_stats", None)
    return elapsed, stats.contentions if stats is not None else 0


def ordered_lock(name: str) -> Any:
    lockorder.enable()
    try:
        return conctools.Lock(name=name)
    finally:
        lockorder.disable()


def main() -> int:
    path = "C fast path" if locks.SPEEDUPS else "pure Python"
    print(f"Python {sys.version.split()[0]} on {platform.machine()}; {path}; {THREADS} threads x {PER_THREAD} ")
    print(f"nested acquisitions of two locks; wall time, median of {ROUNDS} interleaved rounds\n")
    cases: list[tuple[str, Callable[[str], Any]]] = [
        ("threading.Lock", lambda name: threading.Lock()),
        ("conctools.Lock", lambda name: conctools.Lock(name=name)),
        ("conctools.Lock, lock-order mode", ordered_lock),
    ]
    times: dict[str, list[float]] = {label: [] for label, _ in cases}
    contended: dict[str, list[int]] = {label: [] for label, _ in cases}
    with use_recorder():
        for _ in range(ROUNDS):
            for label, make in cases:
                elapsed, n = hammer(make)
                times[label].append(elapsed)
                contended[label].append(n)
    base = statistics.median(times["threading.Lock"])
    for label, _ in cases:
        med = statistics.median(times[label])
        counts = contended[label]
        waits = f"contended acquisitions of the outer lock: {min(counts)}-{max(counts)}" if any(counts) else ""
        print(f"  {label:<34} {med:6.2f} s  {med / base:5.2f}x  {waits}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
