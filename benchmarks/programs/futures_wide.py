"""``concurrent.futures.wait()`` and ``as_completed()`` over 40,000 futures at once, done
already or completed by another thread meanwhile: each call takes the conditions of all its futures one after the other,
each while holding the ones before (a lock-order *run* of 40,000 locks of one class, which must
cost O(1) per lock, not O(locks held)).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, as_completed, wait

FUTURES = 40_000
ROUNDS = 2


def complete(futures: list[Future[int]]) -> None:
    for i, f in enumerate(futures):
        f.set_result(i)


def main() -> None:
    for _ in range(ROUNDS):
        futures: list[Future[int]] = [Future() for _ in range(FUTURES)]
        complete(futures)
        done, not_done = wait(futures)  # all done: the conditions are taken, then released
        assert len(done) == FUTURES and not not_done
        assert sum(f.result() for f in as_completed(futures)) == FUTURES * (FUTURES - 1) // 2
        futures = [Future() for _ in range(FUTURES)]
        worker = threading.Thread(target=complete, args=(futures,))
        worker.start()
        done, not_done = wait(futures)  # pending: a waiter is added to each future, then removed
        worker.join()
        assert len(done) == FUTURES and not not_done


if __name__ == "__main__" and not os.environ.get("BENCH_IMPORTS_ONLY"):
    main()
