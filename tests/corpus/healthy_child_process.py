"""Not a bug: a parent joins a child that works longer than the deadlock timeout, then reads its
small result (it fits in the pipe, so the child could exit)."""

import multiprocessing
import time


def crunch(results: multiprocessing.Queue) -> None:
    results.put("partial")
    end = time.monotonic() + 1.5
    while time.monotonic() < end:
        pass
    results.put("x" * 1000)


if __name__ == "__main__":
    results: multiprocessing.Queue = multiprocessing.Queue()
    worker = multiprocessing.Process(target=crunch, args=(results,), name="cruncher")
    worker.start()
    worker.join()
    print(results.get(), len(results.get()))
