"""What a traced lock costs, side by side with the stdlib and a naive wrapper, in one process.

    .venv/bin/python benchmarks/bench_locks.py

Rows are uncontended operations (the fast path every program pays); the ratio column is
against the stdlib row of the same group. There is no real peer for traced locks in Python;
the "naive wrapper" row is the floor of any pure-Python wrapper (a class whose ``__enter__``/
``__exit__`` only call the real lock's acquire/release), so the gap between it and
conctools is what tracing itself costs. Each figure is the best of several interleaved
repeats, in thread CPU time (the machine is shared and noisy: CPU time does not count the time
other processes take, and the minimum is the least disturbed measurement).
"""

from __future__ import annotations

import _thread
import asyncio
import contextlib
import platform
import sys
import threading
import time
import timeit
from typing import Any

import conctools
from conctools import lockorder
from conctools.locks import trace_locks
from conctools.recorder import use_recorder

N = 10_000
NESTED = "with O:\n    with L: pass"
REPEATS = 25


class NaiveLock:
    """The cheapest possible Python wrapper around a lock: the floor for any traced lock."""

    __slots__ = ("_acquire", "_release")

    def __init__(self) -> None:
        lock = _thread.allocate_lock()
        self._acquire = lock.acquire
        self._release = lock.release

    def __enter__(self) -> bool:
        return self._acquire()

    def __exit__(self, *exc: object) -> None:
        self._release()


def contended_once(lock: Any) -> Any:
    """Make ``lock`` see one contention (it switches to its timed variant), then return it."""
    held = threading.Event()
    go = threading.Event()

    def holder() -> None:
        with lock:
            held.set()
            go.wait()

    t = threading.Thread(target=holder)
    t.start()
    held.wait()
    threading.Timer(0.01, go.set).start()
    with lock:
        pass
    t.join()
    return lock


def sync_cases() -> list[tuple[str, str, str, dict[str, Any]]]:
    """(group, label, statement, namespace)."""
    with lockorder_mode():
        ordered = conctools.Lock()
        ordered_outer = conctools.Lock()
    return [
        ("with lock: (uncontended, existing lock)", "threading.Lock", "with L: pass", {"L": threading.Lock()}),
        ("with lock: (uncontended, existing lock)", "naive wrapper", "with L: pass", {"L": NaiveLock()}),
        ("with lock: (uncontended, existing lock)", "conctools.Lock", "with L: pass", {"L": conctools.Lock()}),
        (
            "with lock: (uncontended, existing lock)",
            "conctools.Lock, after a contention (timed)",
            "with L: pass",
            {"L": contended_once(conctools.Lock())},
        ),
        ("with lock: (uncontended, existing lock)", "conctools.Lock, lock-order mode", "with L: pass", {"L": ordered}),
        (
            "with O: with L: (two locks, nested)",
            "threading.Lock",
            NESTED,
            {"L": threading.Lock(), "O": threading.Lock()},
        ),
        (
            "with O: with L: (two locks, nested)",
            "conctools.Lock",
            NESTED,
            {"L": conctools.Lock(), "O": conctools.Lock()},
        ),
        (
            "with O: with L: (two locks, nested)",
            "conctools.Lock, lock-order mode (edge known)",
            NESTED,
            {"L": ordered, "O": ordered_outer},
        ),
        ("with Lock(): (create, then use)", "threading.Lock", "with Lock(): pass", {"Lock": threading.Lock}),
        ("with Lock(): (create, then use)", "conctools.Lock", "with Lock(): pass", {"Lock": conctools.Lock}),
        ("lock.acquire(); lock.release()", "threading.Lock", "a(); r()", _bound(threading.Lock())),
        ("lock.acquire(); lock.release()", "conctools.Lock", "a(); r()", _bound(conctools.Lock())),
        ("with rlock: (uncontended)", "threading.RLock", "with L: pass", {"L": threading.RLock()}),
        ("with rlock: (uncontended)", "conctools.RLock", "with L: pass", {"L": conctools.RLock()}),
        ("with semaphore: (uncontended)", "threading.Semaphore", "with S: pass", {"S": threading.Semaphore(4)}),
        ("with semaphore: (uncontended)", "conctools.Semaphore", "with S: pass", {"S": conctools.Semaphore(4)}),
        ("event.set(); event.wait()", "threading.Event", "e.set(); e.wait()", {"e": threading.Event()}),
        ("event.set(); event.wait()", "conctools.Event", "e.set(); e.wait()", {"e": conctools.Event()}),
    ]


def _bound(lock: Any) -> dict[str, Any]:
    return {"a": lock.acquire, "r": lock.release}


class lockorder_mode:
    """Create locks in lock-order mode (what ``conctools run`` does)."""

    def __enter__(self) -> None:
        lockorder.enable()

    def __exit__(self, *exc: object) -> None:
        lockorder.disable()


def measure_sync(cases: list[tuple[str, str, str, dict[str, Any]]]) -> list[float]:
    """Best ns/op per case, repeats interleaved across cases so drift hits all of them alike."""
    timers = []
    for _, _, stmt, ns in cases:
        timers.append(timeit.Timer(stmt, timer=time.thread_time, globals=ns))
    best = [float("inf")] * len(cases)
    for _ in range(REPEATS):
        for i, timer in enumerate(timers):
            best[i] = min(best[i], timer.timeit(N) / N * 1e9)
    return best


async def _async_once(lock: Any, kind: str, n: int) -> float:
    """ns/op of one run of ``n`` uncontended operations on ``lock``."""
    t0 = time.thread_time_ns()
    if kind == "with":
        for _ in range(n):
            async with lock:
                pass
    else:
        for _ in range(n):
            await lock.acquire()
            lock.release()
    return (time.thread_time_ns() - t0) / n


def measure_async() -> list[tuple[str, str, float]]:
    """Best ns/op per case; the two sides alternate run by run, as the sync cases do."""
    rows = []

    async def main() -> None:
        for group, kind, pairs in (
            (
                "async with lock: (uncontended)",
                "with",
                (("asyncio.Lock", asyncio.Lock), ("conctools.aio.Lock", conctools.aio.Lock)),
            ),
            (
                "await lock.acquire(); lock.release()",
                "acquire",
                (("asyncio.Lock", asyncio.Lock), ("conctools.aio.Lock", conctools.aio.Lock)),
            ),
            (
                "async with semaphore: (uncontended)",
                "with",
                (
                    ("asyncio.Semaphore", lambda: asyncio.Semaphore(4)),
                    ("conctools.aio.Semaphore", lambda: conctools.aio.Semaphore(4)),
                ),
            ),
        ):
            made = [(label, make()) for label, make in pairs]
            best = {label: float("inf") for label, _ in made}
            for _ in range(REPEATS):
                for label, lock in made:
                    best[label] = min(best[label], await _async_once(lock, kind, N))
            for label, _ in made:
                rows.append((group, label, best[label]))

    asyncio.run(main())
    return rows


def measure_creation() -> list[tuple[str, str, float]]:
    """What the stdlib's own constructors cost when ``trace_locks()`` (``conctools run``'s default)
    makes the primitives inside them traced ones: plain and traced runs alternate, the patching
    itself outside the timed region."""
    import concurrent.futures
    import queue

    made = (
        ("threading.Lock()", lambda: threading.Lock()),
        ("threading.Condition()", lambda: threading.Condition()),
        ("concurrent.futures.Future()", concurrent.futures.Future),
        ("queue.Queue()", queue.Queue),
    )
    n = N // 5
    rows = []
    for label, make in made:
        best = {"stdlib": float("inf"), "under trace_locks()": float("inf")}
        for _ in range(REPEATS // 2):
            for side in best:
                with trace_locks() if side != "stdlib" else contextlib.nullcontext():
                    t0 = time.thread_time_ns()
                    for _ in range(n):
                        make()  # created and freed: a traced primitive's __del__ is part of its cost
                    took = (time.thread_time_ns() - t0) / n
                best[side] = min(best[side], took)
        rows += [(f"{label} (create)", side, ns) for side, ns in best.items()]
    return rows


def main() -> int:
    where = f"Python {sys.version.split()[0]} on {platform.machine()} ({platform.system()})"
    print(f"{where}; thread CPU time, best of {REPEATS} interleaved runs of {N} ops")
    with use_recorder():
        cases = sync_cases()
        figures = measure_sync(cases)
        rows = [(g, label, f) for (g, label, _, _), f in zip(cases, figures, strict=True)]
        rows += measure_async()
        rows += measure_creation()
    group = None
    base = 1.0
    for g, label, ns in rows:
        if g != group:
            group = g
            base = ns
            print(f"\n{g}")
        print(f"  {label:<56} {ns:9.0f} ns/op  {ns / base:5.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
