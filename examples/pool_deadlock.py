"""A process pool whose job deadlocks in a worker: `conctools run --deadlock-timeout 2 examples/pool_deadlock.py`."""

import multiprocessing
import threading

totals_lock = threading.Lock()


def add_to_totals(n: int) -> int:
    with totals_lock:
        return checked(n)


def checked(n: int) -> int:
    with totals_lock:  # taken again by the same thread: a threading.Lock is not reentrant
        return n * n


if __name__ == "__main__":
    with multiprocessing.get_context("fork").Pool(2) as pool:
        print(sum(pool.map(add_to_totals, range(100))))
