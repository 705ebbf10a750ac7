"""What pool tracking costs a queue: take and give back, plain stdlib vs under ``track_pools()``.

    .venv/bin/python benchmarks/bench_pools.py

``conctools run`` wraps ``asyncio.Queue`` and ``queue.Queue`` methods while it runs (the same
classes every other queue of the program uses), so this is the price each get/put pays:
a take records who took the item and from which lines; a give-back forgets it. Thread CPU time
per take + give-back pair, median of interleaved rounds (plain, tracked, plain, ...), on one
thread without contention (waits are rare and pay for a look at the holders, measured apart).
A queue that never gets its items back (a channel) stops recording identities after
``CHANNEL_AFTER`` gets: its row is the steady state of a producer/consumer queue.
"""

from __future__ import annotations

import asyncio
import platform
import queue
import statistics
import sys
import time
from collections.abc import Callable

from conctools import pools
from conctools.recorder import use_recorder

N = 20_000
ROUNDS = 7


def asyncio_pool(n: int) -> float:
    """``await q.get()`` then ``q.put_nowait(item)``, ``n`` times (items are always there)."""

    async def main() -> float:
        q: asyncio.Queue[int] = asyncio.Queue()
        for i in range(4):
            q.put_nowait(i)
        t0 = time.thread_time()
        for _ in range(n):
            item = await q.get()
            q.put_nowait(item)
        return time.thread_time() - t0

    return asyncio.run(main())


def thread_pool(n: int) -> float:
    """``q.get()`` then ``q.put(item)`` on a ``queue.Queue``, ``n`` times."""
    q: queue.Queue[int] = queue.Queue()
    for i in range(4):
        q.put(i)
    t0 = time.thread_time()
    for _ in range(n):
        item = q.get()
        q.put(item)
    return time.thread_time() - t0


def channel(n: int) -> float:
    """A producer/consumer ``asyncio.Queue``: put a new item, get it, ``n`` times."""

    async def main() -> float:
        q: asyncio.Queue[int] = asyncio.Queue()
        for i in range(pools.CHANNEL_AFTER + 10):  # past the point where it is known to be a channel
            q.put_nowait(i)
            q.get_nowait()
        t0 = time.thread_time()
        for i in range(n):
            q.put_nowait(i)
            q.get_nowait()
        return time.thread_time() - t0

    return asyncio.run(main())


def measure(case: Callable[[int], float]) -> tuple[float, float]:
    """(plain, tracked) nanoseconds per pair, medians of interleaved rounds."""
    plain, tracked = [], []
    for _ in range(ROUNDS):
        plain.append(case(N) / N * 1e9)
        with use_recorder(), pools.track_pools():
            tracked.append(case(N) / N * 1e9)
    return statistics.median(plain), statistics.median(tracked)


def main() -> None:
    print(f"Python {sys.version.split()[0]} on {platform.machine()}; {N} pairs x {ROUNDS} rounds, thread CPU time")
    print(f"{'case':<42} {'stdlib':>10} {'tracked':>10} {'ratio':>7}")
    for label, case in (
        ("asyncio.Queue: await get() + put_nowait()", asyncio_pool),
        ("queue.Queue: get() + put()", thread_pool),
        ("asyncio.Queue channel: put_nowait + get_nowait", channel),
    ):
        plain, tracked = measure(case)
        print(f"{label:<42} {plain:>8.0f}ns {tracked:>8.0f}ns {tracked / plain:>6.2f}x")


if __name__ == "__main__":
    main()
