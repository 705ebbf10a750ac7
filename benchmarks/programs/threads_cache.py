"""threads: a ``ThreadPoolExecutor(8)`` mapping 40,000 small jobs through a lock-protected cache,
plus a producer/consumer ``queue.Queue(maxsize=100)``: a typical threaded service shape.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor

JOBS = 40_000
ITEMS = 20_000


class Cache:
    """A memo shared by the workers; a miss computes outside the lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[int, str] = {}
        self.hits = 0

    def get(self, key: int) -> str:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self.hits += 1
                return value
        value = hashlib.sha1(str(key).encode()).hexdigest()
        with self._lock:
            self._data.setdefault(key, value)
        return value


def job(cache: Cache, i: int) -> int:
    return len(cache.get(i % 5_000))


def producer_consumer() -> int:
    q: queue.Queue[int | None] = queue.Queue(maxsize=100)
    total = [0]

    def produce() -> None:
        for i in range(ITEMS):
            q.put(i)
        q.put(None)

    def consume() -> None:
        while (item := q.get()) is not None:
            total[0] += item

    threads = [threading.Thread(target=produce), threading.Thread(target=consume)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return total[0]


def main() -> None:
    cache = Cache()
    with ThreadPoolExecutor(8) as pool:
        lengths = list(pool.map(job, [cache] * JOBS, range(JOBS)))
    assert sum(lengths) == 40 * JOBS
    assert producer_consumer() == ITEMS * (ITEMS - 1) // 2


if __name__ == "__main__" and not os.environ.get("BENCH_IMPORTS_ONLY"):
    main()
