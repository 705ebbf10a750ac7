"""What a contended acquisition costs, traced against the stdlib primitive, in one process.

    .venv/bin/python benchmarks/bench_contended.py            # the C paths
    CONCTOOLS_PURE_PYTHON=1 .venv/bin/python benchmarks/bench_contended.py

Uncontended acquisitions are bench_locks.py's subject. Here:

- *hand-off*: two threads pass a baton through two locks used as binary semaphores (each
  ``acquire`` waits for the other thread's ``release``): nearly every acquisition is contended, so
  the time per acquisition is the cost of a contended acquisition (a futex wait, a wake-up, two GIL
  hand-offs) plus, traced, its bookkeeping: the holder, the wait record, the counters, a sampled
  event.
- *asyncio*: three tasks take one ``asyncio.Lock`` (or ``Semaphore(1)``) and hold it across an
  ``await asyncio.sleep(0)``: every acquisition but the first of each round waits.
- *hammer*: four threads nesting two locks (``with outer, inner``): a mix, the contended count says
  how many acquisitions waited (it varies from run to run with the GIL's hand-offs).

Wall time, median of interleaved rounds; the machine is shared, so read the ratios as ranges.
"""

from __future__ import annotations

import asyncio
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
HANDOFFS = 20_000
ASYNC_ROUNDS = 10_000
ROUNDS = 5


_runs = itertools.count()


def hammer(make: Callable[[str], Any]) -> tuple[float, int, int]:
    """Wall seconds for THREADS x PER_THREAD nested acquisitions, acquisitions, contended ones."""
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
    return elapsed, 2 * THREADS * PER_THREAD, contentions(outer) + contentions(inner)


def handoff(make: Callable[[str], Any]) -> tuple[float, int, int]:
    """Two threads passing a baton through two locks: wall seconds, acquisitions, contended ones."""
    run = next(_runs)
    a, b = make(f"ping-{run}"), make(f"pong-{run}")
    a.acquire()
    b.acquire()

    def ping() -> None:
        for _ in range(HANDOFFS):
            a.acquire()
            b.release()

    def pong() -> None:
        for _ in range(HANDOFFS):
            a.release()
            b.acquire()

    threads = [threading.Thread(target=ping), threading.Thread(target=pong)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    return elapsed, 2 * HANDOFFS, contentions(a) + contentions(b)


def contentions(prim: Any) -> int:
    stats = getattr(prim, "_ct_stats", None)
    if stats is None:
        return 0
    locks.flush_waits()
    return int(stats.contentions)


def in_asyncio(make: Callable[[str], Any]) -> tuple[float, int, int]:
    """Three tasks holding one lock across an await: wall seconds, acquisitions, contended ones."""
    run = next(_runs)

    async def main() -> tuple[float, Any]:
        lock = make(f"aio-{run}")

        async def worker() -> None:
            for _ in range(ASYNC_ROUNDS):
                async with lock:
                    await asyncio.sleep(0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(3)))
        return time.perf_counter() - t0, lock

    elapsed, lock = asyncio.run(main())
    return elapsed, 3 * ASYNC_ROUNDS, contentions(lock)


def ordered(factory: Callable[..., Any]) -> Callable[[str], Any]:
    def make(name: str) -> Any:
        lockorder.enable()
        try:
            return factory(name=name)
        finally:
            lockorder.disable()

    return make


def main() -> int:
    path = "C paths" if locks.SPEEDUPS else "pure Python"
    print(f"Python {sys.version.split()[0]} on {platform.machine()}; {path}; wall time, median of {ROUNDS} rounds")
    groups: list[tuple[str, Callable[[Callable[[str], Any]], tuple[float, int, int]], list[tuple[str, Any]]]] = [
        (
            f"hand-off: 2 threads x {HANDOFFS} acquisitions, each waiting for the other's release",
            handoff,
            [
                ("threading.Lock", lambda name: threading.Lock()),
                ("conctools.Lock", lambda name: conctools.Lock(name=name)),
                ("conctools.Lock, lock-order mode", ordered(conctools.Lock)),
            ],
        ),
        (
            f"asyncio: 3 tasks x {ASYNC_ROUNDS} acquisitions, the lock held across an await",
            in_asyncio,
            [
                ("asyncio.Lock", lambda name: asyncio.Lock()),
                ("conctools.aio.Lock", lambda name: conctools.aio.Lock(name=name)),
                ("asyncio.Semaphore(1)", lambda name: asyncio.Semaphore(1)),
                ("conctools.aio.Semaphore(1)", lambda name: conctools.aio.Semaphore(1, name=name)),
            ],
        ),
        (
            f"hammer: {THREADS} threads x {PER_THREAD} nested acquisitions of two locks",
            hammer,
            [
                ("threading.Lock", lambda name: threading.Lock()),
                ("conctools.Lock", lambda name: conctools.Lock(name=name)),
                ("conctools.Lock, lock-order mode", ordered(conctools.Lock)),
            ],
        ),
    ]
    with use_recorder():
        for title, run, cases in groups:
            times: dict[str, list[float]] = {label: [] for label, _ in cases}
            waits: dict[str, list[tuple[int, int]]] = {label: [] for label, _ in cases}
            for _ in range(ROUNDS):
                for label, make in cases:
                    elapsed, n, contended = run(make)
                    times[label].append(elapsed)
                    waits[label].append((n, contended))
            print(f"\n{title}")
            base: dict[str, float] = {}
            for label, _ in cases:
                med = statistics.median(times[label])
                family = label.split("(")[0].split(",")[0].rsplit(".", 1)[-1]
                base.setdefault(family, med)
                per_op = med / waits[label][0][0] * 1e9
                counted = [c for _, c in waits[label] if c]
                share = f"  contended {min(counted)}-{max(counted)} of {waits[label][0][0]}" if counted else ""
                print(f"  {label:<34} {med:6.3f} s  {per_op:7.0f} ns/acquisition  {med / base[family]:5.2f}x{share}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
