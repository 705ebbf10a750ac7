"""A ``concurrent.futures`` fan-out: 400 requests, each fanned out to 25 sub-tasks on a shared
``ThreadPoolExecutor(8)`` and gathered with ``as_completed`` and ``wait``, results merged under
a lock, with done-callbacks counting progress.
"""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, as_completed, wait

REQUESTS = 1_000
FANOUT = 25


def part(request: int, shard: int) -> bytes:
    return hashlib.sha256(f"{request}:{shard}".encode() * 20).digest()


def main() -> None:
    merged: dict[int, int] = {}
    merge_lock = threading.Lock()
    progress = [0]
    progress_lock = threading.Lock()

    def done(_f: Future[bytes]) -> None:
        with progress_lock:
            progress[0] += 1

    with ThreadPoolExecutor(8) as pool:
        for request in range(REQUESTS):
            futures = [pool.submit(part, request, shard) for shard in range(FANOUT)]
            for f in futures:
                f.add_done_callback(done)
            if request % 2:
                total = sum(f.result()[0] for f in as_completed(futures))
            else:
                finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
                total = sum(f.result()[0] for f in finished)
            with merge_lock:
                merged[request] = total
    assert len(merged) == REQUESTS and progress[0] == REQUESTS * FANOUT


if __name__ == "__main__" and not os.environ.get("BENCH_IMPORTS_ONLY"):
    main()
