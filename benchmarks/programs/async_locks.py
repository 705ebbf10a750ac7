"""asyncio: 20,000 tasks through an ``asyncio.Semaphore(50)``, an ``asyncio.Lock`` and an
``asyncio.Queue``, the shape of a crawler or an API gateway limiting its concurrency.

Each task takes a slot of the semaphore, "does I/O" (``sleep(0)``), updates shared state under
the lock and hands its result to a pool of consumer tasks through a bounded queue.
"""

from __future__ import annotations

import asyncio
import os

TASKS = 20_000
CONSUMERS = 8


async def fetch(
    i: int, slots: asyncio.Semaphore, lock: asyncio.Lock, stats: dict[str, int], out: asyncio.Queue[int]
) -> None:
    async with slots:
        await asyncio.sleep(0)  # the request
        async with lock:
            stats["done"] += 1
            stats["bytes"] += i % 1500
        await out.put(i)


async def consume(queue: asyncio.Queue[int], totals: list[int]) -> None:
    while True:
        item = await queue.get()
        totals.append(item * 2)
        queue.task_done()


async def main() -> None:
    slots = asyncio.Semaphore(50)
    lock = asyncio.Lock()
    queue: asyncio.Queue[int] = asyncio.Queue(maxsize=100)
    stats = {"done": 0, "bytes": 0}
    totals: list[int] = []
    consumers = [asyncio.create_task(consume(queue, totals)) for _ in range(CONSUMERS)]
    await asyncio.gather(*(fetch(i, slots, lock, stats, queue) for i in range(TASKS)))
    await queue.join()
    for c in consumers:
        c.cancel()
    await asyncio.gather(*consumers, return_exceptions=True)
    assert stats["done"] == TASKS and len(totals) == TASKS


if __name__ == "__main__" and not os.environ.get("BENCH_IMPORTS_ONLY"):
    asyncio.run(main())
